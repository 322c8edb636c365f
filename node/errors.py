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
    │   ├── NotLeader             this node is not the Raft leader; ``leader_hint`` names it
    │   ├── Overloaded            a bounded queue is full (HTTP 503 with Retry-After)
    │   │   └── RateLimited       this caller has too much in flight (HTTP 429, Retry-After)
    │   ├── DeadlineExceeded      the request's deadline passed, work abandoned (HTTP 504)
    │   └── CorruptEntry          a stored entry failed its checksum; it is never served
    └── InvariantViolation        a bug: crash loudly
        ├── ReadyOutOfOrder       the Raft adapter broke the ready -> advance order
        └── StorageDamaged        the Raft database is damaged on disk: stop, with the runbook
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthenticationFailed",
    "BaasError",
    "CallerError",
    "ConfigError",
    "CorruptEntry",
    "DeadlineExceeded",
    "IdempotencyConflict",
    "InvalidRequest",
    "InvariantViolation",
    "NotFound",
    "NotLeader",
    "OperationFailed",
    "Overloaded",
    "PayloadTooLarge",
    "PeerError",
    "PeerProtocolError",
    "PeerUnavailable",
    "QuorumNotReached",
    "RateLimited",
    "ReadyOutOfOrder",
    "RecordUnavailable",
    "StorageDamaged",
    "UnsupportedFormat",
]


class BaasError(Exception):
    """Root of every error raised by this project."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500

    def __init__(self, detail: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        # The offending request parameter (a body field, query parameter or header), if one.
        self.param = param
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


class NotLeader(OperationFailed):
    """Only the Raft leader accepts this; retry at ``leader_hint`` (None: no leader known)."""

    code = "not_leader"

    def __init__(self, detail: str, *, leader_hint: str | None = None) -> None:
        super().__init__(detail)
        self.leader_hint = leader_hint


class Overloaded(OperationFailed):
    """A bounded queue is full; ``retry_after_s`` is a hint for the Retry-After header."""

    code = "overloaded"
    http_status = 503

    def __init__(self, detail: str, *, code: str | None = None, retry_after_s: int = 1) -> None:
        super().__init__(detail, code=code)
        self.retry_after_s = max(1, retry_after_s)


class RateLimited(Overloaded):
    """This caller has too much in flight (HTTP 429); other callers are still served."""

    code = "too_many_requests"
    http_status = 429


class DeadlineExceeded(OperationFailed):
    """The request's deadline passed; its unfinished work was abandoned."""

    code = "deadline_exceeded"
    http_status = 504


class CorruptEntry(OperationFailed):
    code = "corrupt_entry"


class InvariantViolation(BaasError):
    """An internal invariant broke. Never caught to continue; crash loudly."""

    code = "invariant_violation"


class ReadyOutOfOrder(InvariantViolation):
    """A Raft core's ready()/advance() was called out of order (a bug in its adapter)."""

    code = "ready_out_of_order"


class StorageDamaged(InvariantViolation):
    """A database the node cannot run without (its Raft log and state) is damaged on disk.

    Not a bug, but handled like one: the node stops rather than vote or apply with a log it
    cannot trust. The detail names the operator's way back (rejoin as a new incarnation).
    """

    code = "storage_damaged"
