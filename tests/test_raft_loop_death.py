"""A node whose consensus loop dies exits loudly instead of running on without consensus."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node.consensus.config import RaftConfig
from node.consensus.record_index import RecordIndex
from node.consensus.state_machine import Dispatcher
from node.consensus.types import default_membership
from node.errors import InvariantViolation
from node.main import _until_stopped_or_dead
from node.replication.durable import DurableRaftStorage
from node.replication.log import ReplicatedLog

pytestmark = pytest.mark.timeout(30)


def one_node_log(directory: Path) -> tuple[ReplicatedLog, DurableRaftStorage]:
    storage = DurableRaftStorage(directory)
    log = ReplicatedLog(
        raft=RaftConfig(node_id="n1", election_ticks=10, heartbeat_ticks=1),
        storage=storage,
        dispatcher=Dispatcher([RecordIndex()], feature_version_max=1),
        send=lambda _peer, _payload: None,
        initial_membership=default_membership(["n1"]),
        tick_s=0.01,
        inbox_frames_max=16,
        proposals_pending_max=16,
    )
    return log, storage


async def test_a_dead_raft_loop_stops_the_node_with_its_reason(tmp_path: Path) -> None:
    log, storage = one_node_log(tmp_path / "raft")
    await log.start()
    try:
        node = log._require_node()

        def broken_tick(_now_ms: int) -> None:
            raise RuntimeError("disk on fire")

        node.tick = broken_tick  # type: ignore[method-assign]
        with pytest.raises(InvariantViolation, match="raft loop died: RuntimeError: disk on fire"):
            await asyncio.wait_for(_until_stopped_or_dead(asyncio.Event(), log), 5)
        assert isinstance(log.died, InvariantViolation)
    finally:
        await log.stop()  # a dead loop does not raise again on the way out
        storage.close()


async def test_a_stop_signal_returns_quietly_while_the_loop_runs(tmp_path: Path) -> None:
    log, storage = one_node_log(tmp_path / "raft")
    await log.start()
    stop = asyncio.Event()
    try:
        asyncio.get_running_loop().call_later(0.2, stop.set)
        await asyncio.wait_for(_until_stopped_or_dead(stop, log), 5)
        assert log.died is None
    finally:
        await log.stop()
        storage.close()
    assert log.died is None  # stop() cancels the loop: not a death
