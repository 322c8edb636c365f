"""What an executed ledger operation did, in the one form receipts prove and verifiers read.

A partner or user operation (a transfer request; later a swap or a payment) is one record in the
data core plus a batch of ledger events applied with its index entry. Its *outcome* is what the
ledger did with each event: the ids, accounts, ledger (asset), amount, result code and timestamp,
and the log time the operation was applied at. The outcome holds no names, memos or partner
metadata (those live only in the encrypted record), just the opaque ids and integer amounts the
replicated ledger state holds anyway.

The outcome is stored with the operation (a retry is answered with it, forever), carried in the
owner's receipt, and hashed into the operation's Merkle leaf (leaf format v2), so a receipt proves
the executed operation and not only the request. Encoding, msgpack, positional::

    [OUTCOME_VERSION, log_time_ms, [[kind, id16, ledger, debit16, credit16, amount16,
                                     result, timestamp], ...]]

A *refused* operation (feature 7: the proposer may not touch an account, or a debit of a user's
wallet lacks the user's approval; business/identity/scope.py and approvals.py) ran none of its
events: each event's ``result`` is then the one refusal code (``account_not_found``,
``approval_missing``, ...), its ``amount`` and ``timestamp`` 0. An operation that ran may list,
after its own events, the accounts (and the BAAS asset) the apply opened for it on first use
(a wallet's account on a ledger, a partner's role account), in the order they ran.

``kind`` is the wire event type (1 asset, 2 account, 3 transfer); ``id16``, accounts and amounts
are 16-byte big-endian (msgpack integers stop at 2^64); ``result`` is the result code's string
value (``ok``, ``exists``, ``exceeds_credits``, ...). For an asset event ``id`` is the ledger
number and the accounts and amount are 0; for an account event the accounts and amount are 0.
``amount`` is what a transfer actually moved or reserved (a balancing transfer's clamp, a partial
post), which may differ from the amount requested. The digest is SHA-256 over a domain tag and
the encoding, so an outcome digest can never be confused with another hash of the system.

An operation that carries a Bridge request (log feature 8, ``node/consensus/bridge_ops.py``)
has one more field, its request's result code (``ok``, ``reserve_exhausted``,
``policy_version_changed``, or a scope or approval refusal), under format version 2::

    [OUTCOME_VERSION_RESULT, log_time_ms, [<event>, ...], result]

Its events may be empty (a request refused before it made any). Version 1 outcomes (every
other operation) are unchanged, byte for byte.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from business.identity.model import REFUSAL_CODES
from business.ledger.model import (
    ID_MAX,
    U32_MAX,
    U64_MAX,
    AccountResult,
    AssetResult,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    Result,
    TransferResult,
)
from node.errors import InvalidRequest, UnsupportedFormat

__all__ = [
    "EVENTS_MAX",
    "OUTCOME_DIGEST_TAG",
    "OUTCOME_VERSION",
    "EventOutcome",
    "OperationOutcome",
    "outcome_of",
    "refused_outcome",
]

OUTCOME_VERSION = 1
OUTCOME_VERSION_RESULT = 2  # with the operation's own result code (a Bridge request)
OUTCOME_DIGEST_TAG = b"baas/ledger-operation-outcome/v1\x00"
EVENTS_MAX = 8_192  # decoding bound; an operation's events are bounded far lower by the node
KIND_ASSET, KIND_ACCOUNT, KIND_TRANSFER = 1, 2, 3
_RESULT_CODES = REFUSAL_CODES | frozenset(
    c.value for enum_type in (AssetResult, AccountResult, TransferResult) for c in enum_type
)
_RESULT_CHARS_MAX = 64
# An operation's own result (version 2): a stable snake_case code of a core above the ledger.
_OPERATION_RESULT = re.compile(r"[a-z][a-z_]{0,63}")


@dataclass(frozen=True, slots=True)
class EventOutcome:
    kind: int
    id: int
    ledger: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    result: str
    timestamp: int

    def __post_init__(self) -> None:
        # type() and not ==: True == 1 would let a msgpack bool stand for a kind, and two byte
        # strings would decode to one outcome.
        if type(self.kind) is not int or self.kind not in (KIND_ASSET, KIND_ACCOUNT, KIND_TRANSFER):
            raise InvalidRequest(f"unknown ledger event kind {self.kind!r}")
        for name, high in (
            ("id", ID_MAX),
            ("ledger", U32_MAX),
            ("debit_account_id", ID_MAX),
            ("credit_account_id", ID_MAX),
            ("amount", ID_MAX),
            ("timestamp", U64_MAX),
        ):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= high:
                raise InvalidRequest(f"outcome {name} must be an integer in 0..{high}")
        if self.result not in _RESULT_CODES:
            raise InvalidRequest(f"unknown ledger result code {self.result!r:.40}")

    @property
    def succeeded(self) -> bool:
        return self.result in ("ok", "exists")

    def to_wire(self) -> list[Any]:
        return [
            self.kind,
            self.id.to_bytes(16, "big"),
            self.ledger,
            self.debit_account_id.to_bytes(16, "big"),
            self.credit_account_id.to_bytes(16, "big"),
            self.amount.to_bytes(16, "big"),
            self.result,
            self.timestamp,
        ]

    @classmethod
    def from_wire(cls, raw: object) -> EventOutcome:
        if type(raw) is not list or len(raw) != 8:
            raise UnsupportedFormat("an event outcome is an array of 8 fields")
        kind, id16, ledger, dr16, cr16, amount16, result, timestamp = raw
        for b in (id16, dr16, cr16, amount16):
            if type(b) is not bytes or len(b) != 16:
                raise UnsupportedFormat("outcome ids and amounts are 16 bytes")
        if type(result) is not str or len(result) > _RESULT_CHARS_MAX:
            raise UnsupportedFormat("an outcome result is a short string")
        try:
            return cls(
                kind=kind,
                id=int.from_bytes(id16, "big"),
                ledger=ledger,
                debit_account_id=int.from_bytes(dr16, "big"),
                credit_account_id=int.from_bytes(cr16, "big"),
                amount=int.from_bytes(amount16, "big"),
                result=result,
                timestamp=timestamp,
            )
        except InvalidRequest as exc:
            raise UnsupportedFormat(exc.detail) from exc

    def summary(self) -> dict[str, Any]:
        """JSON form (amounts and ids as strings of digits: JSON numbers lose precision)."""
        return {
            "kind": {KIND_ASSET: "asset", KIND_ACCOUNT: "account", KIND_TRANSFER: "transfer"}[
                self.kind
            ],
            "id": str(self.id),
            "ledger": self.ledger,
            "debit_account_id": str(self.debit_account_id),
            "credit_account_id": str(self.credit_account_id),
            "amount": str(self.amount),
            "result": self.result,
            "timestamp": str(self.timestamp),
        }


@dataclass(frozen=True, slots=True)
class OperationOutcome:
    """The outcome of one operation: every event's result, at one log time."""

    log_time_ms: int
    events: tuple[EventOutcome, ...]
    result: str | None = None  # a Bridge request's own result code (format version 2)

    def __post_init__(self) -> None:
        if type(self.log_time_ms) is not int or not 0 <= self.log_time_ms <= U64_MAX:
            raise InvalidRequest("outcome log time must be a u64 count of ms")
        if len(self.events) > EVENTS_MAX:
            raise InvalidRequest(f"an operation outcome holds at most {EVENTS_MAX} events")
        if self.result is not None and (
            type(self.result) is not str or not _OPERATION_RESULT.fullmatch(self.result)
        ):
            raise InvalidRequest("an operation result is a snake_case code")

    @property
    def succeeded(self) -> bool:
        """Every event succeeded (``ok`` or ``exists``), and so did the operation's own
        result if it has one: the operation took effect whole."""
        own = self.result is None or self.result in ("ok", "exists")
        return own and all(e.succeeded for e in self.events)

    def encode(self) -> bytes:
        wire: list[Any] = [self.log_time_ms, [e.to_wire() for e in self.events]]
        if self.result is None:
            packed: bytes = msgpack.packb([OUTCOME_VERSION, *wire], use_bin_type=True)
        else:
            packed = msgpack.packb([OUTCOME_VERSION_RESULT, *wire, self.result], use_bin_type=True)
        return packed

    def digest(self) -> bytes:
        return hashlib.sha256(OUTCOME_DIGEST_TAG + self.encode()).digest()

    @classmethod
    def decode(cls, raw: bytes) -> OperationOutcome:
        """Refuses anything malformed with :class:`UnsupportedFormat` (never another type)."""
        if type(raw) is not bytes:
            raise UnsupportedFormat("an operation outcome is bytes")
        try:
            top = msgpack.unpackb(
                raw,
                raw=False,
                strict_map_key=True,
                max_array_len=EVENTS_MAX,
                max_bin_len=16,
                max_str_len=_RESULT_CHARS_MAX,
                max_map_len=0,
                max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises many types on garbage; all mean the same
            raise UnsupportedFormat(f"an operation outcome is not valid msgpack: {exc}") from exc
        if (
            type(top) is not list
            or type(top[0]) is not int
            or (top[0], len(top)) not in ((OUTCOME_VERSION, 3), (OUTCOME_VERSION_RESULT, 4))
        ):
            raise UnsupportedFormat("unknown operation outcome format")
        if type(top[2]) is not list:
            raise UnsupportedFormat("operation outcome events must be an array")
        result = top[3] if len(top) == 4 else None
        if len(top) == 4 and type(result) is not str:
            raise UnsupportedFormat("an operation result is a string")
        events = tuple(EventOutcome.from_wire(e) for e in top[2])
        try:
            outcome = cls(log_time_ms=top[1], events=events, result=result)
        except InvalidRequest as exc:
            raise UnsupportedFormat(exc.detail) from exc
        if outcome.encode() != raw:  # one encoding per outcome: the digest is of these bytes
            raise UnsupportedFormat("operation outcome is not in canonical form")
        return outcome

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "log_time_ms": self.log_time_ms,
            "events": [e.summary() for e in self.events],
        }
        if self.result is not None:
            out["result"] = self.result
        return out


