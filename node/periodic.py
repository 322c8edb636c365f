"""A background pass run every few seconds on the node's event loop, that survives its errors.

Used by the shard mover, the orphan collector and the like: each pass is a bounded piece of
work; a typed failure is logged at info (it is retried next pass), anything else is logged
with its stack trace, and neither stops the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from node.errors import BaasError

__all__ = ["Periodic"]


class Periodic:
    def __init__(
        self, name: str, interval_s: float, run_pass: Callable[[], Awaitable[object]]
    ) -> None:
        self._name = name
        self._interval_s = interval_s
        self._run_pass = run_pass
        self._task: asyncio.Task[None] | None = None
        self._log = logging.getLogger(f"baas.node.{name}")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self._run_pass()
            except BaasError as exc:
                self._log.info("%s pass stopped: %s", self._name, exc.detail)
            except Exception:  # keep running later passes; a bug here must not stop the node
                self._log.exception("%s pass failed", self._name)
