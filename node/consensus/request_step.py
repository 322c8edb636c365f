"""What the Bridge step and the payments step share: approve a core's chain, then run it.

A request of a core above the ledger (the Bridge, feature 8: :mod:`node.consensus.bridge_ops`;
payments, feature 9: :mod:`node.consensus.payments_ops`) becomes a ledger chain in the core's
``prepare``; both steps then run the same two things, here once: identity's approval check
over the chain's debits (:func:`~business.identity.approvals.check_debits`, every debit of a
user's wallet approved over :func:`~business.identity.approvals.operation_digest` of the
record id and the request's wire bytes), and only on ``ok`` the chain through
``Ledger.apply`` at the entry's log time. Pure, like the steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from business.identity.approvals import Debit, DebitRules, check_debits, operation_digest
from business.identity.approvals import Operation as ApprovalOperation
from business.identity.model import REFUSAL_CODES, ApprovalResult, IdentityConfig
from business.identity.scope import Proposer
from business.ledger.core import Ledger
from business.ledger.model import Event, Result
from business.ledger.outcome import OperationOutcome, refused_outcome
from node.consensus.state_machine import Overlay, StateView, Write

__all__ = ["Approved", "approve_and_apply", "refused_request"]


def refused_request(events: Sequence[Event], code: str, now_ms: int) -> OperationOutcome:
    """A request refused whole after its core made the chain: nothing ran. A scope or
    approval refusal lists the chain with the code on every event; a core's own code (not a
    ledger event result) lists none."""
    if code not in REFUSAL_CODES:
        return OperationOutcome(now_ms, (), code)
    return replace(refused_outcome(events, code, now_ms), result=code)


Approved = tuple[list[Result], tuple[Write, ...]]


def approve_and_apply(
    ledger: Ledger,
    identity: IdentityConfig,
    rules: DebitRules,
    checks: StateView,
    layer: Overlay,
    *,
    record_id: bytes,
    raw: bytes,
    proposer: Proposer,
    debits: tuple[Debit, ...],
    approvals: bytes,
    events: Sequence[Event],
    now_ms: int,
) -> ApprovalResult | Approved:
    """The approval refusal (nothing run, nothing written), or the ledger's results of
    ``events`` (their writes already in ``layer``) and the approval's writes (a consumed
    one-time code: the caller adds them once it has settled). ``checks`` is ``layer`` with
    what the check must see and the step writes only on success (owner records)."""
    approval = ApprovalOperation(
        operation_digest(record_id, raw), proposer.partner, proposer.mode, debits
    )
    code, approval_writes = check_debits(checks, identity, approval, approvals, now_ms, rules)
    if code != ApprovalResult.OK:
        return code
    results: list[Result] = []
    if events:
        results, writes = ledger.apply(list(events), now_ms, layer)
        layer.writes.update(writes)
    return results, approval_writes
