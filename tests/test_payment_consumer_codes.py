"""Consumer-presented one-time codes: the layout, every refusal, typo detection, and the path
from the digits a till scans to the identity machine's stored code hash (consumed once)."""

from __future__ import annotations

import io

import pytest
import zxingcpp
from hypothesis import given, settings
from hypothesis import strategies as st
from identitykit import SHOP, T0_MS, T0_S, World, address, sign, user
from PIL import Image

from business.identity import (
    ApprovalResult,
    CodeApproval,
    CodeIssueEntry,
    Debit,
    Mode,
    NoDebitRules,
    Operation,
    check_debits,
    encode_approvals,
    open_wallet_account,
    operation_digest,
)
from business.identity.ids import code_hash, operation_id, partner_account_id
from business.payments.codes import (
    CODE_DIGITS,
    ConsumerCode,
    ConsumerCodeConfig,
    ConsumerRefusal,
    barcode_png,
    code_issue_message,
    parse_consumer_code,
)
from business.payments.codes.consumer import luhn_digit
from node.errors import ConfigError, InvalidRequest

SECRET = bytes(range(16))
CODE = ConsumerCode(Mode.TEST, SECRET)
BAAS = 2  # the test-mode BAAS ledger
CONFIG = ConsumerCodeConfig()


def test_luhn_matches_the_published_example() -> None:
    assert luhn_digit("7992739871") == 3  # ISO/IEC 7812's textbook example 79927398713
    assert luhn_digit("0") == 0


def test_the_layout() -> None:
    secret = str(int.from_bytes(SECRET, "big")).rjust(39, "0")
    body = "47" + "1" + "0" + secret
    assert CODE.digits == body + str(luhn_digit(body))
    assert len(CODE.digits) == CODE_DIGITS == 44
    assert CODE.grouped().replace(" ", "") == CODE.digits
    assert ConsumerCode(Mode.LIVE, SECRET).digits[3] == "1"
    top = ConsumerCode(Mode.LIVE, b"\xff" * 16)  # the largest secret still fits 39 digits
    assert parse_consumer_code(top.digits) == top


def test_the_code_maps_to_the_identity_code_hash_of_its_secret() -> None:
    assert CODE.code_hash == code_hash(SECRET)
    assert parse_consumer_code(CODE.grouped()).code_hash == code_hash(SECRET)


def _with_check(body: str) -> str:
    return body + str(luhn_digit(body))


REFUSALS = [
    (None, ConsumerRefusal.CHARSET),
    (CODE.digits[:-1] + "x", ConsumerRefusal.CHARSET),
    (CODE.digits[:-1] + "٣", ConsumerRefusal.CHARSET),  # an Arabic-Indic digit
    (CODE.digits + " " * 30, ConsumerRefusal.CHARSET),  # over the typed-length bound
    (CODE.digits[:-1], ConsumerRefusal.LENGTH),
    (CODE.digits + "0", ConsumerRefusal.LENGTH),
    ("", ConsumerRefusal.LENGTH),
    (_with_check("13" + CODE.digits[2:-1]), ConsumerRefusal.PREFIX),  # a WeChat-like start
    (_with_check("472" + CODE.digits[3:-1]), ConsumerRefusal.VERSION),
    (_with_check("4712" + CODE.digits[4:-1]), ConsumerRefusal.MODE),
    (CODE.digits[:-1] + str((int(CODE.digits[-1]) + 1) % 10), ConsumerRefusal.CHECK_DIGIT),
    (_with_check("4710" + "9" * 39), ConsumerRefusal.SECRET_RANGE),
]


@pytest.mark.parametrize(("text", "reason"), REFUSALS)
def test_refusals_are_named(text: object, reason: ConsumerRefusal) -> None:
    with pytest.raises(InvalidRequest) as e:
        parse_consumer_code(text)
    assert (e.value.code, e.value.param) == (reason.value, "code")


def test_every_refusal_has_a_row() -> None:
    assert {reason for _, reason in REFUSALS} == set(ConsumerRefusal)


codes = st.builds(ConsumerCode, st.sampled_from(Mode), st.binary(min_size=16, max_size=16))


@given(codes)
def test_any_code_parses_back(code: ConsumerCode) -> None:
    assert parse_consumer_code(code.digits) == code
    assert parse_consumer_code(code.grouped()) == code


