"""Table tests of the pure Bridge on the real ledger core: quote arithmetic with rounding at
the boundaries, every refusal code with the smallest input that produces it (nothing moved),
swaps both ways, lots and expiry, reversal caps (identity's DebitRules), reserves, policies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from bridgekit import (
    BAAS,
    BAAS_LIVE,
    BAAS_UNIT,
    DAY_MS,
    OTHER,
    OTHER_PTS,
    SHOP,
    SHOP_PTS,
    SHOP_TOKEN,
    T0_MS,
    Market,
    account,
    op,
    policy,
)

from business.bridge import (
    BridgeConfig,
    BridgeResult,
    DefinePoints,
    Direction,
    FundLiquidity,
    IssuePoints,
    RedeemPoints,
    RegisterToken,
    ReversePoints,
    TopUpReserve,
    reserve_level,
)
from business.bridge.core import terms
from business.bridge.model import PolicyRecord, Quote
from business.identity.ids import Mode, partner_account_id
from node.errors import ConfigError, InvalidRequest

R = BridgeResult


def _policy_record(**fields: int) -> PolicyRecord:
    base = {
        "version": 1, "baas_ledger": BAAS, "rate_num": 3, "rate_den": 7, "swap_min": 1,
        "swap_max": 1000, "window_s": 60, "user_window_max": 0, "partner_window_max": 0,
        "fee_bps": 100, "fee_min": 0, "enabled": True, "changed_ms": 0,
    }  # fmt: skip
    base.update(fields)
    return PolicyRecord(**base)  # type: ignore[arg-type]


# --- the arithmetic --------------------------------------------------------------------------

ARITHMETIC = [
    # (policy fields, direction, amount_in, (amount_out, fee, asset amount) or refusal)
    # IN, rate 3/7: gross = floor(a * 3 / 7); fee = max(fee_min, ceil(gross * bps / 10^4))
    ({}, Direction.IN, 700, (297, 3, 700)),  # gross 300 exactly, fee 3.00 -> 3
    ({}, Direction.IN, 701, (297, 3, 701)),  # gross floor(300.43) = 300: the reserve keeps it
    ({}, Direction.IN, 702, (297, 3, 702)),  # gross floor(300.86) = 300
    ({}, Direction.IN, 703, (297, 4, 703)),  # gross 301, fee ceil(3.01) = 4
    ({}, Direction.IN, 1000, (423, 5, 1000)),  # the maximum itself: gross 428, fee ceil(4.28)
    ({}, Direction.IN, 1001, R.ABOVE_MAX),
    ({}, Direction.IN, 3, R.BELOW_MIN),  # gross 1, fee ceil(0.01) = 1: nothing left
    ({"fee_bps": 0}, Direction.IN, 3, (1, 0, 3)),  # gross floor(9/7) = 1, no fee
    ({"fee_bps": 0}, Direction.IN, 2, R.BELOW_MIN),  # gross floor(6/7) = 0
    ({"fee_min": 50}, Direction.IN, 119, (1, 50, 119)),  # gross 51: the minimum fee applies
    ({"fee_min": 50}, Direction.IN, 118, R.BELOW_MIN),  # gross 50 = fee
    ({"swap_min": 10}, Direction.IN, 9, R.BELOW_MIN),
    ({"swap_min": 10}, Direction.IN, 10, (3, 1, 10)),
    # OUT: fee = max(fee_min, ceil(b * bps / 10^4)); out = floor((b - fee) * 7 / 3)
    ({}, Direction.OUT, 100, (231, 1, 231)),  # fee 1, floor(99 * 7 / 3) = 231
    ({}, Direction.OUT, 101, (231, 2, 231)),  # fee ceil(1.01) = 2, floor(231) again
    ({}, Direction.OUT, 430, (991, 5, 991)),  # fee ceil(4.3) = 5, floor(425 * 7 / 3)
    ({}, Direction.OUT, 440, R.ABOVE_MAX),  # 1011 asset units out
    ({}, Direction.OUT, 1, R.BELOW_MIN),  # the fee (ceil 0.01 = 1) eats it all
    ({"fee_bps": 0}, Direction.OUT, 1, (2, 0, 2)),  # floor(7/3) = 2: the reserve keeps 1/3
    ({"fee_min": 5, "fee_bps": 0}, Direction.OUT, 5, R.BELOW_MIN),
    ({"fee_min": 5, "fee_bps": 0}, Direction.OUT, 6, (2, 5, 2)),
    ({"swap_min": 3, "fee_bps": 0}, Direction.OUT, 1, R.BELOW_MIN),  # 2 units out < 3
]


def _expected_in(p: PolicyRecord, a: int) -> tuple[int, int, int] | BridgeResult:
    """The documented IN formula, spelled out independently of the core."""
    if a < p.swap_min:
        return R.BELOW_MIN
    if a > p.swap_max:
        return R.ABOVE_MAX
    gross = (a * p.rate_num) // p.rate_den
    fee = max(p.fee_min, (gross * p.fee_bps + 9999) // 10_000)
    return R.BELOW_MIN if gross <= fee else (gross - fee, fee, a)


def _expected_out(p: PolicyRecord, b: int) -> tuple[int, int, int] | BridgeResult:
    fee = max(p.fee_min, (b * p.fee_bps + 9999) // 10_000)
    if fee >= b:
        return R.BELOW_MIN
    out = ((b - fee) * p.rate_den) // p.rate_num
    if out < p.swap_min:
        return R.BELOW_MIN
    return R.ABOVE_MAX if out > p.swap_max else (out, fee, out)


@pytest.mark.parametrize(("fields", "direction", "amount", "expected"), ARITHMETIC)
def test_quote_arithmetic_rounds_for_the_reserve(
    fields: dict[str, int],
    direction: Direction,
    amount: int,
    expected: tuple[int, int, int] | BridgeResult,
) -> None:
    p = _policy_record(**fields)
    formula = _expected_in if direction == Direction.IN else _expected_out
    want = formula(p, amount)
    try:
        got: tuple[int, int, int] | BridgeResult = terms(p, direction, amount)
    except Exception as exc:  # the core's refusal carries its code
        got = exc.code  # type: ignore[attr-defined]
    assert got == want == expected
    if direction == Direction.IN and isinstance(got, tuple):
        out, fee, _ = got
        # The reserve never pays more than the exact value, the user never gets more.
        assert (out + fee) * p.rate_den <= amount * p.rate_num
    if direction == Direction.OUT and isinstance(got, tuple):
        out, fee, _ = got
        assert out * p.rate_num <= (amount - fee) * p.rate_den
        assert fee * 10_000 >= amount * p.fee_bps


# --- swaps both ways through the ledger ------------------------------------------------------


def test_swap_in_and_out_move_exactly_the_quoted_amounts() -> None:
    m = Market.standard()
    alice = account("alice", SHOP_PTS)
    alice_baas = account("alice", BAAS)
    assert m.code(IssuePoints(op("i1"), SHOP, SHOP_PTS, alice, 1000)) == "ok"
    reserve_before = reserve_level(m.view, SHOP, BAAS)
    q = m.quote("alice", 400)
    assert (q.amount_out, q.fee) == (4 * BAAS_UNIT - 4 * BAAS_UNIT // 100, 4 * BAAS_UNIT // 100)
    out = m.swap("alice", q)
    assert out.code == R.OK, out.detail
    assert [e.code for e in out.events[1:]] == [105, 105, 106]  # swap, swap, fee
    # every transfer of the swap carries the policy version it ran under
    assert {getattr(e, "user_data_128", None) for e in out.events[1:]} == {q.policy_version}
    assert m.balance(alice) == 600
    assert m.balance(alice_baas) == q.amount_out
    assert reserve_level(m.view, SHOP, BAAS) == reserve_before - q.amount_out - q.fee
    shop_fees = partner_account_id(SHOP, Mode.TEST, "fees", BAAS)
    assert m.balance(shop_fees) == q.fee
    # and back: BAAS -> points, from the partner's liquidity (funded from its issuance)
    assert m.code(FundLiquidity(op("liq"), SHOP, SHOP_PTS, 10_000)) == "ok"
    back = m.quote("alice", BAAS_UNIT, Direction.OUT)
    assert back.fee == BAAS_UNIT // 100 and back.amount_out == 99  # floor(0.99 / 0.01)
    assert m.swap("alice", back).code == R.OK
    assert m.balance(alice) == 699
    assert m.balance(alice_baas) == q.amount_out - BAAS_UNIT


def test_token_swaps_and_the_test_mode_faucet() -> None:
    m = Market.standard()
    token = RegisterToken(op("tok"), SHOP, SHOP_TOKEN, "SHOPT", 6, b"\x11" * 20)
    assert m.code(token) == "ok"
    assert m.code(token) == "ok"  # the same op again: its first outcome
    assert m.code(replace(token, op=op("tok2"))) == "exists"
    assert m.code(replace(token, op=op("tok3"), decimals=8)) == "exists_with_different_fields"
    assert m.code(FundLiquidity(op("tf"), SHOP, SHOP_TOKEN, 5_000_000)) == "ok"
    assert m.code(policy(op=op("tp"), ledger=SHOP_TOKEN, rate_num=10**12)) == "ok"
    q = m.quote("bob", BAAS_UNIT, Direction.OUT, ledger=SHOP_TOKEN)
    assert m.swap("bob", q).code == R.INSUFFICIENT_FUNDS  # bob has no BAAS account yet
    m.issue("bob", 1000, "bob-pts")
    assert m.swap("bob", m.quote("bob", 1000)).code == R.OK  # 9.9 BAAS
    q = m.quote("bob", BAAS_UNIT, Direction.OUT, ledger=SHOP_TOKEN)
    assert q.amount_out == 990_000  # 0.99 BAAS at 10^12 BAAS units per token unit
    assert m.swap("bob", q).code == R.OK
    assert m.balance(account("bob", SHOP_TOKEN)) == 990_000
    # a token swap IN beyond what bob holds: the ledger's own check on the user's wallet
    q = m.quote("bob", 990_001, Direction.IN, ledger=SHOP_TOKEN)
    assert m.swap("bob", q).code == R.INSUFFICIENT_FUNDS
    assert m.code(FundLiquidity(op("tf-live"), SHOP, SHOP_TOKEN, 10**27 + 1)) == (
        "faucet_amount_exceeded"
    )


def test_decimals_above_18_are_refused_before_the_log() -> None:
    with pytest.raises(InvalidRequest):
        RegisterToken(op("t"), SHOP, SHOP_TOKEN, "T", 19, b"\x11" * 20)
    with pytest.raises(InvalidRequest):
        DefinePoints(op("d"), SHOP, SHOP_PTS, "lower", 0)
    with pytest.raises(ConfigError):
        BridgeConfig(expiry_wallets_per_call_max=64)


# --- every refusal code, with the smallest input that produces it ----------------------------

Act = Callable[[], BridgeResult]


def _forged(m: Market, **fields: object) -> Quote:
    """A quote the client built itself, digest and all (consistent, but not the Bridge's)."""
    base = m.quote("alice", 100)
    return replace(base, **fields)  # type: ignore[arg-type]


def _swap_act(m: Market, user: str, q: Quote, **kw: object) -> Act:
    return lambda: m.swap(user, q, **kw).code  # type: ignore[arg-type]


def _setup_window(m: Market, **limits: int) -> None:
    assert m.code(policy(op=op("pw"), **limits)) == "ok"
    m.issue("alice", 1000, "wa")
    m.issue("bob", 1000, "wb")
    assert m.swap("alice", m.quote("alice", 400)).code == R.OK


def _case_quote_altered(m: Market) -> Act:
    q = m.quote("alice", 100)
    return _swap_act(m, "alice", replace(q, amount_out=q.amount_out + 1), digest=q.digest())


def _case_quote_other_user(m: Market) -> Act:
    return _swap_act(m, "bob", m.quote("alice", 100))


def _case_swap_asset_foreign(m: Market) -> Act:
    q = replace(m.quote("alice", 100), partner=OTHER)  # OTHER's quote on SHOP's points
    return _swap_act(m, "alice", q, partner=OTHER)


def _case_quote_expired(m: Market) -> Act:
    q = m.quote("alice", 100)
    m.now_ms = q.expires_ms
    return _swap_act(m, "alice", q)


def _case_policy_not_found(m: Market) -> Act:
    q = replace(_forged(m), partner=OTHER, ledger=OTHER_PTS)
    return _swap_act(m, "alice", q, partner=OTHER)


def _case_policy_disabled(m: Market) -> Act:
    q = m.quote("alice", 100)
    assert m.code(policy(op=op("off"), enabled=False)) == "ok"
    return _swap_act(m, "alice", q)


def _case_policy_version_changed(m: Market) -> Act:
    q = m.quote("alice", 100)
    assert m.code(policy(op=op("fee2"), fee_bps=200)) == "ok"
    return _swap_act(m, "alice", q)


def _case_terms_mismatch(m: Market) -> Act:
    q = m.quote("alice", 100)
    return _swap_act(m, "alice", replace(q, fee=q.fee - 1, amount_out=q.amount_out + 1))


def _case_user_window(m: Market) -> Act:
    _setup_window(m, user_window_max=500)
    return _swap_act(m, "alice", m.quote("alice", 101))


def _case_partner_window(m: Market) -> Act:
    _setup_window(m, partner_window_max=500)
    return _swap_act(m, "bob", m.quote("bob", 101))


def _case_reversal_exceeds(m: Market) -> Act:
    m.issue("alice", 100, "r-i")
    redeem = RedeemPoints(op("r-r"), SHOP, SHOP_PTS, account("alice", SHOP_PTS), 30)
    assert m.code(redeem) == "ok"
    return lambda: m.apply(ReversePoints(op("r-x"), SHOP, SHOP_PTS, op("r-i"), 71)).code


def _case_lots_per_spend(m: Market) -> Act:
    for day in range(3):
        m.issue("alice", 10, f"lps{day}", T0_MS + day * DAY_MS)
    redeem = RedeemPoints(op("lps"), SHOP, SHOP_PTS, account("alice", SHOP_PTS), 30)
    return lambda: m.apply(redeem).code


def _case_lots_full(m: Market) -> Act:
    for day in range(2):
        m.issue("alice", 10, f"lf{day}", T0_MS + day * DAY_MS)
    issue = IssuePoints(op("lf"), SHOP, SHOP_PTS, account("alice", SHOP_PTS), 10)
    return lambda: m.apply(issue, T0_MS + 2 * DAY_MS).code


def _case_reserve_exhausted(m: Market) -> Act:
    m.issue("alice", 200_000, "big")  # 2000 BAAS worth; the reserve holds 1000
    return _swap_act(m, "alice", m.quote("alice", 200_000))


def _case_liquidity_exhausted(m: Market) -> Act:
    m.issue("alice", 200, "li")
    assert m.swap("alice", m.quote("alice", 200)).code == R.OK  # 1.98 BAAS; liquidity 200
    assert m.code(policy(op=op("cheap"), rate_num=BAAS_UNIT // 200)) == "ok"
    return _swap_act(m, "alice", m.quote("alice", 3 * BAAS_UNIT // 2, Direction.OUT))  # 297


def _case_token_address_taken(m: Market) -> Act:
    assert m.code(RegisterToken(op("t1"), SHOP, SHOP_TOKEN, "T", 6, b"\x11" * 20)) == "ok"
    # another ledger, another partner, the same contract in the same mode
    return lambda: m.apply(RegisterToken(op("t2"), OTHER, 38, "U", 6, b"\x11" * 20)).code


def _case_tokens_per_partner(m: Market) -> Act:
    assert m.code(RegisterToken(op("t1"), SHOP, SHOP_TOKEN, "T", 6, b"\x11" * 20)) == "ok"
    return lambda: m.apply(RegisterToken(op("t2"), SHOP, 38, "U", 6, b"\x12" * 20)).code


def _request(request: object) -> Callable[[Market], Act]:
    return lambda m: lambda: m.apply(request).code  # type: ignore[arg-type]


SHOP_RESERVE = partner_account_id(SHOP, Mode.TEST, "reserve", BAAS)
REFUSALS: list[tuple[BridgeResult, Callable[[Market], Act], BridgeConfig | None]] = [
    (R.EXISTS, _request(DefinePoints(op("def2"), SHOP, SHOP_PTS, "SHOP", 0, 30)), None),
    (R.QUOTE_ALTERED, _case_quote_altered, None),
    (R.QUOTE_OTHER_USER, _case_quote_other_user, None),
    (R.BOUND_EXCEEDED, _request(DefinePoints(op("x"), SHOP, 40, "LONG", 0, 3651)), None),
    (R.BOUND_EXCEEDED, _request(RegisterToken(op("x"), SHOP, 40, "X" * 17, 6, bytes(20))), None),
    (R.BOUND_EXCEEDED, _request(policy(op=op("x"), window_s=366 * 86_400 + 1)), None),
    (R.BOUND_EXCEEDED, _case_tokens_per_partner, BridgeConfig(tokens_per_partner_max=1)),
    (R.LEDGER_WRONG_MODE, _request(policy(op=op("x"), baas_ledger=BAAS_LIVE)), None),
    (R.ASSET_NOT_FOUND, _request(IssuePoints(op("x"), SHOP, 40, account("a", 40), 1)), None),
    (R.ASSET_FOREIGN, _request(IssuePoints(op("x"), OTHER, SHOP_PTS, account("a", 32), 1)), None),
    (R.ASSET_FOREIGN, _case_swap_asset_foreign, None),
    (R.ASSET_KIND_MISMATCH, _request(TopUpReserve(op("x"), SHOP, SHOP_PTS, 1)), None),
    (R.LEDGER_TAKEN, _request(DefinePoints(op("x"), OTHER, SHOP_PTS, "SHOP", 0, 30)), None),
    (
        R.EXISTS_WITH_DIFFERENT_FIELDS,
        _request(DefinePoints(op("x"), SHOP, SHOP_PTS, "SHOP", 2, 30)),
        None,
    ),
    (R.TOKEN_ADDRESS_TAKEN, _case_token_address_taken, None),
    (R.ISSUANCE_NOT_FOUND, _request(ReversePoints(op("x"), SHOP, SHOP_PTS, op("no"), 1)), None),
    (R.FAUCET_LIVE_MODE, _request(TopUpReserve(op("x"), SHOP, BAAS_LIVE, 1)), None),
    (R.FAUCET_AMOUNT_EXCEEDED, _request(TopUpReserve(op("x"), SHOP, BAAS, 10**27 + 1)), None),
    (R.QUOTE_EXPIRED, _case_quote_expired, None),
    (R.POLICY_NOT_FOUND, _case_policy_not_found, None),
    (R.POLICY_DISABLED, _case_policy_disabled, None),
    (R.POLICY_VERSION_CHANGED, _case_policy_version_changed, None),
    (R.BELOW_MIN, lambda m: _swap_act(m, "alice", _forged(m, amount_in=0)), None),
    (R.ABOVE_MAX, lambda m: _swap_act(m, "alice", _forged(m, amount_in=10**9 + 1)), None),
    (R.QUOTE_TERMS_MISMATCH, _case_terms_mismatch, None),
    (R.USER_WINDOW_LIMIT, _case_user_window, None),
    (R.PARTNER_WINDOW_LIMIT, _case_partner_window, None),
    (R.REVERSAL_EXCEEDS_UNSPENT, _case_reversal_exceeds, None),
    (
        R.INSUFFICIENT_FUNDS,
        _request(RedeemPoints(op("x"), SHOP, SHOP_PTS, account("alice", SHOP_PTS), 1)),
        None,
    ),
    (R.LOTS_PER_SPEND_EXCEEDED, _case_lots_per_spend, BridgeConfig(lots_per_spend_max=2)),
    (R.LOTS_FULL, _case_lots_full, BridgeConfig(lots_per_wallet_max=2)),
    (R.RESERVE_EXHAUSTED, _case_reserve_exhausted, None),
    (R.LIQUIDITY_EXHAUSTED, _case_liquidity_exhausted, None),
    # a wallet account id that is already another kind of account on another ledger
    (R.LEDGER_REFUSED, _request(IssuePoints(op("x"), SHOP, SHOP_PTS, SHOP_RESERVE, 1)), None),
]


@pytest.mark.parametrize(
    ("code", "case", "config"), REFUSALS, ids=[f"{c.value}-{i}" for i, (c, _, _) in
                                               enumerate(REFUSALS)]
)  # fmt: skip
def test_every_refusal_moves_nothing_and_sticks(
    code: BridgeResult, case: Callable[[Market], Act], config: BridgeConfig | None
) -> None:
    m = Market.standard(config=config) if config else Market.standard()
    act = case(m)
    before = m.bridge_state()
    before.pop(b"lg/m", None)
    assert act() == code
    after = m.bridge_state()
    after.pop(b"lg/m", None)
    assert after == before  # nothing moved: no balance, lot, window, policy or counter
    assert act() == code  # a retry of the same op answers the first outcome


def test_the_table_covers_every_code() -> None:
    covered = {code for code, _, _ in REFUSALS} | {R.OK}
    assert covered == set(BridgeResult)


def test_refusals_keep_their_precedence() -> None:
    # An altered quote of another user, for an expired quote: the first check answers.
    m = Market.standard()
    q = m.quote("alice", 100)
    m.now_ms = q.expires_ms
    assert m.swap("bob", replace(q, fee=0), digest=q.digest()).code == R.QUOTE_ALTERED
    assert m.swap("bob", q).code == R.QUOTE_OTHER_USER
    assert m.swap("alice", q).code == R.QUOTE_EXPIRED
    codes = list(BridgeResult)
    assert codes.index(R.QUOTE_ALTERED) < codes.index(R.QUOTE_OTHER_USER)
    assert codes.index(R.QUOTE_OTHER_USER) < codes.index(R.QUOTE_EXPIRED)