def outcome_of(
    events: Sequence[Event], results: Sequence[Result], log_time_ms: int
) -> OperationOutcome:
    """The outcome of ``events`` given the ledger's ``results`` (one per event, in order).

    A post or void names its accounts as the event gave them (0 where inherited from the
    pending transfer); its ``id`` and the ``pending_id`` in the stored transfer tie it to them.
    """
    if len(events) != len(results):
        raise InvalidRequest("one result per event")
    return OperationOutcome(
        log_time_ms,
        tuple(
            _event_outcome(e, r.code.value, r.amount, r.timestamp)
            for e, r in zip(events, results, strict=True)
        ),
    )


def refused_outcome(events: Sequence[Event], code: str, log_time_ms: int) -> OperationOutcome:
    """The outcome of an operation refused whole before its events ran: every event carries
    the refusal ``code``, moved nothing and has no ledger timestamp."""
    if code not in REFUSAL_CODES:
        raise InvalidRequest(f"not an operation refusal code: {code!r:.40}")
    return OperationOutcome(log_time_ms, tuple(_event_outcome(e, code, 0, 0) for e in events))


def _event_outcome(event: Event, result: str, amount: int, timestamp: int) -> EventOutcome:
    if type(event) is CreateTransfer:
        return EventOutcome(
            KIND_TRANSFER,
            event.id,
            event.ledger,
            event.debit_account_id,
            event.credit_account_id,
            amount,
            result,
            timestamp,
        )
    if type(event) is CreateAccount:
        return EventOutcome(KIND_ACCOUNT, event.id, event.ledger, 0, 0, 0, result, timestamp)
    if type(event) is CreateAsset:
        return EventOutcome(KIND_ASSET, event.ledger, event.ledger, 0, 0, 0, result, timestamp)
    raise InvalidRequest(f"not a ledger event: {type(event).__name__}")
