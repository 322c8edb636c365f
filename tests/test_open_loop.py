"""The open-loop pacer shared by ``baas-chaos``'s writer and ``baas-bench-repair``'s reader:
slot i is due at i / rate whatever the callee does, late slots go at once, and it stops when
told."""

from __future__ import annotations

import asyncio
import time

from tools.chaos import open_loop


async def test_slots_come_at_the_rate_and_stop_when_told() -> None:
    stop = asyncio.Event()
    starts: list[float] = []
    began = time.monotonic()
    asyncio.get_running_loop().call_later(0.5, stop.set)
    await open_loop(40.0, stop, lambda: starts.append(time.monotonic() - began))
    assert 15 <= len(starts) <= 22  # 0.5 s at 40/s: 20 slots, 0 included
    assert starts == sorted(starts)
    assert all(at >= n / 40.0 - 0.005 for n, at in enumerate(starts))  # never early


async def test_late_slots_go_at_once() -> None:
    stop = asyncio.Event()
    starts: list[float] = []

    def slow_start() -> None:  # the callee blocks the loop for 3 slots' worth, once
        starts.append(time.monotonic())
        if len(starts) == 1:
            time.sleep(0.15)
        if len(starts) == 6:
            stop.set()

    await open_loop(20.0, stop, slow_start)
    assert len(starts) == 6
    assert starts[3] - starts[1] < 0.02  # slots 1-3 were due during the block: sent together
