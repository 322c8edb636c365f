"""The ledger's metrics: what the operations entries did, how long their apply took.

:class:`MeasuredLedgerOps` wraps the pure :class:`~node.consensus.ledger_ops.LedgerOps` state
machine (which may not read a clock) and counts, for every entry this node applies:

* ``ledger_operations_total{result}`` -- operations by result: ``succeeded`` / ``failed``
  (created, every event ``ok``/``exists`` or not), ``refused`` (created, but refused whole by
  the scope or approval check of feature 7), ``plain`` (a record without events),
  ``existing`` (a retry answered with its first outcome), or the refusal (``conflict``,
  ``expired``, ``malformed``, ``linked_event_chain_open``);
* ``ledger_apply_seconds`` -- the apply time of each ``ledger.ops`` / ``ledger.tick`` entry
  (index puts, ledger events and the expiry sweep together);
* ``ledger_entry_operations`` -- operations per ``ledger.ops`` entry (the leader's batching);

and, for the Bridge's operations (log feature 8; the operation's own result code):

* ``bridge_operations_total{result}`` -- Bridge requests by ``<kind>:<result>`` (``Swap:ok``,
  ``Swap:reserve_exhausted``, ``IssuePoints:ok``, ...): swaps by result among them;
* ``bridge_limit_refusals_total{code}`` -- requests refused by a limit (a window, a size
  bound, an exhausted reserve or liquidity);

and for payments and the Market (log feature 9):

* ``payments_operations_total{result}`` -- payments requests by ``<kind>:<result>``
  (``Authorise:ok``, ``Capture:payment_expired``, ``PlaceOrder:sold_out``, ...);

and :func:`ledger_stat_families` reads at scrape time the pending amounts per ledger (the
ledgers' running totals: what pending transfers hold reserved) and the reserve level of
every partner that set a reserve threshold (``bridge_reserve_level{reserve}``, label
``<partner hex>/<BAAS ledger>``, in BAAS minor units), from the applied state, and
``bridge_reserve_low_total{mode}``: the ``reserve.low`` events the reserves raised (log feature
11; each reserve's count is in its ``br/rl/`` record, so the counter is the replicated state's,
the same on every node and across restarts). Labelled by mode only, ``test`` / ``live``: a
partner label would grow with the partners (the per-partner count is in the reserve read).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import Histogram

from business.bridge import BridgeResult, role_account
from business.bridge.model import RESERVE_LOW_PREFIX, RESERVE_PREFIX, decode_reserve_low
from business.identity.ids import Mode, mode_of_ledger
from business.identity.model import REFUSAL_CODES
from business.ledger.model import TOTALS_PREFIX, account_key, decode_account, decode_totals
from business.ledger.outcome import OperationOutcome
from node.consensus.ledger_ops import LEDGER_OPS, LedgerOps
from node.consensus.record_index import BatchOutcome
from node.consensus.state_machine import AppEntry, ApplyOutcome, LogPosition, StateView
from node.metrics import Metrics, StatFamily

__all__ = ["MeasuredLedgerOps", "ledger_stat_families"]

OPS_PER_ENTRY_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LIMIT_CODES = frozenset(
    r.value
    for r in (
        BridgeResult.USER_WINDOW_LIMIT,
        BridgeResult.PARTNER_WINDOW_LIMIT,
        BridgeResult.BELOW_MIN,
        BridgeResult.ABOVE_MAX,
        BridgeResult.RESERVE_EXHAUSTED,
        BridgeResult.LIQUIDITY_EXHAUSTED,
    )
)


class MeasuredLedgerOps:
    """:class:`LedgerOps` with its metrics; the same state machine to the dispatcher."""

    def __init__(self, inner: LedgerOps, metrics: Metrics) -> None:
        self._inner = inner
        self.prefix = inner.prefix
        self.entry_types = inner.entry_types
        self.operations: Counter[str] = Counter()
        self.bridge: Counter[str] = Counter()  # "<kind>:<result>"
        self.bridge_limits: Counter[str] = Counter()  # limit refusal code
        self.payments: Counter[str] = Counter()  # "<kind>:<result>"
        self._seconds = metrics.histogram(
            "ledger_apply_seconds", "apply time of one ledger.ops or ledger.tick entry"
        )
        self._per_entry = Histogram(
            f"{metrics.prefix}_ledger_entry_operations",
            "operations per ledger.ops entry",
            buckets=OPS_PER_ENTRY_BUCKETS,
            registry=metrics.registry,
        )

    def apply(self, entry: AppEntry, position: LogPosition, view: StateView) -> ApplyOutcome:
        started = time.perf_counter()
        outcome = self._inner.apply(entry, position, view)
        self._seconds.observe(time.perf_counter() - started)
        if entry.type == LEDGER_OPS and outcome.code == "applied":
            results: tuple[BatchOutcome, ...] = outcome.detail["results"]
            self._per_entry.observe(len(results))
            self.operations.update(_result_label(r) for r in results)
            for r in results:
                bridged = r.detail.get("outcome") if "bridge" in r.detail else None
                if isinstance(bridged, OperationOutcome) and bridged.result is not None:
                    self.bridge[f"{r.detail['bridge']}:{bridged.result}"] += 1
                    if bridged.result in LIMIT_CODES:
                        self.bridge_limits[bridged.result] += 1
                paid = r.detail.get("outcome") if "payments" in r.detail else None
                if isinstance(paid, OperationOutcome) and paid.result is not None:
                    self.payments[f"{r.detail['payments']}:{paid.result}"] += 1
        return outcome


def _result_label(result: BatchOutcome) -> str:
    outcome = result.detail.get("outcome")
    if result.code == "created":
        if not isinstance(outcome, OperationOutcome):
            return "plain"
        if outcome.result in REFUSAL_CODES or (
            outcome.events and outcome.events[0].result in REFUSAL_CODES
        ):
            return "refused"
        return "succeeded" if outcome.succeeded else "failed"
    return result.code


def pending_amounts(items: Iterator[tuple[bytes, bytes]]) -> dict[str, float]:
    """Per ledger, the amount pending transfers hold (from the ``lg/lt/`` running totals)."""
    out: dict[str, float] = {}
    for key, value in items:
        totals = decode_totals(int.from_bytes(key[len(TOTALS_PREFIX) :], "big"), value)
        out[str(totals.ledger)] = float(totals.debits_pending)
    return out


def reserve_levels(
    state_items: Callable[[bytes], Iterator[tuple[bytes, bytes]]],
) -> dict[str, float]:
    """The level of every reserve whose partner set a threshold (``br/rs/`` keys)."""
    out: dict[str, float] = {}
    for key, _ in state_items(RESERVE_PREFIX):
        ledger = int.from_bytes(key[len(RESERVE_PREFIX) : len(RESERVE_PREFIX) + 4], "big")
        partner = key[len(RESERVE_PREFIX) + 4 :]
        account = role_account(partner, ledger, "reserve")
        wanted = account_key(account)
        for found, raw in state_items(wanted):
            if found == wanted:
                a = decode_account(account, raw)
                level = a.credits_posted - a.debits_posted - a.debits_pending
                out[f"{partner.hex()}/{ledger}"] = float(level)
            break
    return out


def reserve_low_counts(
    state_items: Callable[[bytes], Iterator[tuple[bytes, bytes]]],
) -> dict[str, float]:
    """``reserve.low`` events raised, by mode (the ``br/rl/`` records' counts summed)."""
    out = {"test": 0.0, "live": 0.0}
    for key, raw in state_items(RESERVE_LOW_PREFIX):
        ledger = int.from_bytes(key[len(RESERVE_LOW_PREFIX) : len(RESERVE_LOW_PREFIX) + 4], "big")
        mode = "live" if mode_of_ledger(ledger) == Mode.LIVE else "test"
        out[mode] += decode_reserve_low(raw).count
    return out


def ledger_stat_families(
    measured: MeasuredLedgerOps,
    state_items: Callable[[bytes], Iterator[tuple[bytes, bytes]]],
) -> list[StatFamily]:
    def operations() -> Mapping[str, float]:
        return {k: float(v) for k, v in measured.operations.items()}

    return [
        StatFamily(
            "ledger_operations",
            "ledger operations applied, by result",
            operations,
            counter=True,
            label="result",
        ),
        StatFamily(
            "ledger_pending_amount",
            "amount held by pending transfers, by ledger (minor units)",
            lambda: pending_amounts(state_items(TOTALS_PREFIX)),
            label="ledger",
        ),
        StatFamily(
            "bridge_operations",
            "Bridge requests applied, by kind and result (kind:result)",
            lambda: {k: float(v) for k, v in measured.bridge.items()},
            counter=True,
            label="result",
        ),
        StatFamily(
            "bridge_limit_refusals",
            "Bridge requests refused by a limit, by code",
            lambda: {k: float(v) for k, v in measured.bridge_limits.items()},
            counter=True,
            label="code",
        ),
        StatFamily(
            "payments_operations",
            "payments and Market requests applied, by kind and result (kind:result)",
            lambda: {k: float(v) for k, v in measured.payments.items()},
            counter=True,
            label="result",
        ),
        StatFamily(
            "bridge_reserve_level",
            "reserve level of partners with a reserve threshold (BAAS minor units)",
            lambda: reserve_levels(state_items),
            label="reserve",
        ),
        StatFamily(
            "bridge_reserve_low",
            "reserve.low events raised (a reserve fell below its threshold), by mode",
            lambda: reserve_low_counts(state_items),
            counter=True,
            label="mode",
        ),
    ]
