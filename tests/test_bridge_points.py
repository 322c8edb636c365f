"""Point lots, expiry into breakage, reversal caps as identity's DebitRules, reserves' low
notices and policy versions with their audit entries, on the real ledger core."""

from __future__ import annotations

from bridgekit import (
    BAAS,
    BAAS_UNIT,
    DAY_MS,
    SHOP,
    SHOP_PTS,
    T0_MS,
    Market,
    account,
    op,
    policy,
)
from identitykit import T0_S, World, address, sign, user

from business.bridge import (
    BridgeConfig,
    BridgeResult,
    Direction,
    ExpirePoints,
    IssuePoints,
    Quote,
    RedeemPoints,
    ReversePoints,
    SetReserveThreshold,
    Swap,
    TopUpReserve,
    policy_change,
    reserve_history,
    reserve_level,
    spendable_points,
)
from business.bridge.model import LotOrigin, decode_lots, decode_ring, lots_key, window_user_key
from business.identity import (
    Debit,
    Operation,
    SignedApproval,
    check_debits,
    debits_of,
    eip712,
    encode_approvals,
    open_wallet_account,
    operation_digest,
)
from business.identity.approvals import DebitRule, RuleClaim
from business.identity.ids import (
    Mode,
    operation_id,
    partner_account_id,
    wallet_account_id,
    wallet_id,
)
from business.ledger import encode_events
from business.ledger.views import get_account

R = BridgeResult
BREAKAGE = partner_account_id(SHOP, Mode.TEST, "breakage", SHOP_PTS)
ISSUANCE = partner_account_id(SHOP, Mode.TEST, "issuance", SHOP_PTS)


def _lots(m: Market, user: str) -> list[tuple[int, int, int]]:
    raw = m.view.get(lots_key(SHOP_PTS, account(user, SHOP_PTS)))
    return [(lot.expiry_day, lot.origin, lot.amount) for lot in decode_lots(raw)]


def test_lots_merge_per_expiry_day_and_spend_oldest_first() -> None:
    m = Market.standard()
    day0 = T0_MS // DAY_MS
    m.issue("alice", 10, "a", T0_MS)
    m.issue("alice", 5, "b", T0_MS + 3_600_000)  # the same day: merged into one lot
    m.issue("alice", 7, "c", T0_MS + DAY_MS)
    issued = int(LotOrigin.ISSUED)
    assert _lots(m, "alice") == [(day0 + 30, issued, 15), (day0 + 31, issued, 7)]
    redeem = RedeemPoints(op("r"), SHOP, SHOP_PTS, account("alice", SHOP_PTS), 17)
    assert m.code(redeem) == "ok"
    assert _lots(m, "alice") == [(day0 + 31, issued, 5)]  # the oldest lot went first