@settings(max_examples=300)
@given(codes, st.data())
def test_any_single_digit_typo_is_refused_before_any_lookup(
    code: ConsumerCode, data: st.DataObject
) -> None:
    d = code.digits
    i = data.draw(st.integers(0, len(d) - 1))
    typo = data.draw(st.sampled_from([c for c in "0123456789" if c != d[i]]))
    with pytest.raises(InvalidRequest) as e:
        parse_consumer_code(d[:i] + typo + d[i + 1 :])
    assert e.value.code.startswith("code_")


@settings(max_examples=300)
@given(codes, st.data())
def test_adjacent_transpositions_are_refused_except_luhns_09_90(
    code: ConsumerCode, data: st.DataObject
) -> None:
    d = code.digits
    i = data.draw(st.integers(0, len(d) - 2))
    swapped = d[:i] + d[i + 1] + d[i] + d[i + 2 :]
    if swapped == d or {d[i], d[i + 1]} == {"0", "9"}:
        return  # no change, or Luhn's documented blind spot
    with pytest.raises(InvalidRequest):
        parse_consumer_code(swapped)


def test_the_config_bounds_validity() -> None:
    with pytest.raises(ConfigError):
        ConsumerCodeConfig(validity_s_max=0)
    with pytest.raises(ConfigError):
        ConsumerCodeConfig(validity_s_max=3601)


def _issue(code: ConsumerCode, **overrides: int) -> CodeIssueEntry:
    alice = user("alice")
    fields = {"ledger": BAAS, "amount_limit": 500, "now_s": T0_S, "validity_s": 120, **overrides}
    message = code_issue_message(code, wallet=address(alice), config=CONFIG, **fields)
    return CodeIssueEntry(
        code.mode,
        message.wallet,
        message.code_hash,
        message.ledger,
        message.amount_limit,
        message.expiry,
        sign(alice, message),
    )


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"ledger": 3}, "ledger_wrong_mode"),  # a test code on the live BAAS ledger
        ({"validity_s": 0}, "field_invalid"),
        ({"validity_s": 301}, "field_invalid"),
        ({"amount_limit": 0}, "amount_invalid"),
    ],
)
def test_issue_messages_are_bounded(overrides: dict[str, int], code: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        _issue(CODE, **overrides)
    assert e.value.code == code


def test_a_scanned_code_approves_one_debit_once_and_only_its_hash_is_stored() -> None:
    """The whole path: the app issues a code (the wallet signs ``code.issue``), the till scans
    the barcode, and the identity machine's approval check consumes the stored hash once."""
    w = World()
    assert w.onboard(SHOP).code == "ok"
    alice = address(user("alice"))
    account, writes = open_wallet_account(w.view, Mode.TEST, alice, BAAS, T0_MS)
    w.view.apply(writes)
    code = ConsumerCode(Mode.TEST, b"\x5a" * 16)
    assert w.issue(_issue(code)) == "ok"

    scanned = zxingcpp.read_barcodes(Image.open(io.BytesIO(barcode_png(code))))
    assert [r.text for r in scanned] == [code.digits]
    at_till = parse_consumer_code(scanned[0].text)

    reserve = partner_account_id(SHOP, Mode.TEST, "reserve", BAAS)

    def pay(key: str, amount: int) -> tuple[ApprovalResult, tuple[tuple[bytes, bytes], ...]]:
        debits = (Debit(account, reserve, amount),)
        record = operation_id(SHOP, Mode.TEST, "payment", key)
        op = Operation(operation_digest(record, repr(debits).encode()), SHOP, Mode.TEST, debits)
        blob = encode_approvals([CodeApproval(at_till.secret)])
        result, out = check_debits(w.view, w.config, op, blob, T0_MS, NoDebitRules())
        return result, tuple(out)

    assert pay("p0", 501)[0] == ApprovalResult.CODE_LIMIT_EXCEEDED  # bound to its amount limit
    result, consumed = pay("p1", 500)
    assert result == ApprovalResult.OK and len(consumed) == 1
    w.view.apply(consumed)
    assert pay("p2", 1)[0] == ApprovalResult.CODE_USED  # single use
    stored = b"".join(k + v for k, v in w.view.data.items())
    assert code.code_hash in stored
    assert code.secret not in stored and code.digits.encode() not in stored
