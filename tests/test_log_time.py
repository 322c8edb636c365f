"""Log time: leader stamps bounded by a quorum's clocks (node/consensus/log_time.py, raft.py).

The scenarios run the pure Raft core on the in-memory cluster with a clock per node: the test
moves real time (``Clocks.now``) and gives each node an offset from it (a fast or slow clock).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import msgpack
import pytest

from node.config import RaftSettings
from node.consensus.cluster import Cluster
from node.consensus.config import RaftConfig
from node.consensus.log_time import (
    UNKNOWN_CLOCK,
    clock_alarm,
    next_stamp,
    quorum_clock,
    tick_due,
)
from node.consensus.messages import (
    AppendResponse,
    HeartbeatResponse,
    WireLimits,
    message_from_wire,
    message_to_wire,
)
from node.consensus.types import EntryKind, Membership, SnapshotMeta
from node.errors import ConfigError, PeerProtocolError

HOUR_MS = 3_600_000
OFFSET_MAX_MS = 1_000
START_MS = 1_800_000_000_000


@dataclass
class Clocks:
    now: int = START_MS
    offsets: dict[str, int] = field(default_factory=dict)

    def __call__(self, node_id: str) -> int:
        return self.now + self.offsets.get(node_id, 0)


def make(clocks: Clocks, ids: tuple[str, ...] = ("a", "b", "c")) -> Cluster:
    def config(node_id: str) -> RaftConfig:
        return RaftConfig(node_id, clock_offset_max_ms=OFFSET_MAX_MS)

    return Cluster(ids, rng=random.Random(3), config=config, clock=clocks)


def stamps(cluster: Cluster, node_id: str) -> list[int]:
    return [e.leader_time_ms for e in cluster.storage(node_id).entries]


def last_stamp(cluster: Cluster, node_id: str) -> int:
    return cluster.storage(node_id).entries[-1].leader_time_ms


def lead(cluster: Cluster, clocks: Clocks, node_id: str) -> None:
    """Elect ``node_id`` and let one heartbeat round bring every voter's clock report."""
    cluster.elect(node_id)
    cluster.settle(3)
    assert cluster.leader() == node_id


def propose_later(cluster: Cluster, clocks: Clocks, leader: str, after_ms: int) -> int:
    """Let ``after_ms`` of real time pass (one heartbeat round), propose; return the stamp."""
    clocks.now += after_ms
    cluster.settle()
    cluster.propose(leader, b"later")
    cluster.settle()
    return last_stamp(cluster, leader)


def hand_over(cluster: Cluster, src: str, dst: str) -> None:
    """Leadership moves from ``src`` to ``dst`` (a transfer: no wait for leases to run out);
    returns as soon as ``dst`` leads, before any of its appends is answered."""
    cluster.core(src).transfer_leadership(dst)
    cluster.process(src)
    for _ in range(1_000):
        if cluster.leader() == dst:
            return
        cluster.deliver_one()
    raise AssertionError(f"{dst} did not take over")


# -- the pure rules


@pytest.mark.parametrize(
    ("own", "reports", "quorum", "expected"),
    [
        (100, [], 1, 100),  # a single voter is its own quorum
        (100, [], 2, None),  # nobody else heard from yet: no quorum clock
        (10_000, [50, 60], 2, 60),  # a fast leader: the second highest of three
        (10, [50, 60], 2, 50),  # a slow leader: still the second highest
        (100, [UNKNOWN_CLOCK, 40], 2, 100),  # a peer that sends no clock counts as ours
        (100, [90, 80, 70, 10_000], 3, 90),  # five voters: the third highest
    ],
)
def test_quorum_clock_is_the_quorum_th_highest_known_voter_clock(
    own: int, reports: list[int], quorum: int, expected: int | None
) -> None:
    assert quorum_clock(own, reports, quorum) == expected


@pytest.mark.parametrize(
    ("last", "own", "quorum_ms", "expected"),
    [
        (0, 5_000, 5_000, 5_000),  # a correct leader stamps its clock
        (0, 5_000 + HOUR_MS, 5_000, 6_000),  # a fast one: at most the tolerance ahead
        (0, 5_000 - HOUR_MS, 5_000, 4_000),  # a slow one: at most the tolerance behind
        (7_000, 5_000, 5_000, 7_000),  # never backwards along the log
        (7_000, 9_000, None, 7_000),  # no quorum clock known: no advance
    ],
)
def test_next_stamp_clamps_the_leader_clock_around_the_quorum_clock(
    last: int, own: int, quorum_ms: int | None, expected: int
) -> None:
    assert next_stamp(last, own, quorum_ms, 1_000) == expected


