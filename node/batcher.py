"""Coalesce items submitted concurrently for the same destination into one call (asyncio).

The cost of the data path is per message, not per record (shared/REFERENCE.md: a node spends
~0.8 ms of CPU per libp2p frame whatever it carries). So shard puts, shard probes and shard
reads from concurrent requests are gathered per peer into one frame, and the gateway gathers
concurrent single-record requests into one node call. Used by the node's coordinator (one lane
per peer and operation) and by the gateway's node client (one lane per operation).

Flush policy of one lane:

* items wait at most ``window_s`` after the first one arrived, then go out together;
* a lane never has more than ``inflight_max`` calls in flight: while they run, new items
  gather for the next call, so batches grow with the load (like group commit);
* optionally, only the first ``unfilled_inflight_max`` of those calls may carry a batch that is
  not full: past them a lane starts another call only with a full batch, or once its oldest
  running call has run ``stalled_after_s`` (a slow or hung destination must not hold every
  item). Every call costs the same messages whatever it carries, so under a closed loop of
  callers the items waiting share one call instead of splitting over several; an idle lane
  still sends at once, so an idle caller's latency does not grow;
* a call carries at most ``items_max`` items and ``bytes_max`` bytes (``size_of``);
* at most ``pending_max`` items wait across all lanes: more raises :class:`Overloaded` at once
  (a bounded queue, never unbounded memory);
* optionally, no new item is taken while the queue holds work back longer than
  ``held_back_s_max`` (:meth:`Batcher.held_back_s`): a bound on items gives no bound on their
  wait when the destination slows down, and a caller refused at once with a Retry-After does
  better than one admitted to wait out its deadline (CoDel's rule: shed on sojourn time);
* an item whose caller gave up (its future was cancelled: client gone, deadline passed) is
  dropped before its call is made, so abandoned work stops.

A call returns one result per item, in order; an exception fails every item of that call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from node.errors import InvariantViolation, Overloaded

__all__ = ["Batcher", "BatcherStats"]

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")


@dataclass(slots=True)
class BatcherStats:
    calls: int = 0
    items: int = 0
    dropped_abandoned: int = 0
    refused_overloaded: int = 0


@dataclass(slots=True)
class _Lane(Generic[I, R]):
    pending: deque[tuple[I, asyncio.Future[R]]] = field(default_factory=deque)
    pending_bytes: int = 0
    first_at: float = 0.0
    inflight: int = 0
    running: dict[object, float] = field(default_factory=dict)  # a running call -> its start
    timer: asyncio.TimerHandle | None = None
    timer_due: float = 0.0


class Batcher(Generic[K, I, R]):
    def __init__(
        self,
        call: Callable[[K, list[I]], Awaitable[Sequence[R]]],
        *,
        window_s: float,
        items_max: int,
        bytes_max: int,
        inflight_max: int,
        pending_max: int,
        size_of: Callable[[I], int] = lambda _item: 0,
        unfilled_inflight_max: int | None = None,
        stalled_after_s: float = 1.0,
        held_back_s_max: float | None = None,
    ) -> None:
        if items_max < 1 or inflight_max < 1 or pending_max < 1 or window_s < 0:
            raise InvariantViolation("batcher limits must be positive")
        unfilled = inflight_max if unfilled_inflight_max is None else unfilled_inflight_max
        if not 1 <= unfilled <= inflight_max or stalled_after_s <= 0:
            raise InvariantViolation("unfilled_inflight_max must be within 1..inflight_max")
        if held_back_s_max is not None and held_back_s_max <= 0:
            raise InvariantViolation("held_back_s_max must be positive")
        self._held_back_s_max = held_back_s_max
        self._unfilled_max = unfilled
        self._stalled_after_s = stalled_after_s
        self._call = call
        self._window_s = window_s
        self._items_max = items_max
        self._bytes_max = bytes_max
        self._inflight_max = inflight_max
        self._pending_max = pending_max
        self._size_of = size_of
        self._lanes: dict[K, _Lane[I, R]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_items = 0
        self._inflight_items = 0
        self.stats = BatcherStats()

    @property
    def pending_items(self) -> int:
        """Items waiting for a call (the queue depth reported to callers and metrics)."""
        return self._pending_items

    @property
    def inflight_items(self) -> int:
        return self._inflight_items

    @property
    def pending_max(self) -> int:
        return self._pending_max

    def held_back_s(self) -> float:
        """How long the oldest call still running, or the oldest waiting items, have waited.

        A lane's clock restarts whenever a call takes items, so waiting items count only
        while every call slot is busy; a running call counts from its start. 0 when idle.
        A congestion signal for admission: it grows only while calls do not keep up.
        """
        since = [lane.first_at for lane in self._lanes.values() if lane.pending]
        for lane in self._lanes.values():
            since += lane.running.values()
        if not since:
            return 0.0
        return max(0.0, asyncio.get_running_loop().time() - min(since))

    def snapshot(self) -> dict[str, int]:
        """Queue depth and counters, as /status and /metrics report them."""
        return {
            "pending": self._pending_items,
            "inflight": self._inflight_items,
            "calls": self.stats.calls,
            "items": self.stats.items,
            "dropped_abandoned": self.stats.dropped_abandoned,
            "refused_overloaded": self.stats.refused_overloaded,
        }

    def submit_many(self, key: K, items: Sequence[I]) -> list[asyncio.Future[R]]:
        """Queue ``items`` for ``key``; await the returned futures for their results."""
        if self._pending_items + len(items) > self._pending_max:
            self.stats.refused_overloaded += len(items)
            raise Overloaded(f"{self._pending_items} items already queued (pending_max)")
        if self._held_back_s_max is not None:
            held_s = self.held_back_s()
            if held_s > self._held_back_s_max:
                self.stats.refused_overloaded += len(items)
                raise Overloaded(
                    f"queued work has waited {held_s:.2f} s (held_back_s_max)",
                    retry_after_s=int(held_s) + 1,
                )
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        futures: list[asyncio.Future[R]] = []
        for item in items:
            future: asyncio.Future[R] = loop.create_future()
            if not lane.pending:
                lane.first_at = loop.time()
            lane.pending.append((item, future))
            lane.pending_bytes += self._size_of(item)
            futures.append(future)
        self._pending_items += len(items)
        self._maybe_flush(key, lane)
        return futures

    async def submit(self, key: K, item: I) -> R:
        (future,) = self.submit_many(key, [item])
        return await future

    async def run_many(self, key: K, items: Sequence[I]) -> list[R]:
        futures = self.submit_many(key, items)
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def _full(self, lane: _Lane[I, R]) -> bool:
        return len(lane.pending) >= self._items_max or lane.pending_bytes >= self._bytes_max

    def _maybe_flush(self, key: K, lane: _Lane[I, R]) -> None:
        if not lane.pending or lane.inflight >= self._inflight_max:
            return  # a finishing call flushes what gathered meanwhile
        now = asyncio.get_running_loop().time()
        full = self._full(lane)
        if lane.inflight >= self._unfilled_max and not full:
            # Group commit: gather behind the calls in flight, unless the oldest stalls.
            stalled_at = min(lane.running.values()) + self._stalled_after_s
            if now < stalled_at:
                self._arm(key, lane, stalled_at)
                return
        waited = now - lane.first_at
        if full or waited >= self._window_s:
            if lane.timer is not None:
                lane.timer.cancel()
                lane.timer = None
            self._start_call(key, lane)
        else:
            self._arm(key, lane, lane.first_at + self._window_s)

    def _arm(self, key: K, lane: _Lane[I, R], due: float) -> None:
        """Look at the lane again at ``due`` (an earlier look already armed is kept)."""
        if lane.timer is not None:
            if lane.timer_due <= due:
                return
            lane.timer.cancel()
        loop = asyncio.get_running_loop()
        lane.timer = loop.call_later(max(0.0, due - loop.time()), self._on_timer, key)
        lane.timer_due = due

    def _on_timer(self, key: K) -> None:
        lane = self._lanes.get(key)
        if lane is not None:
            lane.timer = None
            self._maybe_flush(key, lane)

    def _take(self, lane: _Lane[I, R]) -> list[tuple[I, asyncio.Future[R]]]:
        taken: list[tuple[I, asyncio.Future[R]]] = []
        size = 0
        while lane.pending and len(taken) < self._items_max:
            item_size = self._size_of(lane.pending[0][0])
            if taken and size + item_size > self._bytes_max:
                break
            taken.append(lane.pending.popleft())
            size += item_size
        lane.pending_bytes -= size
        self._pending_items -= len(taken)
        if lane.pending:
            lane.first_at = asyncio.get_running_loop().time()
        return taken

    def _start_call(self, key: K, lane: _Lane[I, R]) -> None:
        taken = self._take(lane)
        live = [(item, future) for item, future in taken if not future.done()]
        self.stats.dropped_abandoned += len(taken) - len(live)
        if not live:
            self._maybe_flush(key, lane)
            return
        lane.inflight += 1
        self._inflight_items += len(live)
        token = object()  # the call's start, kept while it runs (held_back_s, stalls)
        lane.running[token] = asyncio.get_running_loop().time()
        task = asyncio.get_running_loop().create_task(self._run_call(key, lane, live, token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._maybe_flush(key, lane)  # more than one call's worth may be waiting

    async def _run_call(
        self,
        key: K,
        lane: _Lane[I, R],
        live: list[tuple[I, asyncio.Future[R]]],
        token: object,
    ) -> None:
        try:
            results = await self._call(key, [item for item, _ in live])
            if len(results) != len(live):
                raise InvariantViolation(f"batch call returned {len(results)} of {len(live)}")
        except BaseException as exc:
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            del lane.running[token]
            lane.inflight -= 1
            self._inflight_items -= len(live)
            self.stats.calls += 1
            self.stats.items += len(live)
            self._maybe_flush(key, lane)

    async def close(self) -> None:
        for lane in self._lanes.values():
            if lane.timer is not None:
                lane.timer.cancel()
            for _, future in lane.pending:
                future.cancel()
            lane.pending.clear()
        self._pending_items = 0
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
