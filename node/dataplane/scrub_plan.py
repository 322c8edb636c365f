"""Scrub planning: the pace, order and resumption of a node's background check of its shards.

Theory of operation
-------------------
Every node reads back every shard it stores, in a stable order (the shard database's key
order: record id, content hash, shard index), a page at a time, and checks each entry's
checksum (``node/storage/entry.py``: a flipped bit anywhere in the stored value fails it).
The pace is bounded twice: after a page of ``s`` shards and ``b`` bytes read from ``t0``, the
next page starts no earlier than ``t0 + max(s / shards_per_s_max, b / bytes_per_s_max)``, so a
node with large shards is bounded by bytes and one with many small ones by shards. A pass ends
when the store has nothing after the cursor; the next pass starts ``pass_interval_s`` after the
last one started (at once when a pass took longer: the rates, not the period, are the bound).

The cursor (the last key checked) is all a pass needs to go on; the adapter saves it now and
then, so a restarted node resumes where it was instead of starting over (a pass that resumes
is timed from the restart: its ``pass_s`` covers only the part after it).

Cross-checks: an intact entry proves only that the bytes are the ones written under that key.
Now and then, a sample of intact shards is also checked against the record itself, as every
node knows it from the replicated log: the shard's version must be the indexed one, and the
SHA-256 of its bytes must be the one the record's Merkle leaf holds for that shard index (the
writer hashed every shard it encoded, and the leaf binds those hashes to the content hash).
Nothing is decrypted; every holder of a record checks against the same leaf, so the holders
agree with one another exactly when each agrees with the leaf. The sample rate is a credit of
``cross_check_records_per_s_max`` per second (at most one page of it saved up), spent on
shards spread evenly over each page.

Pure: no I/O, no clock (``now_s`` is an input), no randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

from node.errors import InvalidRequest

__all__ = [
    "CrossCheck",
    "PageResult",
    "Read",
    "ScrubRules",
    "ScrubState",
    "Wait",
    "after_page",
    "cross_check",
    "next_step",
    "spread",
]


@dataclass(frozen=True, slots=True)
class ScrubRules:
    shards_per_s_max: float
    bytes_per_s_max: float
    pass_interval_s: float  # a pass starts at most this often
    page_shards_max: int  # shards read at once
    page_bytes_max: int  # stored bytes read at once (at least one shard is)
    cross_check_records_per_s_max: float

    def __post_init__(self) -> None:
        if min(self.shards_per_s_max, self.bytes_per_s_max, self.pass_interval_s) <= 0:
            raise InvalidRequest("scrub rules: rates and the pass interval are > 0")
        if self.page_shards_max < 1 or self.page_bytes_max < 1:
            raise InvalidRequest("scrub rules: pages hold at least one shard and one byte")
        if self.cross_check_records_per_s_max < 0:
            raise InvalidRequest("scrub rules: cross_check_records_per_s_max >= 0")


@dataclass(frozen=True, slots=True)
class ScrubState:
    cursor: bytes = b""  # the last key checked; b"": the next page starts a pass
    pass_started_s: float | None = None  # None: no pass running
    not_before_s: float = 0.0  # the pace: no page before this
    credit: float = 0.0  # cross-checks owed
    credit_at_s: float | None = None  # when credit was last accrued


@dataclass(frozen=True, slots=True)
class Read:
    """Read the next page: up to ``shards_max`` entries (and ``bytes_max`` bytes) after
    ``after`` (b"": from the first)."""

    after: bytes
    shards_max: int
    bytes_max: int


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float


@dataclass(frozen=True, slots=True)
class PageResult:
    state: ScrubState
    cross_check: tuple[int, ...]  # positions of the page's intact entries to cross-check
    pass_s: float | None  # set when this page ended a pass: how long it ran


def next_step(state: ScrubState, now_s: float, rules: ScrubRules) -> Read | Wait:
    if now_s < state.not_before_s:
        return Wait(state.not_before_s - now_s)
    return Read(state.cursor, rules.page_shards_max, rules.page_bytes_max)


def after_page(
    state: ScrubState,
    *,
    started_s: float,
    now_s: float,
    keys: Sequence[bytes],
    sizes: Sequence[int],
    intact: Sequence[bool],
    exhausted: bool,
    rules: ScrubRules,
) -> PageResult:
    """The state after a page read from ``started_s`` (``keys`` in order, their stored
    sizes and whether each passed its checksum; ``exhausted``: nothing after the last)."""
    if not len(keys) == len(sizes) == len(intact):
        raise InvalidRequest("scrub page: one size and one verdict per key")
    if keys and state.cursor and keys[0] <= state.cursor:
        raise InvalidRequest("scrub page: keys must follow the cursor")
    pass_started = state.pass_started_s if state.pass_started_s is not None else started_s
    pace_s = max(len(keys) / rules.shards_per_s_max, sum(sizes) / rules.bytes_per_s_max)
    not_before = started_s + pace_s
    credit_at = state.credit_at_s if state.credit_at_s is not None else started_s
    credit = min(
        state.credit + (now_s - credit_at) * rules.cross_check_records_per_s_max,
        float(rules.page_shards_max),
    )
    candidates = [i for i, ok in enumerate(intact) if ok]
    chosen = spread(len(candidates), int(credit))
    credit -= len(chosen)
    picked = tuple(candidates[i] for i in chosen)
    if exhausted:
        return PageResult(
            ScrubState(
                cursor=b"",
                pass_started_s=None,
                not_before_s=max(not_before, pass_started + rules.pass_interval_s),
                credit=credit,
                credit_at_s=now_s,
            ),
            picked,
            now_s - pass_started,
        )
    moved = replace(
        state,
        cursor=keys[-1] if keys else state.cursor,
        pass_started_s=pass_started,
        not_before_s=not_before,
        credit=credit,
        credit_at_s=now_s,
    )
    return PageResult(moved, picked, None)


def spread(total: int, count: int) -> tuple[int, ...]:
    """``count`` positions out of ``total`` (all of them when count >= total), evenly apart:
    a sample that covers the whole page, not its first entries."""
    if count <= 0 or total <= 0:
        return ()
    if count >= total:
        return tuple(range(total))
    return tuple((i * total) // count for i in range(count))


class CrossCheck(Enum):
    AGREES = "agrees"
    DISAGREES = "disagrees"  # the shard's bytes are not the record's: quarantine it
    NOT_COMPARABLE = "not_comparable"  # not indexed (yet), another version, no leaf hashes


def cross_check(
    *,
    content_hash: bytes,
    shard_index: int,
    data_hash: bytes,
    indexed_version: bytes | None,
    leaf_content_hash: bytes | None,
    leaf_shard_hashes: Sequence[bytes],
) -> CrossCheck:
    """Does a held shard (its version, index and SHA-256 of its bytes) agree with the
    record as the replicated log knows it (the indexed version, the leaf's shard hashes)?"""
    if indexed_version is None or indexed_version != content_hash:
        return CrossCheck.NOT_COMPARABLE  # a leftover version: the orphan collector's
    if leaf_content_hash != content_hash or not 0 <= shard_index < len(leaf_shard_hashes):
        return CrossCheck.NOT_COMPARABLE
    if leaf_shard_hashes[shard_index] == data_hash:
        return CrossCheck.AGREES
    return CrossCheck.DISAGREES
