"""The webhook deliverer's pure state machine (business/payments/delivery.py): retry timing with
a seeded rng, giving up after the schedule, the bounded queues, in-flight bounds, resend, the
ack rule (persist before ack), and the durable record's round trip and integrity check."""

from __future__ import annotations

import random

import pytest

from business.payments.delivery import (
    CURSOR_KEY,
    FAILING_PREFIX,
    Attempt,
    DeliveryCore,
    DeliveryLimits,
    Status,
    Target,
    decode_cursor,
    decode_delivery,
    decode_failing,
    delivery_key,
    failing_key,
)
from business.payments.webhooks import WebhookConfig, retry_delay_ms
from node.errors import (
    ConfigError,
    CorruptEntry,
    InvalidRequest,
    InvariantViolation,
    Overloaded,
)

SCHEDULE = WebhookConfig()
EID = b"\x01" * 32


def core(seed: int = 7, **limits: int) -> DeliveryCore:
    return DeliveryCore(DeliveryLimits(**limits), SCHEDULE, random.Random(seed))


def fail(at_ms: int, status: int = 500) -> Attempt:
    return Attempt(at_ms, status, "boom" if status == 0 else "")


def test_retry_times_follow_the_schedule_with_the_seeded_rng_then_give_up() -> None:
    c = core(seed=42)
    c.enqueue(1, EID, [Target("we_a", b"{}")], now_ms=1_000)
    expected_rng = random.Random(42)
    now = 1_000
    for attempt in range(1, SCHEDULE.attempts_max + 1):
        (d,) = c.due(now)
        assert d.round_attempts == attempt - 1
        d = c.settle(d.number, fail(now))
        delay = retry_delay_ms(attempt, expected_rng, SCHEDULE)
        if delay is None:  # the last attempt of the schedule failed: given up
            assert attempt == SCHEDULE.attempts_max
            assert d.status is Status.FAILED and d.reason == "retries_exhausted"
            break
        assert d.status is Status.PENDING and d.next_attempt_ms == now + delay
        assert c.due(d.next_attempt_ms - 1) == []  # not before its time
        now = d.next_attempt_ms
    assert now - 1_000 >= 3 * 86_400 * 1000  # at least 3 days from first to last attempt
    assert c.counts["we_a"].failed == 1 and c.counts["we_a"].attempts_failed == 22
    assert c.pending_count == 0 and c.get(1).attempts_total == SCHEDULE.attempts_max


def test_a_2xx_delivers_anything_else_retries() -> None:
    c = core()
    c.enqueue(1, EID, [Target("we_a", b"x")], 0)
    for status in (0, 301, 404, 500):  # no answer, a redirect (not followed), 4xx, 5xx
        (d,) = c.due(10**12)
        assert c.settle(d.number, fail(0, status)).status is Status.PENDING
    (d,) = c.due(10**12)
    assert c.settle(d.number, Attempt(5, 204)).status is Status.DELIVERED
    assert c.counts["we_a"].delivered == 1 and c.pending_count == 0
    assert [a.status for a in c.get(1).attempts] == [0, 301, 404, 500, 204]


def test_bounded_queue_room_and_per_endpoint_drop_oldest() -> None:
    c = core(deliveries_max=4, endpoint_pending_max=2)
    c.enqueue(1, EID, [Target("we_a", b"1"), Target("we_b", b"1")], 0)
    c.enqueue(2, EID, [Target("we_a", b"2")], 0)
    assert c.room() == 1
    c.enqueue(3, EID, [Target("we_a", b"3")], 0)  # we_a is full: its oldest goes
    assert c.get(1).status is Status.DROPPED and c.get(1).reason == "endpoint_queue_full"
    assert c.counts["we_a"].dropped == 1 and c.get(2).status is Status.PENDING
    with pytest.raises(Overloaded):  # 2 targets, room for 1: the event waits on the log
        c.enqueue(4, EID, [Target("we_c", b"4"), Target("we_d", b"4")], 0)
    assert c.cursor_seq == 3
    with pytest.raises(InvariantViolation):
        c.enqueue(3, EID, [], 0)  # events come in order, once


def test_inflight_bounds_overall_and_per_endpoint() -> None:
    c = core(inflight_max=3, endpoint_inflight_max=2)
    for seq in range(1, 5):
        c.enqueue(seq, EID, [Target("we_a", b"a"), Target("we_b", b"b")], seq)
    first = c.due(100)
    assert [(d.endpoint, d.event_seq) for d in first] == [("we_a", 1), ("we_b", 1), ("we_a", 2)]
    assert c.due(100) == [] and c.inflight_count == 3
    c.settle(first[0].number, Attempt(100, 200))
    assert [(d.endpoint, d.event_seq) for d in c.due(100)] == [("we_b", 2)]
    with pytest.raises(InvariantViolation):
        c.settle(first[0].number, Attempt(100, 200))  # settled twice


