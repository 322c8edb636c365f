"""Request rate limits per API credential: a token bucket for each API key.

Each credential may make ``credential_requests_per_s`` signed requests per second on average,
and up to ``credential_burst_requests_max`` at once; past that it gets 429
``rate_limited`` with a ``Retry-After`` of the seconds until its next token, and nothing of the
refused request was done (safe to retry with the same ``Idempotency-Key``). Other credentials,
of the same partner or not, are not slowed by it. Only requests that passed authentication
are counted, so nobody can spend another partner's allowance by sending its key with a bad
signature.

Pure and deterministic: time is passed in (seconds, monotonic), and the table of buckets is
bounded (``credential_buckets_max``): when full, the bucket unused the longest is dropped,
which can only give that credential a full bucket again, never take requests from another.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["CredentialRateLimiter"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


class CredentialRateLimiter:
    def __init__(self, requests_per_s: float, burst_max: int, buckets_max: int) -> None:
        if requests_per_s <= 0 or burst_max < 1 or buckets_max < 1:
            raise ValueError("rate, burst and bucket count must be positive")
        self.requests_per_s = requests_per_s
        self.burst_max = burst_max
        self.buckets_max = buckets_max
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.refused = 0

    def take(self, credential: str, now_s: float) -> int:
        """Spend one request of ``credential``'s allowance: 0 if allowed, else the whole
        seconds (at least 1) until it may try again."""
        bucket = self._buckets.get(credential)
        if bucket is None:
            if len(self._buckets) >= self.buckets_max:
                self._buckets.popitem(last=False)
            bucket = _Bucket(float(self.burst_max), now_s)
            self._buckets[credential] = bucket
        else:
            self._buckets.move_to_end(credential)
            elapsed_s = max(0.0, now_s - bucket.updated_s)
            bucket.tokens = min(
                float(self.burst_max), bucket.tokens + elapsed_s * self.requests_per_s
            )
            bucket.updated_s = max(bucket.updated_s, now_s)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        self.refused += 1
        return max(1, math.ceil((1.0 - bucket.tokens) / self.requests_per_s))

    def __len__(self) -> int:
        return len(self._buckets)
