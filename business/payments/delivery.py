"""The webhook deliverer's state machine, pure: which delivery to try when, and what to ack.

Theory of operation. The gateway that delivers (``[webhooks] deliver = true``) reads the
outbox (:mod:`business.payments.outbox`) in order and, for every event, hands this core the
**targets**: one signed-later body per endpoint that wants the event (possibly none). Each
target becomes a :class:`Delivery`, numbered locally, pending, due at once. The adapter
(:mod:`gateway.webhook_deliverer`) drives the core in etcd-raft's order::

    enqueue(...) / settle(...) / resend(...)   inputs, with the time passed in
    ready = core.ready()                         what changed: records to persist, ack
    persist ready.writes (LevelDB), THEN propose payments.ack upto ready.ack_upto
    core.advance(ready)
    core.due(now_ms)                             deliveries to POST now (marked in flight)

**The ack rule.** The outbox on the log is acknowledged up to the highest event whose
deliveries are all *durably queued here* (the cursor in ``ready.writes``, persisted before
the ack goes out): the log forgets an event only once this gateway's store holds it, so a
crash between the two only re-enqueues (at least once; receivers deduplicate on the event
id). Retries then run from the local store, for days, without holding the log's outbox.

**Retries.** A failed attempt ``n`` of a delivery is retried
:func:`~business.payments.webhooks.retry_delay_ms` later (exponential, jittered, from the
injected ``rng``); after the schedule's last attempt the delivery is ``failed`` (given up)
and its endpoint's ``failed`` count rises. A manual :meth:`DeliveryCore.resend` makes a
finished delivery pending again with a fresh schedule.

**Bounds** (:class:`DeliveryLimits`): at most ``deliveries_max`` deliveries pending (the adapter
reads no further events while :meth:`DeliveryCore.room` is short: they wait on the log), at
most ``endpoint_pending_max`` per endpoint (past it the endpoint's *oldest* pending delivery
is dropped, ``dropped``: one dead endpoint cannot stall every partner), ``inflight_max`` in
flight and ``endpoint_inflight_max`` per endpoint, ``history_max`` finished deliveries kept to
list and resend (the oldest go), ``attempts_recorded_max`` attempts kept per delivery.

No clock, no I/O, no module-level randomness (the purity test in tests/ covers this module).
"""

from __future__ import annotations

import enum
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from business.payments.webhooks import Rng, WebhookConfig, retry_delay_ms
from node.errors import (
    ConfigError,
    CorruptEntry,
    InvalidRequest,
    InvariantViolation,
    NotFound,
    Overloaded,
    UnsupportedFormat,
)

__all__ = [
    "CURSOR_KEY",
    "DELIVERY_PREFIX",
    "Attempt",
    "Delivery",
    "DeliveryCore",
    "DeliveryLimits",
    "EndpointCounts",
    "Ready",
    "Status",
    "Target",
    "decode_cursor",
    "decode_delivery",
    "delivery_key",
]

RECORD_VERSION = 1
DELIVERY_PREFIX = b"d/"
CURSOR_KEY = b"c"
ERROR_CHARS_MAX = 200  # an attempt's error text as recorded


