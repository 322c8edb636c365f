"""``baas-bench-raft``: committed entries/s and commit latency of the replicated log.

Runs 3 or 5 replicas in this process -- real libp2p hosts on loopback, real LevelDB with
fsync, the record index as state machine -- and drives proposals at the leader from
``--concurrency`` closed-loop proposers, ``--batch`` entries per proposal. Latency is from
``propose()`` to applied on the leader. All replicas share one interpreter (one GIL), so a
cluster of processes does better; the numbers compare configurations, they are not a ceiling.

    baas-bench-raft --voters 3 5 --batch 1 100 --seconds 5 --out bench-results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from node.config import ClusterMember, NodeLimits, NodeTimeouts
from node.consensus.config import RaftConfig
from node.consensus.record_index import IndexProposal, RecordIndex
from node.consensus.state_machine import Dispatcher
from node.consensus.types import default_membership
from node.p2p.identity import generate_identity_seed, peer_id_of_seed
from node.p2p.messages import ErrorReply, Message
from node.p2p.service import P2PNode
from node.replication.durable import DurableRaftStorage
from node.replication.log import ReplicatedLog
from tools.bench_stats import latency_summary_ms

__all__ = ["main", "run_case"]

SHARD_NODES = ("n1", "n2", "n3", "n4", "n5")


class _NoShards:
    """Shard traffic is not part of this bench (runs on the p2p layer's trio thread)."""

    async def serve(self) -> None:
        await trio.sleep_forever()

    async def handle(self, message: Message, from_peer: str) -> Message:
        return ErrorReply("unsupported_request", "this bench serves no shards")


def _inbox(holder: list[ReplicatedLog]) -> Callable[[str, bytes], None]:
    return lambda peer, payload: holder[0].deliver(peer, payload)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proposal(number: int, term: int) -> IndexProposal:
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
    )


async def run_case(
    directory: Path, *, voters: int, batch: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    seeds = [generate_identity_seed() for _ in range(voters)]
    ports = [_free_port() for _ in range(voters)]
    members = [
        ClusterMember(f"r{i}", peer_id_of_seed(seed), f"/ip4/127.0.0.1/tcp/{port}", "127.0.0.1:1")
        for i, (seed, port) in enumerate(zip(seeds, ports, strict=True))
    ]
    replicas: list[tuple[P2PNode, ReplicatedLog, DurableRaftStorage]] = []
    for seed, member in zip(seeds, members, strict=True):
        storage = DurableRaftStorage(directory / member.name)
        holder: list[ReplicatedLog] = []
        p2p = P2PNode(
            identity_seed=seed,
            listen_addr=member.p2p_addr,
            members=members,
            limits=NodeLimits(),
            timeouts=NodeTimeouts(),
            handler=_NoShards(),
            raft_inbox=_inbox(holder),
        )
        log = ReplicatedLog(
            raft=RaftConfig(
                node_id=member.peer_id,
                election_ticks=10,
                heartbeat_ticks=2,
                lazy_commit_notify=True,
            ),
            storage=storage,
            dispatcher=Dispatcher([RecordIndex()], feature_version_max=1),
            send=p2p.send_raft,
            initial_membership=default_membership(m.peer_id for m in members),
            tick_s=0.1,
            inbox_frames_max=8192,
            proposals_pending_max=65536,
        )
        holder.append(log)
        await log.start()
        await p2p.start()
        replicas.append((p2p, log, storage))
    try:
        leader = await _leader(replicas)
        term = leader.status().term
        latencies: list[float] = []
        committed = 0
        end = time.monotonic() + seconds
        counter = iter(range(1, 10**12))

        async def proposer() -> None:
            nonlocal committed
            while time.monotonic() < end:
                entries = [_proposal(next(counter), term).to_entry() for _ in range(batch)]
                started = time.perf_counter()
                await leader.propose(entries, timeout_s=10)
                latencies.append(time.perf_counter() - started)
                committed += batch

        began = time.monotonic()
        await asyncio.gather(*(proposer() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
        return {
            "voters": voters,
            "batch": batch,
            "concurrency": concurrency,
            "entries_per_s": round(committed / elapsed, 1),
            "latency_ms": latency_summary_ms(latencies),
            "entries": committed,
        }
    finally:
        for p2p, log, storage in replicas:
            await log.stop()
            await p2p.stop()
            storage.close()


async def _leader(replicas: list[tuple[P2PNode, ReplicatedLog, DurableRaftStorage]]) -> Any:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for _, log, _ in replicas:
            if log.status().role == "leader":
                return log
        await asyncio.sleep(0.05)
    raise RuntimeError("no leader elected")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="baas-bench-raft", description=__doc__.split("\n")[0])
    parser.add_argument("--voters", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    if any(v not in (1, 3, 5) for v in args.voters) or min(args.batch) < 1:
        print("voters must be 1, 3 or 5 and batches at least 1", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for voters in args.voters:
            for batch in args.batch:
                case_dir = Path(tmp) / f"v{voters}-b{batch}"
                result = asyncio.run(
                    run_case(
                        case_dir,
                        voters=voters,
                        batch=batch,
                        concurrency=args.concurrency,
                        seconds=args.seconds,
                    )
                )
                latency = result["latency_ms"]
                print(
                    f"voters {voters} batch {batch:>4}: {result['entries_per_s']:>9,.0f} "
                    f"entries/s  p50 {latency['p50']} ms  p99 {latency['p99']} ms",
                    flush=True,
                )
                results.append(result)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-raft-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = {
        "format": 1,
        "cpu_count": os.cpu_count(),
        "note": "all replicas in one process (one GIL)",
        "results": results,
    }
    path.write_text(json.dumps(document, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
