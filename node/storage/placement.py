"""Shard placement: rendezvous (highest-random-weight) hashing of a record over the membership.

A pure function. Shard ``i`` of record ``r`` goes to the member with the highest weight
``SHA-256(r || i || peer)`` among members not already holding an earlier shard of ``r``. So:

* the ``n`` shards land on ``n`` distinct members;
* every member is equally likely for every shard (even spread);
* when a member joins or leaves, only the shards whose winner changes move, which is about
  the ideal ``1/N`` share (plus a small cascade when a displaced shard takes a member a later
  shard had chosen). Property tests in ``tests/test_placement.py`` check all three.

Members are given in any order; ties are impossible in practice and broken by peer id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from node.errors import InvalidRequest

__all__ = ["place_shards"]


def _weight(record_id: bytes, index: int, peer_id: str) -> bytes:
    return hashlib.sha256(record_id + index.to_bytes(2, "big") + peer_id.encode()).digest()


def place_shards(record_id: bytes, members: Iterable[str], n: int) -> tuple[str, ...]:
    """Return the member holding each shard index ``0..n-1`` of ``record_id``."""
    candidates = sorted(set(members))
    if n > len(candidates):
        raise InvalidRequest(f"cannot place {n} shards on {len(candidates)} members")
    chosen: list[str] = []
    taken: set[str] = set()
    for index in range(n):
        best = max(
            (peer for peer in candidates if peer not in taken),
            key=lambda peer: (_weight(record_id, index, peer), peer),
        )
        chosen.append(best)
        taken.add(best)
    return tuple(chosen)
