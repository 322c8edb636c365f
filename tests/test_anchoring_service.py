"""The anchoring service (the asyncio adapter) against real chains: eth-tester and anvil.

The log is an in-memory stand-in (entries applied at once through :class:`AnchorLog`, leader
time from the wall clock) and the Merkle log a size with derived roots: what is under test is
the adapter -- signing, the one chain lock, broadcasting, receipts, reorgs -- on a real chain.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chains import TestChain, chain_fixture  # noqa: F401

from node.anchoring.config import AnchoringSettings, anchoring_from_table
from node.anchoring.service import AnchorService
from node.anchoring.state import (
    ANCHOR_RESULT,
    FINAL,
    INTENT,
    AnchorLog,
    batch,
    counters,
    progress_of,
)
from node.consensus.state_machine import AppEntry, ApplyOutcome, LogPosition, StateView
from node.errors import ConfigError, OperationFailed

SIZE_KEY = b"ml/size"


def fake_root(view: StateView, size: int) -> bytes | None:
    raw = view.get(SIZE_KEY)
    current = int.from_bytes(raw, "big") if raw else 0
    if not 1 <= size <= current:
        return None
    return hashlib.sha256(b"root" + size.to_bytes(8, "big")).digest()


def fake_size(view: StateView) -> int:
    raw = view.get(SIZE_KEY)
    return int.from_bytes(raw, "big") if raw else 0


class MemoryLog:
    """Proposer and applied state in one: every proposal applies at once."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.machine = AnchorLog(fake_root)
        self.index = 0
        self.refuse: set[str] = set()  # entry types whose proposals are lost

    def add_leaves(self, count: int) -> None:
        size = fake_size(self) + count
        self.data[SIZE_KEY] = size.to_bytes(8, "big")

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def state_get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def can_propose(self) -> bool:
        return True

    async def propose(self, entry: AppEntry, *, timeout_s: float) -> ApplyOutcome:
        if entry.type in self.refuse:
            raise OperationFailed("the proposal was lost", code="proposal_lost")
        self.index += 1
        position = LogPosition(self.index, 1, time.time_ns() // 1_000_000)
        outcome = self.machine.apply(entry, position, self)
        for key, value in outcome.writes:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        return outcome


def settings(chain: TestChain, **overrides: Any) -> AnchoringSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "rpc_url": chain.url or "embedded",
        "chain_id": chain.anchors.chain_id(),
        "contract": chain.contract,
        "anchor_interval_s": 60.0,
        "anchor_batch_max": 10,
        "confirmations": 2,
        "lease_ttl_s": 1.5,
        "tick_s": 0.02,
        "poll_interval_s": 0.05,
        "rebroadcast_interval_s": 0.5,
        "retry_backoff_base_s": 0.05,
        "retry_backoff_max_s": 0.2,
        "lease_acquire_jitter_s": 0.01,
        "reorg_window_blocks": 2,
    }
    values.update(overrides)
    result = AnchoringSettings(**values)
    result.validate()
    return result


def service(chain: TestChain, memory: MemoryLog, node_id: str, **overrides: Any) -> AnchorService:
    return AnchorService(
        node_id=node_id,
        settings=settings(chain, **overrides),
        proposer=memory,
        store=memory,
        chain=chain.anchors,
        sender=bytes.fromhex(chain.key.address[2:]),
        tree_size=fake_size,
        root_at=fake_root,
    )


def mine(chain: TestChain, blocks: int = 1) -> None:
    for _ in range(blocks):
        chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


async def run_until(
    services: list[AnchorService],
    done: Callable[[], bool],
    *,
    chain: TestChain,
    timeout_s: float = 20.0,
    mine_every: int = 5,
) -> None:
    """Tick the services (real time) until ``done``; a block every few ticks."""
    deadline = time.monotonic() + timeout_s
    turn = 0
    while not done():
        assert time.monotonic() < deadline, "not done in time"
        for s in services:
            s.tick_once()
            await s.settle()
        turn += 1
        if mine_every and turn % mine_every == 0:
            mine(chain)
        await asyncio.sleep(0.02)


def final_through(memory: MemoryLog) -> int:
    return progress_of(memory).final_through


