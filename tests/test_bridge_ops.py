"""The Bridge on the log (feature 8) through the node's own dispatcher on a real LevelDB: a
Bridge request is one ``ledger.ops`` operation with its index put; who may send which
request; every refusal a sticky result code that moves nothing; swaps both ways with the
user's approval over the request; point expiry by rule on log time from ``ledger.tick``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from bridgeopskit import (
    ALICE,
    ALICE_REF,
    BAAS,
    BAAS_UNIT,
    BOB,
    BOB_REF,
    CAROL,
    CAROL_REF,
    DAY_MS,
    OTHER_POINTS,
    POINTS,
    POINTS_LIVE,
    Node,
    market,
    policy,
    rid,
    wallet_account,
    wallet_of,
    world,
)
from identitykit import OTHER_SHOP, SHOP, T0_MS
from test_index_batch import prop

from business.bridge import (
    DefinePoints,
    Direction,
    ExpirePoints,
    IssuePoints,
    Quote,
    RedeemPoints,
    RegisterToken,
    ReversePoints,
    Swap,
    TopUpReserve,
    policy_change,
    role_account,
    spendable_points,
    user_lots,
)
from business.bridge.model import OP_PREFIX
from business.identity.scope import PLATFORM
from business.ledger.outcome import OperationOutcome
from node.consensus.bridge_ops import EXPIRY_DUE_KEY
from node.consensus.ledger_ops import LEDGER_TICK, stored_outcome
from node.consensus.state_machine import AppEntry

RESERVE = role_account(SHOP, BAAS, "reserve")
LIQUIDITY = role_account(SHOP, POINTS, "liquidity")
BREAKAGE = role_account(SHOP, POINTS, "breakage")
ALICE_PTS, ALICE_BAAS = wallet_account(ALICE, POINTS), wallet_account(ALICE, BAAS)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = world(tmp_path / "db")
    yield n
    n.close()


def swap(n: int, q: Quote) -> Swap:
    """Execute ``q`` for the user it was quoted to (its digest as approved)."""
    return Swap(rid(n), SHOP, POINTS, q.wallet, q, q.digest())


def test_a_market_is_set_up_and_swaps_both_ways_with_the_users_approval(node: Node) -> None:
    market(node)
    assert node.balance(ALICE_PTS) == 1000 and node.balance(RESERVE) == 5 * BAAS_UNIT
    q = node.quote(ALICE, 100)  # 100 points -> 1 BAAS gross, 1% fee
    outcome = node.run(swap(10, q), refs=(ALICE_REF,), signers=(ALICE,))
    assert outcome.result == "ok" and outcome.succeeded
    assert [e.result for e in outcome.events] == ["ok"] * len(outcome.events)
    assert node.balance(ALICE_PTS) == 900
    assert node.balance(ALICE_BAAS) == q.amount_out == BAAS_UNIT - BAAS_UNIT // 100
    out = node.quote(ALICE, BAAS_UNIT // 2, Direction.OUT)
    assert node.code(swap(11, out), refs=(ALICE_REF,), signers=(ALICE,)) == "ok"
    assert node.balance(ALICE_PTS) == 900 + out.amount_out
    assert node.balanced()
    # a swap is one operation: its outcome is stored under its record, sticky
    stored = stored_outcome(node.view, rid(10))
    assert stored is not None and stored.result == "ok"
    assert OperationOutcome.decode(stored.encode()) == stored


def test_every_refusal_is_a_sticky_code_and_moves_nothing(node: Node) -> None:
    market(node)
    before = node.ledger_items()
    q = node.quote(ALICE, 100)
    carol_q = node.quote(CAROL, 100)
    signed = {"refs": (ALICE_REF,), "signers": (ALICE,)}
    table = [
        # who may send it
        (swap(20, q), {"partner": None, "mode": None}, "proposer_missing"),
        (swap(21, q), {"partner": PLATFORM, **signed}, "partner_not_found"),
        (TopUpReserve(rid(22), OTHER_SHOP, BAAS, 1), {}, "account_not_found"),
        (DefinePoints(rid(23), SHOP, POINTS_LIVE, "SHOP", 0), {}, "ledger_not_found"),
        (DefinePoints(rid(24), SHOP, OTHER_POINTS, "SHOP", 0), {}, "asset_not_allowed"),
        (RegisterToken(rid(25), SHOP, POINTS + 4, "TOK", 6, b"\x01" * 20), {}, "asset_not_allowed"),
        (IssuePoints(rid(26), SHOP, POINTS, ALICE_PTS, 5), {}, "account_not_found"),
        (IssuePoints(rid(27), SHOP, POINTS, ALICE_PTS, 5), {"refs": (BOB_REF,)}, "user_not_linked"),
        (swap(28, q), {"signers": (ALICE,)}, "account_not_found"),  # alice not named in ur
        # the user's approval over the request
        (swap(29, q), {"refs": (ALICE_REF,)}, "approval_missing"),
        (swap(30, q), {"refs": (ALICE_REF,), "signers": (CAROL,)}, "approval_unused"),
        (RedeemPoints(rid(31), SHOP, POINTS, ALICE_PTS, 5), {}, "approval_missing"),
        # the Bridge's own checks
        (
            Swap(rid(32), SHOP, POINTS, wallet_of(ALICE), carol_q, carol_q.digest()),
            signed,
            "quote_other_user",
        ),
        (
            Swap(rid(33), SHOP, POINTS, wallet_of(ALICE), q, carol_q.digest()),
            signed,
            "quote_altered",
        ),
        (ReversePoints(rid(34), SHOP, POINTS, rid(2), 1001), {}, "reversal_exceeds_unspent"),
        (
            RedeemPoints(rid(35), SHOP, POINTS, ALICE_PTS, 1001),
            {"signers": (ALICE,)},
            "insufficient_funds",
        ),
        (swap(36, node.quote(ALICE, 600)), signed, "reserve_exhausted"),  # 6 BAAS > 5
    ]
    for request, kw, code in table:
        outcome = node.run(request, **kw)
        assert outcome.result == code, (type(request).__name__, request.op, outcome)
        assert not outcome.succeeded
        assert node.ledger_items() == before, code  # nothing moved, no lot changed
        # sticky: the retry of the record answers the first outcome, now with its approval
        (again,) = node.ops(node.bridge_op(request, refs=(ALICE_REF,), signers=(ALICE,)))
        assert again.code == "existing" and again.detail["outcome"] == outcome
    # the chain failed in the ledger: its events are listed with the ledger's verdicts
    failed = stored_outcome(node.view, rid(36))
    assert failed is not None and "exceeds_credits" in [e.result for e in failed.events]
    assert node.balanced()


def test_policy_changes_windows_expiry_of_quotes_and_disabled_policies(node: Node) -> None:
    market(node)
    q = node.quote(ALICE, 100)
    assert node.code(policy(40, user_window_max=150)) == "ok"  # version 2
    signed = {"refs": (ALICE_REF,), "signers": (ALICE,)}
    assert node.code(swap(41, q), **signed) == "policy_version_changed"
    assert node.code(swap(42, node.quote(ALICE, 100)), **signed) == "ok"
    assert node.code(swap(43, node.quote(ALICE, 100)), **signed) == "user_window_limit"
    late = node.quote(ALICE, 10)
    expired = node.code(swap(44, late), now_ms=late.expires_ms, **signed)
    assert expired == "quote_expired"
    fresh = node.quote(ALICE, 10)
    assert node.code(policy(45, user_window_max=150, enabled=False)) == "ok"
    assert node.code(swap(46, fresh), **signed) == "policy_disabled"
    # a policy change is audited (its actor, log time and the policy it set)
    change = policy_change(node.view, POINTS, 3)
    assert change is not None and change[0] == b"\x0a" * 16 and not change[2].enabled


def test_a_partner_without_the_liquidity_role_is_refused_role_missing(node: Node) -> None:
    define = DefinePoints(rid(50), OTHER_SHOP, OTHER_POINTS, "OTHER", 0, 0)
    assert node.code(define, partner=OTHER_SHOP) == "role_missing"
    assert node.code(DefinePoints(rid(51), SHOP, POINTS, "SHOP", 0, 0)) == "ok"
    assert node.code(DefinePoints(rid(52), SHOP, POINTS, "SHOP", 0, 0)) == "exists"


def test_a_reversal_is_capped_by_rule_without_the_users_approval(node: Node) -> None:
    market(node)
    assert node.code(ReversePoints(rid(60), SHOP, POINTS, rid(2), 400)) == "ok"
    assert node.balance(ALICE_PTS) == 600
    assert node.code(ReversePoints(rid(61), SHOP, POINTS, rid(2), 601)) == (
        "reversal_exceeds_unspent"
    )
    redeem = RedeemPoints(rid(62), SHOP, POINTS, ALICE_PTS, 100)
    assert node.code(redeem, signers=(ALICE,)) == "ok"
    assert node.balance(ALICE_PTS) == 500 and node.balanced()


def test_points_expire_by_rule_on_log_time_from_the_tick(node: Node) -> None:
    market(node)
    assert node.balance(ALICE_PTS) == 1000
    day = T0_MS // DAY_MS
    later = (day + 31) * DAY_MS
    assert spendable_points(node.view, POINTS, ALICE_PTS, later) == 0  # never spent expired
    applied = node.apply(AppEntry(LEDGER_TICK, {}), now_ms=later)
    assert applied.outcome.detail == {"expired": 1}
    assert node.balance(ALICE_PTS) == 0 and node.balance(BREAKAGE) == 1000
    assert user_lots(node.view, POINTS, ALICE_PTS) == []
    assert node.view.get(EXPIRY_DUE_KEY) is not None
    again = node.apply(AppEntry(LEDGER_TICK, {}), now_ms=later + 1)
    assert again.outcome.detail == {"expired": 0}
    # a partner may run the sweep too: nothing left, and nothing beyond the rule's cap
    assert node.code(ExpirePoints(rid(70), SHOP, POINTS)) == "ok"
    assert node.balanced()


def test_expiry_runs_before_the_operations_of_a_busy_entry(node: Node) -> None:
    market(node)
    day = T0_MS // DAY_MS
    later = (day + 30) * DAY_MS + 5
    redeem = RedeemPoints(rid(80), SHOP, POINTS, ALICE_PTS, 1)
    # the first entry of the expiry day sweeps first: the redemption finds nothing spendable
    assert node.code(redeem, now_ms=later, signers=(ALICE,)) == "insufficient_funds"
    assert node.balance(BREAKAGE) == 1000
    assert node.view.get(OP_PREFIX + rid(80)) is not None


def test_bridge_requests_need_feature_8_and_their_record_id(tmp_path: Path) -> None:
    node = world(tmp_path / "db7", feature=7)
    (result,) = node.ops(node.bridge_op(DefinePoints(rid(1), SHOP, POINTS, "SHOP", 0)))
    assert result.code == "malformed" and "feature 8" in result.detail["reason"]
    node.close()
    node = world(tmp_path / "db8")
    op = node.bridge_op(DefinePoints(rid(1), SHOP, POINTS, "SHOP", 0))
    (result,) = node.ops(replace(op, proposal=prop(2)))  # another record's op id
    assert result.code == "malformed" and "record id" in result.detail["reason"]
    assert node.code(DefinePoints(rid(1), SHOP, POINTS, "SHOP", 0)) == "ok"  # not burned
    node.close()


def test_bob_cannot_swap_through_a_partner_he_is_not_linked_to(node: Node) -> None:
    market(node)
    q = node.ops_machine.bridge.quote(
        node.view, SHOP, POINTS, wallet_of(BOB), Direction.OUT, BAAS_UNIT, node.now_ms
    )
    assert isinstance(q, Quote)
    request = Swap(rid(90), SHOP, POINTS, wallet_of(BOB), q, q.digest())
    assert node.code(request, refs=(BOB_REF,), signers=(BOB,)) == "user_not_linked"
    # carol is linked: her swap BAAS -> points gets as far as her missing approval
    carol = node.quote(CAROL, BAAS_UNIT, Direction.OUT)
    assert node.code(swap(91, carol), refs=(CAROL_REF,)) == "approval_missing"
    # with it, the ledger finds she holds no BAAS: the chain fails whole
    assert node.code(swap(92, carol), refs=(CAROL_REF,), signers=(CAROL,)) == "insufficient_funds"
    assert node.balance(wallet_account(CAROL, POINTS)) == 0 and node.balanced()