class Status(enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # every attempt of the schedule failed: given up
    DROPPED = "dropped"  # its endpoint's queue overflowed, or the endpoint went away


@dataclass(frozen=True, slots=True)
class DeliveryLimits:
    deliveries_max: int = 100_000
    endpoint_pending_max: int = 10_000
    inflight_max: int = 16
    endpoint_inflight_max: int = 2
    history_max: int = 10_000
    attempts_recorded_max: int = 32

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"webhooks.{name} must be a positive integer")
        if self.endpoint_pending_max > self.deliveries_max:
            raise ConfigError("webhooks.endpoint_pending_max must be at most deliveries_max")
        if self.endpoint_inflight_max > self.inflight_max:
            raise ConfigError("webhooks.endpoint_inflight_max must be at most inflight_max")


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint that wants an event, and the body it gets (signed when sent)."""

    endpoint: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Attempt:
    at_ms: int
    status: int  # the HTTP status; 0: no answer (refused, timed out, blocked address)
    error: str = ""
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 299


@dataclass(frozen=True, slots=True)
class Delivery:
    number: int  # local, from 1, in enqueue order
    event_seq: int
    event_id: bytes
    endpoint: str
    body: bytes
    created_ms: int
    status: Status = Status.PENDING
    next_attempt_ms: int = 0  # when pending
    round_attempts: int = 0  # attempts in the current schedule (a resend starts a new one)
    attempts_total: int = 0
    attempts: tuple[Attempt, ...] = ()  # the last attempts_recorded_max
    reason: str = ""  # why it is failed or dropped


@dataclass(frozen=True, slots=True)
class Ready:
    writes: tuple[tuple[bytes, bytes | None], ...]
    cursor_seq: int  # the cursor these writes persist
    ack_upto: int | None  # propose payments.ack {"upto"} once the writes are durable


@dataclass(slots=True)
class EndpointCounts:
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    attempts_failed: int = 0


def delivery_key(number: int) -> bytes:
    return DELIVERY_PREFIX + number.to_bytes(8, "big")


def _seal(fields: list[Any]) -> bytes:
    body: bytes = msgpack.packb([RECORD_VERSION, *fields], use_bin_type=True)
    return zlib.crc32(body).to_bytes(4, "big") + body


def _open(raw: bytes, what: str) -> list[Any]:
    if len(raw) < 5 or zlib.crc32(raw[4:]).to_bytes(4, "big") != raw[:4]:
        raise CorruptEntry(f"stored webhook {what} fails its checksum")
    try:
        value = msgpack.unpackb(raw[4:], raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptEntry(f"stored webhook {what} does not decode") from exc
    if not isinstance(value, list) or not value or value[0] != RECORD_VERSION:
        raise UnsupportedFormat(f"unknown webhook {what} version")
    return value[1:]


def encode_delivery(d: Delivery) -> bytes:
    return _seal(
        [
            d.number,
            d.event_seq,
            d.event_id,
            d.endpoint,
            d.body,
            d.created_ms,
            d.status.value,
            d.next_attempt_ms,
            d.round_attempts,
            d.attempts_total,
            [[a.at_ms, a.status, a.error, a.duration_ms] for a in d.attempts],
            d.reason,
        ]
    )


def decode_delivery(key: bytes, raw: bytes) -> Delivery:
    fields = _open(raw, "delivery")
    try:
        number, seq, event, endpoint, body, created, status, nxt, rnd, total, tries, why = fields
        d = Delivery(
            int(number),
            int(seq),
            bytes(event),
            str(endpoint),
            bytes(body),
            int(created),
            Status(status),
            int(nxt),
            int(rnd),
            int(total),
            tuple(Attempt(int(a), int(s), str(e), int(ms)) for a, s, e, ms in tries),
            str(why),
        )
    except (ValueError, TypeError) as exc:
        raise CorruptEntry("stored webhook delivery is malformed") from exc
    if key != delivery_key(d.number):  # checked after reading, as before writing
        raise CorruptEntry("stored webhook delivery is under another number's key")
    return d


def decode_cursor(raw: bytes) -> int:
    (cursor,) = _open(raw, "cursor")
    if type(cursor) is not int or cursor < 0:
        raise CorruptEntry("stored webhook cursor is malformed")
    return cursor


class DeliveryCore:
    """Pending and finished deliveries, the cursor and the ack (module docstring)."""

    def __init__(
        self,
        limits: DeliveryLimits,
        schedule: WebhookConfig,
        rng: Rng,
        *,
        cursor_seq: int = 0,
        acked_seq: int = 0,
        restored: Sequence[Delivery] = (),
    ) -> None:
        self.limits = limits
        self.schedule = schedule
        self._rng = rng
        self.cursor_seq = cursor_seq  # every event up to here is enqueued
        self.persisted_seq = cursor_seq  # ... and durably so
        self.acked_seq = acked_seq  # the log's acknowledged cursor, as last learned
        self._deliveries: OrderedDict[int, Delivery] = OrderedDict()
        self._pending: dict[str, list[int]] = {}  # endpoint -> pending numbers, oldest first
        self._finished: OrderedDict[int, None] = OrderedDict()  # oldest finished first
        self._inflight: dict[int, str] = {}
        self._dirty: dict[int, bool] = {}  # number -> still held (False: delete the record)
        self.counts: dict[str, EndpointCounts] = {}
        self.next_number = 1
        for d in sorted(restored, key=lambda d: d.number):
            self._hold(d)
            self.next_number = d.number + 1
            if d.status is not Status.PENDING:
                self._finished[d.number] = None

    # ------------------------------------------------------------------ reads

    @property
    def pending_count(self) -> int:
        return sum(len(v) for v in self._pending.values())

    @property
    def inflight_count(self) -> int:
        return len(self._inflight)

    def room(self) -> int:
        """Deliveries that may still be enqueued."""
        return self.limits.deliveries_max - self.pending_count

    def get(self, number: int) -> Delivery:
        found = self._deliveries.get(number)
        if found is None:
            raise NotFound(f"no webhook delivery {number}", code="delivery_not_found")
        return found

    def listing(self, endpoints: set[str], limit: int, before: int | None) -> list[Delivery]:
        """Deliveries to ``endpoints``, newest first, numbered below ``before``."""
        out: list[Delivery] = []
        for number in reversed(self._deliveries):
            if before is not None and number >= before:
                continue
            d = self._deliveries[number]
            if d.endpoint in endpoints:
                out.append(d)
                if len(out) == limit:
                    break
        return out

    def oldest_pending_ms(self) -> int | None:
        starts = [self._deliveries[q[0]].created_ms for q in self._pending.values() if q]
        return min(starts) if starts else None

    def next_due_ms(self) -> int | None:
        times = [
            self._deliveries[n].next_attempt_ms
            for q in self._pending.values()
            for n in q
            if n not in self._inflight
        ]
        return min(times) if times else None

    # ------------------------------------------------------------------ inputs

    def enqueue(
        self, event_seq: int, event_id: bytes, targets: Sequence[Target], now_ms: int
    ) -> None:
        """The event ``event_seq`` (next after the cursor) and its targets, due at once."""
        if event_seq <= self.cursor_seq:
            raise InvariantViolation(f"event {event_seq} is not after the cursor {self.cursor_seq}")
        if len(targets) > self.room():
            raise Overloaded("the webhook queue is full (webhooks.deliveries_max)")
        for target in targets:
            queue = self._pending.setdefault(target.endpoint, [])
            if len(queue) >= self.limits.endpoint_pending_max:
                self._finish(queue[0], Status.DROPPED, "endpoint_queue_full")
            d = Delivery(
                self.next_number, event_seq, event_id, target.endpoint, target.body, now_ms,
                next_attempt_ms=now_ms,
            )  # fmt: skip
            self.next_number += 1
            self._hold(d)
        self.cursor_seq = event_seq

    def due(self, now_ms: int) -> list[Delivery]:
        """Deliveries to attempt now, oldest due first, marked in flight (within the bounds)."""
        candidates = sorted(
            (self._deliveries[n].next_attempt_ms, n)
            for q in self._pending.values()
            for n in q
            if n not in self._inflight and self._deliveries[n].next_attempt_ms <= now_ms
        )
        per_endpoint: dict[str, int] = {}
        for e in self._inflight.values():
            per_endpoint[e] = per_endpoint.get(e, 0) + 1
        out: list[Delivery] = []
        for _, n in candidates:
            if len(self._inflight) >= self.limits.inflight_max:
                break
            d = self._deliveries[n]
            if per_endpoint.get(d.endpoint, 0) >= self.limits.endpoint_inflight_max:
                continue
            per_endpoint[d.endpoint] = per_endpoint.get(d.endpoint, 0) + 1
            self._inflight[n] = d.endpoint
            out.append(d)
        return out

    def settle(self, number: int, attempt: Attempt) -> Delivery:
        """The outcome of one attempt of an in-flight delivery."""
        if self._inflight.pop(number, None) is None:
            raise InvariantViolation(f"delivery {number} was not in flight")
        d = self._deliveries[number]  # never trimmed while in flight (_finish)
        if d.status is not Status.PENDING:  # dropped while in flight: the answer is moot
            return d
        attempts = (*d.attempts, replace(attempt, error=attempt.error[:ERROR_CHARS_MAX]))
        d = replace(
            d,
            round_attempts=d.round_attempts + 1,
            attempts_total=d.attempts_total + 1,
            attempts=attempts[-self.limits.attempts_recorded_max :],
        )
        self._deliveries[number] = d
        self._dirty[number] = True
        counts = self._counts(d.endpoint)
        if attempt.ok:
            return self._finish(number, Status.DELIVERED, "")
        counts.attempts_failed += 1
        delay_ms = retry_delay_ms(d.round_attempts, self._rng, self.schedule)
        if delay_ms is None:
            return self._finish(number, Status.FAILED, "retries_exhausted")
        d = replace(d, next_attempt_ms=attempt.at_ms + attempt.duration_ms + delay_ms)
        self._deliveries[number] = d
        return d

    def abandon(self, number: int, reason: str) -> Delivery:
        """An in-flight delivery whose endpoint was removed or disabled: dropped."""
        self._inflight.pop(number, None)
        return self._finish(number, Status.DROPPED, reason)

    def resend(self, number: int, now_ms: int) -> Delivery:
        """A finished delivery pending again, due now, with a fresh schedule."""
        d = self.get(number)
        if d.status is Status.PENDING:
            raise InvalidRequest(
                "the delivery is still pending: it is retried by itself", code="delivery_pending"
            )
        if self.room() < 1:
            raise Overloaded("the webhook queue is full (webhooks.deliveries_max)")
        queue = self._pending.setdefault(d.endpoint, [])
        if len(queue) >= self.limits.endpoint_pending_max:
            self._finish(queue[0], Status.DROPPED, "endpoint_queue_full")
        self._finished.pop(number, None)
        d = replace(d, status=Status.PENDING, next_attempt_ms=now_ms, round_attempts=0, reason="")
        self._deliveries[number] = d
        queue.append(number)
        queue.sort()
        self._dirty[number] = True
        return d

    def learned_acked(self, acked_seq: int) -> None:
        """The log's acknowledged cursor as a read (or an ack's answer) reported it."""
        self.acked_seq = max(self.acked_seq, acked_seq)

    # ------------------------------------------------------------------ ready / advance

    def ready(self) -> Ready:
        writes: list[tuple[bytes, bytes | None]] = [
            (delivery_key(n), encode_delivery(self._deliveries[n]) if held else None)
            for n, held in sorted(self._dirty.items())
        ]
        if self.cursor_seq != self.persisted_seq:
            writes.append((CURSOR_KEY, _seal([self.cursor_seq])))
        # The ack covers what is durable before it goes out: persist first (module docstring).
        ack = self.cursor_seq if self.cursor_seq > self.acked_seq else None
        return Ready(tuple(writes), self.cursor_seq, ack)

    def advance(self, ready: Ready) -> None:
        """``ready.writes`` are durable (and its ack, if any, was proposed)."""
        for key, _ in ready.writes:
            if key.startswith(DELIVERY_PREFIX):
                self._dirty.pop(int.from_bytes(key[len(DELIVERY_PREFIX) :], "big"), None)
        self.persisted_seq = max(self.persisted_seq, ready.cursor_seq)

    # ------------------------------------------------------------------ internals

    def _counts(self, endpoint: str) -> EndpointCounts:
        return self.counts.setdefault(endpoint, EndpointCounts())

    def _hold(self, d: Delivery) -> None:
        self._deliveries[d.number] = d
        self._dirty[d.number] = True
        if d.status is Status.PENDING:
            self._pending.setdefault(d.endpoint, []).append(d.number)

    def _finish(self, number: int, status: Status, reason: str) -> Delivery:
        d = replace(self._deliveries[number], status=status, reason=reason)
        if self._deliveries[number].status is Status.PENDING:
            queue = self._pending[d.endpoint]
            queue.remove(number)
            if not queue:
                del self._pending[d.endpoint]
        self._deliveries[number] = d
        self._dirty[number] = True
        counts = self._counts(d.endpoint)
        if status is Status.DELIVERED:
            counts.delivered += 1
        elif status is Status.FAILED:
            counts.failed += 1
        else:
            counts.dropped += 1
        self._finished[number] = None
        while len(self._finished) > self.limits.history_max:
            oldest, _ = self._finished.popitem(last=False)
            if oldest in self._inflight:  # a resent one still in flight: keep it
                self._finished[oldest] = None
                self._finished.move_to_end(oldest, last=False)
                break
            del self._deliveries[oldest]
            self._dirty[oldest] = False
        return d
