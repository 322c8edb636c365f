"""The coalescing batcher: concurrent items share calls, within every bound."""

from __future__ import annotations

import asyncio

import pytest

from node.batcher import Batcher
from node.errors import InvariantViolation, OperationFailed, Overloaded


class Recorder:
    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.delay_s = delay_s
        self.fail = fail
        self.running = 0
        self.max_running = 0

    async def __call__(self, key: str, items: list[int]) -> list[int]:
        self.calls.append((key, list(items)))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(self.delay_s)
            if self.fail:
                raise OperationFailed("peer refused")
            return [item * 10 for item in items]
        finally:
            self.running -= 1


def make(recorder: Recorder, **overrides: float) -> Batcher[str, int, int]:
    settings: dict[str, float] = {
        "window_s": 0.005,
        "items_max": 100,
        "bytes_max": 1_000_000,
        "inflight_max": 1,
        "pending_max": 1_000,
    }
    settings.update(overrides)
    return Batcher(recorder, size_of=lambda item: 10, **settings)  # type: ignore[arg-type]


async def test_concurrent_items_share_one_call_per_key_and_results_map_back() -> None:
    recorder = Recorder()
    # A window far longer than one loop iteration: on a loaded box the process may be
    # preempted for more than a few ms between two submits of the same iteration.
    batcher = make(recorder, window_s=0.5)
    results = await asyncio.gather(*(batcher.submit("a" if i % 2 else "b", i) for i in range(20)))
    assert results == [i * 10 for i in range(20)]
    assert sorted(key for key, _ in recorder.calls) == ["a", "b"]
    assert batcher.stats.calls == 2 and batcher.stats.items == 20


async def test_items_max_and_bytes_max_split_calls() -> None:
    recorder = Recorder()
    batcher = make(recorder, items_max=7, inflight_max=10)
    assert await batcher.run_many("a", list(range(20))) == [i * 10 for i in range(20)]
    assert [len(items) for _, items in recorder.calls] == [7, 7, 6]
    recorder_b = Recorder()
    by_bytes = make(recorder_b, bytes_max=35, inflight_max=10)  # 10 bytes per item
    await by_bytes.run_many("a", list(range(10)))
    assert [len(items) for _, items in recorder_b.calls] == [3, 3, 3, 1]


async def test_inflight_bound_holds_and_later_items_gather_behind_it() -> None:
    recorder = Recorder(delay_s=0.02)
    batcher = make(recorder, window_s=0.0, inflight_max=1)
    first = asyncio.create_task(batcher.submit("a", 1))
    await asyncio.sleep(0.005)  # the first call is in flight
    rest = [asyncio.create_task(batcher.submit("a", i)) for i in range(2, 12)]
    await asyncio.gather(first, *rest)
    assert recorder.max_running == 1
    assert [items for _, items in recorder.calls] == [[1], list(range(2, 12))]


async def test_pending_bound_refuses_with_overloaded() -> None:
    recorder = Recorder(delay_s=0.05)
    batcher = make(recorder, pending_max=5, window_s=0.01)
    futures = batcher.submit_many("a", [1, 2, 3, 4])
    with pytest.raises(Overloaded):
        batcher.submit_many("a", [5, 6])
    assert batcher.stats.refused_overloaded == 2
    assert batcher.snapshot()["pending"] == 4 and batcher.snapshot()["refused_overloaded"] == 2
    assert [await f for f in futures] == [10, 20, 30, 40]
    assert batcher.pending_items == 0 and batcher.inflight_items == 0


async def test_work_held_back_past_held_back_s_max_refuses_new_items() -> None:
    # The destination slows down: the one call in flight runs long. A bound on items alone
    # would keep admitting items to wait behind it; the time bound refuses them instead.
    recorder = Recorder(delay_s=0.3)
    batcher = make(recorder, window_s=0.0, held_back_s_max=0.1)
    first = batcher.submit_many("a", [1])
    await asyncio.sleep(0.02)
    second = batcher.submit_many("a", [2])  # held back 0.02 s: still admitted
    await asyncio.sleep(0.12)
    with pytest.raises(Overloaded) as refused:
        batcher.submit_many("b", [3])  # any lane: the queue as a whole holds work back
    assert refused.value.retry_after_s >= 1
    assert batcher.stats.refused_overloaded == 1
    assert [await f for f in first + second] == [10, 20]  # nothing admitted is lost
    assert batcher.held_back_s() == 0.0
    assert await batcher.submit("b", 4) == 40  # drained: admitted again


