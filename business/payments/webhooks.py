"""Webhooks, the pure part: when to retry a delivery, and how a delivery is signed.

The deliverer (the gateway side, next) keeps the outbox and the attempts; this module decides,
as pure functions of their inputs (no clock, no module-level randomness: the caller passes the
time and a ``random.Random``):

**The retry schedule.** Attempt 1 is the first delivery. After attempt ``n`` fails, attempt
``n + 1`` runs :func:`retry_delay_ms` later: the nominal delay ``base_delay_s * 2^(n-1)``,
capped at ``delay_s_max``, plus a jitter drawn uniformly from ``0 ..
nominal * jitter_bps / 10_000`` (so receivers recovering from an outage are not hit by every
sender at once, while the nominal delay stays a floor). After attempt ``attempts_max`` the
deliverer gives up (``None``). With the defaults (30 s doubling to 6 h, 20 % jitter, 22
attempts) the floors sum to 268,290 s = 3 d 2 h 31 min from the first attempt to the last:
at least the 3 days the issue (and Stripe, in live mode) ask; the config refuses any bounds
whose floors sum to less than ``retry_span_s_min``. :func:`schedule` is the whole table.

**The signature**, Stripe's scheme: the header ``t=<unix s>,v1=<hex HMAC-SHA256(secret,
"<t>.<raw body>")>``; :func:`verify_signature` accepts any of several ``v1`` (a receiver
rotating its secret), compares in constant time (``hmac.compare_digest``) and refuses a
timestamp more than ``tolerance_s`` (300 s, Stripe's default) from the receiver's clock, so a
captured delivery cannot be replayed later. Receivers still deduplicate on the event id:
delivery is at least once.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Protocol

from node.errors import ConfigError, InvalidRequest

__all__ = [
    "Rng",
    "WebhookConfig",
    "retry_delay_ms",
    "schedule",
    "sign_payload",
    "signature_header",
    "verify_signature",
]

BPS_DENOMINATOR = 10_000
HEADER_CHARS_MAX = 1024  # a header with a few v1 signatures is ~200 characters
SIGNATURES_MAX = 8  # v1 entries one header may carry


class Rng(Protocol):
    """What the schedule needs of ``random.Random``."""

    def randrange(self, start: int, stop: int) -> int: ...


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    base_delay_s: int = 30
    delay_s_max: int = 6 * 3600
    jitter_bps: int = 2000  # jitter up to 20 % of the nominal delay, added
    attempts_max: int = 22  # the first delivery and 21 retries
    retry_span_s_min: int = 3 * 86_400  # the floors of the delays must sum to at least this
    tolerance_s: int = 300

    def __post_init__(self) -> None:
        for name, low, high in (
            ("base_delay_s", 1, 86_400),
            ("delay_s_max", 1, 7 * 86_400),
            ("jitter_bps", 0, BPS_DENOMINATOR),
            ("attempts_max", 1, 1000),
            ("retry_span_s_min", 0, 365 * 86_400),
            ("tolerance_s", 1, 86_400),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"webhook {name} must be an integer in {low}..{high}")
        floors = sum(_nominal_s(self, n) for n in range(1, self.attempts_max))
        if floors < self.retry_span_s_min:
            raise ConfigError(f"webhook retries span at least {floors} s, below retry_span_s_min")


def _nominal_s(config: WebhookConfig, attempt: int) -> int:
    # 2^(attempt-1) only up to the cap: the exponent never grows past what the cap needs
    doublings = min(attempt - 1, config.delay_s_max.bit_length())
    return min(config.base_delay_s << doublings, config.delay_s_max)


def retry_delay_ms(attempt: int, rng: Rng, config: WebhookConfig) -> int | None:
    """How long after failed attempt ``attempt`` (from 1) to run the next; None: give up."""
    if type(attempt) is not int or attempt < 1:
        raise InvalidRequest("attempt counts from 1", code="field_invalid", param="attempt")
    if attempt >= config.attempts_max:
        return None
    least_ms, most_ms = _bounds_ms(config, attempt)
    return least_ms + rng.randrange(0, most_ms - least_ms + 1)


def _bounds_ms(config: WebhookConfig, attempt: int) -> tuple[int, int]:
    nominal_ms = _nominal_s(config, attempt) * 1000
    return nominal_ms, nominal_ms + nominal_ms * config.jitter_bps // BPS_DENOMINATOR


def schedule(config: WebhookConfig) -> list[tuple[int, int, int]]:
    """Every retry: ``(attempt that failed, least delay ms, most delay ms)``."""
    return [(n, *_bounds_ms(config, n)) for n in range(1, config.attempts_max)]


def sign_payload(secret: bytes, timestamp_s: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under the endpoint's secret."""
    if not isinstance(secret, bytes) or not secret:
        raise InvalidRequest("a webhook secret is non-empty bytes", code="field_invalid")
    if type(timestamp_s) is not int or timestamp_s < 0:
        raise InvalidRequest("timestamp is Unix seconds", code="field_invalid")
    message = str(timestamp_s).encode("ascii") + b"." + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def signature_header(secret: bytes, timestamp_s: int, body: bytes) -> str:
    return f"t={timestamp_s},v1={sign_payload(secret, timestamp_s, body)}"


def _refuse(code: str, detail: str) -> InvalidRequest:
    return InvalidRequest(detail, code=code, param="signature")


def verify_signature(
    secrets: list[bytes], header: str, body: bytes, now_s: int, config: WebhookConfig
) -> int:
    """The header's timestamp when one of its ``v1`` matches one of ``secrets`` within the
    tolerance; else :class:`InvalidRequest` (``signature_malformed``,
    ``signature_timestamp_outside_tolerance``, ``signature_mismatch``)."""
    if not isinstance(header, str) or len(header) > HEADER_CHARS_MAX:
        raise _refuse("signature_malformed", "the signature header is too long")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise _refuse("signature_malformed", "the signature header is key=value pairs")
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise _refuse("signature_malformed", "one t=<unix seconds>")
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
        # other schemes (v0, later versions) are ignored, as Stripe's libraries do
    if timestamp is None or not signatures or len(signatures) > SIGNATURES_MAX:
        raise _refuse("signature_malformed", f"t and 1..{SIGNATURES_MAX} v1 are required")
    if abs(now_s - timestamp) > config.tolerance_s:
        raise _refuse("signature_timestamp_outside_tolerance", "the signature is too old or new")
    expected = [sign_payload(s, timestamp, body) for s in secrets]
    # Every pair is compared (no early exit): the time does not tell which one matched.
    matched = False
    for e in expected:
        for given in signatures:
            matched |= hmac.compare_digest(e.encode("ascii"), given.encode("ascii", "replace"))
    if not matched:
        raise _refuse("signature_mismatch", "no v1 signature matches")
    return timestamp
