"""The webhook outbox on the log: payments events as opaque ids, in order, acknowledged on the log.

The durable half of webhooks (issue 14, item 6). When a payments operation (log feature 9,
:mod:`node.consensus.payments_ops`) succeeds, or the expiry sweep finds a payment expired, the
apply appends one **event** per change to the outbox in the replicated state: a sequence
number, the event's :class:`EventType` and the id of the object it concerns (the payment or
order id, 32 bytes; for ``reserve.low`` the partner id and the BAAS ledger) and the log time.
No payload, no secret, no personal data: the gateway (which holds partners' webhook endpoints
and secrets) reads the object itself when it delivers, and signs there.

Layout, under ``pm/``:

* ``pm/ev/<seq u64>`` -> ``[type, object, log_time_ms]``; the event's id is
  :func:`event_id` ``(seq)`` (derived, never stored: opaque, unique, the same on every replica);
* ``pm/eh`` -> the head ``[next_seq, first_seq, acked_seq, dropped]``: the next number to
  give (from 1), the oldest event still held, the highest acknowledged one, and how many
  unacknowledged events were dropped because the outbox was full.

**Bounds.** At most :data:`EVENTS_MAX` events are held. Payments never wait for webhooks: an
append to a full outbox drops the oldest event (acknowledged or not) and counts it in
``dropped``, which the read reports, so a deliverer that was away too long knows it lost
events and can reconcile through the list reads. With the bound at a million events
(about 60 MB) that takes a deliverer down for days under load.

**Acknowledgement.** The deliverer reads in order from a cursor (the node read
``/internal/v1/payments/events?after=``) and, once it has delivered (or durably queued)
events up to ``n``, proposes a ``payments.ack`` entry ``{"upto": n}``. Applying it raises
``acked_seq`` (never lowers it; never past the last event) and deletes at most
:data:`ACK_TRIM_PER_ENTRY_MAX` acknowledged events (the rest at the next ack). Because the
cursor lives in the replicated state, a new leader or a restarted gateway resumes from
``acked_seq``: every event is delivered at least once; receivers deduplicate on the id.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from business.bridge.model import pack, unpack
from business.identity.ids import derive
from business.payments.model import PAYMENTS_FEATURE_VERSION
from node.consensus.state_machine import AppEntry, ApplyOutcome, LogPosition, Overlay, StateView

__all__ = [
    "ACK_TRIM_PER_ENTRY_MAX",
    "EVENTS_MAX",
    "EVENT_PREFIX",
    "HEAD_KEY",
    "PAYMENTS_ACK",
    "Event",
    "EventType",
    "Head",
    "PaymentsOutbox",
    "append_event",
    "event_id",
    "event_key",
    "read_head",
]

EVENTS_MAX = 1_000_000  # events held (the format's bound: every replica drops alike)
ACK_TRIM_PER_ENTRY_MAX = 1024  # acknowledged events one ack entry deletes
EVENT_PREFIX = b"pm/ev/"
HEAD_KEY = b"pm/eh"
PAYMENTS_ACK = "payments.ack"
TAG_EVENT = b"baas/payments-event/v1"
U64_MAX = (1 << 64) - 1


class EventType(enum.IntEnum):
    """What happened; :attr:`name` in the API is ``value`` of :data:`EVENT_NAMES`."""

    PAYMENT_AUTHORISED = 1
    PAYMENT_CAPTURED = 2
    PAYMENT_REFUNDED = 3
    PAYMENT_VOIDED = 4
    PAYMENT_EXPIRED = 5
    ORDER_PLACED = 6
    ORDER_FULFILLED = 7
    ORDER_CANCELLED = 8
    ORDER_REFUNDED = 9
    ORDER_EXPIRED = 10
    RESERVE_LOW = 11  # the Bridge's low-reserve notice (object: partner id + ledger u32)

    @property
    def api_name(self) -> str:
        kind, _, what = self.name.lower().partition("_")
        return f"{kind}.{what}"


@dataclass(frozen=True, slots=True)
class Head:
    next_seq: int = 1
    first_seq: int = 1
    acked_seq: int = 0
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    type: EventType
    object: bytes
    log_time_ms: int

    @property
    def id(self) -> bytes:
        return event_id(self.seq)


def event_id(seq: int) -> bytes:
    return derive(TAG_EVENT, seq.to_bytes(8, "big"))


def event_key(seq: int) -> bytes:
    return EVENT_PREFIX + seq.to_bytes(8, "big")


def read_head(view: StateView) -> Head:
    raw = view.get(HEAD_KEY)
    return Head() if raw is None else Head(*unpack(raw, "outbox head", 4))


def _write_head(layer: Overlay, head: Head) -> None:
    layer.writes[HEAD_KEY] = pack(head.next_seq, head.first_seq, head.acked_seq, head.dropped)


def append_event(layer: Overlay, kind: EventType, obj: bytes, now_ms: int) -> int:
    """Append one event into ``layer``; its sequence number."""
    head = read_head(layer)
    first, dropped = head.first_seq, head.dropped
    if head.next_seq - first >= EVENTS_MAX:  # full: the oldest goes (module docstring)
        layer.writes[event_key(first)] = None
        dropped += first > head.acked_seq
        first += 1
    seq = head.next_seq
    layer.writes[event_key(seq)] = pack(int(kind), obj, now_ms)
    _write_head(layer, Head(seq + 1, first, max(head.acked_seq, first - 1), dropped))
    return seq


def decode_event(key: bytes, raw: bytes) -> Event:
    kind, obj, log_time_ms = unpack(raw, "outbox event", 3)
    return Event(int.from_bytes(key[len(EVENT_PREFIX) :], "big"), EventType(kind), obj, log_time_ms)


def acknowledge(layer: Overlay, upto: int) -> dict[str, int]:
    """Apply an acknowledgement up to ``upto`` into ``layer`` (module docstring)."""
    head = read_head(layer)
    acked = max(head.acked_seq, min(upto, head.next_seq - 1))
    first = head.first_seq
    stop = min(acked + 1, first + ACK_TRIM_PER_ENTRY_MAX)
    for seq in range(first, stop):
        layer.writes[event_key(seq)] = None
    first = max(first, stop)
    _write_head(layer, Head(head.next_seq, first, acked, head.dropped))
    return {"acked": acked, "first": first}


class PaymentsOutbox:
    """The ``payments.ack`` entry (log feature 9): the deliverer's acknowledgements."""

    prefix = b"pm/"
    entry_types: Mapping[str, int] = {PAYMENTS_ACK: PAYMENTS_FEATURE_VERSION}

    def apply(self, entry: AppEntry, position: LogPosition, view: StateView) -> ApplyOutcome:
        upto: Any = entry.body.get("upto")
        if type(upto) is not int or not 0 <= upto <= U64_MAX:
            return ApplyOutcome("malformed", {"reason": "upto is an event sequence number"})
        layer = Overlay(view)
        detail = acknowledge(layer, upto)
        return ApplyOutcome("applied", detail, tuple(layer.writes.items()))
