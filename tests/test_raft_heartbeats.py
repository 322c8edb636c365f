"""Heartbeat suppression in the Raft core: a peer sent an Append within ``heartbeat_ticks``
gets no heartbeat, and nothing a heartbeat was for (election timers, check-quorum, leader
stickiness, log-time clock reports, unsticking a paused peer, ReadIndex) is lost by it."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from node.consensus.cluster import Cluster
from node.consensus.config import RaftConfig
from node.consensus.messages import (
    Append,
    AppendResponse,
    Heartbeat,
    Message,
    WireLimits,
    message_from_wire,
    message_to_wire,
)
from node.consensus.raft import Ready
from node.consensus.types import EntryKind, Role
from node.errors import PeerProtocolError

ROUNDS = 30  # three election timeouts at election_ticks=10


@dataclass
class Clocks:
    now: int = 1_800_000_000_000
    offsets: dict[str, int] = field(default_factory=dict)

    def __call__(self, node_id: str) -> int:
        return self.now + self.offsets.get(node_id, 0)


def make(sent: list[Message], clocks: Clocks | None = None, **options: int | bool) -> Cluster:
    def config(node_id: str) -> RaftConfig:
        return RaftConfig(node_id, heartbeat_ticks=2, **options)  # type: ignore[arg-type]

    def record(node_id: str, ready: Ready) -> None:
        sent.extend(ready.messages)

    cluster = Cluster(
        ["a", "b", "c"], rng=random.Random(5), config=config, on_ready=record, clock=clocks
    )
    cluster.elect("a")
    cluster.settle(2)
    sent.clear()
    return cluster


def run(cluster: Cluster, rounds: int, *, busy: bool, clocks: Clocks | None = None) -> None:
    """``rounds`` ticks of every node; a busy leader proposes one entry before each."""
    for r in range(rounds):
        if clocks is not None:
            clocks.now += 100
        if busy:
            cluster.propose("a", b"r%d" % r)
        cluster.deliver()
        cluster.tick()
        cluster.deliver()


def heartbeats_to(sent: list[Message]) -> Counter[str]:
    return Counter(m.to for m in sent if isinstance(m, Heartbeat))


@pytest.mark.parametrize(
    ("busy", "lazy", "heartbeats_each"),
    [
        (False, False, ROUNDS // 2),  # idle: one every heartbeat_ticks, as before
        (False, True, ROUNDS // 2),
        (True, False, 0),  # busy: every tick follows an Append, so none at all
        (True, True, 0),
    ],
)
def test_a_peer_gets_a_heartbeat_only_when_it_was_sent_nothing_for_the_interval(
    busy: bool, lazy: bool, heartbeats_each: int
) -> None:
    sent: list[Message] = []
    cluster = make(sent, lazy_commit_notify=lazy)
    run(cluster, ROUNDS, busy=busy)
    assert heartbeats_to(sent) == Counter({"b": heartbeats_each, "c": heartbeats_each})
    # Nothing else changed: one leader, in the same term, with every proposal committed.
    leader = cluster.core("a")
    assert cluster.leaders() == ["a"] and leader.role is Role.LEADER
    assert {cluster.core(n).term for n in "abc"} == {leader.term}
    cluster.settle(2)
    assert {cluster.core(n).commit_index for n in "abc"} == {leader.last_index}


def test_a_leader_that_goes_idle_heartbeats_within_the_interval_of_its_last_append() -> None:
    sent: list[Message] = []
    cluster = make(sent)
    run(cluster, 5, busy=True)
    cluster.propose("a", b"last")
    cluster.deliver()
    sent.clear()
    cluster.tick(["a"])  # one tick after the last Append: not due yet
    assert heartbeats_to(sent) == Counter()
    cluster.tick(["a"])  # heartbeat_ticks after it: due
    assert heartbeats_to(sent) == Counter({"b": 1, "c": 1})


def test_a_peer_whose_appends_are_paused_still_gets_heartbeats_and_catches_up() -> None:
    sent: list[Message] = []
    cluster = make(sent, inflight_messages_max=2)
    cluster.block("a", "c")  # c hears nothing: its window fills, its Appends pause
    run(cluster, 10, busy=True)
    beats = heartbeats_to(sent)
    assert beats["b"] == 0 and beats["c"] >= 3
    cluster.heal()
    run(cluster, 4, busy=False)
    leader = cluster.core("a")
    assert cluster.core("c").commit_index == leader.commit_index == leader.last_index


def test_check_quorum_keeps_a_busy_leader_on_append_answers_alone() -> None:
    sent: list[Message] = []
    cluster = make(sent, check_quorum=True)
    run(cluster, ROUNDS, busy=True)
    assert heartbeats_to(sent) == Counter()
    assert cluster.core("a").role is Role.LEADER


def test_check_quorum_still_deposes_a_busy_leader_cut_off_from_its_followers() -> None:
    sent: list[Message] = []
    cluster = make(sent, check_quorum=True)
    cluster.isolate("a")
    for r in range(2 * 10):  # two election_ticks: one full check-quorum round
        cluster.propose("a", b"r%d" % r)
        cluster.tick(["a"])
        cluster.deliver()
        if cluster.core("a").role is not Role.LEADER:
            break
    assert cluster.core("a").role is Role.FOLLOWER


def test_followers_of_a_busy_leader_stay_sticky_and_ignore_a_disruptive_candidate() -> None:
    sent: list[Message] = []
    cluster = make(sent, check_quorum=True)
    run(cluster, 15, busy=True)
    term = cluster.core("a").term
    cluster.core("c").campaign()  # as if c's timer fired (a partition that healed at once)
    cluster.process("c")
    run(cluster, 5, busy=True)
    # b heard Appends within its election timeout (no heartbeats), so refused c's pre-vote.
    assert cluster.leader() == "a" and cluster.core("a").term == term
    assert not any(isinstance(m, Heartbeat) and m.sender == "a" for m in sent)


def test_append_answers_refresh_the_clock_reports_heartbeats_no_longer_bring() -> None:
    clocks = Clocks(offsets={"b": 300, "c": -200})
    sent: list[Message] = []
    cluster = make(sent, clocks=clocks)
    run(cluster, 10, busy=True, clocks=clocks)
    clocks.offsets = {"b": 700, "c": 100}  # the followers' clocks moved
    run(cluster, 3, busy=True, clocks=clocks)
    assert heartbeats_to(sent) == Counter()
    assert cluster.core("a").clock_offsets() == {"b": 700, "c": 100}


def test_read_index_sends_its_heartbeat_round_even_to_peers_just_appended_to() -> None:
    sent: list[Message] = []
    cluster = make(sent)
    run(cluster, 3, busy=True)
    cluster.propose("a", b"last")
    cluster.deliver()
    sent.clear()
    cluster.core("a").read_index(b"r1")
    cluster.process("a")
    assert heartbeats_to(sent) == Counter({"b": 1, "c": 1})
    cluster.deliver()
    leader = cluster.core("a")
    assert [(s.index, s.context) for s in cluster.machine("a").read_states] == [
        (leader.commit_index, b"r1")
    ]


def test_appends_are_what_a_busy_leader_sends_instead() -> None:
    sent: list[Message] = []
    cluster = make(sent, lazy_commit_notify=True)
    run(cluster, ROUNDS, busy=True)
    from_leader = Counter(type(m).__name__ for m in sent if m.sender == "a")
    assert set(from_leader) == {"Append"}
    appends = [m for m in sent if isinstance(m, Append)]
    # One Append per follower per proposal, plus at most one commit-only Append per tick.
    assert len(appends) <= 2 * 2 * ROUNDS


# -- lazy commit notices: an empty Append to a matched follower goes unanswered


def answers_to_leader(sent: list[Message]) -> Counter[str]:
    return Counter(m.sender for m in sent if isinstance(m, AppendResponse) and m.to == "a")


def test_a_matched_follower_does_not_answer_a_commit_notice() -> None:
    sent: list[Message] = []
    cluster = make(sent, lazy_commit_notify=True)
    cluster.propose("a", b"x")
    cluster.deliver()  # entries out, answered, committed on the leader only
    assert answers_to_leader(sent) == Counter({"b": 1, "c": 1})
    sent.clear()
    cluster.tick(["a"])  # the lazy notice
    notices = [m for m in sent if isinstance(m, Append)]
    assert [(m.to, m.entries, m.ack_wanted) for m in notices] == [
        ("b", (), False),
        ("c", (), False),
    ]
    cluster.deliver()
    assert answers_to_leader(sent) == Counter()  # accepted: nothing to say
    leader = cluster.core("a")
    assert {cluster.core(n).commit_index for n in "bc"} == {leader.commit_index}


def test_a_follower_missing_entries_refuses_a_notice_and_is_caught_up() -> None:
    sent: list[Message] = []
    cluster = make(sent, lazy_commit_notify=True)
    cluster.propose("a", b"x")
    cluster.propose("a", b"y")
    to_c = [m for m in cluster.queue if isinstance(m, Append) and m.to == "c"]
    cluster.queue.remove(to_c[-1])  # y is lost on its way to c
    cluster.deliver()  # c's answer makes it matched up to x; b's commits y
    sent.clear()
    cluster.tick(["a"])  # c looks matched and not told x's commit: a notice, after y
    notice = [m for m in sent if isinstance(m, Append) and m.to == "c"]
    assert [(m.entries, m.ack_wanted) for m in notice] == [((), False)]
    cluster.deliver()
    refusals = [m for m in sent if isinstance(m, AppendResponse) and m.sender == "c"]
    assert refusals[0].reject  # c lacks y: it answers, and is sent y
    cluster.settle(1)
    assert payloads_applied_by(cluster, "c") == [b"x", b"y"]


def payloads_applied_by(cluster: Cluster, node_id: str) -> list[bytes]:
    return [p for _, _, kind, p in cluster.machine(node_id).applied if kind == EntryKind.NORMAL]


@pytest.mark.parametrize("every", [1, 2])
def test_a_busy_leader_hears_one_answer_per_follower_per_proposal(every: int) -> None:
    sent: list[Message] = []
    cluster = make(sent, lazy_commit_notify=True)
    proposals = 0
    for r in range(ROUNDS):
        if r % every == 0:
            cluster.propose("a", b"r%d" % r)
            proposals += 1
        cluster.deliver()
        cluster.tick()
        cluster.deliver()
    to_leader = Counter(type(m).__name__ for m in sent if m.to == "a")
    assert to_leader == Counter({"AppendResponse": 2 * proposals})
    cluster.settle(1)
    assert {cluster.core(n).commit_index for n in "abc"} == {cluster.core("a").last_index}


def test_the_notice_flag_is_left_out_when_set_and_older_appends_want_an_answer() -> None:
    limits = WireLimits(entries_per_message_max=8, bytes_per_message_max=1024)
    answered = Append("a", "b", 3, 5, 3, (), 5)
    notice = Append("a", "b", 3, 5, 3, (), 5, ack_wanted=False)
    assert "ack_wanted" not in message_to_wire(answered)  # what older nodes send
    assert message_from_wire(message_to_wire(answered), limits) == answered
    assert message_from_wire(message_to_wire(notice), limits) == notice
    with pytest.raises(PeerProtocolError):
        message_from_wire({**message_to_wire(notice), "ack_wanted": 0}, limits)
