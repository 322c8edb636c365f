"""Idle tick entries from the leader's adapter (node/replication/log.py), on a real LevelDB.

Until the ledger's machine (which owns ``ledger.tick`` and log feature 6) is merged, the test
builds its dispatcher with feature_version_max 6 and a stand-in machine that owns the type.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import pytest

from business.ledger.ops_entry import LEDGER_FEATURE_VERSION, LEDGER_TICK
from node.consensus.config import RaftConfig
from node.consensus.state_machine import (
    FEATURE_ENTRY,
    AppEntry,
    ApplyOutcome,
    Dispatcher,
    LogPosition,
    StateView,
)
from node.consensus.types import default_membership
from node.replication.durable import DurableRaftStorage
from node.replication.log import ReplicatedLog

pytestmark = pytest.mark.timeout(60)
INTERVAL_MS = 200


@dataclass
class TickMachine:
    """Stands in for the ledger: owns ``ledger.tick`` and a chatty ``test.op``; records every
    application with its log time."""

    prefix: bytes = b"tk/"
    entry_types: Mapping[str, int] = field(
        default_factory=lambda: {LEDGER_TICK: LEDGER_FEATURE_VERSION, "test.op": 1}
    )
    ticks: list[LogPosition] = field(default_factory=list)
    ops: list[LogPosition] = field(default_factory=list)

    def apply(self, entry: AppEntry, position: LogPosition, view: StateView) -> ApplyOutcome:
        (self.ticks if entry.type == LEDGER_TICK else self.ops).append(position)
        return ApplyOutcome("applied")


@pytest.fixture
async def single(tmp_path: Path) -> AsyncIterator[tuple[ReplicatedLog, TickMachine]]:
    machine = TickMachine()
    log = ReplicatedLog(
        raft=RaftConfig(node_id="solo", election_ticks=10, heartbeat_ticks=2),
        storage=DurableRaftStorage(tmp_path / "raft"),
        dispatcher=Dispatcher([machine], feature_version_max=LEDGER_FEATURE_VERSION),
        send=lambda _peer, _payload: True,
        initial_membership=default_membership(["solo"]),
        tick_s=0.02,
        inbox_frames_max=64,
        proposals_pending_max=64,
        log_tick_interval_ms=INTERVAL_MS,
    )
    await log.start()
    try:
        for _ in range(200):
            if log.status().role == "leader":
                break
            await asyncio.sleep(0.02)
        yield log, machine
    finally:
        await log.stop()


async def test_no_tick_before_the_log_enables_feature_6(
    single: tuple[ReplicatedLog, TickMachine],
) -> None:
    log, machine = single
    await log.propose(
        [AppEntry(FEATURE_ENTRY, {"version": LEDGER_FEATURE_VERSION - 1})], timeout_s=5
    )
    await asyncio.sleep(4 * INTERVAL_MS / 1000)
    assert machine.ticks == [] and log.log_ticks == 0


async def test_an_idle_leader_ticks_after_the_interval_and_log_time_advances(
    single: tuple[ReplicatedLog, TickMachine],
) -> None:
    log, machine = single
    await log.propose([AppEntry(FEATURE_ENTRY, {"version": LEDGER_FEATURE_VERSION})], timeout_s=5)
    enabled_ms = log.status().log_time_ms
    await asyncio.sleep(6 * INTERVAL_MS / 1000)
    times = [p.leader_time_ms for p in machine.ticks]
    assert 2 <= len(times) <= 7, times  # about one per interval, not one per loop turn
    assert times == sorted(times) and times[0] >= enabled_ms + INTERVAL_MS
    # Spaced by about the interval (the loop checks once per 20 ms tick; a loaded box is late,
    # never early).
    assert all(b - a >= INTERVAL_MS for a, b in pairwise(times))
    assert log.status().log_time_ms >= times[-1] > enabled_ms
    assert log.log_time_stats()["log_ticks"] == len(times)


async def test_no_tick_while_entries_keep_committing(
    single: tuple[ReplicatedLog, TickMachine],
) -> None:
    log, machine = single
    await log.propose([AppEntry(FEATURE_ENTRY, {"version": LEDGER_FEATURE_VERSION})], timeout_s=5)
    await asyncio.sleep(2 * INTERVAL_MS / 1000)  # let the idle ticks start
    busy_from = len(machine.ticks)
    assert busy_from >= 1
    loop = asyncio.get_running_loop()
    end = loop.time() + 6 * INTERVAL_MS / 1000
    while loop.time() < end:  # an entry every quarter interval: the leader is never idle
        await log.propose([AppEntry("test.op", {})], timeout_s=5)
        await asyncio.sleep(INTERVAL_MS / 4000)
    first_op, last_op = machine.ops[0], machine.ops[-1]
    # A tick decided in the idle phase may still land just after the first op (one tick is
    # in flight at most): only ticks stamped an interval into the busy phase count.
    ticks_while_busy = [
        p
        for p in machine.ticks
        if first_op.index < p.index < last_op.index
        and p.leader_time_ms >= first_op.leader_time_ms + INTERVAL_MS
    ]
    # A tick among them is a fault only if the leader was not idle for an interval before it
    # (on a loaded box one proposal's round trip can itself exceed the interval: then the
    # leader rightly ticks). Leader-stamped times, one clock: the check cannot be fooled.
    for tick in ticks_while_busy:
        before = max((op for op in machine.ops if op.index < tick.index), key=lambda p: p.index)
        idle_ms = tick.leader_time_ms - before.leader_time_ms
        assert idle_ms >= INTERVAL_MS - 20, (tick, before)
    assert len(ticks_while_busy) <= len(machine.ops) // 10, ticks_while_busy  # mostly busy
    assert len(machine.ops) >= 10
