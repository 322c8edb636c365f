"""EMVCo merchant-presented QR: published vectors byte for byte, our layout, every refusal.

The published vectors are the merchant-presented examples of steplix/emv-qrcps,
``test/qrcodes/merchant/index.js`` at commit 7e910de62b0a41c00804a17246e2ad1523248b63 (their
``toString()`` values; ``_3.rawData()`` there lists a stale CRC, 75C3, tested below as refused).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from business.payments.codes import (
    NETWORK_GUID,
    DataObject,
    MerchantQr,
    Refusal,
    crc16,
    decode_emv,
    decode_merchant,
    encode_emv,
    encode_merchant,
    format_emv_amount,
    parse_emv_amount,
)
from node.errors import CallerError, InvalidRequest, UnsupportedFormat

STEPLIX = {
    "_1": "00020101021229300012D156000000000510A93FO3230Q31280012D15600000001030812345678520441115303156540523.725502015802CN5914BEST TRANSPORT6007BEIJING6233030412340603***0708A60086670902ME64200002ZH0104最佳运输0202北京91320016A01122334499887707081234567863047D4F",  # noqa: E501
    "_2": "00020101021127750012com.p2pqrpay0111PAPHPHM1XXX0208999644030411099859039430513+6399859039435204601653036085802PH5912PayMaya User6011Mandaluyong630475C3",  # noqa: E501
    "_3": "00020101021127750012com.p2pqrpay0111PAPHPHM1XXX0208999644030411099859039430513+6399859039435204601653036085405390.85802PH5912PayMaya User6011Mandaluyong63049025",  # noqa: E501
    "_4": "00020101021226150011com.paymaya52044111530360854061000.05802PH5920CIS BAYAD CENTER INC6005Pasig62500110022394211350320020com.paymaya.billspay0104pldt80570015com.bayadcenter0105002140205PLDT6041012345678900702PD6304955F",  # noqa: E501
    "_5": "00020101021126440014br.gov.bcb.spi0122fulano2019@example.com5204000053039865802BR5913FULANO DE TAL6008BRASILIA6304DFE3",  # noqa: E501
    "_6": "00020101021226740014br.gov.bcb.spi210812345678220412342308123456782420001122334455667788995204000053039865406123.455802BR5913FULANO DE TAL6008BRASILIA62190515RP12345678-201980720014br.gov.bcb.spi2550bx.com.br/spi/U0VHUkVET1RPVEFMTUVOVEVBTEVBVE9SSU8=630434D1",  # noqa: E501
    "_7": "00020101021226640018com.witta.merchant0105100350211273352652870314+549115672096952044829530303254031.05802AR5926Ruth Araceli Fetter Alcala6004CABA6109C1038 AAH6304017A",  # noqa: E501
}
SHOP = bytes(range(16))
BAAS_LIVE = 3


def _crc_bitwise(data: bytes) -> int:
    """CRC-16/CCITT-FALSE written out from its definition, to check the library one against."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def test_crc_is_ccitt_false() -> None:
    assert crc16(b"123456789") == 0x29B1  # the catalogued check value of CRC-16/CCITT-FALSE
    assert crc16(b"") == 0xFFFF


@given(st.binary(max_size=600))
def test_crc_matches_its_definition(data: bytes) -> None:
    assert crc16(data) == _crc_bitwise(data)


@pytest.mark.parametrize("name", sorted(STEPLIX))
def test_published_vectors_decode_and_reencode_byte_for_byte(name: str) -> None:
    payload = STEPLIX[name]
    decoded = decode_emv(payload)
    assert decoded.objects[0] == DataObject("00", "01")
    assert decoded.objects[-1].tag == "63"
    assert encode_emv(decoded.objects[:-1]) == payload  # our writer, our CRC: the same bytes