def test_expired_lots_are_never_spent_and_move_to_breakage_in_bounded_calls() -> None:
    m = Market.standard(config=BridgeConfig(expiry_wallets_per_call_max=2))
    users = [f"u{i}" for i in range(5)]
    for u in users:
        m.issue(u, 100, f"i-{u}", T0_MS)
    m.issue("u0", 50, "later", T0_MS + DAY_MS)  # a second lot, one day younger
    expired_ms = T0_MS + 30 * DAY_MS  # day0 + 30: the first lots' expiry day has come
    # the ledger still holds them, but the lot is dead: not spendable, not reversible
    redeem = RedeemPoints(op("late"), SHOP, SHOP_PTS, account("u1", SHOP_PTS), 1)
    assert m.code(redeem, expired_ms) == "insufficient_funds"
    assert m.bridge.cap(m.view, DebitRule.REVERSAL, op("i-u1"), account("u1", SHOP_PTS),
                        expired_ms) == 0  # fmt: skip
    reversal = ReversePoints(op("rev"), SHOP, SHOP_PTS, op("i-u1"), 1)
    assert m.code(reversal) == "reversal_exceeds_unspent"
    moved = []
    for call in range(4):
        out = m.apply(ExpirePoints(op(f"x{call}"), SHOP, SHOP_PTS))
        assert out.code == R.OK
        assert len(out.events) <= 2  # the bound per call
        moved.append(len(out.events))
        assert all(c.rule == DebitRule.POINT_EXPIRY for _, c in out.claims)
    assert moved == [2, 2, 1, 0]
    assert m.balance(BREAKAGE) == 500
    assert _lots(m, "u0") == [(T0_MS // DAY_MS + 31, int(LotOrigin.ISSUED), 50)]
    for u in users[1:]:
        assert _lots(m, u) == []
    redeem = RedeemPoints(op("u0"), SHOP, SHOP_PTS, account("u0", SHOP_PTS), 50)
    assert m.code(redeem) == "ok"


def test_debit_rule_caps_follow_the_lots() -> None:
    m = Market.standard()
    alice = account("alice", SHOP_PTS)
    m.issue("alice", 100, "i1")
    m.issue("alice", 40, "i2")  # the same lot
    cap = m.bridge.cap
    assert cap(m.view, DebitRule.REVERSAL, op("i1"), alice, T0_MS) == 100
    assert cap(m.view, DebitRule.REVERSAL, op("i1"), account("bob", SHOP_PTS), T0_MS) == 0
    assert cap(m.view, DebitRule.REVERSAL, op("nope"), alice, T0_MS) == 0
    redeem = RedeemPoints(op("r"), SHOP, SHOP_PTS, alice, 120)
    assert m.code(redeem) == "ok"  # 20 left in the lot: each issuance may take at most 20
    assert cap(m.view, DebitRule.REVERSAL, op("i1"), alice, T0_MS) == 20
    assert cap(m.view, DebitRule.REVERSAL, op("i2"), alice, T0_MS) == 20
    assert m.code(ReversePoints(op("rv1"), SHOP, SHOP_PTS, op("i1"), 15)) == "ok"
    assert cap(m.view, DebitRule.REVERSAL, op("i2"), alice, T0_MS) == 5
    assert m.balance(alice) == 5
    expiry_day = T0_MS // DAY_MS + 30
    reference = SHOP_PTS.to_bytes(4, "big") + expiry_day.to_bytes(4, "big")
    assert cap(m.view, DebitRule.POINT_EXPIRY, reference, alice, T0_MS) == 0  # not yet
    assert cap(m.view, DebitRule.POINT_EXPIRY, reference, alice, expiry_day * DAY_MS) == 5
    # bought points are not the partner's to reverse: a separate lot
    assert m.swap("alice", m.quote("alice", 5)).code == R.OK
    assert cap(m.view, DebitRule.REVERSAL, op("i2"), alice, T0_MS) == 0


def test_identity_check_debits_uses_the_bridge_caps() -> None:
    """A reversal and an expiry pass identity's approval check without the user's signature
    exactly up to the Bridge's caps (the Bridge is the DebitRules)."""
    world = World()
    world.onboard(SHOP)
    m = Market.standard(view=world.view)
    wallet20 = b"\x42" * 20
    alice, writes = open_wallet_account(world.view, Mode.TEST, wallet20, SHOP_PTS, T0_MS)
    world.view.apply(writes)
    assert m.code(IssuePoints(op("i1"), SHOP, SHOP_PTS, alice, 100)) == "ok"
    reverse = ReversePoints(op("rv"), SHOP, SHOP_PTS, op("i1"), 60)
    prepared = m.bridge.prepare(reverse, T0_MS, m.view)
    assert prepared.code == R.OK

    def check(events: object, claims: dict[int, RuleClaim]) -> str:
        debits = debits_of(events, claims)  # type: ignore[arg-type]
        operation = Operation(b"\x01" * 32, SHOP, Mode.TEST, debits)
        code, _ = check_debits(world.view, world.config, operation, b"", T0_MS, m.bridge)
        return code.value

    assert check(prepared.events, dict(prepared.claims)) == "ok"
    too_much = Debit(alice, ISSUANCE, 101, RuleClaim(DebitRule.REVERSAL, op("i1")))
    operation = Operation(b"\x01" * 32, SHOP, Mode.TEST, (too_much,))
    code, _ = check_debits(world.view, world.config, operation, b"", T0_MS, m.bridge)
    assert code.value == "rule_cap_exceeded"
    # a redemption debits the user: it needs their approval
    redeem = m.bridge.prepare(RedeemPoints(op("rd"), SHOP, SHOP_PTS, alice, 10), T0_MS, m.view)
    assert check(redeem.events, dict(redeem.claims)) == "approval_missing"
    # the expiry sweep's debits are capped by the expired lots
    expire = m.bridge.prepare(ExpirePoints(op("x"), SHOP, SHOP_PTS), T0_MS + 30 * DAY_MS, m.view)
    assert len(expire.events) == 1
    debits = debits_of(expire.events, dict(expire.claims))
    operation = Operation(b"\x02" * 32, SHOP, Mode.TEST, debits)
    code, _ = check_debits(world.view, world.config, operation, b"", T0_MS + 30 * DAY_MS, m.bridge)
    assert code.value == "ok"


def test_reserve_low_notice_on_the_way_down_only() -> None:
    m = Market.standard()  # the reserve holds 1000 BAAS
    threshold = SetReserveThreshold(op("th"), SHOP, BAAS, 995 * BAAS_UNIT)
    assert m.apply(threshold).notices == ()
    m.issue("alice", 10_000, "i")
    first = m.swap("alice", m.quote("alice", 400))  # 4 BAAS out of the reserve: 996 left
    assert first.code == R.OK and first.notices == ()
    second = m.swap("alice", m.quote("alice", 400))  # 992 left: below 995
    assert [n.level for n in second.notices] == [reserve_level(m.view, SHOP, BAAS)]
    third = m.swap("alice", m.quote("alice", 400))  # still low: no new notice
    assert third.code == R.OK and third.notices == ()
    assert m.apply(TopUpReserve(op("top2"), SHOP, BAAS, 10 * BAAS_UNIT)).notices == ()
    fourth = m.swap("alice", m.quote("alice", 800))  # 1000 - 12 + 10 - 8 = 990: low again
    assert len(fourth.notices) == 1
    history = reserve_history(m.view, SHOP, BAAS, limit=100)  # newest first
    assert history[0].credits_posted - history[0].debits_posted == reserve_level(m.view, SHOP, BAAS)
    assert len(history) == 6  # the first top-up, four swaps and the second top-up


def test_policy_changes_bump_the_version_and_are_audited() -> None:
    m = Market.standard()
    out = m.apply(policy(op=op("p2"), fee_bps=50))
    assert out.code == R.OK and out.detail["version"] == 2
    assert m.code(policy(op=op("p3"), fee_bps=50)) == "exists"  # nothing changed
    change = policy_change(m.view, SHOP_PTS, 2)
    assert change is not None
    actor, changed_ms, record = change
    assert actor == b"\x0a" * 16 and changed_ms == T0_MS and record.fee_bps == 50
    first = policy_change(m.view, SHOP_PTS, 1)
    assert first is not None and first[2].fee_bps == 100  # the history keeps every version
    assert policy_change(m.view, SHOP_PTS, 3) is None
    q = m.quote("alice", 100)
    assert q.policy_version == 2
    assert get_account(m.view, partner_account_id(SHOP, Mode.TEST, "reserve", BAAS)) is not None


def test_window_state_stays_bounded_and_the_window_frees_up() -> None:
    m = Market.standard(config=BridgeConfig(window_buckets_max=4))
    assert m.code(policy(op=op("w"), user_window_max=100, window_s=400)) == "ok"  # 100 s buckets
    m.issue("alice", 10_000, "i")
    for n in range(60):  # 60 swaps over 30 minutes: far more swaps than buckets
        m.now_ms = T0_MS + n * 30_000
        out = m.swap("alice", m.quote("alice", 10))
        assert out.code in (R.OK, R.USER_WINDOW_LIMIT)
        ring = decode_ring(m.view.get(window_user_key(SHOP_PTS, account("alice", SHOP_PTS))))
        assert len(ring) <= 5  # window_buckets_max + 1, whatever the number of swaps
        # never more than the limit within any window of window_s
        assert sum(amount for _, amount in ring) <= 100 + 10
    # after a quiet window_s plus one bucket, the whole limit is available again
    m.now_ms += 500_000
    assert m.swap("alice", m.quote("alice", 100)).code == R.OK
    assert spendable_points(m.view, SHOP_PTS, account("alice", SHOP_PTS), m.now_ms) < 10_000


def test_a_swap_needs_the_users_signature_over_its_events() -> None:
    """Through identity's check_debits: a swap IN debits the user's points and BAAS (the fee),
    so it passes with the user's EIP-712 approval of the operation and only with it."""
    world = World()
    world.onboard(SHOP)
    m = Market.standard(view=world.view)
    alice_key = user("alice")
    for ledger in (SHOP_PTS, BAAS):
        _, writes = open_wallet_account(world.view, Mode.TEST, address(alice_key), ledger, T0_MS)
        world.view.apply(writes)
    alice = wallet_id(address(alice_key), Mode.TEST)
    points = wallet_account_id(alice, Mode.TEST, SHOP_PTS)
    assert m.code(IssuePoints(op("i"), SHOP, SHOP_PTS, points, 1000)) == "ok"
    q = m.bridge.quote(m.view, SHOP, SHOP_PTS, alice, Direction.IN, 400, T0_MS)
    assert isinstance(q, Quote)
    swap = Swap(op("swap"), SHOP, SHOP_PTS, alice, q, q.digest())
    prepared = m.bridge.prepare(swap, T0_MS, m.view)
    record = operation_id(SHOP, Mode.TEST, "bridge.swap", "key-1")
    digest = operation_digest(record, encode_events(list(prepared.events)))
    operation = Operation(digest, SHOP, Mode.TEST, debits_of(prepared.events))

    def check(approvals: list[SignedApproval]) -> str:
        blob = encode_approvals(approvals)
        return check_debits(world.view, world.config, operation, blob, T0_MS, m.bridge)[0].value

    assert check([]) == "approval_missing"
    deadline = T0_S + 60
    signature = sign(alice_key, eip712.Approve(Mode.TEST, digest, address(alice_key), deadline))
    assert check([SignedApproval(address(alice_key), deadline, signature)]) == "ok"
    bob = user("bob")
    forged = sign(bob, eip712.Approve(Mode.TEST, digest, address(alice_key), deadline))
    assert check([SignedApproval(address(alice_key), deadline, forged)]) == (
        "approval_signer_mismatch"
    )
    # approved, the same prepared chain then runs through the ledger
    results, writes = m.bridge.ledger.apply(list(prepared.events), T0_MS, m.view)
    m.view.apply(writes)
    outcome = m.bridge.settle(prepared, results, T0_MS, m.view)
    m.view.apply(outcome.writes)
    assert outcome.code == R.OK and m.balance(points) == 600


def test_the_expiry_cursor_walks_a_bounded_number_of_days_per_call() -> None:
    m = Market.standard(config=BridgeConfig(expiry_days_scan_max=5))
    m.issue("alice", 100, "i")  # expiry day: day0 + 30
    m.now_ms = T0_MS + 40 * DAY_MS
    calls = [len(m.apply(ExpirePoints(op(f"x{k}"), SHOP, SHOP_PTS)).events) for k in range(8)]
    # days day0 .. day0+29 take six calls of five days; the seventh reaches the lot's day
    assert calls == [0, 0, 0, 0, 0, 0, 1, 0]
    assert m.balance(BREAKAGE) == 100
