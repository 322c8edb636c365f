"""Sans-IO cores of the data plane: the decisions of writes and shard moves, as pure functions.

* :mod:`.write_quorum` -- when a record write may be acknowledged, must keep waiting, or failed.
* :mod:`.move_plan` -- which shards move (record, shard, from, to) after a membership change.
* :mod:`.shard_move` -- one move's life: copy -> verify -> commit -> grace -> delete the old copy,
  and where a reader looks for a shard meanwhile.
* :mod:`.repair_plan` -- which shards of a page of records are rebuilt (in place or elsewhere),
  wait, or are lost, most endangered first.

Like :mod:`node.consensus` they do no I/O, read no clock and draw no randomness: inputs are
acknowledgements, index entries, memberships and log positions; outputs are data. The
simulator (:mod:`node.sim`) drives them over its faulty network; adapters will drive them over
the shard protocol.
"""

from node.dataplane.move_plan import ShardMove, plan_moves, plan_record
from node.dataplane.shard_move import (
    MoveEvent,
    MovePhase,
    MoveRules,
    MoveState,
    delete_due,
    read_order,
    step,
)
from node.dataplane.write_quorum import WriteQuorum, WriteTally, WriteVerdict

__all__ = [
    "MoveEvent",
    "MovePhase",
    "MoveRules",
    "MoveState",
    "ShardMove",
    "WriteQuorum",
    "WriteTally",
    "WriteVerdict",
    "delete_due",
    "plan_moves",
    "plan_record",
    "read_order",
    "step",
]
