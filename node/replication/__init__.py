"""The I/O side of the consensus log: drives the pure Raft core of :mod:`node.consensus`.

* :mod:`.durable` -- the log, hard state, snapshots and applied state in LevelDB (fsynced).
* :mod:`.log` -- :class:`~node.replication.log.ReplicatedLog`, the asyncio adapter: ticks,
  inbound frames from ``/baas/raft/1.0.0``, proposals; persist -> send -> apply -> advance.
"""
