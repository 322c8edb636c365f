"""Issue #13's verdicts for ``baas-bench``: ours as ratios to etcd's; cost flat as data grows.

Pure functions only (unit-tested in ``tests/test_bench_peer.py``): the bench measures our
cluster and an etcd cluster with the same load shapes in one run, and :func:`compare` turns the
two sets of phase results into one row per ratio target -- our figure, etcd's, the ratio, and
whether it meets the issue's bound. :func:`growth_targets` judges the ``growth`` phase (a long
batched run) against the cost-flat targets, and :func:`growth_summary` computes what it reports
from completions and cumulative CPU samples.

A ratio is always ``ours / etcd's``: for rates higher is better (``>=``), for latency and CPU
per write lower is better (``<=``). A row is ``conclusive`` only when both sides measured it
without errors under the load the target names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from tools.bench_stats import ACHIEVED_RATE_MIN_FRACTION, Target, metric_value, verdict

__all__ = [
    "GROWTH_TARGETS",
    "RATIO_TARGETS",
    "RatioTarget",
    "compare",
    "cpu_at",
    "growth_summary",
    "growth_targets",
    "longest_gap_s",
]

ISSUE = 13
CLIENTS_FOR_TARGET = 32
PACED_RATE_FOR_TARGET = 1000.0
TXN_SIZE_FOR_TARGET = 100
GROWTH_RECORDS_FOR_TARGET = 1_000_000
GROWTH_SHARE = 0.1  # first and last 10% of the records


@dataclass(frozen=True, slots=True)
class RatioTarget:
    """``ours.metric / etcd.metric`` in ``phase`` compared with ``threshold``."""

    name: str
    phase: str
    metric: str  # a key of both phase results, or a dotted path
    op: str  # ">=" or "<="
    threshold: float
    description: str

    def passes(self, ratio: float) -> bool:
        return ratio >= self.threshold if self.op == ">=" else ratio <= self.threshold


RATIO_TARGETS: tuple[RatioTarget, ...] = (
    RatioTarget(
        "single_write_vs_etcd",
        "single-write",
        "records_per_s",
        ">=",
        1.0,
        "committed single writes at 32 clients vs etcd's single puts at 32 clients",
    ),
    RatioTarget(
        "batch_write_vs_etcd",
        "batch-write",
        "records_per_s",
        ">=",
        0.7,
        "committed batched records/s vs etcd's puts/s in txns of 100",
    ),
    RatioTarget(
        "paced_write_p99_vs_etcd",
        "paced-write",
        "latency_ms.p99",
        "<=",
        2.0,
        "write p99 at an open-loop 1,000 records/s vs etcd's p99 at 1,000 puts/s",
    ),
    RatioTarget(
        "read_vs_etcd",
        "read",
        "records_per_s",
        ">=",
        0.5,
        "single-record reads at 32 clients vs etcd's serializable gets at 32 clients",
    ),
    RatioTarget(
        "cpu_per_single_write_vs_etcd",
        "single-write",
        "cluster_cpu_ms_per_record",
        "<=",
        2.0,
        "cluster CPU per committed single write vs etcd's CPU per single put",
    ),
)


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs <= 0:
        return None
    return round(ours / theirs, 3)


def _phase_note(side: str, result: dict[str, Any], params: dict[str, Any]) -> str | None:
    """Why one side's phase cannot settle a target although it ran."""
    if result.get("errors"):
        return f"{side}: the phase had errors"
    if result.get("rate_target_per_s"):
        offered = float(result["rate_target_per_s"])
        achieved = float(result.get("records_per_s") or 0.0)
        if achieved < ACHIEVED_RATE_MIN_FRACTION * offered:
            return f"{side}: only {achieved:.0f} of the {offered:g}/s offered completed per second"
    return None


def _conditions(
    target: RatioTarget,
    ours: dict[str, Any],
    theirs: dict[str, Any],
    params: dict[str, Any],
) -> str | None:
    if target.phase in ("single-write", "batch-write") and params.get("index_writes") is not True:
        return "our nodes do not acknowledge writes through the consensus log (index_writes)"
    if target.phase in ("single-write", "read"):
        clients = params.get("clients")
        if clients != CLIENTS_FOR_TARGET:
            return f"the target is at 32 clients; this run used {clients}"
    if target.phase == "batch-write" and params.get("peer_txn_size") != TXN_SIZE_FOR_TARGET:
        return f"the target is etcd in txns of 100; this run used {params.get('peer_txn_size')}"
    if target.phase == "paced-write" and float(params.get("rate", 0)) != PACED_RATE_FOR_TARGET:
        return f"the target is at 1,000/s; this run paced {float(params.get('rate', 0)):g}/s"
    return _phase_note("ours", ours, params) or _phase_note("etcd", theirs, params)


