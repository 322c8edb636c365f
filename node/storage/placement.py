"""Shard placement: rendezvous (highest-random-weight) hashing of a record over the membership.

A pure function. Every member gets the weight ``SHA-256(record id || peer id)``; the record's
``n`` shards go to the ``n`` heaviest members, shard ``i`` to the ``i``-th heaviest. So:

* the ``n`` shards land on ``n`` distinct members;
* every member is equally likely to be chosen (even spread);
* the *set* of holders is the classic HRW top-n: when a member joins, a record's set changes
  only if the newcomer outweighs its lightest holder, and then by exactly that one member; when
  a member leaves, only the records it held change, by exactly that one member. A move
  therefore copies the one displaced shard, keeping its index, to the one new holder; which
  node holds which index is recorded with the record (the consensus index, a later issue) and
  readers ask every holder, so positions need not be recomputed after a change.

Property tests in ``tests/test_placement.py`` check all of this.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from node.errors import InvalidRequest

__all__ = ["place_shards"]


def _weight(record_id: bytes, peer_id: str) -> bytes:
    return hashlib.sha256(record_id + peer_id.encode()).digest()


def place_shards(record_id: bytes, members: Iterable[str], n: int) -> tuple[str, ...]:
    """Return the member holding each shard index ``0..n-1`` of ``record_id`` at write time."""
    candidates = sorted(set(members))
    if not 0 < n <= len(candidates):
        raise InvalidRequest(f"cannot place {n} shards on {len(candidates)} members")
    ranked = sorted(candidates, key=lambda peer: (_weight(record_id, peer), peer), reverse=True)
    return tuple(ranked[:n])