def test_tick_due_after_the_interval_and_never_while_busy() -> None:
    assert not tick_due(own_ms=1_999, last_append_ms=1_000, interval_ms=1_000, busy=False)
    assert tick_due(own_ms=2_000, last_append_ms=1_000, interval_ms=1_000, busy=False)
    assert not tick_due(own_ms=9_000, last_append_ms=1_000, interval_ms=1_000, busy=True)


def test_clock_offset_max_and_tick_interval_are_validated() -> None:
    with pytest.raises(ConfigError):
        RaftConfig("a", clock_offset_max_ms=0)
    RaftSettings().validate()
    with pytest.raises(ConfigError, match="two heartbeats"):
        RaftSettings(clock_offset_max_ms=300).validate()  # heartbeats every 200 ms
    with pytest.raises(ConfigError):
        RaftSettings(log_tick_interval_ms=0).validate()


# -- the wire: the report is optional both ways


def test_clock_reports_travel_and_old_peers_without_them_decode_as_unknown() -> None:
    limits = WireLimits(16, 1 << 20)
    with_clock = AppendResponse("b", "a", 3, 7, clock_ms=START_MS)
    assert message_from_wire(message_to_wire(with_clock), limits) == with_clock
    beat = HeartbeatResponse("b", "a", 3, b"ctx", START_MS)
    assert message_from_wire(message_to_wire(beat), limits) == beat
    old = message_to_wire(AppendResponse("b", "a", 3, 7))
    assert "clock_ms" not in old  # what an older node sends, and what it is sent: no key
    assert message_from_wire(old, limits) == AppendResponse("b", "a", 3, 7, clock_ms=None)
    with pytest.raises(PeerProtocolError):
        message_from_wire({**old, "clock_ms": -5}, limits)


def test_snapshot_meta_keeps_the_last_stamp_and_older_metas_read_as_zero() -> None:
    meta = SnapshotMeta(9, 2, Membership.of(["a"]), START_MS)
    assert SnapshotMeta.from_wire(meta.to_wire()) == meta
    old = {"index": 9, "term": 2, "m": Membership.of(["a"]).to_wire()}
    assert SnapshotMeta.from_wire(msgpack.unpackb(msgpack.packb(old))).time_ms == 0


# -- scenarios


def test_a_fast_leader_stamps_within_the_tolerance_of_the_quorum_clocks() -> None:
    clocks = Clocks(offsets={"a": HOUR_MS})
    cluster = make(clocks)
    lead(cluster, clocks, "a")
    for _ in range(5):
        stamp = propose_later(cluster, clocks, "a", 700)
        assert clocks.now <= stamp <= clocks.now + OFFSET_MAX_MS  # not an hour ahead
    # Operators see it: the followers look an hour behind the leader.
    offsets = cluster.core("a").clock_offsets()
    assert set(offsets) == {"b", "c"}
    assert all(-HOUR_MS - 1_000 <= v <= -HOUR_MS for v in offsets.values())
    assert clock_alarm(offsets, OFFSET_MAX_MS)
    assert cluster.core("b").clock_offsets() == {}  # measured by the leader only


def test_correct_clocks_measure_near_zero_and_raise_no_alarm() -> None:
    clocks = Clocks(offsets={"b": 250, "c": -250})
    cluster = make(clocks)
    lead(cluster, clocks, "a")
    offsets = cluster.core("a").clock_offsets()
    assert offsets == {"b": 250, "c": -250}  # reports as fresh as the delivery
    assert not clock_alarm(offsets, OFFSET_MAX_MS)


def test_without_the_bound_a_fast_leader_pushes_log_time_an_hour_ahead_for_good() -> None:
    """The contrast: with a tolerance as large as the skew, what the bound prevents happens."""
    clocks = Clocks(offsets={"a": HOUR_MS})
    cluster = Cluster(
        ("a", "b", "c"),
        rng=random.Random(3),
        config=lambda n: RaftConfig(n, clock_offset_max_ms=10 * HOUR_MS),
        clock=clocks,
    )
    lead(cluster, clocks, "a")
    cluster.propose("a", b"ahead")
    cluster.settle()
    assert last_stamp(cluster, "a") >= clocks.now + HOUR_MS