def compare(
    ours: dict[str, dict[str, Any]],
    theirs: dict[str, dict[str, Any]],
    params: dict[str, Any],
) -> list[dict[str, Any]]:
    """One row per ratio target: both figures, the ratio, ``pass`` (always a bool) and
    ``conclusive`` (False when a side did not measure it or ``note`` says why it cannot settle
    the target)."""
    rows = []
    for target in RATIO_TARGETS:
        mine, peer = ours.get(target.phase), theirs.get(target.phase)
        ours_value = None if mine is None else metric_value(mine, target.metric)
        etcd_value = None if peer is None else metric_value(peer, target.metric)
        ratio = _ratio(ours_value, etcd_value)
        if ratio is None:
            note: str | None = "not measured on both sides (phase not run, or no etcd figure)"
        else:
            note = _conditions(target, mine or {}, peer or {}, params)
        rows.append(
            {
                "name": target.name,
                "issue": ISSUE,
                "phase": target.phase,
                "metric": target.metric,
                "description": target.description,
                "ours": ours_value,
                "etcd": etcd_value,
                "ratio": ratio,
                "op": target.op,
                "threshold": target.threshold,
                "pass": ratio is not None and target.passes(ratio),
                "conclusive": ratio is not None and note is None,
                "note": note,
            }
        )
    return rows


# ---------------------------------------------------------------- cost flat as data grows


GROWTH_TARGETS: tuple[Target, ...] = tuple(
    Target(name, "growth", metric, "<=", threshold, unit, description, issue=ISSUE)
    for name, metric, threshold, unit, description in (
        (
            "growth_cpu_per_record_flat",
            "cpu_per_record_last_over_first",
            1.25,
            "x",
            "cluster CPU per record of the last 10% of records within 1.25x of the first 10%",
        ),
        (
            "growth_node_memory_flat",
            "node_rss_growth_second_half_pct_max",
            10.0,
            "%",
            "each node's RSS grows at most 10% over the second half of the growth run",
        ),
        (
            "growth_no_stall",
            "longest_gap_s",
            1.0,
            "s",
            "no gap longer than 1 s between successful completions",
        ),
    )
)


def growth_targets(result: dict[str, Any] | None, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per cost-flat target, on the ``growth`` phase (None: not run)."""
    rows = []
    records = int(params.get("growth_records", 0))
    for target in GROWTH_TARGETS:
        measured = None if result is None else metric_value(result, target.metric)
        note: str | None = None
        if measured is None:
            note = "not measured (growth phase not run)"
        elif records < GROWTH_RECORDS_FOR_TARGET:
            note = f"the target is over 10^6 records; this run wrote {records}"
        elif (result or {}).get("errors"):
            note = "the phase had errors"
        rows.append(verdict(target, measured, note))
    return rows


def cpu_at(series: Sequence[tuple[float, float]], at_s: float) -> float | None:
    """Cumulative CPU seconds at ``at_s``, linear between the (time, cpu) samples around it;
    the nearest sample outside them; None without samples."""
    if not series:
        return None
    if at_s <= series[0][0]:
        return series[0][1]
    for (t0, c0), (t1, c1) in pairwise(series):
        if t0 <= at_s <= t1:
            return c0 if t1 == t0 else c0 + (c1 - c0) * (at_s - t0) / (t1 - t0)
    return series[-1][1]


def _time_at_share(completions: Sequence[tuple[float, int]], share: float) -> float:
    """When the cumulative ok records first reached ``share`` of the total."""
    total = sum(ok for _, ok in completions)
    done = 0
    for t, ok in completions:
        done += ok
        if done >= share * total:
            return t
    return completions[-1][0]


def longest_gap_s(completions: Sequence[tuple[float, int]], start_s: float) -> float | None:
    """The longest time without a successful completion, from the first success to the last
    (before the first, the cluster is still answering the first requests: that is latency)."""
    times = sorted(t for t, ok in completions if ok > 0 and t >= start_s)
    if not times:
        return None
    return round(max((b - a for a, b in pairwise(times)), default=0.0), 3)


def growth_summary(
    completions: Sequence[tuple[float, int]],
    cpu_series: Sequence[tuple[float, float]],
    start_s: float,
) -> dict[str, Any]:
    """CPU per record (ms) of the first and last 10% of the records and their ratio, from
    (completion time, ok records) rows and the cluster's summed cumulative CPU samples."""
    rows = sorted((t, ok) for t, ok in completions if ok > 0)
    total = sum(ok for _, ok in rows)
    empty = {"cpu_ms_per_record_first": None, "cpu_ms_per_record_last": None}
    if not rows or not cpu_series or total == 0:
        return {**empty, "cpu_per_record_last_over_first": None, "longest_gap_s": None}
    first_end = _time_at_share(rows, GROWTH_SHARE)
    last_start = _time_at_share(rows, 1.0 - GROWTH_SHARE)
    end = rows[-1][0]
    first_records = sum(ok for t, ok in rows if t <= first_end)
    last_records = sum(ok for t, ok in rows if t > last_start)

    def cpu_ms_per_record(a: float, b: float, records: int) -> float | None:
        ca, cb = cpu_at(cpu_series, a), cpu_at(cpu_series, b)
        if ca is None or cb is None or records == 0:
            return None
        return round((cb - ca) / records * 1000.0, 4)

    first = cpu_ms_per_record(start_s, first_end, first_records)
    last = cpu_ms_per_record(last_start, end, last_records)
    return {
        "cpu_ms_per_record_first": first,
        "cpu_ms_per_record_last": last,
        "cpu_per_record_last_over_first": (
            round(last / first, 3) if first and last is not None else None
        ),
        "records_first": first_records,
        "records_last": last_records,
        "longest_gap_s": longest_gap_s(rows, start_s),
    }