async def test_leaves_are_anchored_one_transaction_per_batch(chain: TestChain) -> None:
    memory = MemoryLog()
    node = service(chain, memory, "n1")
    memory.add_leaves(25)  # over anchor_batch_max: one batch of 25, one transaction
    await run_until([node], lambda: final_through(memory) == 1, chain=chain)
    memory.add_leaves(3)
    await run_until([node], lambda: final_through(memory) == 1, chain=chain, timeout_s=1)
    assert progress_of(memory).next_batch_id == 2  # 3 < 10 and the interval is 60 s
    b1 = batch(memory, 1)
    assert b1 is not None and b1.state == FINAL and b1.tree_size == 25
    on_chain = chain.anchors.anchor_of(1)
    assert (on_chain.tree_size, on_chain.root) == (25, b1.root)
    assert chain.anchors.next_batch_id() == 2
    assert chain.anchors.account_nonce() == 1  # the key sent exactly one transaction
    status = node.status()
    assert status["final_through"] == 1 and status["lease_holder"] == "n1"
    assert status["counters"]["size_triggered"] == 1
    await node.stop()
    assert memory.state_get(b"an/lease") is not None and status["driver"]["holding"]


async def test_a_holder_lost_after_sending_is_followed_by_the_same_transaction(
    chain: TestChain,
) -> None:
    memory = MemoryLog()
    first = service(chain, memory, "n1")
    memory.refuse.add(ANCHOR_RESULT)  # n1 sends, then never records the result (it "dies")
    memory.add_leaves(12)
    await run_until([first], lambda: chain.anchors.next_batch_id() == 2, chain=chain, mine_every=0)
    sent = batch(memory, 1)
    assert sent is not None and sent.state == INTENT and sent.holder == "n1"
    # n1 is gone (no release); n2 takes the lease once it expires and finishes the batch.
    memory.refuse.clear()
    second = service(chain, memory, "n2")
    await run_until([second], lambda: final_through(memory) == 1, chain=chain)
    landed = batch(memory, 1)
    assert landed is not None and landed.tx_hash == sent.tx_hash and landed.attempt == 0
    assert chain.anchors.account_nonce() == 1  # no second transaction
    assert counters(memory).leases_granted == 2
    await second.stop()


async def test_a_reverted_block_is_not_final_and_is_anchored_again(chain: TestChain) -> None:
    memory = MemoryLog()
    node = service(chain, memory, "n1", confirmations=3)
    snapshot = chain.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    memory.add_leaves(10)
    await run_until(
        [node], lambda: progress_of(memory).included_through == 1, chain=chain, mine_every=0
    )
    included = batch(memory, 1)
    assert included is not None and included.inclusion is not None
    chain.w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]
    assert chain.anchors.next_batch_id() == 1  # the anchor is gone from the chain
    await run_until([node], lambda: counters(memory).reanchors == 1, chain=chain, mine_every=0)
    back = batch(memory, 1)
    assert back is not None and back.state != FINAL and final_through(memory) == 0
    await run_until([node], lambda: final_through(memory) == 1, chain=chain)
    landed = batch(memory, 1)
    assert landed is not None and landed.inclusion is not None
    assert landed.tx_hash == included.tx_hash  # the same transaction, mined again
    assert chain.anchors.anchor_of(1).tree_size == 10
    await node.stop()


async def test_a_wrong_chain_id_refuses_to_start(chain: TestChain) -> None:
    memory = MemoryLog()
    node = service(chain, memory, "n1", chain_id=chain.anchors.chain_id() + 1)
    with pytest.raises(ConfigError, match="chain_id"):
        await node.start()


def test_settings_are_validated() -> None:
    good = {"enabled": True, "rpc_url": "http://127.0.0.1:8545", "chain_id": 31337}
    address = "0x" + "ab" * 20
    AnchoringSettings(**good, contract=address).validate()
    for bad, message in (
        ({"contract": "0x12"}, "contract"),
        ({"contract": address, "rpc_url": "ftp://x"}, "rpc_url"),
        ({"contract": address, "confirmations": 0}, "confirmations"),
        ({"contract": address, "anchor_interval_s": float("nan")}, "anchor_interval_s"),
        ({"contract": address, "retry_backoff_max_s": 0.1}, "retry_backoff_max_s"),
        ({"contract": address, "lease_ttl_s": 0.5}, "lease_ttl_s"),
        ({"contract": address, "anchor_batch_max": 1.5}, "anchor_batch_max"),
        ({"contract": address, "chain_id": 0}, "chain_id"),
    ):
        with pytest.raises(ConfigError, match=message):
            AnchoringSettings(**{**good, **bad}).validate()
    AnchoringSettings().validate()  # disabled: no chain needed


def test_settings_from_a_table(tmp_path: Path) -> None:
    table = {"enabled": True, "rpc_url": "embedded", "chain_id": 1, "contract": "0x" + "01" * 20}
    built = anchoring_from_table({**table, "key_file": "chain.key"}, tmp_path)
    assert built.key_file == tmp_path / "chain.key" and built.anchors
    assert built.driver_settings("n1", None).anchor_interval_ms == 60_000
    with pytest.raises(ConfigError, match="unknown keys: interval"):
        anchoring_from_table({**table, "interval": 5}, tmp_path)
