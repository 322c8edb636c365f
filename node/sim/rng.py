"""The one generator a simulation draws from, as a protocol (pass ``random.Random(seed)``).

Typing it as a protocol keeps the simulator's modules free of the ``random`` module, as the
cores are: only :mod:`node.sim.cli` constructs the generator from the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["SimRng"]

T = TypeVar("T")


class SimRng(Protocol):
    def random(self) -> float: ...

    def randrange(self, start: int, stop: int, /) -> int: ...

    def randint(self, a: int, b: int, /) -> int: ...

    def choice(self, seq: Sequence[T], /) -> T: ...
