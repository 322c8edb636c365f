"""The payments core on the real ledger: the payment table, every pair; amounts, fees, expiry,
refunds, retries, partners' isolation, consumer-code redemption and its guess lockout."""

from __future__ import annotations

import pytest
from paymentskit import BAAS, BAAS_LIVE, OTHER, PLATFORM, SHOP, T0_MS, Shop, op, wallet

from business.ledger import CreateTransfer
from business.ledger.views import get_transfer
from business.payments.core import (
    PAYMENT_TABLE,
    fee_of,
    platform_fees_account,
    settlement_account,
)
from business.payments.model import (
    GUESS_PREFIX,
    OP_PREFIX,
    Authorise,
    Capture,
    Command,
    PaymentResult,
    PaymentsConfig,
    PaymentState,
    RedeemCode,
    Refund,
    SetFee,
    Void,
)
from node.errors import ConfigError, InvalidRequest

S = PaymentState
WINDOW_S = 600
SETTLE = settlement_account(SHOP, BAAS)


def authorise(shop: Shop, name: str, amount: int = 100, user: str = "ann", **kw: object) -> str:
    fields: dict[str, object] = {
        "op": op(name), "partner": SHOP, "ledger": BAAS, "wallet_account": wallet(user),
        "amount": amount, "capture_window_s": WINDOW_S,
    }  # fmt: skip
    fields.update(kw)
    return shop.code(Authorise(**fields))  # type: ignore[arg-type]


def in_state(state: S | None) -> tuple[Shop, bytes]:
    """A shop holding payment ``pay`` in ``state`` (None: no payment ``pay``)."""
    shop = Shop()
    pay = op("pay")
    if state is None:
        return shop, pay
    assert authorise(shop, "pay") == "ok"
    if state in (S.CAPTURED, S.REFUNDED):
        assert shop.code(Capture(op("cap0"), SHOP, pay, 60)) == "ok"
    if state == S.REFUNDED:
        assert shop.code(Refund(op("ref0"), SHOP, pay, 60)) == "ok"
    if state == S.VOIDED:
        assert shop.code(Void(op("void0"), SHOP, pay)) == "ok"
    if state == S.EXPIRED:
        shop.now_ms += WINDOW_S * 1000 + 1  # the pending transfer is stamped after T0
    assert shop.payment_state(pay) == state
    return shop, pay


def command(c: Command, pay: bytes) -> Authorise | Capture | Void | Refund:
    if c == Command.AUTHORISE:
        return Authorise(pay, SHOP, BAAS, wallet("ann"), 100, WINDOW_S)
    if c == Command.CAPTURE:
        return Capture(op("cmd"), SHOP, pay, 1)
    if c == Command.VOID:
        return Void(op("cmd"), SHOP, pay)
    return Refund(op("cmd"), SHOP, pay, 1)


def test_the_payment_table_covers_every_pair() -> None:
    states: list[S | None] = [None, *S]
    assert set(PAYMENT_TABLE) == {(s, c) for s in states for c in Command}


@pytest.mark.parametrize(("state", "cmd"), sorted(PAYMENT_TABLE, key=repr))
def test_every_state_command_pair_does_what_the_table_says(state: S | None, cmd: Command) -> None:
    shop, pay = in_state(state)
    if cmd == Command.AUTHORISE and state is not None:
        # The payment id is the authorising op's id, whose result answers any retry first;
        # the table's refusal is for a record found without it.
        retry = shop.apply(command(cmd, pay))
        assert retry.code == PaymentResult.OK and retry.events == () and retry.writes == ()
        shop.view.apply([(OP_PREFIX + pay, None)])
    before = shop.payments_state()
    outcome = shop.apply(command(cmd, pay))
    expected = PAYMENT_TABLE[(state, cmd)]
    if isinstance(expected, PaymentResult):
        assert outcome.code == expected
        assert shop.payments_state() == before  # a refusal moves and writes nothing
    else:
        assert outcome.code == PaymentResult.OK
        assert shop.payment_state(pay) == expected


