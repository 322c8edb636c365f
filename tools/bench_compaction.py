"""What one log compaction of a node's Raft database costs as its state grows.

Builds a :class:`~node.replication.durable.DurableRaftStorage` holding ``--state-keys`` applied
state keys (values the size of a record index entry) and a log of ``--entries`` applied
entries, then compacts all but ``--trailing`` of them the way the adapter does
(node/replication/log.py), and prints one JSON line per state size: the compaction's wall
time, CPU time, and the keys and bytes it wrote. Run it with ``PYTHONPATH`` on an older
checkout to compare: before durable format 2 a compaction wrote the whole state as a snapshot
(``reserve_generation`` / ``pinned_state`` / ``adopt_snapshot``), which this also drives.

    python -m tools.bench_compaction --state-keys 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from node.consensus.raft import Ready
from node.consensus.types import Entry, EntryKind, HardState, Membership, Role, SnapshotMeta
from node.replication import durable as durable_module
from node.replication.durable import DurableRaftStorage

STATE_BATCH_KEYS = 4096
ENTRY_BATCH = 1000
MEMBERSHIP = Membership.of(["a", "b", "c"])


def _ready(entries: Sequence[Entry], hard_state: HardState) -> Ready:
    return Ready(
        seq=1,
        hard_state=hard_state,
        entries=tuple(entries),
        snapshot=None,
        messages=(),
        committed_entries=(),
        read_states=(),
        role=Role.FOLLOWER,
        leader_id=None,
        term=1,
        membership=MEMBERSHIP,
    )


class _Counting:
    """Counts the keys and bytes of every batch the storage writes (old and new code alike)."""

    def __init__(self, storage: DurableRaftStorage) -> None:
        self.keys = self.bytes = 0
        original = storage._write

        def write(ops: Sequence[tuple[bytes, bytes | None]], *, sync: bool = True) -> None:
            self.keys += len(ops)
            self.bytes += sum(len(k) + len(v or b"") for k, v in ops)
            original(ops, sync=sync)

        storage._write = write  # type: ignore[method-assign]


def build(path: Path, state_keys: int, entries: int, value_bytes: int) -> DurableRaftStorage:
    storage = DurableRaftStorage(path)
    grow(storage, 0, state_keys, entries, value_bytes)
    return storage


def grow(
    storage: DurableRaftStorage, first_key: int, state_keys: int, entries: int, value_bytes: int
) -> None:
    """Append and apply ``entries`` entries that write ``state_keys`` new state keys."""
    value, start = b"v" * value_bytes, storage.last_index + 1
    for first in range(start, start + entries, ENTRY_BATCH):
        last = min(start + entries - 1, first + ENTRY_BATCH - 1)
        log = [Entry(i, 1, EntryKind.NORMAL, value, i) for i in range(first, last + 1)]
        storage.persist(_ready(log, HardState(1, "a", last)))
    batches = max(1, -(-state_keys // STATE_BATCH_KEYS))
    applied_from = storage.applied_index
    for batch in range(batches):
        keys = range(batch * STATE_BATCH_KEYS, min(state_keys, (batch + 1) * STATE_BATCH_KEYS))
        applied = applied_from + max(1, (batch + 1) * entries // batches)
        writes = [(b"ri/%012d" % (first_key + k), value) for k in keys]
        storage.commit_applied(writes, applied, sync=False)


def compact(storage: DurableRaftStorage, index: int) -> float:
    """One compaction to ``index``, as the adapter of this checkout does it; the seconds its
    flush (format 2) took."""
    meta = SnapshotMeta(index, 1, MEMBERSHIP)
    if hasattr(storage, "compact"):  # durable format 2: no state copied
        started = time.monotonic()
        storage.flush_state()
        flushed_s = time.monotonic() - started
        storage.compact(meta)
        return flushed_s
    from node.replication.durable import SnapshotWriter  # format 1: the whole state written
    from node.replication.snapshot import encode_state

    old: Any = storage  # the format-1 API, gone from this checkout
    generation = old.reserve_generation()
    _, items = old.pinned_state()
    writer = SnapshotWriter(storage, generation)
    encode_state(items, writer.write)
    old.adopt_snapshot(meta, writer.finish())
    return 0.0


def measure(
    state_keys: int, entries: int, trailing: int, value_bytes: int, settle_s: float = 0.0
) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="bench-compaction-"))
    try:
        started = time.monotonic()
        with build(directory / "raft", state_keys, entries, value_bytes) as storage:
            # Steady state: one compaction (not measured), then the entries and state writes
            # of another round, then the measured one (its flush covers that round's writes).
            compact(storage, entries - trailing)
            grow(storage, state_keys, entries - trailing, entries - trailing, value_bytes)
            built_s = time.monotonic() - started
            time.sleep(settle_s)  # LevelDB's background compaction of the build goes on
            counting = _Counting(storage)
            wall, cpu = time.monotonic(), time.process_time()
            flush_s = compact(storage, storage.applied_index - trailing)
            return {
                "format": durable_module.FORMAT_VERSION,
                "state_keys": state_keys + entries - trailing,
                "entries_dropped": entries - trailing,
                "compaction_ms": round((time.monotonic() - wall) * 1000, 1),
                "flush_ms": round(flush_s * 1000, 1),
                # every thread of the process: LevelDB's background writes count too
                "compaction_cpu_ms": round((time.process_time() - cpu) * 1000, 1),
                "keys_written": counting.keys,
                "bytes_written": counting.bytes,
                "build_s": round(built_s, 1),
            }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-keys", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--entries", type=int, default=25_000, help="applied log entries")
    parser.add_argument("--trailing", type=int, default=5_000, help="entries kept")
    parser.add_argument("--value-bytes", type=int, default=250, help="a state value / payload")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=0.0,
        help="wait before the measured compaction (its flush waits for a running LevelDB one)",
    )
    args = parser.parse_args(argv)
    for keys in args.state_keys:
        result = measure(keys, args.entries, args.trailing, args.value_bytes, args.settle_s)
        print(json.dumps({**result, "settle_s": args.settle_s}), flush=True)


if __name__ == "__main__":
    main()