def test_leadership_moving_from_a_fast_leader_to_a_correct_one_stalls_never_goes_back() -> None:
    clocks = Clocks(offsets={"a": HOUR_MS})
    cluster = make(clocks)
    lead(cluster, clocks, "a")
    clocks.now += 500
    cluster.settle()
    cluster.propose("a", b"from the fast leader")
    cluster.settle()
    ahead = last_stamp(cluster, "a")
    assert ahead > clocks.now  # ahead, within the tolerance
    clocks.now += 100
    hand_over(cluster, "a", "b")
    cluster.settle(3)
    cluster.propose("b", b"while real time is behind the log")
    cluster.settle()
    assert last_stamp(cluster, "b") == ahead  # stalls: never back
    assert propose_later(cluster, clocks, "b", 5_000) == clocks.now  # b's own clock again
    log = stamps(cluster, "c")
    assert log == sorted(log)


def test_a_slow_leader_keeps_log_time_moving_with_the_quorum_clocks() -> None:
    clocks = Clocks(offsets={"b": -HOUR_MS})
    cluster = make(clocks)
    lead(cluster, clocks, "a")
    cluster.propose("a", b"correct")
    cluster.settle()
    before = last_stamp(cluster, "a")
    hand_over(cluster, "a", "b")
    cluster.settle(3)
    for _ in range(3):
        stamp = propose_later(cluster, clocks, "b", 10_000)
        # Not the hour-slow clock, not stalled at the last stamp: the quorum clock (c's,
        # reported at the last delivery) minus at most the tolerance.
        assert clocks.now - OFFSET_MAX_MS <= stamp <= clocks.now
    assert last_stamp(cluster, "b") >= before + 29_000
    log = stamps(cluster, "c")
    assert log == sorted(log)


def test_a_new_leader_does_not_advance_log_time_before_a_quorum_reported() -> None:
    clocks = Clocks()
    cluster = make(clocks)
    lead(cluster, clocks, "a")
    cluster.propose("a", b"x")
    cluster.settle()
    before = last_stamp(cluster, "a")
    clocks.now += 5_000
    hand_over(cluster, "a", "b")  # b leads; none of its appends has been answered yet
    b = cluster.core("b")
    assert b.quorum_clock_ms() is None
    noop = cluster.storage("b").entries[-1]
    assert noop.kind is EntryKind.NOOP and noop.term == b.term
    assert noop.leader_time_ms == before  # the last stamp, not b's clock 5 s later
    cluster.settle(2)
    cluster.propose("b", b"y")
    cluster.settle()
    assert last_stamp(cluster, "b") == clocks.now


def test_followers_that_send_no_clock_do_not_constrain_the_leader() -> None:
    """A rolling upgrade: older followers send no report; the leader stamps as before."""
    clocks = Clocks(offsets={"a": HOUR_MS})
    cluster = make(clocks)
    cluster.campaign("a")
    for _ in range(200):
        if not cluster.queue:
            cluster.tick()
            if not cluster.queue:
                continue
        message = cluster.queue[0]
        if isinstance(message, AppendResponse | HeartbeatResponse):
            cluster.queue[0] = replace(message, clock_ms=None)
        cluster.deliver_one()
    assert cluster.leader() == "a"
    cluster.propose("a", b"old peers")
    assert last_stamp(cluster, "a") == clocks.now + HOUR_MS
    assert cluster.core("a").clock_offsets() == {}  # nothing measured


def test_a_log_compacted_to_its_end_keeps_its_last_stamp_for_the_next_leader() -> None:
    clocks = Clocks(offsets={"b": -HOUR_MS})
    cluster = make(clocks)
    lead(cluster, clocks, "a")
    cluster.propose("a", b"x")
    cluster.settle(2)
    ahead = last_stamp(cluster, "a")
    for node_id in ("a", "b", "c"):
        cluster.compact(node_id)
        cluster.crash(node_id)
        cluster.restart(node_id)
    assert cluster.core("b").last_time_ms == ahead  # from the snapshot meta, entries gone
    # b's clock is an hour slow and no quorum clock is known at its no-op: it must not stamp
    # below what the compacted log reached.
    cluster.elect("b")
    cluster.settle(3)
    assert cluster.leader() == "b"
    cluster.propose("b", b"slow leader")
    cluster.settle()
    log = stamps(cluster, "c")
    assert log and min(log) >= ahead
