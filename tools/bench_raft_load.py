"""The replica and load side of ``baas-bench-raft``: one replica, and the proposers at the leader.

A :class:`Replica` is what a node runs for consensus and nothing more: a libp2p host on
loopback (no shard service), the fsynced Raft LevelDB and the record index as state machine,
built with the node's default ``[raft]`` settings (:class:`node.config.RaftSettings`).

:func:`drive` runs one :class:`Case` at the leader: a closed loop (``concurrency`` proposers,
``batch`` entries per proposal, for ``seconds``) or an open loop (``rate_per_s`` entries/s, one
entry per proposal, latency counted from each proposal's *scheduled* time so a slow leader
cannot hide behind a late sender). Latency is ``propose()`` to applied on the leader, i.e.
committed by a quorum (every voter fsyncs before acknowledging) and applied.

:func:`replica_process` is the body of one replica process in ``--procs`` mode: it opens its
replica and answers the parent's commands on a pipe (status, drive a case, stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from node import runtime
from node.config import ClusterMember, NodeLimits, NodeTimeouts, RaftSettings
from node.consensus.record_index import IndexProposal, RecordIndex
from node.consensus.state_machine import AppEntry, Dispatcher
from node.consensus.types import default_membership
from node.errors import BaasError, NotLeader
from node.logs import configure_logging
from node.p2p.identity import peer_id_of_seed
from node.p2p.messages import ErrorReply, Message
from node.p2p.service import P2PNode
from node.replication.durable import DurableRaftStorage
from node.replication.log import ReplicatedLog, core_config
from tools.bench_stats import latency_summary_ms

__all__ = [
    "Case",
    "Replica",
    "ReplicaSpec",
    "drive",
    "leader_of",
    "raft_status",
    "replica_process",
]

SHARD_NODES = ("n1", "n2", "n3", "n4", "n5")
FEATURE_VERSION_MAX = 1  # what node/main.py runs
PROPOSE_TIMEOUT_S = 10.0
PACED_INFLIGHT_MAX = 4096  # open-loop proposals waiting at once (below proposals_pending_max)
RECORD_NUMBERS_PER_CASE = 10**9  # each case numbers its records from its own block


class _NoShards:
    """Shard traffic is not part of this bench (runs on the p2p layer's trio thread)."""

    async def serve(self) -> None:
        await trio.sleep_forever()

    async def handle(self, message: Message, from_peer: str) -> Message:
        return ErrorReply("unsupported_request", "this bench serves no shards")


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """Replica ``index`` of a group: every replica's identity seed and loopback port."""

    index: int
    seeds: tuple[bytes, ...]
    ports: tuple[int, ...]
    directory: Path  # the group's directory: this replica uses <directory>/r<index>

    def members(self) -> list[ClusterMember]:
        return [
            ClusterMember(
                f"r{i}", peer_id_of_seed(seed), f"/ip4/127.0.0.1/tcp/{port}", "127.0.0.1:1"
            )
            for i, (seed, port) in enumerate(zip(self.seeds, self.ports, strict=True))
        ]


@dataclass(frozen=True, slots=True)
class Case:
    """One measurement: closed loop when ``rate_per_s`` is 0, else open loop at that rate."""

    voters: int
    batch: int
    concurrency: int
    seconds: float
    rate_per_s: float = 0.0
    number: int = 0  # the case's position in the run: keeps record ids distinct across cases

    @property
    def kind(self) -> str:
        return "paced" if self.rate_per_s > 0 else "closed"


class Replica:
    def __init__(self, p2p: P2PNode, log: ReplicatedLog, storage: DurableRaftStorage) -> None:
        self.p2p = p2p
        self.log = log
        self.storage = storage

    @classmethod
    async def open(cls, spec: ReplicaSpec) -> Replica:
        settings = RaftSettings()
        members = spec.members()
        me = members[spec.index]
        storage = DurableRaftStorage(spec.directory / me.name)
        holder: list[ReplicatedLog] = []  # the p2p inbox needs the log, the log the p2p host
        p2p = P2PNode(
            identity_seed=spec.seeds[spec.index],
            listen_addr=me.p2p_addr,
            members=members,
            limits=NodeLimits(),
            timeouts=NodeTimeouts(),
            handler=_NoShards(),
            raft_inbox=lambda peer, payload: holder[0].deliver(peer, payload),
        )
        log = ReplicatedLog(
            raft=core_config(me.peer_id, settings),
            storage=storage,
            dispatcher=Dispatcher([RecordIndex()], feature_version_max=FEATURE_VERSION_MAX),
            send=p2p.send_raft,
            initial_membership=default_membership(m.peer_id for m in members),
            tick_s=settings.tick_s,
            inbox_frames_max=settings.inbox_frames_max,
            proposals_pending_max=settings.proposals_pending_max,
        )
        holder.append(log)
        await log.start()
        await p2p.start()
        return cls(p2p, log, storage)

    async def close(self) -> None:
        await self.log.stop()
        await self.p2p.stop()
        self.storage.close()


def raft_status(log: ReplicatedLog) -> dict[str, Any]:
    """The replica's role, term, leader and indexes (plain data: it crosses a pipe)."""
    return asdict(log.status())


def _entry(number: int, term: int) -> AppEntry:
    return IndexProposal(
        record_id=number.to_bytes(32, "big"),
        content_hash=bytes(32),
        k=3,
        n=5,
        shard_nodes=SHARD_NODES,
        membership_epoch=1,
        owner="bench",
        body_fingerprint=bytes(32),
        expiry_term=term,
        expiry_max_index=10**12,
    ).to_entry()


class _Tally:
    """What a case's proposers saw: latencies, entries committed, errors by code."""

    def __init__(self, case: Case, term: int) -> None:
        self.latencies_s: list[float] = []
        self.committed = 0
        self.errors: Counter[str] = Counter()
        self.send_lag_s: list[float] = []
        self._numbers: Iterator[int] = iter(
            range(case.number * RECORD_NUMBERS_PER_CASE + 1, 10**15)
        )
        self._term = term

    def entries(self, count: int) -> list[AppEntry]:
        return [_entry(next(self._numbers), self._term) for _ in range(count)]

    async def propose(self, log: ReplicatedLog, entries: list[AppEntry], since: float) -> bool:
        """One proposal; False when this node is no longer the leader (stop proposing)."""
        try:
            await log.propose(entries, timeout_s=PROPOSE_TIMEOUT_S)
        except NotLeader:
            self.errors["not_leader"] += len(entries)
            return False
        except BaasError as exc:
            self.errors[exc.code] += len(entries)
            return True
        except TimeoutError:
            self.errors["timeout"] += len(entries)
            return True
        self.latencies_s.append(time.perf_counter() - since)
        self.committed += len(entries)
        return True


async def _closed_loop(log: ReplicatedLog, case: Case, tally: _Tally) -> None:
    end = time.monotonic() + case.seconds

    async def proposer() -> None:
        while time.monotonic() < end:
            if not await tally.propose(log, tally.entries(case.batch), time.perf_counter()):
                return

    await asyncio.gather(*(proposer() for _ in range(case.concurrency)))


async def _open_loop(log: ReplicatedLog, case: Case, tally: _Tally) -> None:
    """One proposal of ``case.batch`` entries every ``batch / rate`` seconds."""
    interval_s = case.batch / case.rate_per_s
    sends = max(1, round(case.seconds / interval_s))
    slots = asyncio.Semaphore(PACED_INFLIGHT_MAX)
    tasks: set[asyncio.Task[None]] = set()

    async def send(entries: list[AppEntry], due: float) -> None:
        try:
            await tally.propose(log, entries, due)
        finally:
            slots.release()

    origin = time.perf_counter()
    for i in range(sends):
        due = origin + i * interval_s
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        tally.send_lag_s.append(max(0.0, time.perf_counter() - due))
        task = asyncio.create_task(send(tally.entries(case.batch), due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


async def drive(log: ReplicatedLog, case: Case) -> dict[str, Any]:
    """Run ``case`` at ``log`` (the leader) and return its result."""
    before = log.status()
    tally = _Tally(case, before.term)
    cpu_started = time.process_time()
    began = time.monotonic()
    if case.kind == "paced":
        await _open_loop(log, case, tally)
    else:
        await _closed_loop(log, case, tally)
    elapsed_s = max(time.monotonic() - began, 1e-6)
    after = log.status()
    result: dict[str, Any] = {
        "voters": case.voters,
        "kind": case.kind,
        "batch": case.batch,
        "concurrency": case.concurrency if case.kind == "closed" else None,
        "rate_target_per_s": case.rate_per_s if case.kind == "paced" else None,
        "seconds": round(elapsed_s, 3),
        "entries": tally.committed,
        "entries_per_s": round(tally.committed / elapsed_s, 1),
        "proposals": len(tally.latencies_s),
        "latency_ms": latency_summary_ms(tally.latencies_s),
        "errors": dict(sorted(tally.errors.items())),
        "leader_term_start": before.term,
        "leader_term_end": after.term,
        # CPU of the process the proposers ran in: in process, that is every replica's
        "proposer_process_cores": round((time.process_time() - cpu_started) / elapsed_s, 3),
    }
    if case.kind == "paced":
        result["send_lag_ms"] = latency_summary_ms(tally.send_lag_s)
    return result


def leader_of(reports: list[dict[str, Any]]) -> int | None:
    """The replica that leads in a term every replica has reached (None: not settled yet)."""
    leaders = [i for i, report in enumerate(reports) if report["role"] == "leader"]
    if len(leaders) != 1:
        return None
    term = reports[leaders[0]]["term"]
    return leaders[0] if all(report["term"] == term for report in reports) else None


# ---------------------------------------------------------------- one replica per process


async def _serve(connection: Any, spec: ReplicaSpec) -> None:
    replica = await Replica.open(spec)
    runtime.tune_gc()  # as a node does once it has started
    try:
        connection.send(("ready", None))
        while True:
            command, argument = await asyncio.to_thread(connection.recv)
            if command == "stop":
                break
            try:
                if command == "status":
                    reply: Any = raft_status(replica.log)
                elif command == "drive":
                    reply = await drive(replica.log, argument)
                else:
                    raise ValueError(f"unknown command {command!r}")
            except Exception as exc:  # the parent reports it and stops the run
                connection.send(("error", f"{type(exc).__name__}: {exc}"))
                continue
            connection.send(("ok", reply))
    finally:
        await replica.close()
        with contextlib.suppress(OSError):
            connection.send(("stopped", None))


def replica_process(connection: Any, spec: ReplicaSpec) -> None:
    """Entry point of a spawned replica process: uvloop and logging as a node has them."""
    configure_logging("WARNING")
    runtime.run(_serve(connection, spec))
