"""The deposit watcher's adapter on eth-tester and a real anvil: real vault deposits credited
after their confirmations, reorganised (``evm_snapshot``/``evm_revert``) before them -> nothing,
after them -> an alarm; another chain id refused at start; a token the node did not register
refused with its reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import chains
import pytest
from vaults import VaultWorld, vault_world
from web3 import Web3

from business.identity.ids import Mode
from node.anchoring.chain import ChainMisconfigured, ChainUnavailable, connect_web3
from node.chain.contracts import send
from node.chain.deposit_watch import DepositWatcher, Web3DepositReader
from node.chain.deposits import (
    Alarm,
    AlarmKind,
    CreditDeposit,
    Cursor,
    Decision,
    DepositKey,
    DepositSettings,
    DepositTracker,
    RefusalReason,
    Refused,
)

WALLET = bytes.fromhex("42" * 16)
CONFIRMATIONS = 3


@pytest.fixture(name="world", params=["eth-tester", "anvil"])
def world_fixture(request: pytest.FixtureRequest) -> Iterator[VaultWorld]:
    if request.param == "eth-tester":
        yield vault_world(chains.embedded_chain_web3())
        return
    with chains.running_anvil() as node:
        yield vault_world(connect_web3(node.url))


@dataclass
class Credited:
    keys: set[DepositKey] = field(default_factory=set)

    def is_credited(self, key: DepositKey) -> bool:
        return key in self.keys


@dataclass
class Harness:
    world: VaultWorld
    settings: DepositSettings
    watcher: DepositWatcher
    handed: list[Decision]
    state: Credited

    def poll(self) -> list[Decision]:
        return asyncio.run(self.watcher.poll())

    def mine(self, blocks: int) -> None:
        for _ in range(blocks):
            self.rpc("evm_mine", [])

    def rpc(self, method: str, params: list[Any]) -> Any:
        answer = self.world.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        assert "error" not in answer, answer
        return answer["result"]

    def deposit(self, amount: int) -> DepositKey:
        world = self.world
        send(world.token.functions.approve(world.vault.address, amount), world.depositor)
        receipt = send(
            world.vault.functions.deposit(world.token.address, amount, WALLET), world.depositor
        )
        (entry,) = receipt["logs"][-1:]
        return DepositKey(
            self.settings.chain_id, bytes(receipt["transactionHash"]), int(entry["logIndex"])
        )


def settings_for(world: VaultWorld, **overrides: Any) -> DepositSettings:
    base = DepositSettings(
        chain_id=int(world.w3.eth.chain_id),
        vault=bytes.fromhex(world.vault.address[2:]),
        mode=Mode.TEST,
        tokens={bytes.fromhex(world.token.address[2:]): 2},
        confirmations=CONFIRMATIONS,
        reorg_depth_max=16,
        log_range_blocks_max=8,
    )
    return replace(base, **overrides)


def harness(world: VaultWorld, **overrides: Any) -> Harness:
    settings = settings_for(world, **overrides)
    state = Credited()  # the replicated state: a credit "commits" when a test adds its key
    latest = world.w3.eth.get_block("latest")
    tracker = DepositTracker(settings, Cursor(int(latest["number"]), bytes(latest["hash"])), state)
    handed: list[Decision] = []

    async def sink(decisions: list[Decision]) -> None:
        handed.extend(decisions)

    reader = Web3DepositReader(world.w3, settings)
    watcher = DepositWatcher(tracker, reader, sink, poll_interval_s=0.1, rounds_max=100)
    return Harness(world, settings, watcher, handed, state)


def credited(decisions: list[Decision]) -> list[DepositKey]:
    return [d.deposit.key for d in decisions if isinstance(d, CreditDeposit)]


def test_deposits_credit_after_confirmations_and_reorgs_never_reverse(world: VaultWorld) -> None:
    h = harness(world)
    # 1. A deposit is credited once its block has two more on top (3 confirmations).
    key = h.deposit(5 * 10**18)
    assert credited(h.poll()) == []
    h.mine(CONFIRMATIONS - 2)
    assert credited(h.poll()) == []
    h.mine(1)
    (credit,) = [d for d in h.poll() if isinstance(d, CreditDeposit)]
    assert credit.deposit.key == key
    assert credit.deposit.wallet == WALLET and credit.deposit.amount == 5 * 10**18
    assert credit.deposit.sender == bytes.fromhex(world.depositor[2:])
    h.mine(3)
    assert h.poll() == []
    assert h.watcher.tracker.pending() == 1  # asked, not committed
    h.state.keys.add(key)
    assert h.watcher.tracker.pending() == 0
    # 2. Reorganised away before its confirmations: nothing.
    snapshot = h.rpc("evm_snapshot", [])
    h.deposit(7)
    h.poll()
    assert h.watcher.tracker.pending() == 1
    h.rpc("evm_revert", [snapshot])
    h.mine(CONFIRMATIONS + 2)
    assert h.poll() == []
    assert h.watcher.tracker.stats.orphaned_unconfirmed == 1
    assert h.watcher.tracker.pending() == 0
    # 3. Reorganised away after its credit: an alarm, no reversal, no second credit.
    snapshot = h.rpc("evm_snapshot", [])
    late = h.deposit(9)
    h.mine(CONFIRMATIONS - 1)
    assert credited(h.poll()) == [late]
    h.rpc("evm_revert", [snapshot])
    h.mine(CONFIRMATIONS + 2)
    decisions = h.poll()
    alarms = [d for d in decisions if isinstance(d, Alarm)]
    assert [(a.kind, a.deposit and a.deposit.key) for a in alarms] == [
        (AlarmKind.CREDITED_DEPOSIT_ORPHANED, late)
    ]
    assert credited(decisions) == []
    assert h.watcher.status()["alarms"] == 1
    assert credited(h.handed) == [key, late]
    assert h.watcher.tracker.tip.hash == bytes(world.w3.eth.get_block("latest")["hash"])


def test_a_token_the_node_did_not_register_is_refused(world: VaultWorld) -> None:
    h = harness(world, tokens={b"\x0c" * 20: 2})
    h.deposit(11)
    h.mine(CONFIRMATIONS)
    decisions = h.poll()
    assert [type(d) for d in decisions] == [Refused]
    assert isinstance(decisions[0], Refused)
    assert decisions[0].reason == RefusalReason.TOKEN_NOT_REGISTERED
    assert h.watcher.status()["refused"] == 1


def test_a_provider_on_another_chain_id_is_refused(world: VaultWorld) -> None:
    settings = settings_for(world, chain_id=int(world.w3.eth.chain_id) + 1)
    with pytest.raises(ChainMisconfigured):
        Web3DepositReader(world.w3, settings)


def test_long_catch_up_reads_bounded_ranges(world: VaultWorld) -> None:
    h = harness(world, log_range_blocks_max=2)
    keys = [h.deposit(n + 1) for n in range(3)]  # six blocks: approve + deposit each
    h.mine(CONFIRMATIONS)
    assert credited(h.poll()) == keys
    assert Web3.to_checksum_address(h.settings.vault) == world.vault.address


def test_the_loop_counts_chain_errors_and_goes_on() -> None:
    world = vault_world(chains.embedded_chain_web3())
    h = harness(world)

    class Down(Web3DepositReader):
        def head(self) -> int:
            raise ChainUnavailable("eth_blockNumber: refused")

    h.watcher._reader = Down(world.w3, h.settings)

    async def run_briefly() -> None:
        task = asyncio.create_task(h.watcher.run())
        await asyncio.sleep(0.35)
        task.cancel()

    asyncio.run(run_briefly())
    assert h.watcher.chain_errors >= 2
    assert h.watcher.status()["chain_errors"] == h.watcher.chain_errors
    families = {f.name: f.read() for f in h.watcher.stat_families()}
    assert families["deposits_halted"] == 0 and families["deposits_alarms_total"] == 0
