"""``baas-bench-log``: leaf appends, proof generation and verification of the record log (issue 5).

For each ``--sizes`` value, ascending, one log grows to that many leaves in a real LevelDB (the
node's :class:`~node.replication.durable.DurableRaftStorage` with its ``[raft]`` bounds), then
is measured at that size:

* **appends** -- realistic ``index.put`` entries (5 shard hashes, a plaintext commitment; log
  feature version 3 enabled first) applied as the node applies them: ``Dispatcher.apply_batch``
  over the record index with the Merkle log as follower, ``--batch`` entries at a time, each
  batch's writes and applied index in one unsynced LevelDB batch (``commit_applied``). Reported
  for the entries applied since the previous size: entries/s of the whole apply (index, Merkle
  follower, LevelDB batch) and the Merkle follower's own appends/s and share of it;
* **proof generation** -- once LevelDB has compacted what the build wrote (``settle_s``), read
  from LevelDB through a fresh :class:`MerkleReader` per proof, as the node's API does per
  request, over one :class:`~node.merkle.log.NodeCache` (the tree's top levels,
  ``--cache-nodes``) that lives as long as the log: inclusion proofs of random leaves at the
  current size and at the size of the first of ``--anchors`` random anchors that covers the
  leaf (what a receipt carries); consistency proofs between random anchors and to the current
  size; and, for comparison, inclusion proofs with every node read from LevelDB
  (``inclusion_current_uncached``, which must give the same proofs);
* **offline verification** -- what a user's ``verify`` runs on a receipt: the RFC 9162 leaf
  hash of the leaf data, then ``verify_inclusion``; and ``verify_consistency``. Every sampled
  proof must verify against the root read back, a tampered one must fail, and the root at the
  size is recomputed from the stored leaves by a separate stack fold.

LevelDB is opened with the node's ``[raft]`` bounds; ``--open-files`` overrides its open
tables (random reads of a 10^6-leaf log touch ~350 tables; a table not open costs a reopen).

The JSON (``"format": 1``) has a verdict per issue 5 target, conclusive at 10^6 leaves:
inclusion proofs >= 20,000/s, offline verification >= 80,000/s, and Merkle appends faster
than the consensus log's own target (issue 4: 30,000 entries/s), so they never hold it back.
The exit status is 1 when any check fails (a wrong proof, a count that does not add up).

    baas-bench-log --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plyvel
import psutil

from node.config import RaftSettings
from node.consensus.raft import Ready
from node.consensus.record_index import IndexProposal, RecordIndex
from node.consensus.state_machine import (
    FEATURE_ENTRY,
    AppEntry,
    Applied,
    Dispatcher,
    LogPosition,
    StateView,
    Write,
    encode_app_entry,
)
from node.consensus.types import HardState, Membership, Role
from node.merkle.log import (
    MERKLE_FEATURE_VERSION,
    NODE_CACHE_NODES_MAX,
    MerkleLog,
    MerkleReader,
    NodeCache,
)
from node.merkle.tree import (
    EMPTY_ROOT,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from node.replication.durable import DurableRaftStorage
from tools.bench_stats import Target, verdict

__all__ = ["LOG_TARGETS", "log_verdicts", "main", "stream_root"]

FORMAT_VERSION = 1
TARGET_SIZE = 1_000_000
TERM = 1
LEADER_TIME_MS_START = 1_760_000_000_000
ENTRIES_PER_MS = 16  # leader timestamps advance as at ~16,000 committed entries/s
EXPIRY_ENTRIES = 10_000
SHARDS_K, SHARDS_N = 3, 5
OWNERS = tuple(f"partner-{i:04d}" for i in range(50))
SAMPLES_MAX = 2_000  # proofs kept per kind to verify (the rest are only timed)
BATCH_MAX = 10_000
SETTLE_STEP_S = 0.5
SETTLE_IDLE_CPU_S = 0.025  # CPU seconds per step below which compaction is over

LOG_TARGETS: tuple[Target, ...] = (
    Target(
        "log_inclusion_proof_rate_current",
        "inclusion_current",
        "per_s",
        ">=",
        20_000,
        "proofs/s",
        "inclusion proofs of random leaves at the current size, from LevelDB, at 10^6 leaves",
        issue=5,
    ),
    Target(
        "log_inclusion_proof_rate_anchored",
        "inclusion_anchored",
        "per_s",
        ">=",
        20_000,
        "proofs/s",
        "inclusion proofs at the first anchored size covering the leaf, at 10^6 leaves",
        issue=5,
    ),
    Target(
        "log_verify_inclusion_rate",
        "verify_inclusion",
        "per_s",
        ">=",
        80_000,
        "verifications/s",
        "offline verification (leaf hash + verify_inclusion) at 10^6 leaves",
        issue=5,
    ),
    Target(
        "log_merkle_append_rate",
        "build",
        "merkle_appends_per_s",
        ">=",
        30_000,
        "appends/s",
        "Merkle follower appends/s inside apply, above the consensus log's 30,000 entries/s "
        "target (issue 4) so appends never hold the log back",
        issue=5,
    ),
)


# ---------------------------------------------------------------- the log, built as a node does


class _StoreView:
    """The applied state read through the storage: node.membership.StoreView, which is not
    imported for it would bring in libp2p."""

    def __init__(self, storage: DurableRaftStorage) -> None:
        self._storage = storage

    def get(self, key: bytes) -> bytes | None:
        return self._storage.state_get(key)


class _TimedFollower:
    """The Merkle log follower, with the time spent in it added up."""

    def __init__(self, inner: MerkleLog) -> None:
        self._inner = inner
        self.prefix = inner.prefix
        self.feature_version = inner.feature_version
        self.seconds = 0.0

    def follow(self, entry: AppEntry, applied: Applied, view: StateView) -> tuple[Write, ...]:
        started = time.perf_counter()
        writes = self._inner.follow(entry, applied, view)
        self.seconds += time.perf_counter() - started
        return writes


class _Proposals:
    """Realistic ``index.put`` payloads from a seeded generator (nothing kept)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._nodes = tuple(f"12D3KooW{self._rng.randbytes(22).hex()}" for _ in range(SHARDS_N))

    def payload(self, index: int, number: int) -> bytes:
        rb = self._rng.randbytes
        proposal = IndexProposal(
            record_id=rb(32),
            content_hash=rb(32),
            k=SHARDS_K,
            n=SHARDS_N,
            shard_nodes=self._nodes,
            membership_epoch=1,
            owner=OWNERS[number % len(OWNERS)],
            body_fingerprint=rb(32),
            expiry_term=TERM,
            expiry_max_index=index + EXPIRY_ENTRIES,
            shard_hashes=tuple(rb(32) for _ in range(SHARDS_N)),
            plaintext_commitment=rb(32),
        )
        return encode_app_entry(proposal.to_entry())


