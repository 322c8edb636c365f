"""Log feature 13: an operation that presents a user's one-time code spends it, whatever its
outcome (business/identity/approvals.py ``consume_presented``), on a real LevelDB.

Each case presents alice's code in an operation that does not go through (refused by scope,
by the approval check, by the ledger, by the Bridge or payments, or answered as a retry), then
presents the same code in a valid debit or redemption: at feature 13 that is ``code_used``;
before, the old rules replay unchanged (the code stays valid unless the failed operation had
already consumed it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from bridgeopskit import ALICE, ALICE_REF, BAAS, POINTS, Node, market, rid, wallet_account, world
from identitykit import SHOP, code_entry
from ledgerindexkit import RESERVE, fund, op, results, upgrade_to_13
from paymentsopskit import issue_code, shop_world
from paymentsopskit import run as pm_run
from test_index_batch import prop

from business.bridge import RedeemPoints
from business.bridge.wire import encode_request
from business.identity.approvals import CodeApproval, encode_approvals, operation_digest
from business.identity.ids import code_hash, transfer_id
from business.identity.model import CODE_PREFIX, decode_code
from business.ledger import CreateTransfer, encode_events
from business.payments.model import RedeemCode
from node.consensus.ledger_ops import Operation
from node.consensus.state_machine import AppEntry

ALICE_BAAS, ALICE_PTS = wallet_account(ALICE, BAAS), wallet_account(ALICE, POINTS)
CODE = b"c" * 16
WITH_CODE = encode_approvals([CodeApproval(CODE)])


def debit(
    n: int, amount: int, credit: int = RESERVE, approvals: bytes | None = WITH_CODE
) -> Operation:
    move = CreateTransfer(transfer_id(rid(n), 0), ALICE_BAAS, credit, amount, BAAS, 1)
    return op(n, [move], approvals=approvals)


def alice_with_code(path: Path, feature: int, ledger: int = BAAS) -> Node:
    """demo-shop funded, alice holding 100 BAAS, her code (limit 500) issued on ``ledger``."""
    node = world(path, feature=feature)
    fund(node)
    paid = CreateTransfer(transfer_id(rid(40), 0), RESERVE, ALICE_BAAS, 100, BAAS, 1)
    assert results(node, op(40, [paid], refs=(ALICE_REF,))) == [["ok", "ok"]]
    issue = code_entry(ALICE, code_hash(CODE), ledger=ledger, amount_limit=500)
    assert node.apply(AppEntry("code.issue", issue.to_body())).outcome.code == "ok"
    return node


def used_by(node: Node) -> bytes:
    raw = node.view.get(CODE_PREFIX + code_hash(CODE))
    assert raw is not None
    return decode_code(raw).used_by


def _scope_refusal(node: Node) -> list[list[str]]:
    return results(node, debit(50, 10, credit=12345))  # no such account


def _limit_refusal(node: Node) -> list[list[str]]:
    return results(node, debit(50, 600))  # the code's limit is 500


def _ledger_failure(node: Node) -> list[list[str]]:
    return results(node, debit(50, 300))  # alice holds 100


def _retry_with_the_code(node: Node) -> list[list[str]]:
    first = results(node, debit(50, 10, approvals=None))
    assert first == [["approval_missing"]]
    return results(node, debit(50, 10))  # the same key: answered with the first outcome


CASES: dict[str, tuple[Callable[[Node], list[list[str]]], str, str]] = {
    # case: (presenting operation, its result, the code at feature 11 afterwards)
    "scope": (_scope_refusal, "account_not_found", "ok"),
    "approval": (_limit_refusal, "code_limit_exceeded", "ok"),
    "ledger": (_ledger_failure, "exceeds_credits", "code_used"),  # consumed before, too
    "retry": (_retry_with_the_code, "approval_missing", "ok"),
}


@pytest.mark.parametrize("feature", [11, 13])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_presented_code_is_spent_whatever_the_outcome(
    tmp_path: Path, case: str, feature: int
) -> None:
    present, refused, old_rule = CASES[case]
    node = alice_with_code(tmp_path / "db", feature)
    try:
        assert present(node) == [[refused]]
        # a retry under the presenting operation's key answers its first outcome
        assert results(node, debit(50, 10)) == [[refused]]
        spent = used_by(node) != bytes(32)
        assert spent == (feature == 13 or old_rule == "code_used")
        again = results(node, debit(51, 50))
        assert again == [["code_used" if feature == 13 else old_rule]]
        if again == [["ok"]]:
            assert node.balance(ALICE_BAAS) == 50
        else:
            assert node.balance(ALICE_BAAS) == 100  # nothing moved
        assert node.balanced()
    finally:
        node.close()


def test_an_unknown_or_used_code_is_left_alone(tmp_path: Path) -> None:
    """Spending is for valid codes only: a code used by one operation keeps that operation's
    digest when another presents it; an unknown code writes nothing."""
    node = alice_with_code(tmp_path / "db", 13)
    try:
        assert results(node, debit(50, 10)) == [["ok"]]
        mine = used_by(node)
        assert mine == operation_digest(rid(50), debit(50, 10).events or b"")
        assert results(node, debit(51, 10)) == [["code_used"]]
        assert used_by(node) == mine
        unknown = encode_approvals([CodeApproval(b"u" * 16)])
        codes = [item for item in node.items() if item[0].startswith(CODE_PREFIX)]
        assert results(node, debit(52, 10, approvals=unknown)) == [["code_unknown"]]
        assert [item for item in node.items() if item[0].startswith(CODE_PREFIX)] == codes
    finally:
        node.close()


@pytest.mark.parametrize("feature", [11, 13])
def test_a_bridge_request_refused_with_a_code_spends_it(tmp_path: Path, feature: int) -> None:
    """The Bridge step (and payments, same loop) present codes too: a redemption of more
    points than alice holds, approved by her code, is refused and, at feature 13, spends it."""
    node = world(tmp_path / "db", feature=feature)
    try:
        market(node)  # alice holds 1000 points
        issue = code_entry(ALICE, code_hash(CODE), ledger=POINTS, amount_limit=10_000)
        assert node.apply(AppEntry("code.issue", issue.to_body())).outcome.code == "ok"

        def redeem(n: int, amount: int) -> str:
            raw = encode_request(RedeemPoints(rid(n), SHOP, POINTS, ALICE_PTS, amount))
            request = Operation(prop(n), None, WITH_CODE, SHOP, 0, (), bridge=raw)
            (result,) = node.ops(request)
            code = result.detail["outcome"].result
            assert isinstance(code, str)
            return code

        assert redeem(60, 5000) != "ok"
        assert redeem(61, 50) == ("code_used" if feature == 13 else "ok")
    finally:
        node.close()


def test_events_wire_is_what_the_digest_covers() -> None:
    """The digest a spent code records is over the operation's ``ev`` bytes, as signed."""
    events = [CreateTransfer(transfer_id(rid(50), 0), ALICE_BAAS, RESERVE, 10, BAAS, 1)]
    assert debit(50, 10).events == encode_events(events)


@pytest.mark.parametrize("upgraded", [False, True])
def test_a_refused_consumer_code_redemption_spends_the_code(tmp_path: Path, upgraded: bool) -> None:
    """Payments (feature 9) redeems a consumer-presented code through the same loop: a
    redemption refused (over the code's limit) leaves the code valid at feature 9 and spends
    it at feature 13, so the merchant's second scan is ``code_used``."""
    node = shop_world(tmp_path / "db")
    try:
        if upgraded:
            upgrade_to_13(node)
        hashed = issue_code(node, ALICE, CODE)  # limit 500
        refused = RedeemCode(rid(100), SHOP, POINTS, hashed, 600, True, 600)
        assert pm_run(node, 100, refused, codes=(CODE,)) != "ok"
        second = RedeemCode(rid(101), SHOP, POINTS, hashed, 200, True, 600)
        assert pm_run(node, 101, second, codes=(CODE,)) == ("code_used" if upgraded else "ok")
        assert node.balanced()
    finally:
        node.close()
