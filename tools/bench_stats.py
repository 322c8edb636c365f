"""The pure arithmetic of ``baas-bench``: percentiles, pacing, throughput windows, issue #4's
targets (elections under steady load, fail-over; issue #13's ratios are in ``bench_peer``).

Nothing here does I/O or reads a clock, so every function is unit-tested directly
(``tests/test_bench.py``). Latencies are in seconds on input and reported in milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACHIEVED_RATE_MIN_FRACTION",
    "TARGETS",
    "Target",
    "evaluate_targets",
    "latency_summary_ms",
    "metric_value",
    "pacing_offsets_s",
    "percentile",
    "split_count",
    "throughput_windows",
    "verdict",
    "window_summary",
]


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values; None when empty.

    Nearest rank always returns a value that was observed, so a p99 over 100 samples is the
    99th smallest, never an interpolation between two requests.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    values = sorted(latencies_s)

    def ms(q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(value * 1000.0, 3)

    return {"p50": ms(50), "p90": ms(90), "p99": ms(99), "max": ms(100)}


def pacing_offsets_s(
    rate_per_s: float, duration_s: float, proc_index: int = 0, procs: int = 1
) -> list[float]:
    """Scheduled send times (seconds from the phase start) of one client process.

    The whole run sends at ``rate_per_s`` for ``duration_s``: send ``i`` is due at ``i / rate``.
    Process ``p`` of ``procs`` takes sends ``p, p + procs, ...``, so the processes interleave
    into one evenly spaced stream. An open-loop client measures latency from these times, not
    from when it got round to sending (no coordinated omission).
    """
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    if not 0 <= proc_index < procs:
        raise ValueError("proc_index must be in 0..procs-1")
    total = round(rate_per_s * duration_s)
    return [i / rate_per_s for i in range(proc_index, total, procs)]


def split_count(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` shares that differ by at most one (first ones larger)."""
    if parts < 1 or total < 0:
        raise ValueError("need parts >= 1 and total >= 0")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def throughput_windows(
    completions: Sequence[tuple[float, int]], start_s: float, window_s: float
) -> list[tuple[float, float]]:
    """Records/s per window: ``completions`` are (completion time, records) pairs.

    Returns (window start relative to ``start_s``, records/s) for every window from the start
    to the last completion. The last window is usually partial: it is scaled by its length, or
    folded into the window before it when shorter than half a window (a few large requests
    finishing in a sliver of time would otherwise show as a spike).
    """
    if window_s <= 0:
        raise ValueError("window must be positive")
    if not completions:
        return []
    span_s = max(t for t, _ in completions) - start_s
    count = max(1, math.ceil(span_s / window_s))
    last_s = span_s - (count - 1) * window_s  # length of the last window
    if count > 1 and last_s < window_s / 2:
        count, last_s = count - 1, last_s + window_s
    totals = [0] * count
    for t, records in completions:
        totals[min(count - 1, max(0, int((t - start_s) // window_s)))] += records
    lengths = [window_s] * (count - 1) + [max(last_s, 1e-9)]
    return [
        (round(i * window_s, 3), records / length)
        for i, (records, length) in enumerate(zip(totals, lengths, strict=True))
    ]


def window_summary(windows: Sequence[tuple[float, float]]) -> dict[str, float | None]:
    """Min and median of the full windows (the first and last, often partial, are left out
    when there are at least three): the minimum shows the dips an average hides."""
    rates = [rate for _, rate in windows]
    if len(rates) >= 3:
        rates = rates[1:-1]
    if not rates:
        return {"min": None, "median": None}
    ordered = sorted(rates)
    return {"min": round(ordered[0], 1), "median": round(ordered[len(ordered) // 2], 1)}


@dataclass(frozen=True, slots=True)
class Target:
    """One target of an issue: ``phase``'s ``metric`` compared with ``threshold``."""

    name: str
    phase: str
    metric: str  # a key of the phase result, or "latency_ms.<q>"
    op: str  # ">=" or "<="
    threshold: float
    unit: str
    description: str
    issue: int = 4

    def passes(self, measured: float) -> bool:
        return measured >= self.threshold if self.op == ">=" else measured <= self.threshold


TARGETS: tuple[Target, ...] = (
    Target(
        "steady_zero_elections",
        "steady",
        "elections",
        "<=",
        0,
        "elections",
        "no election (term increase) during 5 minutes of steady paced writes",
    ),
    Target(
        "leader_failover",
        "kill-leader",
        "recovery_s",
        "<=",
        3,
        "s",
        "after a SIGKILL of the leader, a write sent after the kill succeeds within 3 s",
    ),
)

STEADY_S_FOR_TARGET = 300.0
ACHIEVED_RATE_MIN_FRACTION = 0.95  # below, an open-loop run measured a queue, not the target
KILL_SEND_LAG_MS_MAX = 100.0  # beyond, a kill-leader run measures the backlog, not fail-over


def metric_value(result: dict[str, Any], metric: str) -> float | None:
    """``metric`` (dotted path) of a result, as a number; None when absent."""
    value: Any = result
    for part in metric.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, int | float) else None


def _conditions(target: Target, result: dict[str, Any], params: dict[str, Any]) -> str | None:
    """Why this run cannot settle issue #4's target although it measured it (None: it can)."""
    if target.phase == "steady":
        held_s = float(params.get("steady_duration_s", 0))
        if held_s < STEADY_S_FOR_TARGET:
            return f"the target is 5 minutes of steady load; this run held {held_s:g} s"
        offered = float(result.get("rate_target_per_s") or 0.0)
        achieved = float(result.get("records_per_s") or 0.0)
        if achieved < ACHIEVED_RATE_MIN_FRACTION * offered:
            return (
                f"only {achieved:.0f} of the {offered:g} records/s offered completed: an "
                "overload, not a steady load (lower --rate)"
            )
    if target.phase == "kill-leader":  # errors are expected: writes fail while no node leads
        lag_ms = metric_value(result, "send_lag_ms.p99")
        if lag_ms is not None and lag_ms > KILL_SEND_LAG_MS_MAX:
            return (
                f"sends went out up to {lag_ms:.0f} ms late (the load was behind): the first "
                "write after the kill waited behind a backlog; lower --kill-rate"
            )
        return None
    if result.get("errors"):
        return "the phase had errors"
    return None


def evaluate_targets(
    phases: dict[str, dict[str, Any]], params: dict[str, Any]
) -> list[dict[str, Any]]:
    """One verdict per target: ``pass`` is always a bool (False when not measured);
    ``conclusive`` says whether this run's parameters are the ones the target names."""
    verdicts = []
    for target in TARGETS:
        result = phases.get(target.phase)
        measured = None if result is None else metric_value(result, target.metric)
        note = None if measured is None else _conditions(target, result or {}, params)
        verdicts.append(verdict(target, measured, note))
    return verdicts


def verdict(target: Target, measured: float | None, note: str | None) -> dict[str, Any]:
    """A target's verdict row: ``pass`` is always a bool (False when not measured);
    ``conclusive`` is False when not measured or when ``note`` says why the run cannot settle
    the target."""
    if measured is None:
        note = note or "not measured (phase not run)"
    return {
        "name": target.name,
        "issue": target.issue,
        "phase": target.phase,
        "metric": target.metric,
        "op": target.op,
        "threshold": target.threshold,
        "unit": target.unit,
        "description": target.description,
        "measured": measured,
        "pass": measured is not None and target.passes(measured),
        "conclusive": measured is not None and note is None,
        "note": note,
    }
