"""The leader's repair driver (node/repair.py) over in-memory holders: pages, passes, the
deficit order across pages, verification, backlog accounting and the rate bound. The real
shard protocol, stores and rebuilds are proven by tests/test_cluster_repair.py; here the
holders are sets of shard keys so the order of rebuilds can be observed exactly."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from types import SimpleNamespace
from typing import Any

from node.config import RepairSettings
from node.consensus.record_index import IndexEntry, PreviousLocation, index_key
from node.errors import PeerUnavailable
from node.records import Shard, ShardKey, ShardMeta
from node.repair import ShardRepairer
from node.storage.placement import place_shards

NODES = ("n1", "n2", "n3", "n4", "n5")
FP = b"f" * 32


def entry(i: int) -> IndexEntry:
    record_id = hashlib.sha256(b"%d" % i).digest()
    content_hash = hashlib.sha256(record_id).digest()
    return IndexEntry(record_id, 1, 1, 0, content_hash, 3, 5, NODES, 1, "p", FP)


class Holders:
    """The coordinator as the repairer uses it, over in-memory holders."""

    def __init__(self, entries: list[IndexEntry]) -> None:
        self.held = {
            node: {ShardKey(e.record_id, e.content_hash, i) for e in entries}
            for i, node in enumerate(NODES)
        }
        self.held["n6"] = set()  # a member holding nothing
        self.silent: set[str] = set()
        self.refusing: set[str] = set()  # answer the inventory, lose every put
        self.rebuilt: list[bytes] = []  # record ids, in the order they were read back

    async def held_shards(self, node: str, record_ids: list[bytes]) -> frozenset[ShardKey]:
        if node in self.silent:
            raise PeerUnavailable(f"{node} is away")
        wanted = set(record_ids)
        return frozenset(k for k in self.held[node] if k.record_id in wanted)

    async def read_indexed(self, found: IndexEntry, request_id: str) -> IndexEntry:
        self.rebuilt.append(found.record_id)
        return found

    @staticmethod
    def reencode_shard(found: IndexEntry, index: int) -> Shard:
        meta = ShardMeta(found.record_id, found.content_hash, index, 3, 5, 10, "p", FP, 0)
        return Shard(meta, b"x" * 10)

    async def store_shards(self, node: str, shards: list[Shard], _: str) -> frozenset[bytes]:
        if node not in self.refusing:
            self.held[node].update(s.meta.key for s in shards)
        return frozenset()

    async def delete_shard(self, node: str, key: ShardKey) -> None:
        self.held[node].discard(key)


class Store:
    def __init__(self, entries: list[IndexEntry]) -> None:
        self.data = {index_key(e.record_id): e.encode() for e in entries}

    def state_get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def state_items(self, prefix: bytes = b"") -> Any:
        return iter(sorted((k, v) for k, v in self.data.items() if k.startswith(prefix)))


class Mover:
    def __init__(self) -> None:
        self.moves_in_flight = 0
        self.replans = 0

    def replan(self) -> None:
        self.replans += 1


def repairer(
    entries: list[IndexEntry],
    holders: Holders,
    mover: Mover | None = None,
    members: tuple[str, ...] = NODES,
    **settings: Any,
) -> ShardRepairer:
    values: dict[str, Any] = {"page_records_max": 4, "shards_per_round_max": 8}
    values.update(settings)
    log = SimpleNamespace(status=lambda: SimpleNamespace(role="leader", applied_index=100))
    return ShardRepairer(
        log=log,  # type: ignore[arg-type]
        store=Store(entries),
        coordinator=holders,  # type: ignore[arg-type]
        membership=SimpleNamespace(members=lambda: SimpleNamespace(active_ids=members)),  # type: ignore[arg-type]
        mover=mover or Mover(),  # type: ignore[arg-type]
        settings=RepairSettings(**values),
        grace_entries=10,
        clock_ms=lambda: 10**12,
    )


async def run_passes(driver: ShardRepairer, passes: int) -> None:
    goal = driver.stats.passes + passes
    for _ in range(1000):
        if driver.stats.passes >= goal:
            return
        await driver.round_once()
    raise AssertionError("passes did not finish")


def in_order(entries: list[IndexEntry]) -> list[IndexEntry]:
    return sorted(entries, key=lambda e: e.record_id)


async def test_a_wiped_holder_is_refilled_then_a_pass_finds_nothing() -> None:
    entries = in_order([entry(i) for i in range(10)])
    holders = Holders(entries)
    holders.held["n4"].clear()
    driver = repairer(entries, holders, pass_interval_s=0.001)
    await run_passes(driver, 1)
    stats = driver.stats
    assert stats.shards_rebuilt == 10 and stats.shard_bytes_rebuilt == 100
    assert stats.below_n_by_healthy == {"4": 10} and stats.backlog_records == 0
    assert len(holders.held["n4"]) == 10
    time.sleep(0.002)
    await run_passes(driver, 1)
    assert stats.below_n_by_healthy == {} and stats.shards_rebuilt == 10  # nothing again


async def test_once_a_more_endangered_record_is_seen_it_goes_first() -> None:
    entries = in_order([entry(i) for i in range(12)])  # three pages of four
    holders = Holders(entries)
    for e in entries:  # every record misses shard 0; the 10th one also shard 1
        holders.held["n1"].discard(ShardKey(e.record_id, e.content_hash, 0))
    worst = entries[9]
    holders.held["n2"].discard(ShardKey(worst.record_id, worst.content_hash, 1))
    driver = repairer(entries, holders)
    await run_passes(driver, 1)
    first = [e.record_id for e in entries[:8]]
    assert holders.rebuilt == [*first, worst.record_id]  # pages 1-2, then only the worst
    assert driver.stats.pass_deficit_min == 2
    assert driver.stats.backlog_records == 3  # page 3's others, held back
    await run_passes(driver, 1)  # at once: no rest while records are held back
    assert holders.rebuilt[9:] == [e.record_id for e in entries[8:] if e is not worst]
    assert driver.stats.backlog_records == 0 and driver.stats.shards_rebuilt == 13


async def test_unverified_puts_stay_in_the_backlog() -> None:
    entries = in_order([entry(i) for i in range(6)])
    holders = Holders(entries)
    holders.held["n3"].clear()
    holders.refusing.add("n3")
    driver = repairer(entries, holders)
    await run_passes(driver, 1)
    assert driver.stats.shards_rebuilt == 0 and driver.stats.shards_failed == 6
    assert driver.stats.backlog_records == 6


async def test_a_briefly_silent_holder_waits() -> None:
    entries = in_order([entry(i) for i in range(4)])
    holders = Holders(entries)
    holders.silent.add("n5")
    driver = repairer(entries, holders)
    await run_passes(driver, 1)
    assert holders.rebuilt == [] and driver.stats.backlog_records == 4
    assert driver.stats.below_n_by_healthy == {"4": 4}


async def test_the_rate_bound_paces_rebuilds() -> None:
    entries = in_order([entry(i) for i in range(8)])
    holders = Holders(entries)
    holders.held["n2"].clear()
    driver = repairer(entries, holders, shards_per_s_max=40.0)
    started = time.monotonic()
    await run_passes(driver, 1)
    assert time.monotonic() - started >= 8 / 40.0
    assert driver.stats.shards_rebuilt == 8 and driver.stats.rate_shards_per_s <= 41.0


async def test_old_copies_go_or_call_the_mover_back() -> None:
    members = (*NODES, "n6")
    e = next(x for x in map(entry, range(100)) if "n6" in place_shards(x.record_id, members, 5))
    first = e.shard_nodes[0]
    moved = dataclasses.replace(
        e, previous=(PreviousLocation(1, "n6", 50), PreviousLocation(2, first, 50))
    )
    holders = Holders([moved])
    back = ShardKey(e.record_id, e.content_hash, 1)  # on n6: in the placement, no shard held
    leak = ShardKey(e.record_id, e.content_hash, 2)  # on a holder of shard 0: can only leak
    holders.held["n6"] = {back}
    holders.held[first].add(leak)
    mover = Mover()
    mover.moves_in_flight = 3
    driver = repairer([moved], holders, mover, members=members)
    await run_passes(driver, 1)
    assert leak in holders.held[first] and mover.replans == 0  # nothing while moves run
    mover.moves_in_flight = 0
    driver = repairer([moved], holders, mover, members=members)
    await run_passes(driver, 1)
    assert leak not in holders.held[first] and driver.stats.stale_copies_deleted == 1
    assert back in holders.held["n6"] and mover.replans == 1  # the mover brings shard 1 back


async def test_a_pass_that_finds_nothing_walks_at_the_background_pace() -> None:
    entries = in_order([entry(i) for i in range(12)])  # three pages of four, nothing missing
    holders = Holders(entries)
    driver = repairer(entries, holders, scan_records_per_s_max=100.0, pass_interval_s=0.001)
    await run_passes(driver, 1)  # a new leader's first pass: full speed (the next test)
    time.sleep(0.002)  # the rest between passes
    started = time.monotonic()
    await run_passes(driver, 1)
    assert time.monotonic() - started >= 12 / 100.0  # paced: 4 records per 40 ms page
    assert driver.stats.below_n_by_healthy == {} and holders.rebuilt == []


async def test_a_new_leaders_first_pass_walks_at_full_speed_and_again_after_a_change() -> None:
    """baas-chaos seed 11: a leader elected while the cluster healed walked 16,833 clean
    records at the background pace, and no clean pass ended in the 300 s allowed."""
    entries = in_order([entry(i) for i in range(40)])  # ten pages of four, nothing missing
    holders = Holders(entries)
    driver = repairer(entries, holders, scan_records_per_s_max=10.0, pass_interval_s=0.001)
    started = time.monotonic()
    await run_passes(driver, 1)
    assert time.monotonic() - started < 2.0  # ten paced pages would take 4 s
    leading = driver._log
    driver._log = SimpleNamespace(status=lambda: SimpleNamespace(role="follower"))  # type: ignore[assignment]
    assert await driver.round_once() == 0
    driver._log = leading  # leader again: it knows nothing of what happened meanwhile
    started = time.monotonic()
    await run_passes(driver, 1)
    assert time.monotonic() - started < 2.0
    assert driver.stats.below_n_by_healthy == {} and holders.rebuilt == []


async def test_a_missing_shard_switches_the_pass_to_full_speed() -> None:
    entries = in_order([entry(i) for i in range(40)])  # ten pages of four
    holders = Holders(entries)
    first = entries[0]
    holders.held["n1"].discard(ShardKey(first.record_id, first.content_hash, 0))
    driver = repairer(entries, holders, scan_records_per_s_max=10.0)  # 0.4 s a paced page
    started = time.monotonic()
    await run_passes(driver, 1)
    assert time.monotonic() - started < 2.0  # ten paced pages would take 4 s
    assert holders.rebuilt == [first.record_id]


async def test_reported_records_are_rebuilt_ahead_of_the_walk() -> None:
    entries = in_order([entry(i) for i in range(40)])
    holders = Holders(entries)
    late = entries[-3:]  # the walk reaches these last
    for e in late:  # a scrubber on n2 quarantined their shard 1
        holders.held["n2"].discard(ShardKey(e.record_id, e.content_hash, 1))
    driver = repairer(entries, holders, suspects_max=2)
    assert driver.report_suspects([e.record_id for e in late]) == 2  # the third: list full
    assert driver.report_suspects([late[0].record_id]) == 0  # already waiting: not twice
    assert driver.stats.suspects_dropped == 1 and driver.stats.suspects_waiting == 2
    await driver.round_once()  # one round: the reported records, before any page of the walk
    assert holders.rebuilt == [late[0].record_id, late[1].record_id]
    assert driver.stats.suspect_shards_repaired == 2 and driver.stats.suspects_waiting == 0
    assert driver.stats.records_scanned == 0  # the walk has not moved
    await run_passes(driver, 1)  # the dropped one is the walk's, in its time
    assert holders.rebuilt[-1] == late[2].record_id and driver.stats.shards_rebuilt == 3


async def test_a_node_that_stops_leading_forgets_its_reports() -> None:
    entries = in_order([entry(i) for i in range(4)])
    holders = Holders(entries)
    driver = repairer(entries, holders)
    driver.report_suspects([entries[0].record_id])
    driver._log = SimpleNamespace(status=lambda: SimpleNamespace(role="follower"))  # type: ignore[assignment]
    assert await driver.round_once() == 0
    assert driver.stats.suspects_waiting == 0 and holders.rebuilt == []


async def test_reported_records_beyond_a_round_go_next_unless_nothing_was_rebuilt() -> None:
    entries = in_order([entry(i) for i in range(6)])
    holders = Holders(entries)
    for e in entries:  # each misses shards 0 and 1: two rebuilds a record, 4 per round
        holders.held["n1"].discard(ShardKey(e.record_id, e.content_hash, 0))
        holders.held["n2"].discard(ShardKey(e.record_id, e.content_hash, 1))
    driver = repairer(entries, holders, page_records_max=8, shards_per_round_max=5)
    driver.report_suspects([e.record_id for e in entries])
    await driver.round_once()
    assert driver.stats.suspect_shards_repaired == 4 and driver.stats.suspects_waiting == 4
    holders.refusing.update({"n1", "n2"})  # now every rebuild fails: no progress
    await driver.round_once()
    assert driver.stats.suspects_waiting == 0  # left to the walk, no spinning ahead of it
