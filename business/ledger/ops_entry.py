"""The ledger operations entry type: its name and the log feature version that introduces it.

One place for both, so the state machine that applies ``ledger.ops`` entries (a batch of
operations, each a record's index put plus its ledger events) and the followers that read
its outcomes (the Merkle log, which appends a v2 leaf per operation) name the same thing.
The dispatcher refuses the type until the log has enabled this feature version, so nothing
follows from it before then.
"""

from __future__ import annotations

__all__ = ["LEDGER_OPS", "LEDGER_OPS_FEATURE_VERSION"]

LEDGER_OPS = "ledger.ops"
LEDGER_OPS_FEATURE_VERSION = 6
