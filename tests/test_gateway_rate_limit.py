"""Request rate limits per API credential (gateway/rate_limit.py).

The pure limiter first (burst, refill, Retry-After, bounded table); then the real gateway
(run_gateway, as `baas-gateway` runs it, on loopback, no nodes needed: the requests used are
refused by the route before any node call) with a tiny configured rate: one credential over its
rate gets 429 ``rate_limited`` with Retry-After, another partner is not slowed, a bad signature
with the limited key is still a 401 and spends nothing, and the allowance refills.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from inprocess_gateway import client_of, gateway_without_nodes
from openapi_check import CheckedPartnerClient

from gateway.rate_limit import CredentialRateLimiter


def test_burst_then_refill_then_retry_after() -> None:
    limiter = CredentialRateLimiter(requests_per_s=2, burst_max=3, buckets_max=10)
    assert [limiter.take("k", 100.0) for _ in range(3)] == [0, 0, 0]
    assert limiter.take("k", 100.0) == 1  # empty: one token comes in 0.5 s -> 1 s (whole)
    assert limiter.take("other", 100.0) == 0  # another credential is not slowed
    assert limiter.take("k", 100.5) == 0  # refilled one
    assert limiter.take("k", 100.5) == 1
    assert limiter.take("k", 110.0) == 0  # refill is capped at the burst
    assert [limiter.take("k", 110.0) for _ in range(3)] == [0, 0, 1]
    assert limiter.refused == 3


def test_slow_rate_gives_longer_retry_after_and_clock_going_back_is_harmless() -> None:
    limiter = CredentialRateLimiter(requests_per_s=0.1, burst_max=1, buckets_max=10)
    assert limiter.take("k", 50.0) == 0
    assert limiter.take("k", 50.0) == 10
    assert limiter.take("k", 40.0) == 10  # no refill from a clock that went back


def test_table_is_bounded_dropping_the_least_recent() -> None:
    limiter = CredentialRateLimiter(requests_per_s=1, burst_max=1, buckets_max=2)
    limiter.take("a", 0.0)
    limiter.take("b", 0.0)
    limiter.take("a", 0.0)  # a is now the most recent (and empty)
    limiter.take("c", 0.0)  # drops b
    assert len(limiter) == 2
    assert limiter.take("a", 0.0) == 1  # a kept its empty bucket
    assert limiter.take("b", 0.0) == 0  # b starts again full


@pytest.mark.timeout(120)
async def test_the_gateway_refuses_a_credential_over_its_rate(tmp_path: Path) -> None:
    limits = {"credential_requests_per_s": 5, "credential_burst_requests_max": 3}
    async with gateway_without_nodes(tmp_path, limits) as layout:
        shop_a, shop_b = client_of(layout, "shop-a"), client_of(layout, "shop-b")
        forged = CheckedPartnerClient(layout.gateway_url, shop_a.api_key, b"wrong" * 4)
        try:
            codes = [(await shop_a.get_record("zz")).body["code"] for _ in range(3)]
            assert codes == ["invalid_record_id"] * 3  # handled: no node is needed for it
            limited = await shop_a.get_record("zz")
            assert limited.status == 429 and limited.body["code"] == "rate_limited"
            assert limited.headers["Retry-After"] == "1"
            assert (await shop_b.get_record("zz")).body["code"] == "invalid_record_id"
            assert (await forged.get_record("zz")).body["code"] == "bad_signature"
            await asyncio.sleep(0.25)  # 5/s: one request's worth back
            assert (await shop_a.get_record("zz")).body["code"] == "invalid_record_id"
            assert (await shop_a.get_record("zz")).body["code"] == "rate_limited"
        finally:
            for client in (shop_a, shop_b, forged):
                await client.close()