async def test_abandoned_items_are_dropped_before_their_call() -> None:
    recorder = Recorder()
    batcher = make(recorder, window_s=0.02)
    keep = asyncio.create_task(batcher.submit("a", 1))
    gone = asyncio.create_task(batcher.submit("a", 2))
    await asyncio.sleep(0.001)
    gone.cancel()
    assert await keep == 10
    assert recorder.calls == [("a", [1])]
    assert batcher.stats.dropped_abandoned == 1


async def test_a_failed_call_fails_every_item_of_it() -> None:
    batcher = make(Recorder(fail=True))
    results = await asyncio.gather(
        *(batcher.submit("a", i) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, OperationFailed) for r in results)
    assert batcher.inflight_items == 0


async def test_close_cancels_waiting_items() -> None:
    batcher = make(Recorder(), window_s=10.0)
    waiting = asyncio.create_task(batcher.submit("a", 1))
    await asyncio.sleep(0.001)
    await batcher.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def _closed_loop(batcher: Batcher[str, int, int], clients: int, rounds: int) -> None:
    """``clients`` callers, each submitting again a few ms (its own think time) after its answer."""

    async def client(n: int) -> None:
        for r in range(rounds):
            assert await batcher.submit("a", n * 1000 + r) == (n * 1000 + r) * 10
            await asyncio.sleep(0.001 * (n % 8))

    await asyncio.gather(*(client(n) for n in range(clients)))


async def test_unfilled_calls_gather_a_closed_loop_into_fewer_calls() -> None:
    """One unfilled call in flight: what arrives meanwhile waits for the next, so calls grow."""
    eager, gathering = Recorder(delay_s=0.02), Recorder(delay_s=0.02)
    await _closed_loop(make(eager, window_s=0.0, inflight_max=2), 16, 8)
    await _closed_loop(
        make(gathering, window_s=0.0, inflight_max=2, unfilled_inflight_max=1), 16, 8
    )
    assert gathering.max_running == 1 and eager.max_running == 2
    assert len(gathering.calls) * 1.5 < len(eager.calls), (len(gathering.calls), len(eager.calls))


async def test_an_idle_lane_sends_a_lone_item_at_once() -> None:
    recorder = Recorder()
    batcher = make(recorder, window_s=0.0, inflight_max=2, unfilled_inflight_max=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await batcher.submit("a", 1) == 10
    assert loop.time() - started < 0.5  # no stall wait (1 s) for a lane with nothing in flight
    assert recorder.calls == [("a", [1])]


async def test_a_full_batch_does_not_wait_for_the_unfilled_call() -> None:
    recorder = Recorder(delay_s=0.05)
    batcher = make(recorder, window_s=0.0, items_max=5, inflight_max=2, unfilled_inflight_max=1)
    first = asyncio.create_task(batcher.submit("a", 0))
    await asyncio.sleep(0.005)  # the first (unfilled) call is in flight
    assert await batcher.run_many("a", [1, 2, 3, 4, 5]) == [10, 20, 30, 40, 50]
    assert await first == 0
    assert recorder.max_running == 2  # the full batch went while the unfilled call ran
    assert [items for _, items in recorder.calls] == [[0], [1, 2, 3, 4, 5]]


async def test_a_stalled_call_no_longer_holds_the_next_back() -> None:
    calls: list[list[int]] = []

    async def call(_key: str, items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0.5 if 0 in items else 0.0)  # item 0's destination hangs
        return items

    batcher: Batcher[str, int, int] = Batcher(
        call,
        window_s=0.0,
        items_max=100,
        bytes_max=1_000,
        inflight_max=2,
        pending_max=100,
        unfilled_inflight_max=1,
        stalled_after_s=0.05,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    hung = asyncio.create_task(batcher.submit("a", 0))
    await asyncio.sleep(0.01)
    assert await batcher.submit("a", 1) == 1
    assert 0.04 <= loop.time() - started < 0.4  # after stalled_after_s, not after the hung call
    assert not hung.done()
    assert await hung == 0
    assert calls == [[0], [1]]


def test_held_back_s_max_must_be_positive() -> None:
    with pytest.raises(InvariantViolation):
        make(Recorder(), held_back_s_max=0.0)


def test_unfilled_inflight_max_must_be_within_inflight_max() -> None:
    with pytest.raises(InvariantViolation):
        make(Recorder(), inflight_max=2, unfilled_inflight_max=3)
    with pytest.raises(InvariantViolation):
        make(Recorder(), inflight_max=2, unfilled_inflight_max=0)
