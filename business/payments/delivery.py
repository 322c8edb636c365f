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

**Disabling an endpoint that keeps failing** (Stripe disables an endpoint that has failed for
days). The core keeps, per endpoint, when its current run of failed attempts began (the first
failed attempt since its last 2xx; persisted under ``f/``). A failed attempt that ends at least
``endpoint_failing_s_max`` after that start disables the endpoint: no further attempts, its
queued deliveries (this one included) are ``paused`` with the reason, and ``ready.disable``
carries the decision for the adapter to persist where endpoints live (the keyring); once it is
saved, :meth:`DeliveryCore.disable_saved`. :meth:`DeliveryCore.sync_endpoints` reconciles the
core with the endpoints as saved: one disabled there (by its partner, or by this rule) pauses
its queue; one enabled there again (a partner's re-enable) resumes its paused deliveries, due at
once with a fresh schedule and a fresh failing window; one removed drops them
(``endpoint_removed``). A disable not yet saved is never undone by a sync.

**Bounds** (:class:`DeliveryLimits`): at most ``deliveries_max`` deliveries pending (the adapter
reads no further events while :meth:`DeliveryCore.room` is short: they wait on the log), at
most ``endpoint_pending_max`` per endpoint (past it the endpoint's *oldest* pending delivery
is dropped, ``dropped``: one dead endpoint cannot stall every partner), ``inflight_max`` in
flight and ``endpoint_inflight_max`` per endpoint, ``history_max`` finished deliveries kept to
list and resend (the oldest go), ``attempts_recorded_max`` attempts kept per delivery,
``endpoints_failing_max`` failing runs tracked (past it a newly failing endpoint is not tracked,
so not disabled, until a run ends: ``untracked_failing`` counts them). Disabled endpoints are
those of the keyring (a sync forgets any other), so bounded by it.

No clock, no I/O, no module-level randomness (the purity test in tests/ covers this module).
"""

from __future__ import annotations

import enum
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
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
    "FAILING_PREFIX",
    "Attempt",
    "Delivery",
    "DeliveryCore",
    "DeliveryLimits",
    "EndpointCounts",
    "EndpointDisabled",
    "Ready",
    "Status",
    "Target",
    "decode_cursor",
    "decode_delivery",
    "decode_failing",
    "delivery_key",
    "failing_key",
]

RECORD_VERSION = 1
DELIVERY_PREFIX = b"d/"
CURSOR_KEY = b"c"
FAILING_PREFIX = b"f/"
FAILING_REASON = "failing"  # disabled_reason of an endpoint this core disabled
PAUSED_REASON = "endpoint_disabled"  # reason of a delivery held while its endpoint is disabled
ERROR_CHARS_MAX = 200  # an attempt's error text as recorded


class Status(enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # every attempt of the schedule failed: given up
    DROPPED = "dropped"  # its endpoint's queue overflowed, or the endpoint went away
    PAUSED = "paused"  # its endpoint is disabled: held, sent again once it is re-enabled


_QUEUED = (Status.PENDING, Status.PAUSED)  # held in the per-endpoint queues


@dataclass(frozen=True, slots=True)
class DeliveryLimits:
    deliveries_max: int = 100_000
    endpoint_pending_max: int = 10_000
    inflight_max: int = 16
    endpoint_inflight_max: int = 2
    history_max: int = 10_000
    attempts_recorded_max: int = 32
    # An endpoint whose attempts have all failed for this long is disabled. 4 days: longer
    # than one delivery's whole retry schedule (3 d 2.5 h by default), so no single event's
    # retries disable an endpoint by themselves; it is still failing a day after one gave up.
    endpoint_failing_s_max: int = 4 * 86_400
    endpoints_failing_max: int = 100_000

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
    disable: tuple[EndpointDisabled, ...] = ()  # to save with the endpoints, then disable_saved


@dataclass(frozen=True, slots=True)
class EndpointDisabled:
    """The decision to disable an endpoint, for the adapter to persist with the endpoint."""

    endpoint: str
    at_ms: int
    reason: str


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


def failing_key(endpoint: str) -> bytes:
    return FAILING_PREFIX + endpoint.encode()


def decode_failing(key: bytes, raw: bytes) -> tuple[str, int]:
    """A stored failing run: the endpoint and when its first failed attempt was."""
    fields = _open(raw, "failing run")
    if len(fields) != 2 or not isinstance(fields[0], str) or type(fields[1]) is not int:
        raise CorruptEntry("stored webhook failing run is malformed")
    if key != failing_key(fields[0]):
        raise CorruptEntry("stored webhook failing run is under another endpoint's key")
    return fields[0], fields[1]


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
        failing: Mapping[str, int] = {},
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
        # endpoint -> when its run of failed attempts began (module docstring: disabling)
        self._failing_since: dict[str, int] = dict(failing)
        self._failing_dirty: set[str] = set()
        self._disabled: dict[str, EndpointDisabled] = {}
        self._unsaved: dict[str, EndpointDisabled] = {}  # disabled here, not yet saved
        self.untracked_failing = 0
        self.next_number = 1
        for d in sorted(restored, key=lambda d: d.number):
            self._hold(d)
            self.next_number = d.number + 1
            if d.status not in _QUEUED:
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

    def disabled(self, endpoint: str) -> EndpointDisabled | None:
        return self._disabled.get(endpoint)

    def failing_since_ms(self, endpoint: str) -> int | None:
        return self._failing_since.get(endpoint)

    def oldest_pending_ms(self) -> int | None:
        """The oldest delivery still tried (a disabled endpoint's paused ones wait apart)."""
        starts = [
            next((d.created_ms for n in q if (d := self._deliveries[n]).status is Status.PENDING),
                 None)
            for endpoint, q in self._pending.items()
            if endpoint not in self._disabled
        ]  # fmt: skip
        found = [s for s in starts if s is not None]
        return min(found) if found else None

    def next_due_ms(self) -> int | None:
        times = [
            self._deliveries[n].next_attempt_ms
            for q in self._pending.values()
            for n in q
            if n not in self._inflight and self._deliveries[n].status is Status.PENDING
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
            if n not in self._inflight
            and self._deliveries[n].status is Status.PENDING
            and self._deliveries[n].next_attempt_ms <= now_ms
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
            self._failing_ended(d.endpoint)
            return self._finish(number, Status.DELIVERED, "")
        counts.attempts_failed += 1
        ended_ms = attempt.at_ms + attempt.duration_ms
        if self._failing_too_long(d.endpoint, attempt.at_ms, ended_ms):
            self._disable(EndpointDisabled(d.endpoint, ended_ms, FAILING_REASON), saved=False)
        if d.endpoint in self._disabled:  # disabled now, or while this attempt ran
            return self._pause(number)
        delay_ms = retry_delay_ms(d.round_attempts, self._rng, self.schedule)
        if delay_ms is None:
            return self._finish(number, Status.FAILED, "retries_exhausted")
        d = replace(d, next_attempt_ms=attempt.at_ms + attempt.duration_ms + delay_ms)
        self._deliveries[number] = d
        return d

    def abandon(self, number: int, reason: str) -> Delivery:
        """An in-flight delivery whose endpoint was removed: dropped (disabled: :meth:`hold`)."""
        self._inflight.pop(number, None)
        return self._finish(number, Status.DROPPED, reason)

    def resend(self, number: int, now_ms: int) -> Delivery:
        """A finished delivery pending again, due now, with a fresh schedule."""
        d = self.get(number)
        if d.status in _QUEUED:
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
        if d.endpoint in self._disabled:  # held until the endpoint is enabled again
            d = replace(d, status=Status.PAUSED, reason=PAUSED_REASON)
        self._deliveries[number] = d
        queue.append(number)
        queue.sort()
        self._dirty[number] = True
        return d

    def hold(self, number: int, endpoint_reason: str, now_ms: int) -> Delivery:
        """An in-flight delivery not attempted: its endpoint is disabled where endpoints are
        saved (the adapter saw it before a sync did). Paused, with the rest of its queue."""
        if self._inflight.pop(number, None) is None:
            raise InvariantViolation(f"delivery {number} was not in flight")
        endpoint = self._deliveries[number].endpoint
        self._disable(EndpointDisabled(endpoint, now_ms, endpoint_reason), saved=True)
        return self._pause(number)

    def disable_saved(self, endpoints: Sequence[str]) -> None:
        """These disables (``ready.disable``) are saved with the endpoints."""
        for endpoint in endpoints:
            self._unsaved.pop(endpoint, None)

    def sync_endpoints(self, saved: Mapping[str, bool], now_ms: int) -> None:
        """The endpoints as saved (id -> enabled), after they changed (module docstring)."""
        known = set(self._pending) | set(self._disabled) | set(self._failing_since)
        known |= {e for e, enabled in saved.items() if not enabled}
        for endpoint in sorted(known):
            enabled = saved.get(endpoint)
            if enabled is None:
                self._forget(endpoint)
            elif not enabled:
                self._unsaved.pop(endpoint, None)
                if endpoint not in self._disabled:
                    self._disable(EndpointDisabled(endpoint, now_ms, "saved"), saved=True)
            elif endpoint not in self._unsaved:  # a disable not yet saved stays
                self._resume(endpoint, now_ms)

    def learned_acked(self, acked_seq: int) -> None:
        """The log's acknowledged cursor as a read (or an ack's answer) reported it."""
        self.acked_seq = max(self.acked_seq, acked_seq)

    # ------------------------------------------------------------------ ready / advance

    def ready(self) -> Ready:
        writes: list[tuple[bytes, bytes | None]] = [
            (delivery_key(n), self._delivery_record(n)) for n in sorted(self._dirty)
        ]
        writes += [(failing_key(e), self._failing_record(e)) for e in sorted(self._failing_dirty)]
        if self.cursor_seq != self.persisted_seq:
            writes.append((CURSOR_KEY, _seal([self.cursor_seq])))
        # The ack covers what is durable before it goes out: persist first (module docstring).
        ack = self.cursor_seq if self.cursor_seq > self.acked_seq else None
        disable = tuple(self._unsaved[e] for e in sorted(self._unsaved))
        return Ready(tuple(writes), self.cursor_seq, ack, disable)

    def advance(self, ready: Ready) -> None:
        """``ready.writes`` are durable (and its ack, if any, was proposed). A record that
        changed again while they were written (an attempt settled meanwhile) stays dirty."""
        for key, value in ready.writes:
            if key.startswith(DELIVERY_PREFIX):
                number = int.from_bytes(key[len(DELIVERY_PREFIX) :], "big")
                if number in self._dirty and self._delivery_record(number) == value:
                    del self._dirty[number]
            elif key.startswith(FAILING_PREFIX):
                endpoint = key[len(FAILING_PREFIX) :].decode()
                if self._failing_record(endpoint) == value:
                    self._failing_dirty.discard(endpoint)
        self.persisted_seq = max(self.persisted_seq, ready.cursor_seq)

    # ------------------------------------------------------------------ internals

    def _counts(self, endpoint: str) -> EndpointCounts:
        return self.counts.setdefault(endpoint, EndpointCounts())

    def _delivery_record(self, number: int) -> bytes | None:
        held = self._dirty.get(number, number in self._deliveries)
        return encode_delivery(self._deliveries[number]) if held else None

    def _failing_record(self, endpoint: str) -> bytes | None:
        since = self._failing_since.get(endpoint)
        return None if since is None else _seal([endpoint, since])

    def _failing_too_long(self, endpoint: str, at_ms: int, ended_ms: int) -> bool:
        """A failed attempt: start or extend the endpoint's failing run; whether it has
        lasted ``endpoint_failing_s_max``."""
        since = self._failing_since.get(endpoint)
        if since is None:
            if len(self._failing_since) >= self.limits.endpoints_failing_max:
                self.untracked_failing += 1
                return False
            since = self._failing_since[endpoint] = at_ms
            self._failing_dirty.add(endpoint)
        return ended_ms - since >= self.limits.endpoint_failing_s_max * 1000

    def _failing_ended(self, endpoint: str) -> None:
        if self._failing_since.pop(endpoint, None) is not None:
            self._failing_dirty.add(endpoint)

    def _disable(self, mark: EndpointDisabled, saved: bool) -> None:
        if mark.endpoint in self._disabled:
            return
        self._disabled[mark.endpoint] = mark
        if not saved:
            self._unsaved[mark.endpoint] = mark
        for n in list(self._pending.get(mark.endpoint, ())):
            if n not in self._inflight and self._deliveries[n].status is Status.PENDING:
                self._pause(n)  # in flight: paused when it settles (settle)

    def _pause(self, number: int) -> Delivery:
        d = replace(self._deliveries[number], status=Status.PAUSED, reason=PAUSED_REASON)
        self._deliveries[number] = d
        self._dirty[number] = True
        return d

    def _resume(self, endpoint: str, now_ms: int) -> None:
        """Enabled again: paused deliveries due now with a fresh schedule, a fresh window."""
        was_disabled = self._disabled.pop(endpoint, None) is not None
        for n in self._pending.get(endpoint, ()):
            d = self._deliveries[n]
            if d.status is Status.PAUSED:
                was_disabled = True
                self._deliveries[n] = replace(
                    d, status=Status.PENDING, next_attempt_ms=now_ms, round_attempts=0, reason=""
                )
                self._dirty[n] = True
        if was_disabled:
            self._failing_ended(endpoint)

    def _forget(self, endpoint: str) -> None:
        """The endpoint was removed: its queue dropped (in flight: dropped at the attempt)."""
        for n in list(self._pending.get(endpoint, ())):
            if n not in self._inflight:
                self._finish(n, Status.DROPPED, "endpoint_removed")
        self._disabled.pop(endpoint, None)
        self._unsaved.pop(endpoint, None)
        self._failing_ended(endpoint)

    def _hold(self, d: Delivery) -> None:
        self._deliveries[d.number] = d
        self._dirty[d.number] = True
        if d.status in _QUEUED:
            self._pending.setdefault(d.endpoint, []).append(d.number)

    def _finish(self, number: int, status: Status, reason: str) -> Delivery:
        d = replace(self._deliveries[number], status=status, reason=reason)
        if self._deliveries[number].status in _QUEUED:
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
