"""The BaasVault on a real anvil (127.0.0.1): deposit, withdrawal, batch, replay and pause.

The full rule table runs on eth-tester (tests/test_vault_contract.py); here the same contracts
answer over JSON-RPC from a real chain process, where reverts arrive as error 3 with hex data,
and the timelock's delay passes with ``evm_increaseTime``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chains import running_anvil
from vaults import Key, VaultWorld, advance, rejected, timelocked, vault_world
from web3.logs import DISCARD

from node.anchoring.chain import connect_web3
from node.chain.contracts import send
from node.chain.vault import sign_digest

ONE = 10**18
WALLET = bytes.fromhex("22" * 16)


@pytest.fixture(name="world", scope="module")
def world_fixture() -> Iterator[VaultWorld]:
    with running_anvil() as node:
        yield vault_world(connect_web3(node.url))


def test_deposit_on_anvil(world: VaultWorld) -> None:
    send(world.token.functions.approve(world.vault.address, 4 * ONE), world.depositor)
    receipt = send(
        world.vault.functions.deposit(world.token.address, 4 * ONE, WALLET), world.depositor
    )
    (event,) = world.vault.events.Deposited().process_receipt(receipt, errors=DISCARD)
    assert (event["args"]["wallet"], event["args"]["amount"]) == (WALLET, 4 * ONE)
    revert = rejected(
        world.vault.functions.deposit(world.stack.multisig.address, ONE, WALLET), world.depositor
    )
    assert (revert.name, revert.args) == ("TokenNotRegistered", (world.stack.multisig.address,))


def test_withdrawal_batch_and_replay_on_anvil(world: VaultWorld) -> None:
    users = [Key.new() for _ in range(3)]
    single = world.withdrawal(users[0], ONE)
    assert world.withdraw([single], users[:1])["status"] == 1
    batch = [world.withdrawal(u, 2 * ONE) for u in users]
    receipt = world.withdraw(batch, users)
    assert len(world.vault.events.Withdrawn().process_receipt(receipt, errors=DISCARD)) == 3
    assert [world.balance(u.address) for u in users] == [3 * ONE, 2 * ONE, 2 * ONE]
    vault_before = world.balance(world.vault.address)
    sig = sign_digest(users[0].private, single.digest(world.domain))
    revert = rejected(world.call([single], [sig], world.node_sigs([single])), world.sender)
    assert (revert.name, revert.args) == ("AlreadyPaid", (single.id,))
    receipt = send(
        world.call([single], [sig], world.node_sigs([single])), world.sender, gas=500_000
    )
    assert receipt["status"] == 0
    assert world.balance(world.vault.address) == vault_before
    outsider = Key.new()
    fresh = world.withdrawal(users[1], ONE)
    sig = sign_digest(users[1].private, fresh.digest(world.domain))
    nodes = world.node_sigs([fresh], [world.nodes[0], outsider])
    assert rejected(world.call([fresh], [sig], nodes), world.sender).name == "NotASigner"


def test_pause_and_timelocked_unpause_on_anvil(world: VaultWorld) -> None:
    functions = world.vault.functions
    send(functions.pause(), world.guardians[0])
    user = Key.new()
    w = world.withdrawal(user, ONE, deadline=world.now() + 10 * world.stack.delay_s)
    sig = sign_digest(user.private, w.digest(world.domain))
    assert rejected(world.call([w], [sig], world.node_sigs([w])), world.sender).name == (
        "EnforcedPause"
    )
    revert = rejected(functions.unpause(), world.deployer)
    assert revert.name == "OwnableUnauthorizedAccount"
    execute, _ = timelocked(world, functions.unpause(), b"\x07" * 32)
    assert rejected(execute, world.stranger).name == "TimelockUnexpectedOperationState"
    advance(world.w3, world.stack.delay_s + 1)
    send(execute, world.stranger)
    assert world.withdraw([w], [user])["status"] == 1
