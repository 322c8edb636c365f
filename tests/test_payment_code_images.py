"""Payment code images decoded back by an independent decoder (zxing-cpp): PNGs directly, SVGs
after CairoSVG rasterises them; each must carry its text exactly."""

from __future__ import annotations

import io
from collections.abc import Callable

import cairosvg
import pytest
import zxingcpp
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from business.identity.ids import Mode
from business.payments.codes import (
    ConsumerCode,
    MerchantQr,
    barcode_png,
    barcode_svg,
    decode_merchant,
    encode_merchant,
    parse_consumer_code,
    qr_png,
    qr_svg,
)
from business.payments.codes.images import barcode_modules
from node.errors import InvalidRequest

SHOP = bytes(range(16))
DYNAMIC = MerchantQr(
    SHOP, 3, 8, "Demo Shop", "Zurich", "CH", amount=150_000_000, reference="INV-42",
    expiry=1_800_000_600,
)  # fmt: skip
STATIC = MerchantQr(SHOP, 3, 8, "Demo Shop", "Zurich", "CH")
CODE = ConsumerCode(Mode.LIVE, bytes.fromhex("00ff10ef20df30cf40bf50af609f708f"))


def _read(image: bytes, kind: str) -> list[zxingcpp.Result]:
    if kind == "svg":
        image = cairosvg.svg2png(bytestring=image, dpi=254, background_color="white")
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    return list(zxingcpp.read_barcodes(Image.open(io.BytesIO(image)).convert("L")))


def _only(image: bytes, kind: str, fmt: zxingcpp.BarcodeFormat) -> str:
    found = _read(image, kind)
    assert [r.format for r in found] == [fmt]
    return str(found[0].text)


QR_WRITERS: list[tuple[Callable[..., bytes], str]] = [(qr_png, "png"), (qr_svg, "svg")]


@pytest.mark.parametrize(("writer", "kind"), QR_WRITERS)
@pytest.mark.parametrize("qr", [STATIC, DYNAMIC])
def test_merchant_qr_images_carry_the_payload(
    writer: Callable[..., bytes], kind: str, qr: MerchantQr
) -> None:
    payload = encode_merchant(qr)
    text = _only(writer(payload), kind, zxingcpp.BarcodeFormat.QRCode)
    assert text == payload
    assert decode_merchant(text) == qr


_ans = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=25)


@settings(max_examples=25, deadline=None)
@given(
    name=_ans,
    reference=_ans,
    amount=st.integers(1, 10**12),
    merchant=st.binary(min_size=16, max_size=16),
)
def test_any_dynamic_qr_png_reads_back(
    name: str, reference: str, amount: int, merchant: bytes
) -> None:
    qr = MerchantQr(merchant, 2, 0, name, "C", "CH", amount=amount, reference=reference, expiry=9)
    payload = encode_merchant(qr)
    assert _only(qr_png(payload, module_px=4), "png", zxingcpp.BarcodeFormat.QRCode) == payload


def test_a_utf8_payload_reads_back() -> None:
    # steplix/emv-qrcps test/qrcodes/merchant/index.js _1: a template-64 name in Chinese
    payload = "00020101021229300012D156000000000510A93FO3230Q31280012D15600000001030812345678520441115303156540523.725502015802CN5914BEST TRANSPORT6007BEIJING6233030412340603***0708A60086670902ME64200002ZH0104最佳运输0202北京91320016A01122334499887707081234567863047D4F"  # noqa: E501
    assert _only(qr_png(payload), "png", zxingcpp.BarcodeFormat.QRCode) == payload


@pytest.mark.parametrize(("writer", "kind"), QR_WRITERS)
def test_consumer_code_qr_images_carry_the_digits(writer: Callable[..., bytes], kind: str) -> None:
    text = _only(writer(CODE.digits), kind, zxingcpp.BarcodeFormat.QRCode)
    assert parse_consumer_code(text) == CODE


@pytest.mark.parametrize(("writer", "kind"), [(barcode_png, "png"), (barcode_svg, "svg")])
def test_consumer_code_barcodes_carry_the_digits(writer: Callable[..., bytes], kind: str) -> None:
    text = _only(writer(CODE), kind, zxingcpp.BarcodeFormat.Code128)
    assert text == CODE.digits and parse_consumer_code(text) == CODE


@settings(max_examples=20, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.sampled_from(Mode))
def test_any_consumer_barcode_png_reads_back(secret: bytes, mode: Mode) -> None:
    code = ConsumerCode(mode, secret)
    assert _only(barcode_png(code, module_px=2), "png", zxingcpp.BarcodeFormat.Code128) == (
        code.digits
    )


def test_the_barcode_packs_digit_pairs_and_paints_whole_pixels() -> None:
    modules = barcode_modules(CODE)
    # Code set C: start C, 22 symbols of 11 modules for 44 digits, a check symbol, and stop.
    assert modules.startswith("11010011100") and modules.endswith("1100011101011")
    assert len(modules) == 11 + 22 * 11 + 11 + 13
    image = Image.open(io.BytesIO(barcode_png(CODE, module_px=3))).convert("L")
    assert image.size == (3 * (len(modules) + 20), 3 * 60)
    row = "".join("1" if image.getpixel((x, 0)) == 0 else "0" for x in range(image.width))
    assert row == "".join(m * 3 for m in "0" * 10 + modules + "0" * 10)


@pytest.mark.parametrize(
    ("make", "module_px"),
    [(qr_png, 0), (qr_svg, 33), (qr_png, 2.5), (barcode_png, 1), (barcode_svg, 33)],
)
def test_image_sizes_are_bounded(make: Callable[..., bytes], module_px: object) -> None:
    text: object = CODE if make in (barcode_png, barcode_svg) else "x"
    with pytest.raises(InvalidRequest) as e:
        make(text, module_px=module_px)
    assert e.value.param == "module_px"


def test_qr_text_is_bounded() -> None:
    with pytest.raises(InvalidRequest):
        qr_png("")
    with pytest.raises(InvalidRequest):
        qr_svg("x" * 513)


def test_images_are_deterministic() -> None:
    # The same code gives the same bytes, so the gateway may cache and tag them.
    payload = encode_merchant(DYNAMIC)
    assert qr_png(payload) == qr_png(payload) and qr_svg(payload) == qr_svg(payload)
    assert barcode_png(CODE) == barcode_png(CODE) and barcode_svg(CODE) == barcode_svg(CODE)