def test_published_vectors_fields() -> None:
    one = decode_emv(STEPLIX["_1"])
    language = one.get("64")
    assert language is not None
    assert [(c.tag, c.value) for c in language.children] == [
        ("00", "ZH"),
        ("01", "最佳运输"),  # length 04 counts characters; the CRC runs over the UTF-8 bytes
        ("02", "北京"),
    ]
    assert one.value("54") == "23.72" and one.value("59") == "BEST TRANSPORT"
    six = decode_emv(STEPLIX["_6"])
    extra = six.get("62")
    assert extra is not None and extra.children == (DataObject("05", "RP12345678-2019"),)
    assert six.value("01") == "12" and six.value("53") == "986"
    four = decode_emv(STEPLIX["_4"])
    bills = four.get("62")
    assert bills is not None and bills.children[1].tag == "50"  # a template inside 62
    assert [c.tag for c in bills.children[1].children] == ["00", "01"]
    assert decode_emv(STEPLIX["_3"]).value("54") == "390.8"


def test_the_stale_published_crc_is_refused() -> None:
    stale = STEPLIX["_3"][:-4] + "75C3"  # what _3.rawData() lists
    with pytest.raises(InvalidRequest) as e:
        decode_emv(stale)
    assert e.value.code == Refusal.CRC_MISMATCH.value and e.value.param == "63"


def test_other_networks_payloads_are_not_ours() -> None:
    for payload in STEPLIX.values():
        with pytest.raises(InvalidRequest) as e:
            decode_merchant(payload)
        assert e.value.code == Refusal.NETWORK_TEMPLATE_MISSING.value


def _crc(body: str) -> str:
    """``body`` (ending before ``6304``) with a correct CRC, so only the intended flaw remains."""
    body += "6304"
    return body + f"{crc16(body.encode()):04X}"


MANDATORY = "5204000053039995802CH5902Ab6002Zu"
GOOD = "000201" + MANDATORY

# (payload, refusal code, param): the smallest input for each refusal of the generic reader.
MALFORMED = [
    ("", "qr_payload_invalid", None),
    ("0" * 513, "qr_payload_invalid", None),
    (GOOD + "630", "qr_tlv_truncated", None),
    (GOOD + "5905Ab", "qr_tlv_truncated", "59"),
    (_crc("0002015A02xx" + MANDATORY), "qr_tag_invalid", None),
    (_crc("000201" + MANDATORY + "62070X03abc"), "qr_tag_invalid", "62"),
    (_crc("0002015900" + MANDATORY), "qr_length_invalid", "59"),
    (_crc("00020159x1" + MANDATORY), "qr_length_invalid", "59"),
    (_crc("000201" + MANDATORY + "62060300ab"), "qr_length_invalid", "62.03"),
    (_crc("000201" + MANDATORY + "5802CH"), "qr_tag_duplicated", "58"),
    (_crc("000201" + MANDATORY + "621405031230503123"), "qr_tag_duplicated", "62.05"),
    (_crc("000201" + MANDATORY + "62050101\x01"), "qr_charset_invalid", "62.01"),
    (_crc("000201" + MANDATORY + "6106Zürich"), "qr_charset_invalid", "61"),
    (_crc("000201" + MANDATORY + "64060002\u200bZ"), "qr_charset_invalid", "64.00"),
    (_crc(MANDATORY + "000201"), "qr_format_indicator_invalid", "00"),
    (_crc("000202" + MANDATORY), "qr_format_indicator_invalid", "00"),
    (GOOD, "qr_crc_missing", "63"),
    (GOOD + "6304abcd", "qr_crc_missing", "63"),
    (_crc(GOOD)[:-4] + f"{crc16(b'x'):04X}", "qr_crc_mismatch", "63"),
    (_crc(GOOD) + "6002Zu", "qr_tag_duplicated", "60"),
    (_crc("000201" + MANDATORY.replace("5802CH", "")), "qr_field_missing", "58"),
    (_crc("0002010102135204000053039995802CH5902Ab6002Zu"), "qr_field_invalid", "01"),
    (_crc("000201" + MANDATORY.replace("0000", "00a0")), "qr_field_invalid", "52"),
    (_crc("000201" + MANDATORY.replace("999", "99x")), "qr_field_invalid", "53"),
    (_crc("000201" + MANDATORY + "54040.00"), "qr_field_invalid", "54"),
    (_crc("000201" + MANDATORY + "54041,50"), "qr_field_invalid", "54"),
    (_crc("000201" + MANDATORY + "541412345678901.12"), "qr_field_invalid", "54"),
    (_crc("000201" + MANDATORY.replace("CH", "ch")), "qr_field_invalid", "58"),
    (_crc("000201" + MANDATORY + "550204"), "qr_field_invalid", "55"),
]


