"""What a core above the ledger makes of the ledger's verdict on its chain (Bridge, payments).

The Bridge (:meth:`business.bridge.core.Bridge.settle`) and payments
(:meth:`business.payments.core.Payments.settle`) each turn one request into one linked chain
and, after ``Ledger.apply``, name the outcome in their own terms: the first event that failed
on its own (not ``linked_event_failed``: the others failed because of it) decides, a shortfall
(``exceeds_credits``, or a debit account that does not exist yet and so holds nothing) is what
the core said that event's shortfall means (a reserve, a wallet, a settlement account), other
ledger codes the core names mean what it says, and anything else is the core's "ledger
refused". One function, so the two cores cannot come to read the same verdict differently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from business.ledger.model import Result, TransferResult

__all__ = ["SHORT_OF_FUNDS", "chain_verdict"]

SHORT_OF_FUNDS = frozenset({TransferResult.EXCEEDS_CREDITS, TransferResult.DEBIT_ACCOUNT_NOT_FOUND})
C = TypeVar("C")


def chain_verdict(
    results: Sequence[Result],
    limits: Sequence[tuple[int, C]],
    refused: C,
    meanings: Mapping[TransferResult, C] | None = None,
) -> tuple[C, dict[str, Any]] | None:
    """None when the chain took effect; else the core's code and ``{"ledger_code", "event"}``.

    ``limits``: event index -> what a shortfall on that event means; ``meanings``: other
    ledger codes with a meaning of the core's (payments: ``pending_transfer_expired``);
    ``refused``: the core's code for any other failure.
    """
    failed = next(
        (
            i
            for i, r in enumerate(results)
            if not r.succeeded and r.code.value != "linked_event_failed"
        ),
        None,
    )
    if failed is None:
        return None
    ledger_code = results[failed].code
    code = refused
    if ledger_code in SHORT_OF_FUNDS:
        code = dict(limits).get(failed, refused)
    elif meanings and isinstance(ledger_code, TransferResult) and ledger_code in meanings:
        code = meanings[ledger_code]
    return code, {"ledger_code": ledger_code.value, "event": failed}
