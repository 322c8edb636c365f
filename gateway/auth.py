"""Partner request authentication: API key + HMAC-SHA256 signature with a timestamp.

A partner sends ``X-Baas-Key`` (its API key), ``X-Baas-Timestamp`` (Unix seconds) and
``X-Baas-Signature``: lowercase hex of ``HMAC-SHA256(secret, canonical)``, where ``canonical`` is
the newline-joined ``METHOD``, path with query, timestamp, ``X-Baas-Nonce`` header (optional,
or empty), ``Idempotency-Key`` header (or empty) and the hex SHA-256 of the body.
:func:`sign_request` computes it (clients and tests use it). A client that retries within the
same second sends a fresh nonce, so its retry is a new request, not a replay.

Refused with 401 and a stable code: missing headers (``unauthenticated``), unknown or expired
key, bad signature (``bad_signature``), a timestamp outside the window (``stale_request``) and a
byte-identical replay inside the window (``replayed_request``). The key id names a
:class:`~gateway.keyring.Principal`: a partner in its credential's mode (test or live), or an
operator (:func:`authenticate_principal`). The replay cache is bounded
(``replay_cache_entries_max``); entries expire with the window, so a full cache means more than
that many signed requests in one window and the oldest are dropped -- they are stale soon after.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass

from gateway.keyring import Keyring, PartnerKeys, Principal
from node.errors import AuthenticationFailed

__all__ = [
    "ReplayCache",
    "authenticate",
    "authenticate_principal",
    "canonical_request",
    "sign_request",
]

HEADER_KEY = "X-Baas-Key"
HEADER_TIMESTAMP = "X-Baas-Timestamp"
HEADER_SIGNATURE = "X-Baas-Signature"
HEADER_NONCE = "X-Baas-Nonce"
NONCE_CHARS_MAX = 64


def canonical_request(
    method: str, path_qs: str, timestamp: str, nonce: str, idempotency_key: str, body: bytes
) -> bytes:
    parts = (
        method.upper(),
        path_qs,
        timestamp,
        nonce,
        idempotency_key,
        hashlib.sha256(body).hexdigest(),
    )
    return "\n".join(parts).encode()


def sign_request(
    secret: bytes,
    method: str,
    path_qs: str,
    timestamp: str,
    idempotency_key: str,
    body: bytes,
    nonce: str = "",
) -> str:
    canonical = canonical_request(method, path_qs, timestamp, nonce, idempotency_key, body)
    return hmac.new(secret, canonical, hashlib.sha256).hexdigest()


class ReplayCache:
    """Signatures seen inside the window, oldest first; bounded."""

    def __init__(self, entries_max: int) -> None:
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._entries_max = entries_max

    def check_and_add(self, signature: str, timestamp_s: int, now_s: int, window_s: int) -> None:
        while self._seen:
            oldest, ts = next(iter(self._seen.items()))
            if ts >= now_s - window_s and len(self._seen) < self._entries_max:
                break
            self._seen.pop(oldest)
        if signature in self._seen:
            raise AuthenticationFailed(
                "this exact request was already received", code="replayed_request"
            )
        self._seen[signature] = timestamp_s


@dataclass(frozen=True, slots=True)
class SignedRequest:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


def authenticate(
    request: SignedRequest, keyring: Keyring, replay: ReplayCache, now_s: int, window_s: int
) -> PartnerKeys:
    """The partner that signed ``request`` (an operator's signature is refused here)."""
    principal = authenticate_principal(request, keyring, replay, now_s, window_s)
    if principal.partner is None:
        raise AuthenticationFailed("not a partner API key", code="operator_credential")
    return principal.partner


def authenticate_principal(
    request: SignedRequest, keyring: Keyring, replay: ReplayCache, now_s: int, window_s: int
) -> Principal:
    """Who signed ``request``: a partner in one mode, or an operator."""
    api_key = request.headers.get(HEADER_KEY, "")
    timestamp = request.headers.get(HEADER_TIMESTAMP, "")
    signature = request.headers.get(HEADER_SIGNATURE, "")
    if not api_key or not timestamp or not signature:
        raise AuthenticationFailed(
            f"{HEADER_KEY}, {HEADER_TIMESTAMP} and {HEADER_SIGNATURE} are required"
        )
    nonce = request.headers.get(HEADER_NONCE, "")
    if len(nonce) > NONCE_CHARS_MAX or not nonce.isprintable():
        raise AuthenticationFailed(f"{HEADER_NONCE} must be at most 64 printable characters")
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise AuthenticationFailed("timestamp must be Unix seconds", code="stale_request")
    timestamp_s = int(timestamp)
    if abs(now_s - timestamp_s) > window_s:
        raise AuthenticationFailed(
            "timestamp is outside the signature window", code="stale_request"
        )
    principal = keyring.principal(api_key, now_s * 1000)
    expected = sign_request(
        principal.credential.secret,
        request.method,
        request.path_qs,
        timestamp,
        request.headers.get("Idempotency-Key", ""),
        request.body,
        nonce,
    )
    if not hmac.compare_digest(expected, signature.lower()):
        raise AuthenticationFailed("signature does not match", code="bad_signature")
    replay.check_and_add(signature.lower(), timestamp_s, now_s, window_s)
    return principal
