"""A deterministic simulator of a whole cluster in one process (model: TigerBeetle's VOPR).

``python -m node.sim --seed N`` runs the Raft cores of a cluster and its data plane (record
writes through a coordinator, shard holders, shard moves after membership changes) on simulated
time, network and disks, with every fault drawn from one seeded generator, then checks safety
and convergence.

* :mod:`.world` -- the clock, the event heap, the fault schedule, the operator, the phases.
* :mod:`.actors` -- a node (core + disk + state machine, run by the adapter loop, plus its data
  plane) and a client (of commands or of records).
* :mod:`.dataplane` -- the node's coordinator, shard holder and mover, driving the pure cores of
  :mod:`node.dataplane`.
* :mod:`.network`, :mod:`.disk`, :mod:`.shards` -- message fates and partitions; buffered
  writes, flushes, crashes that lose what was not flushed, checksummed log entries and shards
  and their corruption.
* :mod:`.machine` -- the replicated state machine: commands, and the real record index.
* :mod:`.ledger_load`, :mod:`.bridge_load`, :mod:`.payments_load` -- what a ledger client's
  operations carry, at the newest log feature: the ledger workload (the platform's ledgers),
  the Bridge workload (identity, points, reserves, swaps, the swap index) or the payments
  workload (payments, one-time codes, the Market, the webhook outbox).
* :mod:`.checkers` -- the invariants; :mod:`.bugs` -- broken variants they must catch.
* :mod:`.cli` -- the command line (the only module that builds the generator or reads a clock).
"""

from node.sim.bugs import Bug
from node.sim.world import SimParams, SimResult, World, draw_params, simulate

__all__ = ["Bug", "SimParams", "SimResult", "World", "draw_params", "simulate"]
