"""Property tests of the Bridge (hypothesis): any sequence of issuance, redemptions,
reversals, swaps both ways, liquidity and reserve top-ups, expiry sweeps and time moving, for
two partners (one with a validity period), run through the real ledger core.

After every request (``bridgekit.Market.check``): every ledger balanced, so each asset's
total is conserved, issuance accounts included; no reserve, liquidity or wallet below zero;
each user's lots sum to their ledger balance; each partner's supply is what its users hold.
The same sequence on a second view gives the same bytes (a replica's state). Besides: a spend
succeeds only if the user's *unexpired* lots cover it, and once the sweep
has run to its end no user holds a lot whose expiry day has come."""

from __future__ import annotations

from typing import Any

from bridgekit import (
    BAAS,
    BAAS_UNIT,
    DAY_MS,
    OTHER,
    OTHER_PTS,
    SHOP,
    SHOP_PTS,
    Market,
    account,
    op,
    policy,
    wallet,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from business.bridge import (
    BridgeConfig,
    BridgeResult,
    DefinePoints,
    Direction,
    ExpirePoints,
    FundLiquidity,
    IssuePoints,
    Quote,
    RedeemPoints,
    ReversePoints,
    TopUpReserve,
    points_supply,
)
from business.bridge.model import LOTS_PREFIX, decode_lots, lots_key

R = BridgeResult
USERS = ["u0", "u1"]
PARTNERS = [(SHOP, SHOP_PTS), (OTHER, OTHER_PTS)]

users = st.sampled_from(USERS)
partners = st.sampled_from(PARTNERS)
points = st.integers(min_value=1, max_value=300)
actions = st.one_of(
    st.tuples(st.just("issue"), partners, users, st.integers(1, 1000)),
    st.tuples(st.just("redeem"), partners, users, points),
    st.tuples(st.just("redeem_all"), partners, users),  # the ledger balance, expired lots too
    st.tuples(st.just("reverse"), st.integers(0, 7), points),
    st.tuples(st.just("swap_in"), partners, users, points),
    st.tuples(st.just("swap_out"), partners, users, st.integers(1, 3 * BAAS_UNIT)),
    st.tuples(st.just("fund"), partners, points),
    st.tuples(st.just("top_up"), partners, st.integers(1, 2 * BAAS_UNIT)),
    st.tuples(st.just("expire"), partners),
    st.tuples(st.just("advance"), st.integers(0, 2 * DAY_MS)),
    st.tuples(st.just("advance"), st.integers(0, DAY_MS // 2)),
)


def _market() -> Market:
    m = Market(config=BridgeConfig(lots_per_spend_max=3, lots_per_wallet_max=6,
                                   expiry_wallets_per_call_max=2))  # fmt: skip
    m.platform()
    assert m.code(DefinePoints(op("d-s"), SHOP, SHOP_PTS, "SHOP", 0, 2)) == "ok"
    assert m.code(DefinePoints(op("d-o"), OTHER, OTHER_PTS, "OTHER", 0, 0)) == "ok"
    for partner, ledger in PARTNERS:
        name = ledger.to_bytes(4, "big").hex()
        assert m.code(TopUpReserve(op(f"t-{name}"), partner, BAAS, 6 * BAAS_UNIT)) == "ok"
        rules = policy(op=op(f"p-{name}"), partner=partner, ledger=ledger, user_window_max=500,
                       partner_window_max=1200, window_s=86_400)  # fmt: skip
        assert m.code(rules) == "ok"
        # every user starts with points and BAAS, so sequences need no preamble to do things
        for user in USERS:
            issue = IssuePoints(op(f"i-{name}-{user}"), partner, ledger, account(user, ledger),
                                1000)  # fmt: skip
            assert m.code(issue) == "ok"
            assert m.swap(user, m.quote(user, 200, ledger=ledger, partner=partner),
                          partner=partner).code == R.OK  # fmt: skip
    m.now_ms += DAY_MS  # a fresh window
    return m


def _unexpired(m: Market, ledger: int, user: str) -> int:
    today = m.now_ms // DAY_MS
    lots = decode_lots(m.view.get(lots_key(ledger, account(user, ledger))))
    return sum(lot.amount for lot in lots if lot.expiry_day > today)


def _no_expired_lots(m: Market) -> None:
    today = m.now_ms // DAY_MS
    for _, raw in m.view.scan(LOTS_PREFIX, LOTS_PREFIX[:-1] + b"0"):
        assert all(lot.expiry_day > today for lot in decode_lots(raw))


def _run(m: Market, n: int, action: tuple[Any, ...], issued: list[bytes]) -> None:
    kind = action[0]
    if kind == "advance":
        m.now_ms += action[1]
        return
    if kind == "reverse":
        _, i, amount = action  # the i-th issuance so far, by either partner
        if issued:
            for partner, ledger in PARTNERS:
                reverse = ReversePoints(op(f"rv{n}-{ledger}"), partner, ledger,
                                        issued[i % len(issued)], amount)  # fmt: skip
                m.apply(reverse)
        return
    partner, ledger = action[1]
    if kind == "issue":
        _, _, user, amount = action
        if m.apply(
            IssuePoints(op(f"is{n}"), partner, ledger, account(user, ledger), amount)
        ).code.succeeded:
            issued.append(op(f"is{n}"))
    elif kind in ("redeem", "redeem_all"):
        user = action[2]
        amount = action[3] if kind == "redeem" else m.balance(account(user, ledger))
        if amount == 0:
            return
        spendable = _unexpired(m, ledger, user)
        out = m.apply(RedeemPoints(op(f"rd{n}"), partner, ledger, account(user, ledger), amount))
        assert out.code.succeeded == (spendable >= amount) or out.code == (
            R.LOTS_PER_SPEND_EXCEEDED
        )
    elif kind in ("swap_in", "swap_out"):
        _, _, user, amount = action
        direction = Direction.IN if kind == "swap_in" else Direction.OUT
        q = m.bridge.quote(m.view, partner, ledger, wallet(user), direction, amount, m.now_ms)
        if not isinstance(q, Quote):
            return
        spendable = _unexpired(m, ledger, user)
        out = m.swap(user, q, partner=partner, name=f"sw{n}")
        if direction == Direction.IN and out.code.succeeded:
            assert spendable >= amount  # never out of an expired lot
    elif kind == "fund":
        m.apply(FundLiquidity(op(f"f{n}"), partner, ledger, action[2]))
    elif kind == "top_up":
        m.apply(TopUpReserve(op(f"t{n}"), partner, BAAS, action[2]))
    elif kind == "expire":
        for k in range(20):
            if not m.apply(ExpirePoints(op(f"x{n}-{k}"), partner, ledger)).events:
                break
        if ledger == SHOP_PTS:
            _no_expired_lots(m)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(actions, min_size=1, max_size=60))
def test_any_sequence_conserves_every_asset_and_never_spends_expired_points(
    sequence: list[tuple[Any, ...]],
) -> None:
    m = _market()
    issued: list[bytes] = []
    for n, action in enumerate(sequence):
        _run(m, n, action, issued)  # Market.apply checks the invariants after every request
    replica, replayed = _market(), list[bytes]()
    for n, action in enumerate(sequence):
        _run(replica, n, action, replayed)
    assert replica.view.data == m.view.data  # the same requests give the same bytes
    m.now_ms += 3 * DAY_MS  # every lot issued so far has expired: the sweep must take all
    for partner, ledger in PARTNERS:
        for k in range(100):
            if not m.apply(ExpirePoints(op(f"end-{ledger}-{k}"), partner, ledger)).events:
                break
    _no_expired_lots(m)
    assert points_supply(m.view, SHOP, SHOP_PTS) == 0  # SHOP's points all expired to breakage
