"""Deliberately broken variants of the simulated adapter and data plane, to prove the checkers
can fail."""

from __future__ import annotations

import enum

__all__ = ["Bug"]


class Bug(enum.Enum):
    NONE = "none"
    # The adapter sends a Ready's messages (votes, append acks) before its writes are flushed;
    # the disk is flushed only by a periodic writeback, so a crash loses acknowledged state.
    SKIP_FSYNC = "skip-fsync"
    # The leader acknowledges a client when the entry is appended, not once it is applied.
    ACK_BEFORE_COMMIT = "ack-before-commit"
    # The state machine applies every committed copy of an idempotency id, not the first only.
    NO_DEDUPE = "no-dedupe"
    # A restart loads the log without checking entry checksums: corrupt entries are served.
    ACCEPT_CORRUPT = "accept-corrupt"
    # The coordinator proposes (and so acknowledges) a record once one shard is durable, below
    # the write quorum: a record can be acknowledged that later cannot be rebuilt.
    ACK_BELOW_QUORUM = "ack-below-quorum"
    # The mover deletes the old copy as soon as the new one is written, before the new location
    # commits: the committed index still names a copy that is gone.
    DELETE_BEFORE_COMMIT = "delete-before-commit"
    # Leaders stamp entries with their own clock, unbounded (a tolerance far above any skew):
    # a leader whose clock is an hour fast pushes log time an hour ahead for good.
    UNBOUNDED_STAMPS = "unbounded-stamps"
    # Bridge workload: one replica (n1) skips the point-expiry sweep of every ledger.ops and
    # ledger.tick entry: its users keep lots past their expiry day.
    SKIP_EXPIRY = "skip-expiry"
    # Payments workload: one replica (n1) keeps a refund's ledger transfer and its sticky result
    # but drops its payment record update: the payment shows less refunded than its merchant's
    # settlement account paid out, on that replica only.
    SKIP_REFUND_RECORD = "skip-refund-record"