def test_resend_restarts_a_finished_delivery_and_refuses_a_pending_one() -> None:
    c = core()
    c.enqueue(1, EID, [Target("we_a", b"x")], 0)
    (d,) = c.due(0)
    with pytest.raises(InvalidRequest, match="pending"):
        c.resend(d.number, 0)
    c.settle(d.number, Attempt(1, 200))
    again = c.resend(d.number, 50)
    assert again.status is Status.PENDING and again.next_attempt_ms == 50
    assert again.round_attempts == 0 and again.attempts_total == 1
    (d,) = c.due(50)
    assert c.settle(d.number, Attempt(60, 200)).attempts_total == 2


def test_history_keeps_the_newest_finished_deliveries_and_deletes_the_rest() -> None:
    c = core(history_max=2)
    for seq in range(1, 5):
        c.enqueue(seq, EID, [Target("we_a", b"x")], seq)
        (d,) = c.due(seq)
        c.settle(d.number, Attempt(seq, 200))
    ready = c.ready()
    deleted = [k for k, v in ready.writes if v is None]
    assert deleted == [delivery_key(1), delivery_key(2)]
    assert [d.number for d in c.listing({"we_a"}, 10, None)] == [4, 3]
    assert [d.number for d in c.listing({"we_a"}, 10, 4)] == [3]
    assert c.listing({"we_b"}, 10, None) == []


def test_ack_rule_acks_only_what_a_ready_persisted() -> None:
    c = core()
    assert c.ready().ack_upto is None  # nothing new
    c.enqueue(1, EID, [], 10)  # an event no endpoint wants: acked all the same
    c.enqueue(2, EID, [Target("we_a", b"x")], 10)
    ready = c.ready()
    assert ready.ack_upto == 2 and ready.cursor_seq == 2
    assert (CURSOR_KEY, ready.writes[-1][1]) == ready.writes[-1]  # the cursor is in the writes
    assert decode_cursor(ready.writes[-1][1] or b"") == 2
    assert {k for k, _ in ready.writes} == {delivery_key(1), CURSOR_KEY}
    c.advance(ready)
    assert c.persisted_seq == 2
    c.learned_acked(2)
    assert c.ready().ack_upto is None and c.ready().writes == ()
    c.learned_acked(1)  # never lowers
    assert c.acked_seq == 2


def test_restore_from_persisted_records_resumes_pending_and_numbers() -> None:
    c = core()
    c.enqueue(1, EID, [Target("we_a", b"x"), Target("we_b", b"y")], 0)
    (d, _) = c.due(0)
    c.settle(d.number, Attempt(0, 200))
    ready = c.ready()
    records = [decode_delivery(k, v) for k, v in ready.writes if k != CURSOR_KEY and v]
    back = DeliveryCore(
        DeliveryLimits(), SCHEDULE, random.Random(1), cursor_seq=1, restored=records
    )
    assert back.next_number == 3 and back.pending_count == 1
    assert [d.endpoint for d in back.due(0)] == ["we_b"]  # in flight before: due again
    assert back.get(1).status is Status.DELIVERED


def test_records_carry_a_version_and_a_checksum() -> None:
    c = core()
    c.enqueue(1, EID, [Target("we_a", b"x")], 0)
    ((key, raw), _) = c.ready().writes
    assert raw is not None and decode_delivery(key, raw).body == b"x"
    flipped = raw[:-1] + bytes([raw[-1] ^ 1])
    with pytest.raises(CorruptEntry):
        decode_delivery(key, flipped)
    with pytest.raises(CorruptEntry):
        decode_delivery(delivery_key(9), raw)  # under another key


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError):
        DeliveryLimits(deliveries_max=0)
    with pytest.raises(ConfigError):
        DeliveryLimits(deliveries_max=10, endpoint_pending_max=11)
    with pytest.raises(ConfigError):
        DeliveryLimits(inflight_max=1, endpoint_inflight_max=2)


def test_abandon_drops_an_inflight_delivery() -> None:
    c = core()
    c.enqueue(1, EID, [Target("we_gone", b"x")], 0)
    (d,) = c.due(0)
    assert c.abandon(d.number, "endpoint_removed").status is Status.DROPPED
    assert c.inflight_count == 0 and c.pending_count == 0


