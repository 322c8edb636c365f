"""Payments on the log (feature 9) through the node's dispatcher over a real LevelDB, for the
payments-on-the-log tests and the v9 log-replay fixture.

Plain helpers (``from paymentsopskit import shop_world``). :func:`shop_world` is
:func:`bridgeopskit.world` at feature 9 with the payments roles added by a ``partner.put``
(as an older partner adds them), demo-shop's points defined (no validity period) and issued to
alice and carol. :func:`pm_op` builds a ``ledger.ops`` operation carrying a payments request
(``pm``), with the users' EIP-712 approvals over ``operation_digest(record id, pm bytes)`` or
one-time codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bridgeopskit import (
    ALICE,
    ALICE_REF,
    CAROL,
    CAROL_REF,
    POINTS,
    Node,
    rid,
    wallet_account,
    world,
)
from eth_account.signers.local import LocalAccount
from identitykit import OPERATOR, OTHER_SHOP, SHOP, T0_S, address, code_entry, sign
from test_index_batch import prop

from business.bridge import DefinePoints, IssuePoints
from business.identity import (
    BRIDGE_ROLES,
    DEFAULT_ROLES,
    PAYMENT_ROLES,
    Mode,
    PartnerPut,
    PartnerStatus,
    eip712,
)
from business.identity.approvals import (
    CodeApproval,
    SignedApproval,
    encode_approvals,
    operation_digest,
)
from business.identity.ids import code_hash
from business.ledger.outcome import OperationOutcome
from business.payments import encode_request
from business.payments.model import Request
from node.consensus.ledger_ops import Operation
from node.consensus.state_machine import AppEntry
from node.metrics import Metrics

T = Mode.TEST
ALICE_PTS = wallet_account(ALICE, POINTS)
CAROL_PTS = wallet_account(CAROL, POINTS)
ISSUED = 1000  # points issued to alice and to carol


def pm_op(
    n: int,
    request: Request,
    *,
    partner: bytes | None = SHOP,
    mode: int | None = T,
    refs: tuple[bytes, ...] = (),
    signers: tuple[LocalAccount, ...] = (),
    codes: tuple[bytes, ...] = (),
) -> Operation:
    """Operation ``n`` (its record id ``rid(n)`` must be the request's op) carrying
    ``request``, approved by ``signers`` (EIP-712) and/or one-time ``codes`` (secrets)."""
    assert request.op == rid(n), "a payments request's op is its operation's record id"
    raw = encode_request(request)
    items: list[Any] = []
    if signers:
        digest = operation_digest(rid(n), raw)
        deadline = T0_S + 30 * 86_400
        items += [
            SignedApproval(
                address(s), deadline, sign(s, eip712.Approve(T, digest, address(s), deadline))
            )
            for s in signers
        ]
    items += [CodeApproval(c) for c in codes]
    approvals = encode_approvals(items) if items else None
    return Operation(prop(n), None, approvals, partner, mode, refs, payments=raw)


def run(node: Node, n: int, request: Request, now_ms: int | None = None, **kw: Any) -> str:
    """Apply one payments operation alone in an entry; its result code."""
    (result,) = node.ops(pm_op(n, request, **kw), now_ms=now_ms)
    outcome: OperationOutcome = result.detail["outcome"]
    assert outcome.result is not None
    return outcome.result


def issue_code(
    node: Node,
    account: LocalAccount,
    secret: bytes,
    *,
    ledger: int = POINTS,
    limit: int = 500,
    expiry: int = T0_S + 3600,
) -> bytes:
    """``account`` issues a one-time code (its hash on the log); the hash."""
    hashed = code_hash(secret)
    entry = code_entry(account, hashed, ledger=ledger, amount_limit=limit, expiry=expiry)
    applied = node.apply(AppEntry("code.issue", entry.to_body()))
    assert applied.outcome.code == "ok", applied.outcome
    return hashed


def shop_world(path: Path, metrics: Metrics | None = None) -> Node:
    """Feature 9; demo-shop and other-shop given the payments roles; demo-shop's points
    (``POINTS``, no validity) issued to alice and carol (:data:`ISSUED` each)."""
    node = world(path, feature=9, metrics=metrics)
    for partner, roles in (
        (SHOP, DEFAULT_ROLES + BRIDGE_ROLES + PAYMENT_ROLES),
        (OTHER_SHOP, DEFAULT_ROLES + PAYMENT_ROLES),
    ):
        put = PartnerPut(partner, PartnerStatus.ACTIVE, roles, OPERATOR)
        assert node.apply(AppEntry("partner.put", put.to_body())).outcome.code == "ok"
    assert node.code(DefinePoints(rid(1), SHOP, POINTS, "SHOP", 0, 0)) == "ok"
    for n, (account, ref) in enumerate(((ALICE_PTS, ALICE_REF), (CAROL_PTS, CAROL_REF)), 2):
        assert node.code(IssuePoints(rid(n), SHOP, POINTS, account, ISSUED), refs=(ref,)) == "ok"
    return node
