"""``python -m node.sim``: run seeds of the cluster simulator and report.

This is the simulator's only edge: it turns a seed into the one ``random.Random(seed)`` a run
draws from, and reads the wall clock to report how long the seeds took. Nothing it measures
reaches a run.

    python -m node.sim --seed 7                 one seed, verbose
    python -m node.sim --seeds 0:200            a range (end excluded)
    python -m node.sim --count 1000 [--seed S]  seeds S .. S+999
    python -m node.sim --seed 7 --bug skip-fsync    a deliberately broken variant
    python -m node.sim --workload bridge --seeds 0:20     the Bridge workload
    python -m node.sim --workload payments --seeds 0:20   payments and the Market
    python -m node.sim --workload all --count 50 --safety-ms 20000   every workload, short runs

Every workload runs at the newest log feature a node understands (node/main.py). Workloads:
``ledger`` (platform ledgers: transfers, linked chains, two-phase with expiry), ``bridge``
(two partners' points, reserves, policies, swaps both ways, point expiry, the swap index),
``payments`` (authorisations approved by signatures and one-time codes, partial captures,
voids, refunds, expiry on log time, a Market's listings and orders, the webhook outbox,
vault deposits credited once).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence

from node.sim.bugs import Bug
from node.sim.world import SAFETY_MS, WORKLOADS, SimResult, simulate

__all__ = ["main", "reproduce_command", "run_seed"]


def run_seed(
    seed: int,
    bug: Bug = Bug.NONE,
    *,
    trace: bool = False,
    workload: str = "ledger",
    safety_ms: int = SAFETY_MS,
) -> SimResult:
    result, lines = simulate(
        seed, random.Random(seed), bug, trace=trace, workload=workload, safety_ms=safety_ms
    )
    if lines is not None:
        print("\n".join(lines))
    return result


def reproduce_command(
    seed: int, bug: Bug = Bug.NONE, workload: str = "ledger", safety_ms: int = SAFETY_MS
) -> str:
    extra = "" if bug is Bug.NONE else f" --bug {bug.value}"
    extra += "" if workload == "ledger" else f" --workload {workload}"
    extra += "" if safety_ms == SAFETY_MS else f" --safety-ms {safety_ms}"
    return f"python -m node.sim --seed {seed}{extra}"


def describe(result: SimResult) -> str:
    if result.ok:
        stats = " ".join(f"{k}={v}" for k, v in sorted(result.stats.items()))
        return (
            f"seed {result.seed}: ok  digest {result.digest}  sim {result.sim_ms} ms  "
            f"events {result.events}  {stats}"
        )
    return (
        f"seed {result.seed}: FAILED {result.failure}\n"
        f"  reproduce with: "
        f"{reproduce_command(result.seed, result.bug, result.workload, result.safety_ms)}"
    )


def _seeds(args: argparse.Namespace) -> list[int]:
    if args.seeds:
        start, _, end = args.seeds.partition(":")
        return list(range(int(start), int(end)))
    first = args.seed if args.seed is not None else 0
    return list(range(first, first + (args.count or 1)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m node.sim",
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],  # the examples and the workloads
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, help="run this seed (or start --count here)")
    parser.add_argument("--seeds", help="run seeds A:B (B excluded)")
    parser.add_argument("--count", type=int, help="run this many seeds")
    parser.add_argument("--bug", choices=[b.value for b in Bug], default=Bug.NONE.value)
    parser.add_argument(
        "--workload",
        choices=[*sorted(WORKLOADS), "all"],
        default="ledger",
        help="what the ledger client sends (all: each seed once per workload)",
    )
    parser.add_argument(
        "--safety-ms",
        type=int,
        default=SAFETY_MS,
        help=f"simulated ms of the faulty phase (default {SAFETY_MS}; less: a short horizon)",
    )
    parser.add_argument("--trace", action="store_true", help="print every event (one seed)")
    args = parser.parse_args(argv)
    if args.seed is None and not args.seeds and not args.count:
        parser.error("give --seed, --seeds or --count")
    bug = Bug(args.bug)
    seeds = _seeds(args)
    started = time.perf_counter()
    workloads = sorted(WORKLOADS) if args.workload == "all" else [args.workload]
    runs = [(seed, workload) for seed in seeds for workload in workloads]
    failing: list[str] = []
    for seed, workload in runs:
        trace = args.trace and len(runs) == 1
        result = run_seed(seed, bug, trace=trace, workload=workload, safety_ms=args.safety_ms)
        if len(runs) == 1 or not result.ok:
            print(describe(result), flush=True)
        if not result.ok:
            failing.append(str(seed) if len(workloads) == 1 else f"{seed} ({workload})")
    elapsed_s = time.perf_counter() - started
    passed = len(runs) - len(failing)
    print(
        f"{passed}/{len(runs)} seeds passed in {elapsed_s:.1f} s (bug: {bug.value}, "
        f"workload: {args.workload}); "
        f"failing seeds: {', '.join(failing) or 'none'}"
    )
    return 1 if failing else 0