# --- disabling an endpoint that keeps failing (endpoint_failing_s_max) ----------------------

WINDOW_S = 100


def _run(c: DeliveryCore, outcomes: list[tuple[int, int]]) -> None:
    """Attempts of we_a's queue at the given times (ms) with the given HTTP statuses."""
    for at_ms, status in outcomes:
        due = [d for d in c.due(at_ms) if d.endpoint == "we_a"]
        assert due, f"nothing due at {at_ms}"
        c.settle(due[0].number, Attempt(at_ms, status))


@pytest.mark.parametrize(
    ("outcomes", "disabled"),
    [
        ([], False),  # no attempt yet
        ([(0, 500)], False),  # one failure starts the run
        ([(0, 500), (99_999, 500)], False),  # failing 99.999 s < 100 s
        ([(0, 500), (100_000, 500)], True),  # failing for exactly the window: disabled
        ([(0, 0), (100_000, 0)], True),  # no answer at all counts as failing
        ([(0, 500), (50_000, 204), (100_000, 500)], False),  # a 2xx ends the run
        ([(0, 500), (50_000, 204), (100_000, 500), (200_000, 500)], True),  # a new run: 100 s
        ([(0, 204), (100_000, 204)], False),  # never failing
    ],
)
def test_disable_rule_table(outcomes: list[tuple[int, int]], disabled: bool) -> None:
    c = core(endpoint_inflight_max=1, endpoint_failing_s_max=WINDOW_S)
    # one delivery per outcome (each due at once: the retry schedule stays out of the way)
    for n in range(len(outcomes) + 2):
        c.enqueue(n + 1, EID, [Target("we_a", b"a"), Target("we_b", b"b")], now_ms=0)
    _run(c, outcomes)
    ready = c.ready()
    assert (c.disabled("we_a") is not None) is disabled
    assert [m.endpoint for m in ready.disable] == (["we_a"] if disabled else [])
    queued = [c.get(n) for n in range(1, c.next_number) if c.get(n).endpoint == "we_a"]
    paused = [d for d in queued if d.status is Status.PAUSED]
    if disabled:
        (mark,) = ready.disable
        assert mark.reason == "failing" and mark.at_ms == outcomes[-1][0]
        # every queued delivery of the endpoint is held, the failed one included
        assert paused and all(d.status is not Status.PENDING for d in queued)
        assert all(d.reason == "endpoint_disabled" for d in paused)
        assert all(d.endpoint == "we_b" for d in c.due(10**9))  # no further attempts
    else:
        assert paused == []
    assert c.disabled("we_b") is None  # other endpoints are untouched


def _disabled_core() -> DeliveryCore:
    c = core(endpoint_inflight_max=1, endpoint_failing_s_max=WINDOW_S)
    c.enqueue(1, EID, [Target("we_a", b"1")], 0)
    c.enqueue(2, EID, [Target("we_a", b"2")], 0)
    _run(c, [(0, 500), (100_000, 500)])
    assert c.disabled("we_a") is not None and c.next_due_ms() is None
    return c


def test_a_disable_is_saved_then_a_re_enable_sends_the_paused_deliveries_again() -> None:
    c = _disabled_core()
    assert c.oldest_pending_ms() is None  # paused deliveries are not "pending" in the metric
    c.sync_endpoints({"we_a": True}, 150_000)  # an old view of the keyring: not yet saved
    assert c.disabled("we_a") is not None and c.due(10**9) == []
    c.disable_saved([m.endpoint for m in c.ready().disable])
    assert c.ready().disable == ()
    c.sync_endpoints({"we_a": False}, 160_000)  # the keyring shows it disabled
    assert c.disabled("we_a") is not None
    c.sync_endpoints({"we_a": True}, 200_000)  # its partner enabled it again
    assert c.disabled("we_a") is None and c.failing_since_ms("we_a") is None
    assert c.oldest_pending_ms() == 0
    again = [c.get(1), c.get(2)]
    assert all(d.status is Status.PENDING and d.round_attempts == 0 for d in again)
    assert c.next_due_ms() == 200_000 and [d.number for d in c.due(200_000)] == [1]
    # a fresh window: one more failure does not disable it at once
    c.settle(1, Attempt(200_000, 500))
    assert c.disabled("we_a") is None