def test_a_partial_capture_releases_the_rest_and_a_second_capture_is_refused() -> None:
    shop = Shop()
    assert authorise(shop, "p", 100) == "ok"
    assert shop.available(wallet("ann")) == 10_000 - 100
    assert shop.code(Capture(op("c1"), SHOP, op("p"), 101)) == "amount_exceeds_authorised"
    assert shop.code(Capture(op("c2"), SHOP, op("p"), 70)) == "ok"
    assert shop.available(wallet("ann")) == 10_000 - 70
    assert shop.balance(SETTLE) == 70
    assert shop.code(Capture(op("c3"), SHOP, op("p"), 1)) == "payment_already_captured"
    assert shop.code(Void(op("v"), SHOP, op("p"))) == "payment_already_captured"


def test_refunds_never_sum_above_the_capture() -> None:
    shop = Shop()
    assert authorise(shop, "p", 100) == "ok"
    assert shop.code(Capture(op("c"), SHOP, op("p"), 80)) == "ok"
    assert shop.code(Refund(op("r1"), SHOP, op("p"), 30)) == "ok"
    assert shop.code(Refund(op("r2"), SHOP, op("p"), 51)) == "refund_exceeds_captured"
    assert shop.payment_state(op("p")) == S.CAPTURED
    assert shop.code(Refund(op("r3"), SHOP, op("p"), 50)) == "ok"
    assert shop.payment_state(op("p")) == S.REFUNDED
    assert shop.code(Refund(op("r4"), SHOP, op("p"), 1)) == "payment_fully_refunded"
    assert shop.balance(wallet("ann")) == 10_000
    assert shop.balance(SETTLE) == 0


def test_refunds_per_payment_are_bounded() -> None:
    shop = Shop(PaymentsConfig(refunds_per_payment_max=2))
    assert authorise(shop, "p", 100) == "ok"
    assert shop.code(Capture(op("c"), SHOP, op("p"), 100)) == "ok"
    assert shop.code(Refund(op("r1"), SHOP, op("p"), 1)) == "ok"
    assert shop.code(Refund(op("r2"), SHOP, op("p"), 1)) == "ok"
    assert shop.code(Refund(op("r3"), SHOP, op("p"), 1)) == "refunds_full"


def test_a_refund_the_settlement_account_cannot_pay_moves_nothing() -> None:
    shop = Shop()
    assert authorise(shop, "p", 100) == "ok"
    assert shop.code(Capture(op("c"), SHOP, op("p"), 100)) == "ok"
    # The merchant moved its takings out (a ledger transfer of its own).
    from business.ledger import CreateTransfer

    shop.ledger_apply([CreateTransfer(9000, SETTLE, wallet("bob"), 95, BAAS, 1)])
    before = shop.payments_state()
    outcome = shop.apply(Refund(op("r"), SHOP, op("p"), 10))
    assert outcome.code == PaymentResult.MERCHANT_INSUFFICIENT_FUNDS
    assert outcome.detail["ledger_code"] == "exceeds_credits"
    assert shop.payments_state() == before


def test_an_authorisation_beyond_the_wallet_is_insufficient_funds() -> None:
    shop = Shop()
    before = shop.payments_state()
    assert authorise(shop, "p", 10_001) == "insufficient_funds"
    assert shop.payments_state() == before
    assert shop.payment_state(op("p")) is None
    # A wallet that has no account on the ledger holds nothing either.
    assert authorise(shop, "q", 1, wallet_account=12345) == "insufficient_funds"


def test_the_capture_window_is_bounded() -> None:
    shop = Shop(PaymentsConfig(capture_window_s_max=60))
    assert authorise(shop, "p", capture_window_s=61) == "bound_exceeded"
    assert authorise(shop, "q", capture_window_s=60) == "ok"