def _position(index: int) -> LogPosition:
    return LogPosition(index, TERM, LEADER_TIME_MS_START + index // ENTRIES_PER_MS)


@dataclass
class _Log:
    """One growing log: the storage, the dispatcher and what has been applied so far."""

    storage: DurableRaftStorage
    dispatcher: Dispatcher
    follower: _TimedFollower
    proposals: _Proposals
    cache: NodeCache | None
    applied_index: int = 0
    leaves: int = 0

    @classmethod
    def open(cls, path: Path, args: argparse.Namespace, commit_index: int) -> _Log:
        node = RaftSettings()
        storage = DurableRaftStorage(
            path,
            open_files_max=args.open_files,
            write_buffer_bytes_max=node.db_write_buffer_bytes_max,
            block_cache_bytes_max=node.db_block_cache_bytes_max,
        )
        # The applied index may not pass the persisted commit: persist one hard state that
        # commits everything the run applies (the entries themselves are not the subject).
        storage.persist(_hard_state_ready(commit_index))
        follower = _TimedFollower(MerkleLog())
        dispatcher = Dispatcher(
            [RecordIndex()], feature_version_max=MERKLE_FEATURE_VERSION, followers=[follower]
        )
        cache = NodeCache(args.cache_nodes) if args.cache_nodes else None
        log = cls(storage, dispatcher, follower, _Proposals(args.seed), cache)
        feature = encode_app_entry(AppEntry(FEATURE_ENTRY, {"version": MERKLE_FEATURE_VERSION}))
        applied, writes = dispatcher.apply_batch([(_position(1), feature)], _StoreView(storage))
        if applied[0].outcome.code != "created":
            raise RuntimeError(f"enabling feature 3: {applied[0].outcome}")
        storage.commit_applied(writes, 1, sync=False)
        log.applied_index = 1
        return log

    def grow(self, size: int, batch: int) -> dict[str, Any]:
        """Apply ``index.put`` entries until the log has ``size`` leaves; time the apply."""
        counts = {"entries": 0, "created": 0, "writes": 0, "merkle_writes": 0}
        apply_s = commit_s = 0.0
        follow_before = self.follower.seconds
        view = _StoreView(self.storage)
        leaves_before = self.leaves
        while self.leaves < size:
            count = min(batch, size - self.leaves)
            first = self.applied_index + 1
            entries = [
                (_position(i), self.proposals.payload(i, self.leaves + i - first))
                for i in range(first, first + count)
            ]
            started = time.perf_counter()
            applied, writes = self.dispatcher.apply_batch(entries, view)
            middle = time.perf_counter()
            self.storage.commit_applied(writes, first + count - 1, sync=False)
            apply_s += middle - started
            commit_s += time.perf_counter() - middle
            created = sum(1 for a in applied if a.outcome.code == "created")
            counts["entries"] += count
            counts["created"] += created
            counts["writes"] += len(writes)
            counts["merkle_writes"] += sum(1 for key, _ in writes if key.startswith(b"ml/"))
            self.applied_index += count
            self.leaves += created
            if created == 0:  # nothing grows the log: the checks report it
                break
        follow_s = self.follower.seconds - follow_before
        appended = self.leaves - leaves_before
        total_s = apply_s + commit_s
        return {
            **counts,
            "leaves_appended": appended,
            "apply_s": round(apply_s, 3),
            "commit_s": round(commit_s, 3),
            "merkle_follow_s": round(follow_s, 3),
            "entries_per_s": _rate(counts["entries"], total_s),
            "merkle_appends_per_s": _rate(appended, follow_s),
            "merkle_share_of_apply": round(follow_s / total_s, 4) if total_s else None,
            "apply_us_per_entry": _us(total_s, counts["entries"]),
            "merkle_us_per_append": _us(follow_s, appended),
        }

    def reader(self, *, cached: bool = True) -> MerkleReader:
        """A reader as one API request makes it: over a fresh view, through the cache."""
        view = _StoreView(self.storage)
        if cached and self.cache is not None:
            return MerkleReader(self.cache.view(view))
        return MerkleReader(view)


def _hard_state_ready(commit: int) -> Ready:
    return Ready(
        seq=1,
        hard_state=HardState(TERM, None, commit),
        entries=(),
        snapshot=None,
        messages=(),
        committed_entries=(),
        read_states=(),
        role=Role.FOLLOWER,
        leader_id=None,
        term=TERM,
        membership=Membership(),
    )


def _rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def _us(seconds: float, count: int) -> float | None:
    return round(seconds * 1e6 / count, 3) if count else None


# ---------------------------------------------------------------- proofs and their verification


@dataclass(frozen=True, slots=True)
class _Inclusion:
    leaf_data: bytes
    index: int
    size: int
    proof: list[bytes]
    root: bytes


@dataclass(frozen=True, slots=True)
class _Consistency:
    old_size: int
    size: int
    proof: list[bytes]
    old_root: bytes
    root: bytes


def _timed(jobs: Sequence[tuple[int, int]], run: Callable[[int, int], list[bytes]]) -> float:
    started = time.perf_counter()
    for a, b in jobs:
        run(a, b)
    return time.perf_counter() - started


def _phase(count: int, seconds: float, proofs: Sequence[Sequence[bytes]]) -> dict[str, Any]:
    """A timed phase; ``proofs`` are the (sampled) proofs, for their mean length."""
    return {
        "count": count,
        "seconds": round(seconds, 3),
        "per_s": _rate(count, seconds),
        "us_each": _us(seconds, count),
        "proof_hashes_mean": round(sum(map(len, proofs)) / len(proofs), 2) if proofs else None,
    }


def _anchor_sizes(rng: random.Random, size: int, anchors: int) -> list[int]:
    """``anchors`` distinct sizes in 1..size-1 (all of them when fewer), ascending."""
    if size < 2:
        return [size]
    return sorted(rng.sample(range(1, size), min(anchors, size - 1)))


def _first_covering(anchor_sizes: Sequence[int], index: int) -> int:
    low, high = 0, len(anchor_sizes) - 1  # the last anchor covers every leaf drawn
    while low < high:
        middle = (low + high) // 2
        if anchor_sizes[middle] > index:
            high = middle
        else:
            low = middle + 1
    return anchor_sizes[low]


def measure_proofs(
    log: _Log, rng: random.Random, proofs: int, anchors: int
) -> tuple[dict[str, Any], list[_Inclusion], list[_Consistency]]:
    """Time proof generation; return the phases and the samples to verify."""
    size = log.reader().size
    anchor_sizes = _anchor_sizes(rng, size, anchors)
    roots = {s: log.reader().root(s) for s in [*anchor_sizes, size]}

    def inclusion(index: int, at: int) -> list[bytes]:
        return log.reader().inclusion_proof(index, at)

    def consistency(old: int, at: int) -> list[bytes]:
        return log.reader().consistency_proof(old, at)

    def uncached(index: int, at: int) -> list[bytes]:
        return log.reader(cached=False).inclusion_proof(index, at)

    current = [(rng.randrange(size), size) for _ in range(proofs)]
    anchored = []
    for _ in range(proofs):
        index = rng.randrange(anchor_sizes[-1])
        anchored.append((index, _first_covering(anchor_sizes, index)))
    pairs = []
    for _ in range(proofs):
        old = rng.choice(anchor_sizes)
        later = [s for s in (*anchor_sizes, size) if s >= old]
        pairs.append((old, rng.choice(later)))
    phases: dict[str, Any] = {}
    inclusion_samples: list[_Inclusion] = []
    for name, jobs in (("inclusion_current", current), ("inclusion_anchored", anchored)):
        seconds = _timed(jobs, inclusion)
        samples = []
        for index, at in jobs[:SAMPLES_MAX]:
            data = log.reader().leaf_at(index)
            if data is None:
                raise RuntimeError(f"leaf {index} is missing")
            samples.append(_Inclusion(data, index, at, inclusion(index, at), roots[at]))
        phases[name] = _phase(len(jobs), seconds, [s.proof for s in samples])
        inclusion_samples += samples
    seconds = _timed(pairs, consistency)
    consistency_samples = [
        _Consistency(old, at, consistency(old, at), roots[old], roots[at])
        for old, at in pairs[:SAMPLES_MAX]
    ]
    phases["consistency"] = _phase(len(pairs), seconds, [c.proof for c in consistency_samples])
    baseline = current[: max(1, proofs // 4)]  # the same leaves, every node from LevelDB
    seconds = _timed(baseline, uncached)
    current_samples = inclusion_samples[: min(len(current), SAMPLES_MAX)]
    mismatches = sum(
        uncached(index, at) != sample.proof
        for (index, at), sample in zip(baseline, current_samples, strict=False)
    )
    phases["inclusion_current_uncached"] = _phase(len(baseline), seconds, [])
    phases["inclusion_current_uncached"]["cache_mismatches"] = mismatches
    phases["anchors"] = len(anchor_sizes)
    phases["cache_nodes"] = None if log.cache is None else len(log.cache)
    phases["cache_level_min"] = None if log.cache is None else log.cache.level_min
    return phases, inclusion_samples, consistency_samples


def measure_verification(
    inclusions: Sequence[_Inclusion], consistencies: Sequence[_Consistency], rounds: int
) -> tuple[dict[str, Any], dict[str, int]]:
    """Time offline verification over the samples, ``rounds`` verifications of each kind."""
    checks = {"inclusion_failed": 0, "consistency_failed": 0, "tampered_accepted": 0}
    jobs = [inclusions[i % len(inclusions)] for i in range(rounds)] if inclusions else []
    started = time.perf_counter()
    ok = 0
    for s in jobs:
        ok += verify_inclusion(leaf_hash(s.leaf_data), s.index, s.size, s.proof, s.root)
    seconds = time.perf_counter() - started
    checks["inclusion_failed"] = len(jobs) - ok
    phases = {"verify_inclusion": _phase(len(jobs), seconds, [s.proof for s in inclusions])}
    jobs_c = [consistencies[i % len(consistencies)] for i in range(rounds)] if consistencies else []
    started = time.perf_counter()
    ok = 0
    for c in jobs_c:
        ok += verify_consistency(c.old_size, c.size, c.proof, c.old_root, c.root)
    seconds = time.perf_counter() - started
    checks["consistency_failed"] = len(jobs_c) - ok
    phases["verify_consistency"] = _phase(len(jobs_c), seconds, [c.proof for c in consistencies])
    checks["tampered_accepted"] = _tampered_accepted(inclusions, consistencies)
    return phases, checks


def _tampered_accepted(
    inclusions: Sequence[_Inclusion], consistencies: Sequence[_Consistency]
) -> int:
    """How many proofs with one flipped bit still verify (must be 0)."""
    accepted = 0
    for s in inclusions[:200]:
        if s.proof:
            bad = [*s.proof[:-1], _flip(s.proof[-1])]
            accepted += verify_inclusion(leaf_hash(s.leaf_data), s.index, s.size, bad, s.root)
        accepted += verify_inclusion(
            leaf_hash(_flip(s.leaf_data)), s.index, s.size, s.proof, s.root
        )
    for c in consistencies[:200]:
        if c.proof:
            bad = [_flip(c.proof[0]), *c.proof[1:]]
            accepted += verify_consistency(c.old_size, c.size, bad, c.old_root, c.root)
    return accepted


def _flip(raw: bytes) -> bytes:
    return raw[:-1] + bytes((raw[-1] ^ 1,))


def stream_root(leaves: Iterator[bytes]) -> tuple[int, bytes]:
    """(count, RFC 9162 root) of leaf data in order, folded with a stack of perfect subtrees:
    an independent check of the stored tree (O(log n) memory)."""
    stack: list[tuple[int, bytes]] = []  # (leaf count, hash), counts strictly decreasing
    count = 0
    for data in leaves:
        current = (1, leaf_hash(data))
        while stack and stack[-1][0] == current[0]:
            left = stack.pop()
            current = (left[0] * 2, node_hash(left[1], current[1]))
        stack.append(current)
        count += 1
    if not stack:
        return 0, EMPTY_ROOT
    root = stack.pop()[1]
    while stack:
        root = node_hash(stack.pop()[1], root)
    return count, root


def _stored_leaves(storage: DurableRaftStorage) -> Iterator[bytes]:
    for _key, value in storage.state_items(b"ml/l/"):
        yield value


# ---------------------------------------------------------------- verdicts, machine and the CLI


def log_verdicts(
    results: Sequence[dict[str, Any]], *, open_files: int | None = None
) -> list[dict[str, Any]]:
    """One verdict per target, from the largest size measured: conclusive at 10^6 leaves,
    every check passed, and LevelDB opened as the node opens it."""
    if not results:
        return [verdict(t, None, None) for t in LOG_TARGETS]
    largest = max(results, key=lambda r: r["size"])
    node_open_files = RaftSettings().db_open_files_max
    note = None
    if largest["size"] != TARGET_SIZE:
        note = f"the targets are at 10^6 leaves; the largest size measured is {largest['size']}"
    elif not largest["checks_passed"]:
        note = "a check failed at this size"
    elif open_files is not None and open_files != node_open_files:
        note = (
            f"LevelDB had {open_files} open tables; the node's db_open_files_max is "
            f"{node_open_files}"
        )
    rows = []
    for target in LOG_TARGETS:
        measured = largest[target.phase].get(target.metric)
        row = verdict(target, None if measured is None else float(measured), note)
        row["size"] = largest["size"]
        rows.append(row)
    return rows


def _machine() -> dict[str, Any]:
    model = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "plyvel": plyvel.__version__,
        "leveldb": plyvel.__leveldb_version__,
    }


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def settle(seconds_max: float) -> float:
    """Wait until this process is idle: LevelDB compacts what the apply wrote on a thread of
    its own, which would otherwise take a core from the proofs measured next."""
    process, started = psutil.Process(), time.monotonic()
    while time.monotonic() - started < seconds_max:
        before = sum(process.cpu_times()[:2])
        time.sleep(SETTLE_STEP_S)
        if sum(process.cpu_times()[:2]) - before < SETTLE_IDLE_CPU_S:
            break
    return time.monotonic() - started


def _run_size(
    log: _Log, size: int, args: argparse.Namespace, rng: random.Random, path: Path
) -> dict[str, Any]:
    build = log.grow(size, args.batch)
    build["settle_s"] = round(settle(args.settle_s_max), 2)
    phases, inclusions, consistencies = measure_proofs(log, rng, args.proofs, args.anchors)
    verifying, checks = measure_verification(inclusions, consistencies, args.verifies)
    reader = log.reader()
    recount, recomputed = stream_root(_stored_leaves(log.storage))
    counts = {
        "tree_size": reader.size,
        "leaves_streamed": recount,
        "root_recomputed_matches": recomputed == reader.root(),
        "entries_applied": log.applied_index,
        "created_match_leaves": build["created"] == build["leaves_appended"],
        "proofs_verified": len(inclusions) + len(consistencies),
        "cache_mismatches": phases["inclusion_current_uncached"]["cache_mismatches"],
    }
    passed = (
        counts["tree_size"] == size == recount
        and counts["root_recomputed_matches"]
        and counts["created_match_leaves"]
        and build["entries"] == build["created"]
        and not any(checks.values())
        and counts["cache_mismatches"] == 0
    )
    return {
        "size": size,
        "root": reader.root().hex(),
        "build": build,
        **phases,
        **verifying,
        "checks": {**counts, **checks},
        "checks_passed": passed,
        "db_bytes": _dir_bytes(path),
        "rss_bytes": psutil.Process().memory_info().rss,
    }


def _print_row(result: dict[str, Any]) -> None:
    build = result["build"]

    def per_s(phase: str) -> str:
        value = result[phase]["per_s"]
        return f"{value:>10,.0f}" if value is not None else f"{'-':>10}"

    print(
        f"{result['size']:>9,} {build['entries_per_s'] or 0:>10,.0f} "
        f"{build['merkle_appends_per_s'] or 0:>10,.0f} {build['merkle_share_of_apply']:>6.1%} "
        f"{per_s('inclusion_current')} {per_s('inclusion_anchored')} "
        f"{per_s('inclusion_current_uncached')} {per_s('consistency')} "
        f"{per_s('verify_inclusion')} {per_s('verify_consistency')}"
        f"{'' if result['checks_passed'] else '  CHECK FAILED'}",
        flush=True,
    )


HEADER = (
    f"{'leaves':>9} {'apply/s':>10} {'merkle/s':>10} {'share':>6} {'incl/s':>10} "
    f"{'incl@anc/s':>10} {'nocache/s':>10} {'cons/s':>10} {'verify/s':>10} {'vcons/s':>10}"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="baas-bench-log", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, TARGET_SIZE])
    parser.add_argument("--batch", type=int, default=500, help="entries per apply batch")
    parser.add_argument("--proofs", type=int, default=20_000, help="proofs timed per kind")
    parser.add_argument("--verifies", type=int, default=100_000, help="verifications per kind")
    parser.add_argument("--anchors", type=int, default=64, help="anchored sizes per size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--settle-s-max",
        type=float,
        default=60.0,
        help="after each build, wait at most this long for LevelDB's compaction to finish",
    )
    parser.add_argument(
        "--cache-nodes",
        type=int,
        default=NODE_CACHE_NODES_MAX,
        help="the readers' NodeCache bound (0: no cache)",
    )
    parser.add_argument(
        "--open-files",
        type=int,
        default=RaftSettings().db_open_files_max,
        help="LevelDB open tables (default: the node's [raft] db_open_files_max)",
    )
    parser.add_argument("--dir", type=Path, help="LevelDB directory (empty; kept afterwards)")
    parser.add_argument("--out", type=Path, help="result file (bench-results/bench-log-*.json)")
    return parser


def _bad_arguments(args: argparse.Namespace) -> str | None:
    if min(args.sizes) < 2:
        return "every size must be at least 2 leaves"
    if not 1 <= args.batch <= BATCH_MAX:
        return f"--batch must be 1..{BATCH_MAX}"
    if min(args.proofs, args.verifies, args.anchors, args.open_files) < 1:
        return "--proofs, --verifies, --anchors and --open-files must be positive"
    if args.settle_s_max < 0:
        return "--settle-s-max must not be negative"
    if args.cache_nodes < 0:
        return "--cache-nodes must not be negative"
    if args.dir is not None and args.dir.exists() and any(args.dir.iterdir()):
        return f"--dir {args.dir} is not empty"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = _bad_arguments(args)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    sizes = sorted(set(args.sizes))
    out = args.out or Path("bench-results") / f"bench-log-{time.strftime('%Y%m%d-%H%M%S')}.json"
    load_start = [round(x, 2) for x in os.getloadavg()]
    started = time.time()
    rng = random.Random(args.seed)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="baas-bench-log-") as tmp:
        path = args.dir or Path(tmp) / "raft"
        log = _Log.open(path, args, commit_index=1 + sizes[-1])
        try:
            print(HEADER, flush=True)
            for size in sizes:
                result = _run_size(log, size, args, rng, path)
                _print_row(result)
                results.append(result)
        finally:
            log.storage.close()
    verdicts = log_verdicts(results, open_files=args.open_files)
    for row in verdicts:
        note = f" ({row['note']})" if row["note"] else ""
        print(
            f"{'PASS' if row['pass'] else 'FAIL'} {row['name']}: "
            f"{row['measured']} {row['op']} {row['threshold']} {row['unit']}{note}"
        )
    document = {
        "format": FORMAT_VERSION,
        "tool": "baas-bench-log",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": _machine(),
        "load_average_start": load_start,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "parameters": {
            "sizes": sizes,
            "batch": args.batch,
            "proofs": args.proofs,
            "verifies": args.verifies,
            "anchors": args.anchors,
            "seed": args.seed,
            "cache_nodes": args.cache_nodes,
            "settle_s_max": args.settle_s_max,
            "open_files": args.open_files,
            "shards": [SHARDS_K, SHARDS_N],
        },
        "note": (
            "one log grows through the sizes in turn; build figures cover the entries applied "
            "since the previous size; the apply batch's writes go to LevelDB unsynced, as the "
            "node writes them; proofs are read through a fresh MerkleReader each, once "
            "LevelDB's background compaction of the build is over (build.settle_s)"
        ),
        "results": results,
        "targets": verdicts,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["checks_passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
