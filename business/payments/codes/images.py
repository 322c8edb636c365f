"""PNG and SVG images of payment codes: QR by segno, Code 128 by python-barcode.

Pure functions from text to image bytes (no files, no clock): the gateway serves what they
return. A QR carries the text exactly: a merchant payload (ASCII, so byte mode) or a consumer
code's digits (numeric mode, which segno picks by itself). The error correction level is M
(about 15% of the symbol may be damaged or covered), which segno raises for free when the
symbol's size allows. A Code 128 barcode carries a consumer code's 44 digits (python-barcode
packs digit pairs into code set C, 22 symbols) with the digits printed in groups below, for the
cashier who types them when a scan fails.

Tests decode every kind of image back with zxing-cpp, an independent decoder (the SVGs after
rasterising them with CairoSVG), and require the exact text.
"""

from __future__ import annotations

import io

import segno
from barcode import Code128
from barcode.writer import ImageWriter, SVGWriter

from business.payments.codes.consumer import ConsumerCode
from business.payments.codes.emv import PAYLOAD_CHARS_MAX
from node.errors import InvalidRequest

__all__ = ["MODULE_PX_MAX", "barcode_png", "barcode_svg", "qr_png", "qr_svg"]

MODULE_PX_MAX = 32  # one module at most 32 px: a version-10 QR is then ~1.9k px wide
QR_BORDER_MODULES = 4  # the quiet zone the QR standard requires
BARCODE_DPI = 254  # 10 px per mm, so a module of n px is n / 10 mm wide
BARCODE_HEIGHT_MODULES = 60


def _module_px(module_px: int) -> int:
    if type(module_px) is not int or not 1 <= module_px <= MODULE_PX_MAX:
        raise InvalidRequest(
            f"module_px must be 1..{MODULE_PX_MAX}", code="field_invalid", param="module_px"
        )
    return module_px


def _qr(text: str) -> segno.QRCode:
    if not isinstance(text, str) or not 0 < len(text) <= PAYLOAD_CHARS_MAX:
        raise InvalidRequest(f"QR text is 1..{PAYLOAD_CHARS_MAX} characters", code="field_invalid")
    # UTF-8 (not segno's Latin-1 default) so a template-64 name reads back as written.
    encoding = None if text.isascii() else "utf-8"
    return segno.make_qr(text, error="m", encoding=encoding)


def _save_qr(text: str, kind: str, module_px: int) -> bytes:
    out = io.BytesIO()
    _qr(text).save(out, kind=kind, scale=_module_px(module_px), border=QR_BORDER_MODULES)
    return out.getvalue()


def qr_png(text: str, *, module_px: int = 8) -> bytes:
    """A PNG of the QR of ``text``, ``module_px`` pixels per module."""
    return _save_qr(text, "png", module_px)


def qr_svg(text: str, *, module_px: int = 8) -> bytes:
    """An SVG of the QR of ``text`` (one path; ``module_px`` user units per module)."""
    return _save_qr(text, "svg", module_px)


def _barcode(code: ConsumerCode, writer: ImageWriter | SVGWriter, module_px: int) -> bytes:
    px = _module_px(module_px)
    options = {
        "module_width": px / 10,  # mm, at BARCODE_DPI
        "module_height": BARCODE_HEIGHT_MODULES * px / 10,
        "quiet_zone": 10 * px / 10,  # Code 128 asks for 10 modules each side
        "font_size": 3 * px,
        "text_distance": 2 * px,
        "dpi": BARCODE_DPI,
    }
    out = io.BytesIO()
    Code128(code.digits, writer=writer).write(out, options, text=code.grouped())
    return out.getvalue()


def barcode_png(code: ConsumerCode, *, module_px: int = 3) -> bytes:
    """A PNG of the Code 128 barcode of ``code``'s digits."""
    return _barcode(code, ImageWriter(format="PNG"), module_px)


def barcode_svg(code: ConsumerCode, *, module_px: int = 3) -> bytes:
    """An SVG of the Code 128 barcode of ``code``'s digits."""
    return _barcode(code, SVGWriter(), module_px)
