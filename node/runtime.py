"""Process-level tuning shared by nodes and gateways (called once the process has started).

* :func:`run` runs the asyncio side on uvloop (libuv): fewer CPU cycles per request and per
  cross-thread wake-up than the default loop (measured here: single-record writes through the
  gateway ~10-30% faster); the libp2p side stays on trio in its own thread either way.
* ``gc.freeze()`` moves everything allocated at start-up (libraries, config, keys) out of the
  collector's view, and a larger first-generation threshold makes collections rarer: the data
  path allocates many short-lived objects, and full collections of a big heap paused nodes for
  ~150 ms in measurements (shared/REFERENCE.md).
"""

from __future__ import annotations

import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

__all__ = ["run", "tune_gc"]

T = TypeVar("T")

GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a uvloop event loop."""
    return uvloop.run(main)
