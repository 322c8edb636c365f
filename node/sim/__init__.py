"""A deterministic simulator of a whole cluster in one process (model: TigerBeetle's VOPR).

``python -m node.sim --seed N`` runs the Raft cores of a cluster on simulated time, network and
disks, with every fault drawn from one seeded generator, then checks safety and convergence.

* :mod:`.world` -- the clock, the event heap, the fault schedule, the operator, the phases.
* :mod:`.actors` -- a node (core + disk + state machine, run by the adapter loop) and a client.
* :mod:`.network`, :mod:`.disk` -- message fates and partitions; buffered writes, flushes,
  crashes that lose what was not flushed, checksummed entries and their corruption.
* :mod:`.machine` -- the replicated state machine and its idempotency rule.
* :mod:`.checkers` -- the invariants; :mod:`.bugs` -- broken variants they must catch.
* :mod:`.cli` -- the command line (the only module that builds the generator or reads a clock).
"""

from node.sim.bugs import Bug
from node.sim.world import SimParams, SimResult, World, draw_params, simulate

__all__ = ["Bug", "SimParams", "SimResult", "World", "draw_params", "simulate"]