def test_a_partner_disable_pauses_and_a_removal_drops() -> None:
    c = core()
    c.enqueue(1, EID, [Target("we_a", b"1"), Target("we_b", b"2")], 0)
    c.sync_endpoints({"we_a": False, "we_b": True}, 5)
    assert c.get(1).status is Status.PAUSED and c.ready().disable == ()  # already saved
    assert [d.number for d in c.due(5)] == [2]
    c.settle(2, Attempt(5, 204))
    c.resend(2, 6)
    c.sync_endpoints({"we_a": False}, 7)  # we_b removed
    assert c.get(2).status is Status.DROPPED and c.get(2).reason == "endpoint_removed"
    c.resend(2, 8)
    assert c.get(2).status is Status.PENDING
    with pytest.raises(InvalidRequest):
        c.resend(1, 8)  # paused is still queued


def test_resend_to_a_disabled_endpoint_is_held_and_hold_pauses_an_inflight_one() -> None:
    c = core()
    c.enqueue(1, EID, [Target("we_a", b"1")], 0)
    c.enqueue(2, EID, [Target("we_a", b"2")], 0)
    first, second = c.due(0)
    c.settle(first.number, Attempt(0, 204))
    assert c.hold(second.number, "partner", 1).status is Status.PAUSED
    assert c.inflight_count == 0 and c.disabled("we_a") is not None
    assert c.resend(first.number, 2).status is Status.PAUSED


def test_an_inflight_delivery_settling_after_its_endpoint_was_disabled_is_paused() -> None:
    c = core(endpoint_failing_s_max=WINDOW_S, endpoint_inflight_max=2)
    for seq in (1, 2, 3):
        c.enqueue(seq, EID, [Target("we_a", b"x")], 0)
    one, two = c.due(0)
    c.settle(one.number, Attempt(0, 500))  # the failing run starts
    (three,) = c.due(0)
    c.settle(two.number, Attempt(100_000, 500))  # disables: three is in flight
    assert c.get(one.number).status is Status.PAUSED
    assert c.get(three.number).status is Status.PENDING
    assert c.settle(three.number, Attempt(100_001, 500)).status is Status.PAUSED
    # a 2xx answer to an attempt in flight when its endpoint was disabled still delivers
    c2 = core()
    c2.enqueue(1, EID, [Target("we_a", b"1")], 0)
    (d,) = c2.due(0)
    c2.sync_endpoints({"we_a": False}, 0)
    assert c2.settle(d.number, Attempt(1, 200)).status is Status.DELIVERED


def test_failing_runs_are_bounded_persisted_and_restored() -> None:
    c = core(endpoints_failing_max=1, endpoint_failing_s_max=WINDOW_S)
    c.enqueue(1, EID, [Target("we_a", b"1"), Target("we_b", b"2")], 0)
    c.enqueue(2, EID, [Target("we_a", b"3")], 0)
    for d in c.due(0):
        c.settle(d.number, Attempt(7, 500))
    assert c.failing_since_ms("we_a") == 7 and c.failing_since_ms("we_b") is None
    assert c.untracked_failing == 1
    ready = c.ready()
    ((key, raw),) = [(k, v) for k, v in ready.writes if k.startswith(FAILING_PREFIX)]
    assert raw is not None and decode_failing(key, raw) == ("we_a", 7)
    with pytest.raises(CorruptEntry):
        decode_failing(FAILING_PREFIX + b"we_b", raw)
    c.advance(ready)
    records = [decode_delivery(k, v) for k, v in ready.writes if k.startswith(b"d/") and v]
    back = DeliveryCore(
        DeliveryLimits(endpoint_failing_s_max=WINDOW_S), SCHEDULE, random.Random(1),
        cursor_seq=1, restored=records, failing={"we_a": 7},
    )  # fmt: skip
    assert back.failing_since_ms("we_a") == 7
    a = next(d for d in back.due(10**9) if d.endpoint == "we_a")
    back.settle(a.number, Attempt(100_007, 500))
    assert back.disabled("we_a") is not None  # the run went on across the restart
    # success ends the run, and its record is deleted
    c.settle(next(d for d in c.due(10**9) if d.endpoint == "we_a").number, Attempt(8, 204))
    assert (failing_key("we_a"), None) in c.ready().writes


def test_a_record_changed_while_it_was_written_stays_dirty() -> None:
    c = core()
    c.enqueue(1, EID, [Target("we_a", b"1")], 0)
    ready = c.ready()
    (d,) = c.due(0)
    c.settle(d.number, Attempt(1, 204))  # settles while ready.writes are being written
    c.advance(ready)
    (write,) = [w for w in c.ready().writes if w[0] == delivery_key(1)]
    assert write[1] is not None and decode_delivery(*write).status is Status.DELIVERED  # type: ignore[arg-type]
