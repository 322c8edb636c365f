"""Log time: how a leader stamps entries, bounded by a quorum's clocks, and when it ticks.

Theory of operation
-------------------
Every entry carries ``leader_time_ms``; state machines read it as *log time* (the ledger
expires pending transfers by it, the anchoring lease is judged by it), the same on every
node. Stamps never run backwards along the log, so a stamp that ran ahead would stay ahead
for good: a leader whose clock is an hour fast would expire every pending transfer an hour
early, forever after. So a leader does not stamp with its own clock alone.

**Reports.** Every follower puts its clock input (its core's latest ``now_ms``) into each
append and heartbeat response (``clock_ms``). The leader keeps the latest report per peer for
its term, and the offset it measured (report minus its own clock on arrival) for operators.

**The bound.** A new entry is stamped::

    stamp = max(last stamp, clamp(own clock, Q - clock_offset_max_ms, Q + clock_offset_max_ms))

where ``Q`` is the quorum clock: the quorum-th highest clock among the voters (the leader's
own counting, the others' latest reports). At least a quorum of voters has a clock at or
above ``Q``, so a leader with a fast clock cannot stamp further ahead of a majority's clocks
than the tolerance; and a leader with a slow clock stamps no further behind ``Q`` than the
tolerance, so log time keeps moving at the quorum's pace instead of stalling for as long as
that leader leads. A correct leader stamps its own clock: the reports lag by about a
heartbeat and a one-way delay, well inside the tolerance. A minority of bad clocks, the
leader's included, never moves ``Q``; a majority of bad clocks does (no rule can tell which
side is right then; the offsets show it to operators). After a fast leader, log time stalls
until the clocks catch up with it (never back).

Reports are not extrapolated with the leader's clock since they arrived: a leader whose own
clock steps forward (a bad NTP step) would carry the followers' estimates along with it. They
are refreshed by every answered Append or heartbeat (a peer sent no Append for a heartbeat
interval gets a heartbeat), so their age stays well under the tolerance, and an old report
only lowers the bound (clocks move forward), never raises it.

*Unknown clocks.* A voter not heard from in this term does not count: until a quorum has
answered, stamps do not advance (a new leader's no-op carries the last stamp). A voter that
answered without ``clock_ms`` (older code during a rolling upgrade, or a core never given the
time) does not constrain: it counts as the leader's own clock, which is how every leader
stamped before the bound existed; once a majority reports, the bound holds.

There is no separate per-step limit: the quorum bound already caps how far any stamp may be
ahead of a majority's clocks, and a rate limit on top would only make a correct leader's log
time crawl back to real time after a stall.

**Idle ticks.** Log time moves only when an entry is stamped. A leader that has appended
nothing for ``log_tick_interval_ms`` of its own clock appends a tick entry (the ledger's
``ledger.tick``, whose apply runs the expiry sweep), one at a time and never while other
entries are on their way to commit (:func:`tick_due`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = [
    "UNKNOWN_CLOCK",
    "clock_alarm",
    "next_stamp",
    "quorum_clock",
    "tick_due",
]

UNKNOWN_CLOCK = -1  # a report from a voter that sends no clock: counts as the leader's own


def quorum_clock(own_ms: int, reports: Iterable[int], quorum: int) -> int | None:
    """The quorum-th highest voter clock, or None while fewer than a quorum is known.

    ``reports`` are the other voters' latest clocks (:data:`UNKNOWN_CLOCK` for one that sends
    none); ``own_ms`` is the leader's clock, counted as one voter's (a leader is a voter).
    """
    clocks = [own_ms] + [own_ms if r == UNKNOWN_CLOCK else r for r in reports]
    if len(clocks) < quorum:
        return None
    clocks.sort(reverse=True)
    return clocks[quorum - 1]


def next_stamp(
    last_stamp_ms: int, own_ms: int, quorum_ms: int | None, clock_offset_max_ms: int
) -> int:
    """The stamp of the next entry: the leader's clock within the tolerance of the quorum
    clock, never backwards along the log; the last stamp while no quorum clock is known."""
    if quorum_ms is None:
        return last_stamp_ms
    low, high = quorum_ms - clock_offset_max_ms, quorum_ms + clock_offset_max_ms
    return max(last_stamp_ms, min(max(own_ms, low), high))


def tick_due(*, own_ms: int, last_append_ms: int, interval_ms: int, busy: bool) -> bool:
    """Whether a leader should append a tick entry now.

    ``last_append_ms`` is the leader's own clock when it last appended anything (its no-op
    counts); ``busy``: entries are on their way to commit or a tick is in flight. Measured on
    the leader's clock, not on log time: while the bound holds log time back, log time lags
    the clock for good and would ask for a tick at every turn.
    """
    return not busy and own_ms - last_append_ms >= interval_ms


def clock_alarm(offsets_ms: Mapping[str, int], clock_offset_max_ms: int) -> bool:
    """Whether an operator should look at the clocks: a peer's measured offset from the
    leader's clock exceeds the tolerance (one of the two clocks is bad; a minority of bad
    clocks does not move log time, but a majority would)."""
    return any(abs(ms) > clock_offset_max_ms for ms in offsets_ms.values())
