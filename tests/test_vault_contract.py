"""The BaasVault's rules on eth-tester and on a real anvil: every refusal a decoded custom
error, nothing moved.

A refusal is checked as the sender would meet it (gas estimation reverts, ``ChainRejected``
with the decoded error, nothing sent) and, for withdrawals, also as a mined transaction with a
fixed gas limit (status 0): balances, ``isPaid`` and the window counter unchanged either way.
eth-tester raises ``TransactionFailed`` with the revert bytes, anvil answers JSON-RPC error 3
with hex data: both decode to the same error. Time moves with ``time_travel`` on eth-tester and
``evm_increaseTime`` on anvil (``vaults.advance``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from chains import embedded_chain_web3, running_anvil
from eth_account import Account
from vaults import LIMIT, WINDOW_S, Key, VaultWorld, advance, rejected, timelocked, vault_world
from web3 import Web3
from web3.logs import DISCARD

from node.anchoring.chain import ChainRejected, connect_web3
from node.chain import vault as vault_py
from node.chain.contracts import deploy, is_role_member, send
from node.chain.vault import VaultDomain, Withdrawal, batch_digest, sign_digest, typed_data
from node.errors import InvalidRequest

WALLET = bytes.fromhex("11" * 16)
ONE = 10**18


@pytest.fixture(name="world", params=["eth-tester", "anvil"])
def world_fixture(request: pytest.FixtureRequest) -> Iterator[VaultWorld]:
    """The vault stack on eth-tester (in process) and on a real anvil (127.0.0.1)."""
    if request.param == "eth-tester":
        yield vault_world(embedded_chain_web3())
        return
    with running_anvil() as node:
        yield vault_world(connect_web3(node.url))


def usig(world: VaultWorld, user: Key, w: Withdrawal, domain: VaultDomain | None = None) -> bytes:
    return sign_digest(user.private, w.digest(domain or world.domain))


def snapshot(world: VaultWorld, ws: Sequence[Withdrawal]) -> tuple[Any, ...]:
    return (
        world.balance(world.vault.address),
        tuple(world.balance(w.to) for w in ws),
        tuple(world.vault.functions.isPaid(w.id).call() for w in ws),
        tuple(world.vault.functions.windowUse(world.token.address).call()),
    )


def refused_withdrawal(
    world: VaultWorld,
    ws: Sequence[Withdrawal],
    user_sigs: Sequence[bytes],
    node_sigs: Sequence[bytes],
) -> Any:
    """Refused as a call and as a mined transaction; nothing moved. Returns the Revert."""
    before = snapshot(world, ws)
    revert = rejected(world.call(ws, user_sigs, node_sigs), world.sender)
    receipt = send(world.call(ws, user_sigs, node_sigs), world.sender, gas=1_000_000)
    assert receipt["status"] == 0
    assert snapshot(world, ws) == before
    return revert


def one(world: VaultWorld, amount: int = ONE) -> tuple[Key, Withdrawal]:
    user = Key.new()
    return user, world.withdrawal(user, amount)


# -- digests -----------------------------------------------------------------------------------


def test_digests_match_the_contract_and_eth_account(world: VaultWorld) -> None:
    user, w = one(world)
    assert world.vault.functions.withdrawalDigest(w.as_abi()).call() == w.digest(world.domain)
    document: Any = typed_data(world.domain, w)
    signed = Account.sign_typed_data(user.private, full_message=document)
    assert bytes(signed.signature) == usig(world, user, w)
    ws = [w, world.withdrawal(user, 2 * ONE)]
    hashes = [x.struct_hash() for x in ws]
    assert world.vault.functions.batchDigest(hashes).call() == batch_digest(world.domain, ws)
    batch_doc: Any = {
        "types": {
            **document["types"],
            "WithdrawalBatch": [{"name": "withdrawals", "type": "Withdrawal[]"}],
        },
        "primaryType": "WithdrawalBatch",
        "domain": document["domain"],
        "message": {"withdrawals": [typed_data(world.domain, x)["message"] for x in ws]},
    }
    node = world.nodes[0]
    assert bytes(Account.sign_typed_data(node.private, full_message=batch_doc).signature) == (
        sign_digest(node.private, batch_digest(world.domain, ws))
    )
    assert world.vault.functions.domainSeparator().call() == world.domain.separator()


def test_python_limits_match_the_contract(world: VaultWorld) -> None:
    functions = world.vault.functions
    assert functions.WITHDRAWALS_PER_TX_MAX().call() == vault_py.WITHDRAWALS_PER_TX_MAX
    assert functions.SIGNERS_MAX().call() == vault_py.SIGNERS_MAX


def test_python_refuses_malformed_withdrawals() -> None:
    good = dict(
        id=bytes(32),
        token=bytes(20),
        amount=1,
        user=bytes(20),
        to=bytes(20),
        wallet=bytes(16),
        deadline=0,
    )
    Withdrawal(**good)  # type: ignore[arg-type]
    for field, bad in (
        ("id", bytes(31)),
        ("token", bytes(19)),
        ("amount", 0),
        ("wallet", bytes(32)),
        ("deadline", 2**64),
    ):
        with pytest.raises(InvalidRequest):
            Withdrawal(**{**good, field: bad})  # type: ignore[arg-type]


def test_sorted_node_signatures_keeps_valid_distinct_signers(world: VaultWorld) -> None:
    _, w = one(world)
    digest = batch_digest(world.domain, [w])
    a, b, c = world.nodes
    outsider = Key.new()
    sigs = [sign_digest(k.private, digest) for k in (c, outsider, a, a, b)] + [b"\x00" * 65]
    signers = [k.address for k in world.nodes]
    chosen = vault_py.sorted_node_signatures(digest, sigs, signers, 3)
    assert [vault_py.recover(digest, s) for s in chosen] == sorted(signers)
    with pytest.raises(InvalidRequest):
        vault_py.sorted_node_signatures(digest, sigs[:3], signers, 3)


# -- deposits ----------------------------------------------------------------------------------


def test_deposit_credits_the_named_wallet(world: VaultWorld) -> None:
    vault_before = world.balance(world.vault.address)
    send(world.token.functions.approve(world.vault.address, 5 * ONE), world.depositor)
    receipt = send(
        world.vault.functions.deposit(world.token.address, 5 * ONE, WALLET), world.depositor
    )
    (event,) = world.vault.events.Deposited().process_receipt(receipt, errors=DISCARD)
    assert event["args"]["token"] == world.token.address
    assert event["args"]["from"] == world.depositor
    assert event["args"]["wallet"] == WALLET
    assert event["args"]["amount"] == 5 * ONE
    assert world.balance(world.vault.address) == vault_before + 5 * ONE


def test_deposit_refusals_move_nothing(world: VaultWorld) -> None:
    other = deploy(world.w3, "BaasToken", [world.depositor, 10**24], world.deployer)
    send(other.functions.approve(world.vault.address, ONE), world.depositor)
    send(world.token.functions.approve(world.vault.address, ONE), world.depositor)
    before = (world.balance(world.depositor), world.balance(world.vault.address))
    deposit = world.vault.functions.deposit
    revert = rejected(deposit(other.address, ONE, WALLET), world.depositor)
    assert (revert.name, revert.args) == ("TokenNotRegistered", (other.address,))
    assert rejected(deposit(world.token.address, 0, WALLET), world.depositor).name == "ZeroAmount"
    assert (
        rejected(deposit(world.token.address, ONE, bytes(16)), world.depositor).name == "ZeroWallet"
    )
    revert = rejected(deposit(world.token.address, 2 * ONE, WALLET), world.depositor)
    assert revert.name == "ERC20InsufficientAllowance"
    send(world.vault.functions.pause(), world.guardians[0])
    assert (
        rejected(deposit(world.token.address, ONE, WALLET), world.depositor).name == "EnforcedPause"
    )
    assert (world.balance(world.depositor), world.balance(world.vault.address)) == before
    assert other.functions.balanceOf(world.vault.address).call() == 0


# -- withdrawals -------------------------------------------------------------------------------


def test_withdrawal_pays_once_with_user_and_two_node_signatures(world: VaultWorld) -> None:
    user, w = one(world, 3 * ONE)
    vault_before = world.balance(world.vault.address)
    receipt = world.withdraw([w], [user])
    assert receipt["status"] == 1
    (event,) = world.vault.events.Withdrawn().process_receipt(receipt, errors=DISCARD)
    assert event["args"]["id"] == w.id and event["args"]["wallet"] == w.wallet
    assert event["args"]["to"] == user.hex and event["args"]["amount"] == 3 * ONE
    assert world.balance(user.address) == 3 * ONE
    assert world.balance(world.vault.address) == vault_before - 3 * ONE
    assert world.vault.functions.isPaid(w.id).call()
    revert = refused_withdrawal(world, [w], [usig(world, user, w)], world.node_sigs([w]))
    assert (revert.name, revert.args) == ("AlreadyPaid", (w.id,))


def test_several_withdrawals_share_one_transaction(world: VaultWorld) -> None:
    users = [Key.new() for _ in range(5)]
    ws = [world.withdrawal(u, (i + 1) * ONE) for i, u in enumerate(users)]
    receipt = world.withdraw(ws, users)
    assert len(world.vault.events.Withdrawn().process_receipt(receipt, errors=DISCARD)) == 5
    assert [world.balance(u.address) for u in users] == [(i + 1) * ONE for i in range(5)]


def test_a_reused_id_refuses_the_whole_batch(world: VaultWorld) -> None:
    users = [Key.new(), Key.new()]
    first = world.withdrawal(users[0], ONE)
    twin = world.withdrawal(users[1], ONE, id_=first.id)
    ws = [first, twin]
    sigs = [usig(world, u, w) for u, w in zip(users, ws, strict=True)]
    revert = refused_withdrawal(world, ws, sigs, world.node_sigs(ws))
    assert (revert.name, revert.args) == ("AlreadyPaid", (first.id,))


def test_ids_far_apart_each_pay_once(world: VaultWorld) -> None:
    user = Key.new()
    ids = [bytes(32), b"\xff" * 32, (255).to_bytes(32, "big"), (256).to_bytes(32, "big")]
    ws = [world.withdrawal(user, ONE, id_=i) for i in ids]
    world.withdraw(ws, [user] * 4)
    assert all(world.vault.functions.isPaid(i).call() for i in ids)
    assert not world.vault.functions.isPaid((257).to_bytes(32, "big")).call()


def test_window_limit(world: VaultWorld) -> None:
    user = Key.new()
    big = world.withdrawal(user, LIMIT - ONE)
    world.withdraw([big], [user])
    over = world.withdrawal(user, 2 * ONE)
    revert = refused_withdrawal(world, [over], [usig(world, user, over)], world.node_sigs([over]))
    assert (revert.name, revert.args) == (
        "WindowLimitExceeded",
        (world.token.address, 2 * ONE, ONE),
    )
    too_big = world.withdrawal(user, LIMIT + 1)
    revert = rejected(
        world.call([too_big], [usig(world, user, too_big)], world.node_sigs([too_big])),
        world.sender,
    )
    assert revert.name == "WindowLimitExceeded"
    advance(world.w3, WINDOW_S)
    later = world.withdrawal(user, 2 * ONE)
    world.withdraw([later], [user])
    assert world.balance(user.address) == LIMIT + ONE


def test_refused_withdrawals(world: VaultWorld) -> None:
    user, w = one(world)
    good_user = usig(world, user, w)
    good_nodes = world.node_sigs([w])
    a, b, c = sorted(world.nodes, key=lambda k: k.address)
    outsider = Key.new()
    cases: list[tuple[str, list[Withdrawal], list[bytes], list[bytes]]] = [
        ("NotTheUser", [w], [usig(world, outsider, w)], good_nodes),
        ("NotASigner", [w], [good_user], world.node_sigs([w], [a, outsider])),
        ("TooFewNodeSignatures", [w], [good_user], world.node_sigs([w], [a])),
        ("NodeSignaturesUnsorted", [w], [good_user], list(reversed(world.node_sigs([w], [a, b])))),
        ("NodeSignaturesUnsorted", [w], [good_user], world.node_sigs([w], [a]) * 2),
        ("InvalidSignature", [w], [b"\x01" * 65], good_nodes),
        ("InvalidSignature", [w], [good_user[:64]], good_nodes),
        ("BadBatchSize", [], [], good_nodes),
        ("SignatureCountMismatch", [w], [], good_nodes),
    ]
    # The user's signature for another chain id (or another vault) recovers someone else.
    other_chain = VaultDomain(world.domain.chain_id + 1, world.domain.vault)
    cases.append(("NotTheUser", [w], [usig(world, user, w, other_chain)], good_nodes))
    cases.append(("NotASigner", [w], [good_user], world.node_sigs([w], domain=other_chain)))
    # A high-s twin of a valid signature is refused (one encoding per signature).
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(good_user[32:64], "big")
    twin = good_user[:32] + (n - s).to_bytes(32, "big") + bytes((55 - good_user[64],))
    cases.append(("InvalidSignature", [w], [twin], good_nodes))
    for name, ws, user_sigs, node_sigs in cases:
        revert = (
            refused_withdrawal(world, ws, user_sigs, node_sigs)
            if ws
            else rejected(world.call(ws, user_sigs, node_sigs), world.sender)
        )
        assert revert.name == name, (name, revert)
    # Node signatures over a different batch than the one sent.
    other = world.withdrawal(user, ONE)
    revert = refused_withdrawal(world, [w], [good_user], world.node_sigs([other]))
    assert revert.name == "NotASigner"
    # Each withdrawal rule on its own: deadline, token, recipient.
    expired = world.withdrawal(user, ONE, deadline=world.now() - 1)
    revert = refused_withdrawal(
        world, [expired], [usig(world, user, expired)], world.node_sigs([expired])
    )
    assert (revert.name, revert.args) == ("WithdrawalExpired", (expired.id, expired.deadline))
    stray = deploy(world.w3, "BaasToken", [world.vault.address, 10**24], world.deployer)
    unregistered = world.withdrawal(user, ONE, token=stray.address)
    revert = refused_withdrawal(
        world, [unregistered], [usig(world, user, unregistered)], world.node_sigs([unregistered])
    )
    assert (revert.name, revert.args) == ("TokenNotRegistered", (stray.address,))
    assert stray.functions.balanceOf(world.vault.address).call() == 10**24
    nowhere = world.withdrawal(user, ONE, to=bytes(20))
    revert = refused_withdrawal(
        world, [nowhere], [usig(world, user, nowhere)], world.node_sigs([nowhere])
    )
    assert revert.name == "ZeroRecipient"
    # A batch over the bound.
    many = [world.withdrawal(user, 1) for _ in range(vault_py.WITHDRAWALS_PER_TX_MAX + 1)]
    revert = rejected(world.call(many, [good_user] * len(many), good_nodes), world.sender)
    assert revert.name == "BadBatchSize"
    # All three nodes also works (more than M), and the withdrawal is then paid.
    world.withdraw([w], [user], node_keys=[a, b, c])
    assert world.balance(user.address) == ONE


# -- roles -------------------------------------------------------------------------------------


def test_owner_actions_need_the_multisig_and_the_delay(world: VaultWorld) -> None:
    functions = world.vault.functions
    # Unpausing is the owner's (checked before the vault's state: not paused yet).
    assert rejected(functions.unpause(), world.guardians[0]).name == "OwnableUnauthorizedAccount"
    assert rejected(functions.pause(), world.stranger).name == "NotGuardian"
    send(functions.pause(), world.guardians[1])  # any one guardian, at once
    assert functions.paused().call()
    user, w = one(world)
    assert refused_withdrawal(world, [w], [usig(world, user, w)], world.node_sigs([w])).name == (
        "EnforcedPause"
    )
    # The deployer (the former admin), a guardian and an operator alone cannot unpause.
    for who in (world.deployer, world.guardians[0], world.operators[0]):
        revert = rejected(functions.unpause(), who)
        assert (revert.name, revert.args) == ("OwnableUnauthorizedAccount", (who,))
    for call in (
        functions.setTokenRule(world.token.address, True, 1, 1),
        functions.replaceSigners([world.deployer], 1),
        functions.setGuardian(world.stranger, True),
        functions.transferOwnership(world.deployer),
        functions.renounceOwnership(),
    ):
        assert rejected(call, world.deployer).name == "OwnableUnauthorizedAccount"
    # An operator cannot schedule on the timelock directly, only the multisig can (and cancel).
    timelock = world.stack.timelock
    for role in ("proposer", "canceller"):
        assert is_role_member(timelock, role, world.stack.multisig.address)
        assert not any(
            is_role_member(timelock, role, a) for a in (world.deployer, *world.operators)
        )
    direct = timelock.functions.schedule(world.vault.address, 0, b"", bytes(32), bytes(32), 86_400)
    assert rejected(direct, world.operators[0]).name == "AccessControlUnauthorizedAccount"
    execute, _ = timelocked(world, functions.unpause(), b"\x01" * 32)
    assert rejected(execute, world.stranger).name == "TimelockUnexpectedOperationState"
    advance(world.w3, world.stack.delay_s - 60)
    assert rejected(execute, world.stranger).name == "TimelockUnexpectedOperationState"
    advance(world.w3, 120)
    send(execute, world.stranger)  # anyone executes once the delay has passed
    assert not functions.paused().call()
    w2 = world.withdrawal(user, ONE)
    world.withdraw([w2], [user])
    assert world.balance(user.address) == ONE


def test_signer_rotation_through_the_timelock(world: VaultWorld) -> None:
    a, b, c = world.nodes
    new = Key.new()
    signers = sorted([a.hex, b.hex, new.hex], key=lambda x: int(x, 16))
    execute, _ = timelocked(world, world.vault.functions.replaceSigners(signers, 2), b"\x02" * 32)
    advance(world.w3, world.stack.delay_s + 1)
    send(execute, world.stranger)
    assert world.vault.functions.signers().call() == signers
    user, w = one(world)
    revert = refused_withdrawal(world, [w], [usig(world, user, w)], world.node_sigs([w], [a, c]))
    assert (revert.name, revert.args) == ("NotASigner", (c.hex,))
    world.withdraw([w], [user], node_keys=[new, a])
    assert world.balance(user.address) == ONE


def test_token_registration_and_limits_through_the_timelock(world: VaultWorld) -> None:
    partner = deploy(world.w3, "BaasToken", [world.depositor, 10**24], world.deployer)
    execute, _ = timelocked(
        world, world.vault.functions.setTokenRule(partner.address, True, 5 * ONE, 60), b"\x03" * 32
    )
    advance(world.w3, world.stack.delay_s + 1)
    send(execute, world.stranger)
    send(partner.functions.approve(world.vault.address, 10 * ONE), world.depositor)
    send(world.vault.functions.deposit(partner.address, 10 * ONE, WALLET), world.depositor)
    user = Key.new()
    over = world.withdrawal(user, 6 * ONE, token=partner.address)
    revert = refused_withdrawal(world, [over], [usig(world, user, over)], world.node_sigs([over]))
    assert (revert.name, revert.args) == (
        "WindowLimitExceeded",
        (partner.address, 6 * ONE, 5 * ONE),
    )
    ok = world.withdrawal(user, 5 * ONE, token=partner.address)
    world.withdraw([ok], [user])
    assert partner.functions.balanceOf(user.hex).call() == 5 * ONE


def test_multisig_rules(world: VaultWorld) -> None:
    multisig = world.stack.multisig
    functions = multisig.functions
    assert (
        rejected(functions.propose(world.vault.address, 0, b""), world.stranger).name
        == "NotOperator"
    )
    receipt = send(
        functions.propose(world.vault.address, 0, b"\x12\x34\x56\x78"), world.operators[0]
    )
    (proposed,) = multisig.events.Proposed().process_receipt(receipt, errors=DISCARD)
    pid = proposed["args"]["id"]
    revert = rejected(functions.approve(pid), world.operators[0])
    assert revert.name == "AlreadyApproved"
    revert = rejected(functions.approve(pid), world.operators[1])  # the call itself reverts
    assert revert.name == "CallFailed"
    assert rejected(functions.approve(pid + 1), world.operators[1]).name == "UnknownProposal"
    assert (
        rejected(functions.replaceOperators([world.stranger], 1), world.operators[0]).name
        == "NotSelf"
    )
    # Replacing the operators (through a proposal) kills older open proposals.
    ops = sorted([world.operators[0], world.stranger], key=lambda x: int(x, 16))
    replace = functions.replaceOperators(ops, 2)._encode_transaction_data()
    receipt = send(functions.propose(multisig.address, 0, replace), world.operators[0])
    (replacing,) = multisig.events.Proposed().process_receipt(receipt, errors=DISCARD)
    send(functions.approve(replacing["args"]["id"]), world.operators[2])
    assert functions.operators().call() == ops
    assert rejected(functions.approve(pid), world.stranger).name == "StaleProposal"
    assert rejected(functions.approve(pid), world.operators[1]).name == "NotOperator"


def test_constructor_refuses_bad_signer_sets(world: VaultWorld) -> None:
    a, b, _ = sorted(world.nodes, key=lambda k: k.address)
    for signers, threshold, name in (
        ([a.hex, b.hex], 3, "BadSigners"),
        ([a.hex, b.hex], 0, "BadSigners"),
        ([], 1, "BadSigners"),
        ([b.hex, a.hex], 1, "SignersUnsorted"),
        ([a.hex, a.hex], 1, "SignersUnsorted"),
    ):
        with pytest.raises(ChainRejected) as caught:
            deploy(world.w3, "BaasVault", [world.deployer, signers, threshold, []], world.deployer)
        assert caught.value.revert is not None and caught.value.revert.name == name


def test_checksummed_addresses_roundtrip() -> None:
    key = Key.new()
    assert Withdrawal(bytes(32), key.address, 1, key.address, key.address, bytes(16), 0).as_abi()[
        1
    ] == (Web3.to_checksum_address(key.address))


def test_owner_refusals_surface_through_the_timelock(world: VaultWorld) -> None:
    functions = world.vault.functions
    renounce, _ = timelocked(world, functions.renounceOwnership(), b"\x04" * 32)
    bad_rule, _ = timelocked(
        world, functions.setTokenRule(world.token.address, True, 1, 0), b"\x05" * 32
    )
    guardian, _ = timelocked(world, functions.setGuardian(world.stranger, True), b"\x06" * 32)
    advance(world.w3, world.stack.delay_s + 1)
    assert rejected(renounce, world.stranger).name == "RenounceDisabled"
    revert = rejected(bad_rule, world.stranger)
    assert (revert.name, revert.args) == ("BadTokenRule", (world.token.address,))
    assert functions.owner().call() == world.stack.timelock.address
    send(guardian, world.stranger)
    send(functions.pause(), world.stranger)  # the new guardian pauses at once
    assert functions.paused().call()


def test_a_zero_amount_withdrawal_is_refused(world: VaultWorld) -> None:
    user, w = one(world)
    object.__setattr__(w, "amount", 0)  # the Python type refuses 0; so must the contract
    assert world.vault.functions.withdrawalDigest(w.as_abi()).call() == w.digest(world.domain)
    revert = refused_withdrawal(world, [w], [usig(world, user, w)], world.node_sigs([w]))
    assert revert.name == "ZeroAmount"
