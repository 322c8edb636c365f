"""The one error hierarchy of the BaaS B&P network.

Every error the project raises derives from :class:`BaasError`. Adapters translate library
errors at the border (``raise OurError(...) from exc``). The tree, split by who is at fault::

    BaasError
    ├── ConfigError               the operator's configuration is invalid (refuse to start)
    ├── CallerError               the caller erred -> HTTP 4xx with a stable ``code``
    │   ├── InvalidRequest        400 invalid_request
    │   ├── AuthenticationFailed  401 unauthenticated
    │   ├── NotFound              404 not_found / record_not_found
    │   ├── IdempotencyConflict   409 idempotency_key_reused
    │   ├── PayloadTooLarge       413 payload_too_large
    │   └── UnsupportedFormat     400 unsupported_format (unknown version on disk or wire)
    ├── PeerError                 a peer misbehaved -> drop it, count it
    │   └── PeerProtocolError     malformed frame, unknown message, oversized frame
    ├── OperationFailed           an operation failed -> retry or fail over (HTTP 503)
    │   ├── PeerUnavailable       could not reach a peer or it did not answer in time
    │   ├── QuorumNotReached      fewer than write_quorum shards became durable
    │   ├── RecordUnavailable     fewer than k intact shards could be gathered
    │   ├── Overloaded            a bounded queue is full (HTTP 429/503 with Retry-After)
    │   └── CorruptEntry          a stored entry failed its checksum; it is never served
    └── InvariantViolation        a bug: crash loudly
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthenticationFailed",
    "BaasError",
    "CallerError",
    "ConfigError",
    "CorruptEntry",
    "IdempotencyConflict",
    "InvalidRequest",
    "InvariantViolation",
    "NotFound",
    "OperationFailed",
    "Overloaded",
    "PayloadTooLarge",
    "PeerError",
    "PeerProtocolError",
    "PeerUnavailable",
    "QuorumNotReached",
    "RecordUnavailable",
    "UnsupportedFormat",
]


class BaasError(Exception):
    """Root of every error raised by this project."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code  # type: ignore[misc]


class ConfigError(BaasError):
    """The configuration file or environment is invalid."""

    code = "config_invalid"


class CallerError(BaasError):
    """The caller sent something wrong; maps to an HTTP 4xx problem."""

    code = "bad_request"
    http_status = 400


class InvalidRequest(CallerError):
    code = "invalid_request"
    http_status = 400


class UnsupportedFormat(CallerError):
    code = "unsupported_format"
    http_status = 400


class AuthenticationFailed(CallerError):
    code = "unauthenticated"
    http_status = 401


class NotFound(CallerError):
    code = "not_found"
    http_status = 404


class IdempotencyConflict(CallerError):
    code = "idempotency_key_reused"
    http_status = 409


class PayloadTooLarge(CallerError):
    code = "payload_too_large"
    http_status = 413


class PeerError(BaasError):
    """A peer misbehaved: drop the message or the connection and count it."""

    code = "peer_error"
    http_status = 502


class PeerProtocolError(PeerError):
    code = "peer_protocol_error"


class OperationFailed(BaasError):
    """An operation failed in a way that a retry or fail-over may fix."""

    code = "unavailable"
    http_status = 503


class PeerUnavailable(OperationFailed):
    code = "peer_unavailable"


class QuorumNotReached(OperationFailed):
    code = "write_quorum_not_reached"


class RecordUnavailable(OperationFailed):
    code = "record_unavailable"


class Overloaded(OperationFailed):
    code = "overloaded"
    http_status = 503


class CorruptEntry(OperationFailed):
    code = "corrupt_entry"


class InvariantViolation(BaasError):
    """An internal invariant broke. Never caught to continue; crash loudly."""

    code = "invariant_violation"
