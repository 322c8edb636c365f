"""``baas-bench-ledger``: the ledger core's apply rate in process, over a real LevelDB (issue 11).

For each ``--accounts`` size, ascending, a fresh LevelDB (opened like the node's Raft database,
which holds the state machines' state: ``[raft]`` write buffer, block cache and open tables)
gets one asset and that many accounts, created through :meth:`Ledger.apply` itself. Then
``--batches`` batches of ``--batch`` transfers between random accounts are applied the way the
node applies a committed entry: the core reads through a :class:`LevelDBView` (every account,
asset and id lookup is a LevelDB ``get``) and each batch's writes go in one unsynced
``WriteBatch``. A share of the transfers (``--pending-share``) is pending with a timeout; each
batch also posts (partially) or voids pending transfers of earlier batches, and log time
advances ``--step-ms`` per batch, so the expiry sweep runs too. Transfer ids are
TigerBeetle's recommended form (48-bit ms time, 80 random bits).

Measured per size: transfers/s and µs per transfer over the timed batches (apply + write
batch), in wall time and in this process's CPU time (the box may be shared: the load average
is recorded), and the split between the core's apply and the LevelDB write. The process runs
with the node's GC tuning (``node.runtime.tune_gc``). Decoding the events from their msgpack
wire form (what the node will do with a log entry) is timed on its own and reported beside
the apply, not in it.
The verdict: >= 50,000 transfers/s at every size and the µs per transfer at the largest size
within 1.25x of the smallest. After each size every result must be ``ok`` and the ledger must
balance: the stored totals and the sum over every account, per ledger, debits == credits.

LevelDB is opened with the ``[raft]`` bounds; ``--block-cache-mb`` and ``--bloom-bits`` try
other settings (the account set at 10^6 is ~60 MB on disk, beyond the default 16 MB cache).
The database is compacted after the accounts are created, before the timed batches;
``--warm`` then reads every account once (a long-running node's block cache, if it is big
enough to hold them; transfers pick accounts uniformly, the worst case for a cache).

``--profile`` runs cProfile over a few extra batches at the largest size and adds the top
functions by own time. ``--quick`` is a seconds-long run for the tests.

    baas-bench-ledger --accounts 10000 1000000
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from business.ledger import (
    AMOUNT_MAX,
    AssetKind,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    Ledger,
    LedgerConfig,
    TransferFlags,
)
from business.ledger.leveldb import AccountCacheView, LevelDBView
from business.ledger.views import all_totals, iter_accounts
from business.ledger.wire import decode_events, encode_events
from node.config import RaftSettings
from node.runtime import tune_gc
from node.storage.leveldb import open_leveldb

__all__ = ["TARGET_RATIO_MAX", "TARGET_TRANSFERS_PER_S", "main", "run_size", "verdicts"]

TARGET_TRANSFERS_PER_S = 50_000
TARGET_RATIO_MAX = 1.25
LEDGER = 7
START_MS = 1_800_000_000_000
FORMAT = 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baas-bench-ledger", description=__doc__.split("\n")[0])
    p.add_argument("--accounts", type=int, nargs="+", default=[10_000, 1_000_000])
    p.add_argument("--batch", type=int, default=1000, help="transfers per batch")
    p.add_argument("--batches", type=int, default=100, help="timed batches per size")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    p.add_argument("--pending-share", type=float, default=0.1)
    p.add_argument("--step-ms", type=int, default=20, help="log time per batch")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--bloom-bits",
        type=int,
        default=0,
        help="LevelDB bloom filter bits per key (0: none, as the node's Raft database today)",
    )
    p.add_argument(
        "--block-cache-mb",
        type=int,
        default=0,
        help="LevelDB block cache (0: the node's [raft] db_block_cache_bytes_max)",
    )
    p.add_argument(
        "--warm",
        action="store_true",
        help="read every account once before timing (a long-running node's warm block cache)",
    )
    p.add_argument(
        "--account-cache",
        type=int,
        default=0,
        help="keep up to N account values in memory (AccountCacheView; 0: plain LevelDBView)",
    )
    p.add_argument("--profile", action="store_true")
    p.add_argument("--quick", action="store_true", help="a short run (tests)")
    p.add_argument("--dir", type=Path, help="where the LevelDBs go (default: a temp dir)")
    p.add_argument("--out", type=Path)
    return p


class _Workload:
    """Random transfers over ``accounts`` accounts, and posts/voids of earlier pendings."""

    def __init__(self, accounts: int, args: argparse.Namespace, rng: random.Random) -> None:
        self.accounts = accounts
        self.args = args
        self.rng = rng
        self.open_pending: list[tuple[int, int]] = []  # (id, amount)
        self.now_ms = START_MS
        self.count = 0

    def new_id(self) -> int:
        return (self.now_ms << 80) | self.rng.getrandbits(80)

    def batch(self) -> list[Event]:
        rng = self.rng
        events: list[Event] = []
        # Resolve a share of earlier pendings (half posted partially, half voided) first.
        resolve = min(len(self.open_pending), int(self.args.batch * self.args.pending_share))
        for _ in range(resolve):
            pid, amount = self.open_pending.pop(rng.randrange(len(self.open_pending)))
            if rng.random() < 0.5:
                flags, post_amount = TransferFlags.POST_PENDING_TRANSFER, rng.randint(1, amount)
                if rng.random() < 0.5:
                    post_amount = AMOUNT_MAX
            else:
                flags, post_amount = TransferFlags.VOID_PENDING_TRANSFER, 0
            events.append(CreateTransfer(self.new_id(), 0, 0, post_amount, 0, 0, int(flags), pid))
        while len(events) < self.args.batch:
            dr = rng.randrange(1, self.accounts + 1)
            cr = rng.randrange(1, self.accounts)
            cr += cr >= dr
            amount = rng.randint(1, 10_000)
            if rng.random() < self.args.pending_share:
                tid = self.new_id()
                events.append(
                    CreateTransfer(
                        tid, dr, cr, amount, LEDGER, 1, int(TransferFlags.PENDING), timeout=60
                    )
                )
                self.open_pending.append((tid, amount))
            else:
                events.append(CreateTransfer(self.new_id(), dr, cr, amount, LEDGER, 1))
        self.count += len(events)
        return events


def _open(path: Path, args: argparse.Namespace) -> Any:
    raft = RaftSettings()
    extra = {"bloom_filter_bits": args.bloom_bits} if args.bloom_bits else {}
    cache = args.block_cache_mb << 20 if args.block_cache_mb else raft.db_block_cache_bytes_max
    return open_leveldb(
        path,
        "ledger bench",
        write_buffer_size=raft.db_write_buffer_bytes_max,
        lru_cache_size=cache,
        max_open_files=raft.db_open_files_max,
        **extra,
    )


def _create_accounts(ledger: Ledger, view: LevelDBView, accounts: int, now_ms: int) -> None:
    results, writes = ledger.apply([CreateAsset(LEDGER, int(AssetKind.POINT), 2)], now_ms, view)
    view.commit(writes)
    step = ledger.config.events_per_batch_max
    for start in range(1, accounts + 1, step):
        events: list[Event] = [
            CreateAccount(i, LEDGER, 1) for i in range(start, min(accounts + 1, start + step))
        ]
        results, writes = ledger.apply(events, now_ms, view)
        assert all(r.code.value == "ok" for r in results), "account creation failed"
        view.commit(writes)


def _check_balanced(view: LevelDBView) -> dict[str, Any]:
    sums: dict[int, list[int]] = {}
    count = 0
    for account in iter_accounts(view):
        s = sums.setdefault(account.ledger, [0, 0, 0, 0])
        s[0] += account.debits_posted
        s[1] += account.credits_posted
        s[2] += account.debits_pending
        s[3] += account.credits_pending
        count += 1
    totals = {t.ledger: t for t in all_totals(view)}
    ok = bool(totals)
    for ledger_id, row in totals.items():
        stored = [row.debits_posted, row.credits_posted, row.debits_pending, row.credits_pending]
        ok = ok and row.balanced and stored == sums.get(ledger_id, [0, 0, 0, 0])
    t = totals.get(LEDGER)
    return {
        "balanced": ok,
        "accounts_read": count,
        "debits_posted": str(t.debits_posted) if t else "0",
        "credits_posted": str(t.credits_posted) if t else "0",
        "debits_pending": str(t.debits_pending) if t else "0",
        "credits_pending": str(t.credits_pending) if t else "0",
    }


def run_size(accounts: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    rng = random.Random(args.seed * 1_000_003 + accounts)
    db = _open(root / f"ledger-{accounts}", args)
    try:
        view = (
            AccountCacheView(db, entries_max=args.account_cache)
            if args.account_cache
            else LevelDBView(db)
        )
        ledger = Ledger(LedgerConfig())
        started = time.perf_counter()
        _create_accounts(ledger, view, accounts, START_MS)
        create_s = time.perf_counter() - started
        # A node's state has been compacted over its life: do not time the compaction of
        # the bulk account creation (the compaction the timed writes cause is timed).
        db.compact_range()
        if args.warm:
            with db.iterator(prefix=b"lg/a/") as it:
                for key, value in it:
                    if isinstance(view, AccountCacheView):
                        view.warm(key, value)
        tune_gc()  # as the node does once started: freeze the set-up, rarer collections
        work = _Workload(accounts, args, rng)
        apply_s = commit_s = cpu_s = decode_s = 0.0
        timed = failed = 0
        profile_text = ""
        total_batches = args.warmup + args.batches + (3 if args.profile else 0)
        profiler = cProfile.Profile() if args.profile else None
        for n in range(total_batches):
            work.now_ms += args.step_ms
            events = work.batch()
            wire = encode_events(events)
            d0 = time.process_time()
            decoded = decode_events(wire, events_max=len(events), bytes_max=len(wire))
            if args.warmup <= n < args.warmup + args.batches:
                decode_s += time.process_time() - d0
            assert decoded == events
            profiling = profiler is not None and n >= args.warmup + args.batches
            if profiling:
                assert profiler is not None
                profiler.enable()
            c0 = time.process_time()
            t0 = time.perf_counter()
            results, writes = ledger.apply(events, work.now_ms, view)
            t1 = time.perf_counter()
            view.commit(writes)
            t2 = time.perf_counter()
            c2 = time.process_time()
            if profiling:
                assert profiler is not None
                profiler.disable()
            failed += sum(1 for r in results if not r.succeeded)
            if args.warmup <= n < args.warmup + args.batches:
                apply_s += t1 - t0
                commit_s += t2 - t1
                cpu_s += c2 - c0
                timed += len(events)
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
            profile_text = out.getvalue()
        balance = _check_balanced(view)
    finally:
        db.close()
    total_s = apply_s + commit_s
    return {
        "accounts": accounts,
        "transfers_timed": timed,
        "batch": args.batch,
        "failed": failed,
        "create_accounts_s": round(create_s, 3),
        "transfers_per_s": round(timed / total_s) if total_s else 0,
        "us_per_transfer": round(1e6 * total_s / timed, 3) if timed else 0.0,
        "cpu_us_per_transfer": round(1e6 * cpu_s / timed, 3) if timed else 0.0,
        "cpu_transfers_per_s": round(timed / cpu_s) if cpu_s else 0,
        "decode_cpu_us_per_transfer": round(1e6 * decode_s / timed, 3) if timed else 0.0,
        "apply_us_per_transfer": round(1e6 * apply_s / timed, 3) if timed else 0.0,
        "commit_us_per_transfer": round(1e6 * commit_s / timed, 3) if timed else 0.0,
        "conservation": balance,
        "profile_top": profile_text.splitlines()[:40],
    }


def verdicts(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        out.append(
            {
                "name": f"apply_transfers_per_s_at_{r['accounts']}",
                "measured": r["transfers_per_s"],
                "op": ">=",
                "threshold": TARGET_TRANSFERS_PER_S,
                "pass": r["transfers_per_s"] >= TARGET_TRANSFERS_PER_S,
            }
        )
        out.append(
            {
                "name": f"all_ok_and_balanced_at_{r['accounts']}",
                "measured": r["failed"],
                "op": "==",
                "threshold": 0,
                "pass": r["failed"] == 0 and r["conservation"]["balanced"],
            }
        )
    if len(results) >= 2:
        ratio = results[-1]["us_per_transfer"] / max(results[0]["us_per_transfer"], 1e-9)
        out.append(
            {
                "name": f"cost_ratio_{results[-1]['accounts']}_vs_{results[0]['accounts']}",
                "measured": round(ratio, 3),
                "op": "<=",
                "threshold": TARGET_RATIO_MAX,
                "pass": ratio <= TARGET_RATIO_MAX,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.accounts = [min(a, 2000) for a in args.accounts[:2]] or [2000]
        args.batches, args.warmup, args.batch = 5, 1, 200
    sizes = sorted(set(args.accounts))
    if min(sizes) < 2 or args.batch < 1 or args.batches < 1 or not 0 <= args.pending_share <= 1:
        print("need >= 2 accounts, >= 1 batch of >= 1 transfer, 0..1 pending", file=sys.stderr)
        return 2
    out = args.out or Path("bench-results") / f"bench-ledger-{time.strftime('%Y%m%d-%H%M%S')}.json"
    load_start = [round(x, 2) for x in os.getloadavg()]
    results = []
    with tempfile.TemporaryDirectory(prefix="baas-bench-ledger-") as tmp:
        root = args.dir or Path(tmp)
        print(
            "accounts  transfers/s  us/transfer  cpu_us  apply_us  commit_us  balanced",
            flush=True,
        )
        for size in sizes:
            r = run_size(size, args, root)
            results.append(r)
            print(
                f"{size:>8}  {r['transfers_per_s']:>11}  {r['us_per_transfer']:>11}  "
                f"{r['cpu_us_per_transfer']:>6}  "
                f"{r['apply_us_per_transfer']:>8}  {r['commit_us_per_transfer']:>9}  "
                f"{r['conservation']['balanced']}",
                flush=True,
            )
    rows = verdicts(results)
    for row in rows:
        print(f"{'PASS' if row['pass'] else 'FAIL'} {row['name']}: {row['measured']}")
    document = {
        "format": FORMAT,
        "tool": "baas-bench-ledger",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "load_avg_start": load_start,
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "results": results,
        "verdicts": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")
    correct = all(r["failed"] == 0 and r["conservation"]["balanced"] for r in results)
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