@pytest.mark.parametrize(("payload", "code", "param"), MALFORMED)
def test_malformed_payloads_are_refused_with_a_named_reason(
    payload: str, code: str, param: str | None
) -> None:
    with pytest.raises(InvalidRequest) as e:
        decode_emv(payload)
    assert (e.value.code, e.value.param) == (code, param)


def test_every_reader_refusal_has_a_table_row() -> None:
    reader = {r.value for r in Refusal if not r.name.startswith(("NETWORK_", "SHAPE_"))}
    assert reader == {code for _, code, _ in MALFORMED}
    assert decode_emv(_crc(GOOD)).value("59") == "Ab"  # and the base of the table is good


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        # a structural flaw wins over a character flaw, which wins over the CRC
        ("000201" + MANDATORY + "6106Zürich" + "5905Ab", "qr_tlv_truncated"),
        ("000201" + MANDATORY + "6106Zürich" + "63040000", "qr_charset_invalid"),
        (MANDATORY + "6304ZZZZ", "qr_format_indicator_invalid"),
        ("000201" + "63040000", "qr_crc_mismatch"),  # the CRC before the mandatory fields
    ],
)
def test_refusals_follow_their_precedence(payload: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        decode_emv(payload)
    assert e.value.code == code


def test_the_public_surface_is_what_all_names() -> None:
    import business.payments.codes as codes

    assert all(hasattr(codes, name) for name in codes.__all__)
    public = {n for n in vars(codes) if not n.startswith("_")}
    assert public - set(codes.__all__) <= {"consumer", "emv", "images", "merchant", "annotations"}


# --- our network's layout ---------------------------------------------------------------------

DYNAMIC = MerchantQr(
    SHOP, BAAS_LIVE, 8, "Demo Shop", "Zurich", "CH", amount=150_000_000, reference="INV-42",
    expiry=1_800_000_600,
)  # fmt: skip
STATIC = MerchantQr(SHOP, BAAS_LIVE, 8, "Demo Shop", "Zurich", "CH")
G = NETWORK_GUID


def test_our_dynamic_payload_layout() -> None:
    payload = encode_merchant(DYNAMIC)
    assert payload == (
        f"000201010212"
        f"26770032{G}010110232000102030405060708090a0b0c0d0e0f"
        "52040000530399954031.55802CH5909Demo Shop6006Zurich62100506INV-42"
        f"80600032{G}0101302018031018000006006304A74A"
    )
    assert decode_merchant(payload) == DYNAMIC
    static = encode_merchant(STATIC)
    assert "5403" not in static and "62" not in static[100:] and static[10:12] == "11"
    assert decode_merchant(static) == STATIC


@pytest.mark.parametrize(
    ("amount", "scale", "text"),
    [
        (1, 0, "1"),
        (150, 2, "1.5"),
        (100, 2, "1"),
        (105, 2, "1.05"),
        (1, 8, "0.00000001"),
        (123_456_789_012, 8, "1234.56789012"),
        (9_999_999_999_999, 0, "9999999999999"),
        (10**30, 18, "1000000000000"),
    ],
)
def test_amounts_convert_exactly_both_ways(amount: int, scale: int, text: str) -> None:
    assert format_emv_amount(amount, scale) == text
    assert parse_emv_amount(text, scale) == amount


def test_amount_strings_emvco_allows_read_the_same() -> None:
    assert parse_emv_amount("98.", 2) == parse_emv_amount("98.00", 2) == 9800
    assert parse_emv_amount(".5", 2) == 50
    with pytest.raises(InvalidRequest) as e:
        parse_emv_amount("1.234", 2)  # more decimals than the asset: never rounded
    assert e.value.code == "qr_network_field_invalid"


@pytest.mark.parametrize(("amount", "scale"), [(0, 2), (-1, 2), (10**13, 0), (10**13 + 1, 8)])
def test_amounts_outside_emvco_are_refused_at_encoding(amount: int, scale: int) -> None:
    with pytest.raises(InvalidRequest) as e:
        format_emv_amount(amount, scale)
    assert e.value.code == "amount_invalid"


def _t(tag: str, value: str) -> str:
    return f"{tag}{len(value):02d}{value}"


EXPIRY_T = _t("03", "1800000600")


def _ours(*extra: str, initiation: str = "12", merchant: str = SHOP.hex(), version: str = "1",
          asset: str = _t("01", "3") + _t("02", "8") + EXPIRY_T, currency: str = "999",
          payee_tag: str = "26", asset_tag: str = "80", before: str = "") -> str:  # fmt: skip
    payee = _t("00", G) + _t("01", version) + _t("02", merchant)
    return _crc(
        "000201" + _t("01", initiation) + before + _t(payee_tag, payee) + "52040000"
        + _t("53", currency) + "5802CH5909Demo Shop6006Zurich"
        + _t(asset_tag, _t("00", G) + asset) + "".join(extra)
    )  # fmt: skip


DYNAMIC_EXTRA = (_t("54", "1.5"), _t("62", _t("05", "INV-42")))


def test_our_reader_accepts_what_the_table_builder_builds() -> None:
    assert decode_merchant(_ours(*DYNAMIC_EXTRA)) == DYNAMIC


def _asset(ledger: str, scale: str, expiry: str = EXPIRY_T) -> str:
    return _t("01", ledger) + _t("02", scale) + expiry


NETWORK_REFUSALS = [
    (_ours(*DYNAMIC_EXTRA, currency="756"), "qr_network_field_invalid", "53"),
    (_ours(*DYNAMIC_EXTRA, merchant=SHOP.hex().upper()), "qr_network_field_invalid", "26.02"),
    (_ours(*DYNAMIC_EXTRA, merchant=SHOP.hex()[:-1]), "qr_network_field_invalid", "26.02"),
    (_ours(*DYNAMIC_EXTRA, asset=_asset("03", "8")), "qr_network_field_invalid", "80.01"),
    (_ours(*DYNAMIC_EXTRA, asset=_asset("0", "8")), "qr_network_field_invalid", "80.01"),
    (_ours(*DYNAMIC_EXTRA, asset=_asset("4294967296", "8")), "qr_network_field_invalid", "80.01"),
    (_ours(*DYNAMIC_EXTRA, asset=_asset("3", "19")), "qr_network_field_invalid", "80.02"),
    (_ours(*DYNAMIC_EXTRA, asset=_asset("3", "+8")), "qr_network_field_invalid", "80.02"),
    (_ours(*DYNAMIC_EXTRA, asset=_asset("3", "8", _t("03", "0"))), "qr_network_field_invalid", "80.03"),  # noqa: E501
    (_ours(*DYNAMIC_EXTRA, asset=_asset("3", "8", "")), "qr_shape_invalid", "01"),
    (_ours(*DYNAMIC_EXTRA, initiation="11"), "qr_shape_invalid", "01"),
    (_ours(DYNAMIC_EXTRA[1]), "qr_shape_invalid", "01"),
    (_ours(DYNAMIC_EXTRA[0]), "qr_shape_invalid", "01"),
    (_ours(initiation="12", asset=_asset("3", "8", "")), "qr_shape_invalid", "01"),
    (_ours(_t("54", "0.000000001"), DYNAMIC_EXTRA[1]), "qr_network_field_invalid", "54"),
    (_ours(DYNAMIC_EXTRA[0], _t("62", _t("05", "R" * 26))), "qr_network_field_invalid", "reference"),  # noqa: E501
    (_ours(*DYNAMIC_EXTRA, before=_t("30", _t("00", G))), "qr_network_template_duplicated", "26"),
    (_ours(*DYNAMIC_EXTRA, _t("99", _t("00", G))), "qr_network_template_duplicated", "99"),
    (_ours(*DYNAMIC_EXTRA, payee_tag="25"), "qr_network_template_missing", None),
    (_ours(*DYNAMIC_EXTRA, asset_tag="79"), "qr_network_template_missing", None),
    (_ours(DYNAMIC_EXTRA[0], _t("62", _t("05", "INV-42")), before="5926" + "N" * 26),
     "qr_tag_duplicated", "59"),
]  # fmt: skip


def test_a_foreign_length_name_is_not_ours() -> None:
    payload = _ours(*DYNAMIC_EXTRA).replace("5909Demo Shop", _t("59", "N" * 26))
    with pytest.raises(InvalidRequest) as e:
        decode_merchant(_crc(payload[:-8]))
    assert (e.value.code, e.value.param) == ("qr_network_field_invalid", "name")


@pytest.mark.parametrize(("payload", "code", "param"), NETWORK_REFUSALS)
def test_payloads_of_ours_that_break_our_layout_are_refused(
    payload: str, code: str, param: str | None
) -> None:
    with pytest.raises(InvalidRequest) as e:
        decode_merchant(payload)
    assert (e.value.code, e.value.param) == (code, param)


def test_an_unknown_layout_version_is_unsupported() -> None:
    with pytest.raises(UnsupportedFormat) as e:
        decode_merchant(_ours("54031.5", "62100506INV-42", version="2"))
    assert e.value.code == "qr_version_unknown"


def test_our_templates_are_found_beside_another_networks() -> None:
    # A card network in 04 and another wallet in 26; ours in 27 and 85, after foreign 80.
    foreign = _t("04", "4111111111111111") + _t("26", _t("00", "com.example") + _t("01", "x"))
    payload = _ours(
        *DYNAMIC_EXTRA, _t("80", _t("00", "br.gov.bcb.spi")), payee_tag="27", asset_tag="85",
        before=foreign,
    )  # fmt: skip
    assert decode_merchant(payload) == DYNAMIC


@pytest.mark.parametrize(
    "field", [{"name": "N" * 26}, {"city": "C" * 16}, {"name": "Zürich"}, {"country": "che"},
              {"country": "C1"}, {"country": 12},
              {"category": "12a4"}, {"merchant": b"x"}, {"ledger": 0}, {"scale": 19},
              {"amount": 5}, {"reference": "r"}, {"expiry": 9}],
)  # fmt: skip
def test_invalid_fields_are_refused_when_built(field: dict[str, object]) -> None:
    base: dict[str, object] = {
        "merchant": SHOP, "ledger": 3, "scale": 2, "name": "N", "city": "C", "country": "CH",
    }  # fmt: skip
    with pytest.raises(InvalidRequest):
        MerchantQr(**{**base, **field})  # type: ignore[arg-type]


_ans = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=25)


