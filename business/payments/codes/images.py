"""PNG and SVG images of payment codes: QR by segno, Code 128 by python-barcode.

Pure functions from text to image bytes (no files, no clock): the gateway serves what they
return. A QR carries the text exactly: a merchant payload (ASCII, so byte mode) or a consumer
code's digits (numeric mode, which segno picks by itself). The error correction level is M
(about 15% of the symbol may be damaged or covered), which segno raises for free when the
symbol's size allows. A Code 128 barcode carries a consumer code's 44 digits: python-barcode
encodes them (digit pairs in code set C, 22 symbols, plus start, check and stop) and this module
paints the modules itself, a whole number of pixels each (python-barcode's own writers place
bars in float millimetres, which rounds some bars a pixel too wide or narrow at small sizes).
The images carry bars only: the app shows :meth:`ConsumerCode.grouped` as text beside them, for
the cashier who types the digits when a scan fails.

Tests decode every kind of image back with zxing-cpp, an independent decoder (the SVGs after
rasterising them with CairoSVG), and require the exact text.
"""

from __future__ import annotations

import io
import re

import segno
from barcode import Code128
from PIL import Image

from business.payments.codes.consumer import ConsumerCode
from business.payments.codes.emv import PAYLOAD_CHARS_MAX
from node.errors import InvalidRequest

__all__ = ["MODULE_PX_MAX", "barcode_modules", "barcode_png", "barcode_svg", "qr_png", "qr_svg"]

MODULE_PX_MAX = 32  # one module at most 32 px: a version-10 QR is then ~1.9k px wide
QR_BORDER_MODULES = 4  # the quiet zone the QR standard requires
BARCODE_HEIGHT_MODULES = 60
BARCODE_QUIET_MODULES = 10  # Code 128 asks for 10 modules of quiet zone each side
# Two pixels per module at least: one-pixel bars blur on a phone screen rescaled by the OS.
BARCODE_MODULE_PX_MIN = 2


def _module_px(module_px: int, module_px_min: int = 1) -> int:
    if type(module_px) is not int or not module_px_min <= module_px <= MODULE_PX_MAX:
        raise InvalidRequest(
            f"module_px must be {module_px_min}..{MODULE_PX_MAX}",
            code="field_invalid",
            param="module_px",
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


def barcode_modules(code: ConsumerCode) -> str:
    """The Code 128 modules of ``code``'s digits, ``1`` dark and ``0`` light, without quiet
    zones (python-barcode's encoder: code set C, its start, check and stop symbols)."""
    (modules,) = Code128(code.digits).build()
    return str(modules)


def _bars(code: ConsumerCode, module_px: int) -> tuple[str, int, int]:
    px = _module_px(module_px, BARCODE_MODULE_PX_MIN)
    modules = "0" * BARCODE_QUIET_MODULES + barcode_modules(code) + "0" * BARCODE_QUIET_MODULES
    return modules, px, BARCODE_HEIGHT_MODULES * px


def barcode_png(code: ConsumerCode, *, module_px: int = 3) -> bytes:
    """A PNG of the Code 128 barcode of ``code``'s digits, ``module_px`` pixels per module."""
    modules, px, height = _bars(code, module_px)
    row = Image.frombytes("L", (len(modules), 1), bytes(0 if m == "1" else 255 for m in modules))
    out = io.BytesIO()
    row.resize((len(modules) * px, height), Image.Resampling.NEAREST).convert("1").save(out, "PNG")
    return out.getvalue()


def barcode_svg(code: ConsumerCode, *, module_px: int = 3) -> bytes:
    """An SVG of the Code 128 barcode of ``code``'s digits (one rect per bar)."""
    modules, px, height = _bars(code, module_px)
    width = len(modules) * px
    rects = [
        f'<rect x="{m.start() * px}" width="{len(m.group()) * px}" height="{height}"/>'
        for m in re.finditer("1+", modules)
    ]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect width="{width}" height="{height}" fill="#fff"/><g fill="#000">'
        + "".join(rects)
        + "</g></svg>"
    ).encode()
