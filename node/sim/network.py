"""The simulated network: per-message loss, duplication and latency, and partitions.

The network only decides the fate of each message (dropped, or delivered after one or more
delays); the world schedules the deliveries on its clock. Latency is drawn from a seeded
distribution with a long tail, so messages overtake each other (reordering) as they do on a
real network. Partitions block directed node pairs: a symmetric split blocks both directions,
an asymmetric fault only one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from node.consensus.types import NodeId
from node.sim.rng import SimRng

__all__ = ["Network", "NetworkFaults"]


@dataclass(frozen=True, slots=True)
class NetworkFaults:
    loss: float = 0.0  # probability a message is dropped
    duplication: float = 0.0  # probability a delivered message arrives twice
    latency_ms_min: int = 1
    latency_ms_max: int = 5
    tail: float = 0.0  # probability of a slow delivery
    tail_ms_max: int = 0


class Network:
    def __init__(self, rng: SimRng, faults: NetworkFaults) -> None:
        self.rng = rng
        self.faults = faults
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.partition_generation = 0
        self.dropped = 0
        self.duplicated = 0

    def delays(self, sender: NodeId, to: NodeId) -> list[int]:
        """When (ms from now) the message arrives: none, once, or twice."""
        if (sender, to) in self.blocked:
            self.dropped += 1
            return []
        f, rng = self.faults, self.rng
        if f.loss and rng.random() < f.loss:
            self.dropped += 1
            return []
        out = [self._latency()]
        if f.duplication and rng.random() < f.duplication:
            self.duplicated += 1
            out.append(self._latency())
        return out

    def _latency(self) -> int:
        f, rng = self.faults, self.rng
        if f.tail and rng.random() < f.tail:
            return rng.randint(f.latency_ms_max, f.tail_ms_max)
        return rng.randint(f.latency_ms_min, f.latency_ms_max)

    # -- partitions

    def split(self, groups: Iterable[Iterable[NodeId]], nodes: Iterable[NodeId]) -> int:
        """Symmetric: nodes in different groups (or in none) cannot talk at all."""
        sets = [set(g) for g in groups]
        ids = sorted(nodes)
        self.blocked = {
            (a, b) for a in ids for b in ids if a != b and not any(a in s and b in s for s in sets)
        }
        self.partition_generation += 1
        return self.partition_generation

    def block_one_way(self, pairs: Iterable[tuple[NodeId, NodeId]]) -> int:
        """Asymmetric: ``a`` cannot reach ``b`` while ``b`` still reaches ``a``."""
        self.blocked = set(pairs)
        self.partition_generation += 1
        return self.partition_generation

    def heal(self, generation: int | None = None) -> None:
        """Heal everything, or only the partition ``generation`` if it is still the current one."""
        if generation is None or generation == self.partition_generation:
            self.blocked = set()