@st.composite
def merchant_qrs(draw: st.DrawFn) -> MerchantQr:
    scale = draw(st.integers(0, 18))
    fields: dict[str, object] = {
        "merchant": draw(st.binary(min_size=16, max_size=16)),
        "ledger": draw(st.integers(1, 2**32 - 1)),
        "scale": scale,
        "name": draw(_ans),
        "city": draw(_ans.filter(lambda s: len(s) <= 15)),
        "country": draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=2)),
        "category": draw(st.text("0123456789", min_size=4, max_size=4)),
    }
    if draw(st.booleans()):
        # Any amount whose EMVCo string fits 13 characters: k significant decimals leave
        # 12 - k digits for the whole part.
        k = draw(st.integers(0, min(scale, 11)))
        whole = draw(st.integers(0, 10 ** (12 - k) - 1))
        frac = draw(st.integers(1, 10**k - 1)) * 10 ** (scale - k) if k else 0
        fields["amount"] = whole * 10**scale + frac or 10**scale
        fields["reference"] = draw(_ans)
        fields["expiry"] = draw(st.integers(1, 2**64 - 1))
    return MerchantQr(**fields)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(qr=merchant_qrs())
def test_any_payload_we_encode_decodes_to_the_same_fields(qr: MerchantQr) -> None:
    assert decode_merchant(encode_merchant(qr)) == qr


@settings(max_examples=500, deadline=None)
@given(qr=merchant_qrs(), data=st.data())
def test_any_single_changed_character_is_refused(qr: MerchantQr, data: st.DataObject) -> None:
    payload = encode_merchant(qr)
    i = data.draw(st.integers(0, len(payload) - 1))
    c = data.draw(st.characters(codec="utf-8").filter(lambda c: c != payload[i]))
    altered = payload[:i] + c + payload[i + 1 :]
    with pytest.raises(CallerError):
        decode_merchant(altered)


@settings(max_examples=200, deadline=None)
@given(qr=merchant_qrs(), data=st.data())
def test_any_truncation_is_refused(qr: MerchantQr, data: st.DataObject) -> None:
    payload = encode_merchant(qr)
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(CallerError):
        decode_merchant(payload[:cut])