def test_expiry_on_log_time_agrees_with_the_ledger_to_the_millisecond() -> None:
    shop = Shop()
    assert authorise(shop, "p", 100) == "ok"
    p_id = op("p")
    pending = get_transfer(shop.view, shop.payments._payment(shop.view, p_id, SHOP).pending)  # type: ignore[union-attr]
    assert pending is not None
    expires_ms = -(-(pending.timestamp + WINDOW_S * 10**9) // 1_000_000)  # the first ms at it
    shop.now_ms = expires_ms - 1
    assert shop.payment_state(p_id) == S.AUTHORISED
    shop.now_ms = expires_ms
    assert shop.payment_state(p_id) == S.EXPIRED  # before the ledger's sweep ran
    assert shop.code(Capture(op("c"), SHOP, p_id, 100)) == "payment_expired"
    assert shop.code(Void(op("v"), SHOP, p_id)) == "payment_expired"
    # A ledger batch in the expiry's bucket second sweeps the reservation: the state stays
    # expired, the funds are back.
    shop.now_ms += 1000
    assert authorise(shop, "later", 1, user="bob") == "ok"
    assert shop.available(wallet("ann")) == 10_000
    assert shop.payment_state(p_id) == S.EXPIRED


def test_a_capture_just_before_expiry_succeeds() -> None:
    shop = Shop()
    assert authorise(shop, "p", 100) == "ok"
    shop.now_ms = T0_MS + WINDOW_S * 1000 - 1
    assert shop.code(Capture(op("c"), SHOP, op("p"), 100)) == "ok"
    shop.now_ms += 10**9
    assert shop.payment_state(op("p")) == S.CAPTURED


def test_a_post_refused_as_expired_by_the_ledger_is_payment_expired() -> None:
    """The boundary nanosecond: the core's check passes, the ledger's refuses."""
    shop = Shop()
    assert authorise(shop, "p", 100) == "ok"
    prepared = shop.payments.prepare(Capture(op("c"), SHOP, op("p"), 100), shop.now_ms, shop.view)
    later = shop.now_ms + WINDOW_S * 1000 + 1
    results, _ = shop.payments.ledger.apply(list(prepared.events), later, shop.view)
    assert results[0].code.value == "pending_transfer_expired"
    assert shop.payments.settle(prepared, results).code == PaymentResult.PAYMENT_EXPIRED


@pytest.mark.parametrize(
    ("captured", "bps", "fee_min", "fee"),
    [
        (0, 0, 0, 0),
        (1000, 0, 0, 0),
        (1000, 250, 0, 25),
        (1001, 250, 0, 26),  # 25.025 rounds up
        (1000, 250, 30, 30),  # the minimum
        (10, 250, 30, 10),  # never more than the capture
        (1000, 10_000, 0, 1000),
    ],
)
def test_fee_arithmetic(captured: int, bps: int, fee_min: int, fee: int) -> None:
    assert fee_of(captured, bps, fee_min) == fee


def test_a_configured_fee_is_a_linked_transfer_of_the_capture() -> None:
    shop = Shop()
    assert shop.code(SetFee(op("fee-x"), SHOP, BAAS, 250, 3)) == "not_platform"
    assert shop.code(SetFee(op("fee"), PLATFORM, BAAS, 250, 3)) == "ok"
    assert authorise(shop, "p", 1000) == "ok"
    assert shop.code(SetFee(op("fee2"), PLATFORM, BAAS, 5000, 0)) == "ok"  # p keeps its own
    outcome = shop.apply(Capture(op("c"), SHOP, op("p"), 401))
    assert outcome.code == PaymentResult.OK and outcome.detail == {"fee": 11}
    assert shop.balance(platform_fees_account(BAAS)) == 11
    assert shop.balance(SETTLE) == 390
    # A refund gives back the capture, not net of the fee: the merchant pays it.
    assert shop.code(Refund(op("r"), SHOP, op("p"), 390)) == "ok"
    assert shop.code(Refund(op("r2"), SHOP, op("p"), 11)) == "merchant_insufficient_funds"


def test_another_partner_sees_no_payment_and_a_retry_answers_the_first_outcome() -> None:
    shop = Shop()
    assert authorise(shop, "p", 100) == "ok"
    assert shop.code(Capture(op("c"), OTHER, op("p"), 10)) == "payment_not_found"
    assert shop.code(Refund(op("r"), OTHER, op("p"), 10)) == "payment_not_found"
    assert shop.code(Void(op("v"), OTHER, op("p"))) == "payment_not_found"
    first = shop.apply(Capture(op("c2"), SHOP, op("p"), 30))
    assert first.code == PaymentResult.OK
    again = shop.apply(Capture(op("c2"), SHOP, op("p"), 30))
    assert again.code == PaymentResult.OK and again.events == () and again.writes == ()
    assert shop.balance(SETTLE) == 30
    refused = shop.apply(Capture(op("c"), SHOP, op("p"), 10))  # sticky: c failed before
    assert refused.code == PaymentResult.PAYMENT_NOT_FOUND


def test_requests_and_config_refuse_bad_fields() -> None:
    with pytest.raises(InvalidRequest):
        Capture(op("c"), SHOP, op("p"), 0)
    with pytest.raises(InvalidRequest):
        Authorise(op("c"), SHOP, BAAS, wallet("ann"), -1, 60)
    with pytest.raises(InvalidRequest):
        Authorise(op("c"), SHOP[:15], BAAS, wallet("ann"), 1, 60)
    with pytest.raises(InvalidRequest):
        RedeemCode(op("c"), SHOP, BAAS, bytes(32), 1, 1, 60)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        PaymentsConfig(guesses_max=0)


# --- consumer-presented codes -------------------------------------------------------------


def redeem(shop: Shop, name: str, h: bytes, amount: int = 100, **kw: object) -> str:
    fields: dict[str, object] = {
        "op": op(name), "partner": SHOP, "ledger": BAAS, "code_hash": h, "amount": amount,
        "capture": False, "capture_window_s": WINDOW_S,
    }  # fmt: skip
    fields.update(kw)
    return shop.code(RedeemCode(**fields))  # type: ignore[arg-type]


def test_a_scanned_code_authorises_from_the_wallet_it_is_bound_to() -> None:
    shop = Shop()
    h = shop.issue_code("c1", "bob", limit=500)
    assert redeem(shop, "r1", h, 200) == "ok"
    assert shop.payment_state(op("r1")) == S.AUTHORISED
    assert shop.available(wallet("bob")) == 10_000 - 200
    assert shop.code(Capture(op("cap"), SHOP, op("r1"), 150)) == "ok"


def test_a_scanned_code_may_capture_at_once() -> None:
    shop = Shop()
    h = shop.issue_code("c1", "cat")
    assert redeem(shop, "r1", h, 300, capture=True) == "ok"
    assert shop.payment_state(op("r1")) == S.CAPTURED
    assert shop.balance(wallet("cat")) == 10_000 - 300
    assert shop.balance(SETTLE) == 300


@pytest.mark.parametrize(
    ("issue", "request_fields", "code"),
    [
        ({"used_by": b"\x01" * 32}, {}, "code_used"),
        ({"validity_s": 60}, {"now": 60_000}, "code_expired"),
        ({"ledger": BAAS_LIVE}, {}, "code_wrong_mode"),
        ({"limit": 99}, {}, "code_limit_exceeded"),
        ({}, {"capture_window_s": 10**9}, "bound_exceeded"),
    ],
)
def test_code_refusals(
    issue: dict[str, object], request_fields: dict[str, object], code: str
) -> None:
    shop = Shop()
    h = shop.issue_code("c", **issue)  # type: ignore[arg-type]
    shop.now_ms += int(request_fields.pop("now", 0))  # type: ignore[call-overload]
    before = shop.payments_state()
    assert redeem(shop, "r", h, 100, **request_fields) == code
    assert shop.payments_state() == before


def test_a_code_on_another_ledger_of_its_mode_is_a_ledger_mismatch() -> None:
    shop = Shop()
    from business.ledger import AssetKind, CreateAsset

    shop.ledger_apply([CreateAsset(32, AssetKind.POINT, 0)])
    h = shop.issue_code("c", ledger=32)
    assert redeem(shop, "r", h) == "code_ledger_mismatch"


def test_a_code_expires_exactly_at_its_expiry() -> None:
    shop = Shop()
    h = shop.issue_code("c", validity_s=60)
    shop.now_ms += 60_000 - 1
    assert redeem(shop, "r", h) == "ok"
    h2 = shop.issue_code("d", validity_s=60)
    shop.now_ms += 60_000
    assert redeem(shop, "r2", h2) == "code_expired"


def test_wrong_guesses_lock_the_merchant_out_for_the_window_and_the_state_stays_one_value() -> None:
    shop = Shop(PaymentsConfig(guesses_max=3, guess_window_s=60))
    good = shop.issue_code("good", validity_s=300)
    for n in range(3):
        assert redeem(shop, f"g{n}", bytes([n + 1]) * 32) == "code_unknown"
    # A retry of a guess answers its first outcome and counts nothing.
    assert redeem(shop, "g0", bytes([1]) * 32) == "code_unknown"
    assert redeem(shop, "g3", bytes([9]) * 32) == "merchant_locked_out"
    assert redeem(shop, "ok-locked", good) == "merchant_locked_out"  # correct codes too
    # Another merchant is not locked out.
    assert redeem(shop, "other", bytes([7]) * 32, partner=OTHER) == "code_unknown"
    guess_keys = [k for k in shop.view.data if k.startswith(GUESS_PREFIX)]
    assert len(guess_keys) == 2  # one value per merchant and mode, whatever the guesses
    shop.now_ms += 60_000  # the window ends
    assert redeem(shop, "ok", good) == "ok"
    for n in range(3):
        assert redeem(shop, f"h{n}", bytes([n + 20]) * 32) == "code_unknown"
    assert redeem(shop, "h3", bytes([30]) * 32) == "merchant_locked_out"


def test_the_guess_lockout_is_per_mode() -> None:
    shop = Shop(PaymentsConfig(guesses_max=1))
    assert redeem(shop, "g", bytes(32)) == "code_unknown"
    assert redeem(shop, "g2", bytes(32)) == "merchant_locked_out"
    assert redeem(shop, "live", bytes(32), ledger=BAAS_LIVE) == "code_unknown"


def test_redeem_events_debit_only_the_code_wallet() -> None:
    shop = Shop()
    h = shop.issue_code("c", "bob")
    prepared = shop.payments.prepare(
        RedeemCode(op("r"), SHOP, BAAS, h, 10, True, WINDOW_S), shop.now_ms, shop.view
    )
    transfers = [e for e in prepared.events if isinstance(e, CreateTransfer)]
    assert transfers[0].debit_account_id == wallet("bob")
    assert [t.flags for t in transfers] == [2 | 1, 4]  # pending and linked, then the post


def test_a_merchant_is_paid_in_baas_or_its_own_asset_only() -> None:
    from business.bridge.model import AssetRecord, encode_asset
    from business.bridge.model import asset_key as bridge_asset_key
    from business.ledger import AssetKind, CreateAsset

    shop = Shop()
    shop.ledger_apply([CreateAsset(32, AssetKind.POINT, 0), CreateAsset(34, AssetKind.POINT, 0)])
    for ledger, partner in ((32, SHOP), (34, OTHER)):
        record = AssetRecord(partner, 2, 0, "PTS", 0, b"", 0)
        shop.view.apply([(bridge_asset_key(ledger), encode_asset(record))])
    assert authorise(shop, "unknown", ledger=40) == "asset_not_found"
    assert authorise(shop, "foreign", ledger=34) == "asset_foreign"
    # Its own points: the asset is fine; ann holds none of them.
    assert authorise(shop, "own", ledger=32, wallet_account=wallet("ann", 32)) == (
        "insufficient_funds"
    )
