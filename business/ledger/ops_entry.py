"""The ledger's log entry types and the log feature version that introduces them.

One place for the names, so the state machine that applies ``ledger.ops`` entries (a batch of
operations, each a record's index put plus its ledger events; node/consensus/ledger_ops.py),
the followers that read its outcomes (the Merkle log, which appends a v2 leaf per operation)
and the leader that appends ``ledger.tick`` entries in an idle cluster (node/replication/log.py,
the simulator) name the same thing.
The dispatcher refuses the type until the log has enabled this feature version, so nothing
follows from it before then.
"""

from __future__ import annotations

__all__ = ["LEDGER_FEATURE_VERSION", "LEDGER_OPS", "LEDGER_TICK"]

LEDGER_OPS = "ledger.ops"
LEDGER_TICK = "ledger.tick"  # empty body: runs the expiry sweep at its log time
LEDGER_FEATURE_VERSION = 6
