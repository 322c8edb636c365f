"""The write protocol's decision: acknowledge a record, keep waiting, or give up.

A coordinator sends shard ``i`` of a record to ``placement[i]`` and feeds every answer in:
*stored* (durable on that holder) or *refused* (the holder will not take it: it holds another
version, or it is no longer a member). The verdict depends only on those sets:

* ``ACK`` once ``write_quorum`` distinct shards are stored;
* ``FAIL`` once so many are refused that the quorum can no longer be reached;
* ``WAIT`` otherwise (resend the shards in :attr:`WriteTally.unanswered` as the caller sees fit).

Why ``write_quorum > n - k`` (checked when the quorum is built): an acknowledged version then
holds more shards than another version can ever find free places, so two versions of one record
can never both become decodable; and ``write_quorum >= k`` makes every acknowledged record
decodable from the shards stored at the moment of the acknowledgement alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from node.errors import InvalidRequest

__all__ = ["WriteQuorum", "WriteTally", "WriteVerdict"]

SHARDS_MAX = 255


class WriteVerdict(enum.Enum):
    ACK = "ack"
    WAIT = "wait"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class WriteQuorum:
    k: int
    n: int
    write_quorum: int

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n <= SHARDS_MAX:
            raise InvalidRequest(f"need 1 <= k <= n <= {SHARDS_MAX}, got k={self.k} n={self.n}")
        if not self.k <= self.write_quorum <= self.n:
            raise InvalidRequest(f"write_quorum {self.write_quorum} must be in k..n")
        if self.write_quorum <= self.n - self.k:
            raise InvalidRequest(
                f"write_quorum {self.write_quorum} must exceed n - k = {self.n - self.k}: "
                "otherwise two versions of one record could both be acknowledged"
            )


@dataclass(frozen=True, slots=True)
class WriteTally:
    """The answers so far for one record write; every method returns a new tally."""

    quorum: WriteQuorum
    placement: tuple[str, ...]  # shard i goes to placement[i]
    stored: frozenset[int] = field(default_factory=frozenset)
    refused: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if len(self.placement) != self.quorum.n or len(set(self.placement)) != self.quorum.n:
            raise InvalidRequest("a placement names n distinct holders")

    def on_stored(self, shard: int) -> WriteTally:
        # Durable is durable: a stored answer wins over an earlier refusal of a retry.
        self._check(shard)
        return replace(self, stored=self.stored | {shard}, refused=self.refused - {shard})

    def on_refused(self, shard: int) -> WriteTally:
        self._check(shard)
        if shard in self.stored:
            return self  # a late refusal of a duplicate cannot undo a durable shard
        return replace(self, refused=self.refused | {shard})

    def _check(self, shard: int) -> None:
        if not 0 <= shard < self.quorum.n:
            raise InvalidRequest(f"shard {shard} is not one of 0..{self.quorum.n - 1}")

    @property
    def unanswered(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.quorum.n) if i not in self.stored | self.refused)

    @property
    def verdict(self) -> WriteVerdict:
        if len(self.stored) >= self.quorum.write_quorum:
            return WriteVerdict.ACK
        if self.quorum.n - len(self.refused) < self.quorum.write_quorum:
            return WriteVerdict.FAIL
        return WriteVerdict.WAIT
