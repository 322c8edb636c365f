"""The webhook retry schedule (attempt n at which delay, the jitter's bounds, giving up after at
least 3 days) and the ``t=,v1=`` signature (sign, verify, tolerance, rotation, tampering)."""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from business.payments.webhooks import (
    WebhookConfig,
    retry_delay_ms,
    schedule,
    signature_header,
    verify_signature,
)
from node.errors import ConfigError, InvalidRequest

CONFIG = WebhookConfig()
DAY_S = 86_400

# attempt that failed -> (least, most) delay in seconds before the next: 30 s doubling, capped
# at 6 h, plus up to 20 % jitter.
TABLE = {
    1: (30, 36), 2: (60, 72), 3: (120, 144), 4: (240, 288), 5: (480, 576), 6: (960, 1152),
    7: (1920, 2304), 8: (3840, 4608), 9: (7680, 9216), 10: (15360, 18432),
    **{n: (21600, 25920) for n in range(11, 22)},
}  # fmt: skip


class Extreme:
    """An rng at one end of every range: the schedule's exact bounds."""

    def __init__(self, high: bool) -> None:
        self.high = high

    def randrange(self, start: int, stop: int) -> int:
        return stop - 1 if self.high else start


def test_the_schedule_is_the_table() -> None:
    assert schedule(CONFIG) == [(n, lo * 1000, hi * 1000) for n, (lo, hi) in TABLE.items()]
    for n, (lo, hi) in TABLE.items():
        assert retry_delay_ms(n, Extreme(False), CONFIG) == lo * 1000
        assert retry_delay_ms(n, Extreme(True), CONFIG) == hi * 1000


def test_it_gives_up_after_attempt_22_and_not_before_3_days() -> None:
    assert retry_delay_ms(22, Extreme(False), CONFIG) is None
    assert retry_delay_ms(1000, Extreme(False), CONFIG) is None
    floors = sum(lo for lo, _ in TABLE.values())
    assert floors == 268_290 >= 3 * DAY_S  # the last attempt is at least 3 d 2 h 31 min out
    assert sum(hi for _, hi in TABLE.values()) == 321_948  # and at most 3 d 17 h 26 min


def test_random_jitter_stays_within_its_bounds_and_depends_only_on_the_seed() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        delays = [retry_delay_ms(n, rng, CONFIG) for n in TABLE]
        for n, d in zip(TABLE, delays, strict=True):
            lo, hi = TABLE[n]
            assert d is not None and lo * 1000 <= d <= hi * 1000
        again = random.Random(seed)
        assert delays == [retry_delay_ms(n, again, CONFIG) for n in TABLE]
    spread = {retry_delay_ms(1, random.Random(s), CONFIG) for s in range(200)}
    assert len(spread) > 100  # jitter actually varies


def test_a_config_that_would_give_up_before_3_days_is_refused() -> None:
    with pytest.raises(ConfigError):
        WebhookConfig(attempts_max=21)  # floors sum to 246,690 s < 259,200
    with pytest.raises(ConfigError):
        WebhookConfig(delay_s_max=3600)
    with pytest.raises(InvalidRequest):
        retry_delay_ms(0, Extreme(False), CONFIG)


SECRET = b"whsec_test_0123456789"
BODY = b'{"id":"evt_1","type":"payment.captured"}'
T = 1_800_000_000


def test_the_signature_is_hmac_sha256_of_t_dot_body() -> None:
    header = signature_header(SECRET, T, BODY)
    mac = hmac.new(SECRET, b"1800000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={T},v1={mac}"
    assert verify_signature([SECRET], header, BODY, T + 300, CONFIG) == T
    assert verify_signature([SECRET], header, BODY, T - 300, CONFIG) == T


@pytest.mark.parametrize(
    ("header", "body", "now", "code"),
    [
        (None, BODY, T + 301, "signature_timestamp_outside_tolerance"),
        (None, BODY, T - 301, "signature_timestamp_outside_tolerance"),
        (None, BODY + b" ", T, "signature_mismatch"),
        (None, BODY[:-1], T, "signature_mismatch"),
        ("t=1800000000,v1=" + "0" * 64, BODY, T, "signature_mismatch"),
        ("t=1800000001,v1=SIG", BODY, T, "signature_mismatch"),  # the timestamp is signed
        ("v1=SIG", BODY, T, "signature_malformed"),
        ("t=1800000000", BODY, T, "signature_malformed"),
        ("t=x,v1=SIG", BODY, T, "signature_malformed"),
        ("t=1800000000,t=1800000000,v1=SIG", BODY, T, "signature_malformed"),
        ("garbage", BODY, T, "signature_malformed"),
        ("t=1800000000," + ",".join(["v1=SIG"] * 9), BODY, T, "signature_malformed"),
        ("t=1800000000,v1=" + "a" * 2000, BODY, T, "signature_malformed"),
    ],
)
def test_tampered_or_stale_signatures_are_refused(
    header: str | None, body: bytes, now: int, code: str
) -> None:
    good = signature_header(SECRET, T, BODY)
    text = good if header is None else header.replace("SIG", good.split("v1=")[1])
    with pytest.raises(InvalidRequest) as info:
        verify_signature([SECRET], text, body, now, CONFIG)
    assert info.value.code == code


def test_any_v1_under_any_current_secret_verifies_and_other_schemes_are_ignored() -> None:
    old, new = b"old-secret", b"new-secret"
    sig_old = signature_header(old, T, BODY).split("v1=")[1]
    sig_new = signature_header(new, T, BODY).split("v1=")[1]
    header = f"t={T},v0=whatever,v1={sig_old},v1={sig_new}"
    assert verify_signature([new], header, BODY, T, CONFIG) == T
    assert verify_signature([old], header, BODY, T, CONFIG) == T
    with pytest.raises(InvalidRequest):
        verify_signature([b"third"], header, BODY, T, CONFIG)
