"""THE asyncio <-> trio bridge: the only module of the project that imports both.

libp2p is trio-only, aiohttp is asyncio-only, and anyio cannot host libp2p on asyncio. So
libp2p runs in one dedicated thread under ``trio.run``; the asyncio side (HTTP API, gateway)
stays in the main thread. Only the trio thread touches libp2p objects.

A call crosses like this (measured ~44 µs, p99 77 µs, vs ~71 µs and a thread per call for
``run_in_executor`` + ``trio.from_thread.run``)::

    asyncio task --TrioToken.run_sync_soon--> trio: start task in the root nursery
    trio task finishes --loop.call_soon_threadsafe--> asyncio future resolved

Cancellation is carried both ways: cancelling the awaiting asyncio task cancels the trio task's
cancel scope; a trio task cancelled from the trio side (the bridge is stopping) fails its asyncio
future with :class:`PeerUnavailable`. (Not ``CancelledError``: asyncio reserves that for the
awaiting task's own cancellation, and a caller would misread it.)

In-flight calls are bounded (``NodeLimits.p2p_bridge_calls_max``); a call over the bound fails
at once with :class:`Overloaded` instead of queueing without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

from node.errors import InvariantViolation, Overloaded, PeerUnavailable

__all__ = ["TrioBridge"]

T = TypeVar("T")
_logger = logging.getLogger(__name__)
_JOIN_TIMEOUT_S = 10.0


@dataclass(slots=True)
class _Call(Generic[T]):
    """One crossing call; ``scope`` is only ever cancelled on the trio thread."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def _deliver(self, apply: Callable[[], None]) -> None:
        def _on_loop() -> None:
            if not self.future.done():
                apply()

        # RuntimeError: the asyncio loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_on_loop)

    def succeed(self, value: T) -> None:
        self._deliver(lambda: self.future.set_result(value))

    def fail(self, exc: BaseException) -> None:
        self._deliver(lambda: self.future.set_exception(exc))


class TrioBridge:
    """A trio event loop in its own thread, callable from asyncio."""

    def __init__(self, *, calls_max: int, thread_name: str = "baas-p2p-trio") -> None:
        if calls_max <= 0:
            raise InvariantViolation("calls_max must be positive")
        self._calls_max = calls_max
        self._thread_name = thread_name
        self._inflight = 0
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop_event: trio.Event | None = None
        self._crash: BaseException | None = None

    # -- asyncio side -------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        """Start the trio thread; return once its loop accepts calls."""
        if self._thread is not None:
            raise InvariantViolation("bridge already started")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def _signal_ready() -> None:
            if not ready.done():
                ready.set_result(None)

        self._thread = threading.Thread(
            target=self._thread_main,
            args=(loop, _signal_ready),
            name=self._thread_name,
            daemon=True,  # a wedged libp2p must never keep the process alive
        )
        self._thread.start()
        await ready
        if self._crash is not None:
            raise InvariantViolation("trio thread failed to start") from self._crash

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` on the trio thread and await its result from asyncio."""
        token = self._token
        if token is None or self._nursery is None:
            raise PeerUnavailable("p2p layer is not running")
        if self._inflight >= self._calls_max:
            raise Overloaded(f"p2p bridge has {self._inflight} calls in flight (max reached)")
        loop = asyncio.get_running_loop()
        call: _Call[T] = _Call(loop=loop, future=loop.create_future())
        self._inflight += 1
        try:
            try:
                token.run_sync_soon(self._start_call, fn, call)
            except trio.RunFinishedError as exc:
                raise PeerUnavailable("p2p layer has stopped") from exc
            try:
                return await call.future
            except asyncio.CancelledError:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(call.scope.cancel)
                raise
        finally:
            self._inflight -= 1

    def post(self, fn: Callable[[], None]) -> bool:
        """Run the plain function ``fn()`` soon on the trio thread, without waiting for it.

        For fire-and-forget hand-offs (a Raft frame into its bounded outbox); False when the
        trio thread is not running. ``fn`` must not raise: nobody is there to see it.
        """
        token = self._token
        if token is None:
            return False
        try:
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            return False
        return True

    async def stop(self) -> None:
        """Cancel everything on the trio thread and join it (idempotent)."""
        thread, token, stop_event = self._thread, self._token, self._stop_event
        if thread is None:
            return
        if token is not None and stop_event is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(stop_event.set)
        await asyncio.to_thread(thread.join, _JOIN_TIMEOUT_S)
        if thread.is_alive():
            _logger.error("trio thread did not stop within %.0f s", _JOIN_TIMEOUT_S)
        self._thread = None
        self._token = None
        self._nursery = None

    # -- trio side ----------------------------------------------------------------------------

    @property
    def nursery(self) -> trio.Nursery:
        """The root nursery (trio thread only): long-lived tasks of the p2p layer live here."""
        if self._nursery is None:
            raise InvariantViolation("bridge is not running")
        return self._nursery

    def _thread_main(
        self, loop: asyncio.AbstractEventLoop, signal_ready: Callable[[], None]
    ) -> None:
        try:
            trio.run(self._trio_main, loop, signal_ready)
        except BaseException as exc:  # recorded, logged; the asyncio side sees PeerUnavailable
            self._crash = exc
            _logger.exception("trio thread crashed")
        finally:
            self._token = None
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(signal_ready)

    async def _trio_main(
        self, loop: asyncio.AbstractEventLoop, signal_ready: Callable[[], None]
    ) -> None:
        self._stop_event = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            loop.call_soon_threadsafe(signal_ready)
            await self._stop_event.wait()
            nursery.cancel_scope.cancel()

    def _start_call(self, fn: Callable[[], Awaitable[T]], call: _Call[T]) -> None:
        if self._nursery is None:
            call.fail(PeerUnavailable("p2p layer has stopped"))
            return
        self._nursery.start_soon(self._run_call, fn, call)

    async def _run_call(self, fn: Callable[[], Awaitable[T]], call: _Call[T]) -> None:
        try:
            with call.scope:
                value = await fn()
                call.succeed(value)
        except trio.Cancelled:
            call.fail(PeerUnavailable("p2p layer is stopping"))
            raise
        except Exception as exc:
            call.fail(exc)
        except BaseException as exc:  # KeyboardInterrupt & co: fail the caller, then propagate
            call.fail(PeerUnavailable(f"p2p layer failed: {type(exc).__name__}"))
            raise
