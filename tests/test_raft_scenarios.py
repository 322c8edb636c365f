"""Data-driven scenarios of the Raft core on a deterministic in-memory cluster.

Each test is a short transcript: elect, partition, crash, propose, deliver, then check. No event
loop, no clock: the cluster delivers messages from one queue and ticks when told to.
"""

from __future__ import annotations

import random

import pytest

from node.consensus.cluster import Cluster
from node.consensus.config import RaftConfig
from node.consensus.messages import (
    Append,
    AppendResponse,
    InstallSnapshot,
    Message,
    PreVote,
    TimeoutNow,
    TransferVote,
    Vote,
)
from node.consensus.raft import RawNode, Ready
from node.consensus.types import (
    ConfChangeKind,
    EntryKind,
    Membership,
    Role,
    Snapshot,
    SnapshotMeta,
    default_membership,
)
from node.errors import (
    InvalidRequest,
    InvariantViolation,
    NotLeader,
    OperationFailed,
    ReadyOutOfOrder,
)

ABC = ["a", "b", "c"]


def make(
    ids: list[str] = ABC,
    *,
    seed: int = 7,
    membership: Membership | None = None,
    log: list[tuple[str, Message]] | None = None,
    **options: int | bool,
) -> Cluster:
    def config(node_id: str) -> RaftConfig:
        return RaftConfig(node_id, **options)  # type: ignore[arg-type]

    def record(node_id: str, ready: Ready) -> None:
        if log is not None:
            log.extend((node_id, m) for m in ready.messages)

    return Cluster(
        ids, rng=random.Random(seed), membership=membership, config=config, on_ready=record
    )


def payloads_applied(cluster: Cluster, node_id: str) -> list[bytes]:
    return [p for _, _, kind, p in cluster.machine(node_id).applied if kind == EntryKind.NORMAL]


def elect_by_ticks(cluster: Cluster, among: str = "", ticks_max: int = 200) -> str:
    """Tick until a leader (one of ``among``, if given) is elected; return it."""
    for _ in range(ticks_max):
        cluster.settle()
        leader = cluster.leader()
        if leader is not None and (not among or leader in among):
            return leader
    raise AssertionError("no leader elected")


# -- elections


@pytest.mark.parametrize("size", [1, 3, 4, 5])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ticks_elect_exactly_one_leader_known_to_all(size: int, seed: int) -> None:
    ids = [f"n{i}" for i in range(size)]
    cluster = make(ids, seed=seed)
    leader = elect_by_ticks(cluster)
    cluster.settle(3)
    assert cluster.leaders() == [leader]
    assert {cluster.core(n).leader_id for n in ids} == {leader}
    assert len({cluster.core(n).term for n in ids}) == 1
    # The leader's no-op of its term commits everywhere.
    assert all(cluster.core(n).commit_index == 1 for n in ids)


@pytest.mark.parametrize(
    ("pre_vote", "leader_survives", "term_grows"),
    [
        (True, True, False),  # pre-vote: the rejoining node never raised its term
        (False, False, True),  # without it, its higher term deposes a healthy leader
    ],
)
def test_prevote_keeps_a_rejoining_partitioned_node_from_disrupting(
    pre_vote: bool, leader_survives: bool, term_grows: bool
) -> None:
    cluster = make(pre_vote=pre_vote)
    cluster.elect("a")
    term = cluster.core("a").term
    cluster.isolate("c")
    cluster.tick(["c"], times=100)  # c times out again and again, alone
    assert (cluster.core("c").term > term) == term_grows
    cluster.heal()
    cluster.settle(30)
    assert (cluster.leader() == "a" and cluster.core("a").term == term) == leader_survives
    assert cluster.leader() is not None


@pytest.mark.parametrize(("check_quorum", "steps_down"), [(True, True), (False, False)])
def test_check_quorum_makes_an_isolated_leader_step_down(
    check_quorum: bool, steps_down: bool
) -> None:
    cluster = make(check_quorum=check_quorum, pre_vote=True)
    cluster.elect("a")
    cluster.isolate("a")
    cluster.settle(25)  # more than election_ticks on every node
    assert (cluster.core("a").role is not Role.LEADER) == steps_down
    assert cluster.leader() in {"b", "c"}  # the majority side elected its own leader


def test_followers_with_a_live_leader_ignore_vote_requests() -> None:
    cluster = make()
    cluster.elect("a")
    term = cluster.core("a").term
    # A forced campaign by b (with pre-vote off on b alone it would raise its term) is
    # ignored by c, which heard from leader a within the election timeout: stickiness.
    cluster.core("b").campaign()
    cluster.process("b")
    cluster.deliver()
    assert cluster.leader() == "a" and cluster.core("a").term == term


# -- replication


def test_replication_batches_and_pipelines_within_bounds() -> None:
    sent: list[tuple[str, Message]] = []
    cluster = make(log=sent, entries_per_message_max=4, inflight_messages_max=2)
    cluster.elect("a")
    cluster.settle(2)
    sent.clear()
    for i in range(5):
        cluster.propose("a", *[f"{i}-{j}".encode() for j in range(5)])
    in_flight_to_b = [m for _, m in sent if isinstance(m, Append) and m.to == "b"]
    assert len(in_flight_to_b) == 2  # the pipelining window, before any acknowledgement
    cluster.settle(3)
    appends = [m for _, m in sent if isinstance(m, Append) and m.entries]
    assert max(len(m.entries) for m in appends) == 4
    assert any(len(m.entries) > 1 for m in appends)
    expected = [f"{i}-{j}".encode() for i in range(5) for j in range(5)]
    for node_id in ABC:
        assert payloads_applied(cluster, node_id) == expected
        assert cluster.core(node_id).commit_index == 26


def test_proposals_on_a_follower_name_the_leader() -> None:
    cluster = make()
    cluster.elect("a")
    cluster.settle()
    with pytest.raises(NotLeader) as info:
        cluster.propose("b", b"x")
    assert info.value.leader_hint == "a"


def test_leader_time_never_runs_backwards_along_the_log() -> None:
    cluster = make()
    cluster.elect("a")
    cluster.propose("a", b"1", now_ms=5_000)
    cluster.propose("a", b"2", now_ms=4_000)  # a clock step back on the leader
    cluster.settle()
    stamps = [e.leader_time_ms for e in cluster.storage("b").entries]
    assert stamps == sorted(stamps) and stamps[-1] == 5_000


def test_conflicting_uncommitted_entries_are_overwritten_with_fast_backtracking() -> None:
    sent: list[tuple[str, Message]] = []
    cluster = make(log=sent, entries_per_message_max=100)
    cluster.elect("a")
    cluster.settle()
    cluster.isolate("a")
    for i in range(30):  # 30 entries of term 1 that only a ever holds
        cluster.propose("a", f"lost-{i}".encode())
    second = elect_by_ticks(cluster, among="bc")  # once a's lease has run out
    for i in range(30):
        cluster.propose(second, f"kept-{i}".encode())
    cluster.settle()
    # A third leader, elected with the long log: its first probe to a starts at the end.
    third = "c" if second == "b" else "b"
    cluster.heal()
    cluster.isolate(second)
    sent.clear()
    elect_by_ticks(cluster, among=third)  # with a's vote; its first probe to a is at 32
    cluster.heal()
    cluster.settle(5)
    logs = [[(e.index, e.term) for e in cluster.storage(n).entries] for n in ABC]
    assert logs[0] == logs[1] == logs[2]
    for node_id in ABC:
        assert payloads_applied(cluster, node_id) == [f"kept-{i}".encode() for i in range(30)]
    # The hint skips the whole conflicting term at once instead of one entry per round trip.
    rejections = [m for _, m in sent if isinstance(m, AppendResponse) and m.reject]
    assert 1 <= len(rejections) <= 2


def test_entries_of_an_earlier_term_are_not_committed_by_counting() -> None:
    """Raft §5.4.2 (figure 8): a replica count alone never commits an older term's entry."""
    cluster = make(pre_vote=False, check_quorum=False, entries_per_message_max=1)
    cluster.elect("a")
    cluster.settle()
    cluster.isolate("a")
    cluster.propose("a", b"X")  # index 2, term 1, only on a
    cluster.deliver()  # lost on the way
    cluster.heal()
    cluster.crash("a")
    cluster.campaign("b")  # b wins term 2 with c's vote, appends its no-op at index 2 ...
    while cluster.core("b").role is not Role.LEADER:
        cluster.deliver_one()
    cluster.drop_where(lambda m: m.sender == "b")  # ... which never leaves b
    cluster.crash("b")
    cluster.restart("a")
    for _ in range(2):  # c voted for b in term 2, so a wins only in term 3
        cluster.campaign("a")
        while cluster.queue and cluster.core("a").role is not Role.LEADER:
            cluster.deliver_one()
    assert cluster.core("a").term == 3 and cluster.core("a").role is Role.LEADER
    # a replicates one entry per message: X reaches c first, so X sits on a majority.
    while cluster.core("c").last_index < 2 or cluster.core("c").term_at(2) != 1:
        cluster.deliver_one()
    cluster.block("a", "c")  # a's no-op (index 3) never reaches c
    cluster.deliver()  # c's acknowledgement of X reaches a
    assert cluster.core("a").progress("c").match == 2  # type: ignore[union-attr]
    assert cluster.core("a").commit_index == 1  # X (term 1) is on 2 of 3, still uncommitted
    # Indeed it was not safe to commit: b can still win and replace it.
    cluster.crash("a")
    cluster.heal()
    cluster.restart("b")
    for _ in range(3):
        cluster.campaign("b")
        cluster.deliver()
    cluster.settle(3)
    assert cluster.core("c").term_at(2) == 2
    assert b"X" not in [p for _, _, _, p in cluster.machine("c").applied]


# -- snapshots


def test_lagging_follower_catches_up_by_snapshot_after_compaction() -> None:
    sent: list[tuple[str, Message]] = []
    cluster = make(log=sent)
    cluster.elect("a")
    cluster.settle()
    cluster.crash("c")
    for i in range(20):
        cluster.propose("a", f"e{i}".encode())
    cluster.settle()
    snapshot = cluster.compact("a")
    cluster.compact("b")
    assert cluster.core("a").snapshot_index == snapshot.meta.index == 21
    cluster.propose("a", b"after")
    cluster.restart("c")
    cluster.settle(12)
    installs = [m for _, m in sent if isinstance(m, InstallSnapshot) and m.to == "c"]
    assert len(installs) == 1 and installs[0].meta == snapshot.meta
    assert cluster.core("c").snapshot_index == 21
    assert cluster.machine("c").applied == cluster.machine("a").applied
    assert payloads_applied(cluster, "c")[-1] == b"after"
    # c restarts from its persisted snapshot plus log and still agrees.
    cluster.crash("c")
    cluster.restart("c")
    cluster.settle(2)
    assert cluster.machine("c").applied == cluster.machine("a").applied


def test_compaction_refuses_snapshots_beyond_applied_or_off_the_log() -> None:
    cluster = make(["a"])
    cluster.elect("a")
    core = cluster.core("a")
    membership = core.membership
    with pytest.raises(InvariantViolation, match="beyond applied"):
        core.compact(Snapshot(SnapshotMeta(5, 1, membership), b""))
    with pytest.raises(InvariantViolation, match="does not match"):
        core.compact(Snapshot(SnapshotMeta(1, 7, membership), b""))


# -- membership


def test_add_learner_promote_then_remove_the_leader() -> None:
    cluster = make()
    cluster.elect("a")
    cluster.propose("a", b"before-d")
    cluster.settle()
    cluster.join("d")
    core = cluster.core("a")
    core.propose_change(ConfChangeKind.ADD_LEARNER, "d", now_ms=1)
    with pytest.raises(OperationFailed) as info:  # one change at a time
        core.propose_change(ConfChangeKind.REMOVE_NODE, "b", now_ms=1)
    assert info.value.code == "config_change_pending"
    cluster.settle(3)
    assert cluster.core("d").membership == Membership.of(ABC, ["d"])
    assert payloads_applied(cluster, "d") == [b"before-d"]  # the learner got the log
    core.propose_change(ConfChangeKind.PROMOTE_LEARNER, "d", now_ms=2)
    cluster.settle(3)
    assert cluster.core("b").membership == Membership.of([*ABC, "d"])
    core.propose_change(ConfChangeKind.REMOVE_NODE, "a", now_ms=3)
    cluster.settle(3)
    assert core.role is Role.FOLLOWER  # a removed leader steps down once the change commits
    assert all(cluster.core(n).membership == Membership.of(["b", "c", "d"]) for n in "bcd")
    leader = elect_by_ticks(cluster)
    assert leader in {"b", "c", "d"}
    cluster.propose(leader, b"without-a")
    cluster.settle(3)
    assert payloads_applied(cluster, "d")[-1] == b"without-a"
    assert payloads_applied(cluster, "a")[-1] == b"before-d"  # a no longer hears anything


def test_add_and_remove_a_voter_changes_the_quorum() -> None:
    cluster = make()
    cluster.elect("a")
    cluster.join("d")
    cluster.core("a").propose_change(ConfChangeKind.ADD_VOTER, "d", now_ms=0)
    cluster.settle(3)
    assert cluster.core("a").membership.quorum == 3
    cluster.crash("b")
    cluster.crash("c")
    cluster.propose("a", b"needs-3-of-4")
    cluster.settle(3)
    assert b"needs-3-of-4" not in payloads_applied(cluster, "a")
    cluster.restart("b")
    cluster.settle(3)
    assert payloads_applied(cluster, "a")[-1] == b"needs-3-of-4"
    leader = elect_by_ticks(cluster)
    cluster.core(leader).propose_change(ConfChangeKind.REMOVE_NODE, "c", now_ms=0)
    cluster.settle(3)
    assert cluster.core(leader).membership.voters == tuple(sorted({"a", "b", "d"}))


def test_learners_never_vote_campaign_or_count() -> None:
    sent: list[tuple[str, Message]] = []
    cluster = make(["a", "b", "c", "l"], membership=Membership.of(ABC, ["l"]), log=sent)
    cluster.tick(["l"], times=100)  # far past its election timeout
    assert cluster.core("l").role is Role.FOLLOWER and cluster.core("l").term == 0
    leader = elect_by_ticks(cluster)
    cluster.crash("b" if leader != "b" else "c")
    cluster.crash("a" if leader != "a" else "c")
    cluster.propose(leader, b"x")
    cluster.settle(3)  # leader + learner is not a quorum of voters
    assert b"x" not in payloads_applied(cluster, leader)
    assert not [m for _, m in sent if isinstance(m, PreVote | Vote) and "l" in {m.sender, m.to}]
    assert any(isinstance(m, Append) and m.to == "l" for _, m in sent)


@pytest.mark.parametrize(
    ("count", "voters", "learners"),
    [(1, 1, 0), (3, 3, 0), (5, 5, 0), (6, 5, 1), (9, 5, 4)],
)
def test_default_membership_keeps_five_voters(count: int, voters: int, learners: int) -> None:
    membership = default_membership(f"n{i}" for i in range(count))
    assert (len(membership.voters), len(membership.learners)) == (voters, learners)


# -- ReadIndex


def test_read_index_is_confirmed_by_a_heartbeat_round() -> None:
    cluster = make()
    cluster.elect("a")
    cluster.propose("a", b"x")
    cluster.settle()
    commit = cluster.core("a").commit_index
    cluster.core("a").read_index(b"r1")
    cluster.process("a")
    assert cluster.machine("a").read_states == []  # not before a quorum answered
    cluster.deliver()
    assert [(r.index, r.context) for r in cluster.machine("a").read_states] == [(commit, b"r1")]
    cluster.core("b").read_index(b"r2")  # a follower forwards to the leader
    cluster.process("b")
    cluster.deliver()
    assert [(r.index, r.context) for r in cluster.machine("b").read_states] == [(commit, b"r2")]


def test_read_index_on_an_isolated_leader_never_answers() -> None:
    cluster = make(check_quorum=False)
    cluster.elect("a")
    cluster.settle()
    cluster.isolate("a")
    cluster.core("a").read_index(b"stale?")
    cluster.settle(5)
    assert cluster.machine("a").read_states == []


def test_read_index_waits_for_the_first_commit_of_the_term() -> None:
    cluster = make()
    cluster.campaign("a")
    while cluster.core("a").role is not Role.LEADER:
        cluster.deliver_one()
    cluster.core("a").read_index(b"early")  # its no-op is not committed yet
    cluster.process("a")
    assert cluster.machine("a").read_states == []
    cluster.settle()
    assert [r.context for r in cluster.machine("a").read_states] == [b"early"]
    assert cluster.machine("a").read_states[0].index >= 1


# -- the Ready cycle


def _misuse(core: RawNode, other: RawNode, action: str) -> None:
    first = core.ready()
    if action == "ready twice":
        core.ready()
    elif action == "advance a stale ready":
        core.advance(first)
        core.advance(first)
    else:
        core.advance(other.ready())


@pytest.mark.parametrize(
    "action", ["ready twice", "advance a stale ready", "advance a foreign ready"]
)
def test_ready_cycle_out_of_order_is_refused(action: str) -> None:
    cluster = make()
    cluster.core("a").campaign()
    cluster.core("b").campaign()
    with pytest.raises(ReadyOutOfOrder):
        _misuse(cluster.core("a"), cluster.core("b"), action)


def test_ready_orders_persist_before_send_and_votes_are_durable() -> None:
    checked: list[str] = []

    def check(node_id: str, ready: Ready) -> None:
        # Every vote or acknowledgement leaving in this Ready is covered by what it persists.
        votes = [m for m in ready.messages if isinstance(m, Vote)]
        if votes:
            assert ready.hard_state is not None
            assert ready.hard_state.vote == node_id
            assert {m.term for m in votes} == {ready.hard_state.term}
            checked.append(node_id)

    cluster = Cluster(ABC, rng=random.Random(1), on_ready=check)
    cluster.elect("a")
    assert checked == ["a"]
    assert cluster.storage("b").hard_state.vote == "a"


def test_restart_from_persisted_state_recovers_log_and_commit() -> None:
    cluster = make()
    cluster.elect("a")
    for i in range(10):
        cluster.propose("a", f"{i}".encode())
    cluster.settle()
    before = {n: cluster.machine(n).applied for n in ABC}
    for node_id in ABC:
        cluster.crash(node_id)
    for node_id in ABC:
        cluster.restart(node_id)
        assert cluster.core(node_id).commit_index >= 1
    leader = elect_by_ticks(cluster)
    cluster.propose(leader, b"after")
    cluster.settle(2)
    for node_id in ABC:
        applied = cluster.machine(node_id).applied
        assert applied[: len(before[node_id])] == before[node_id]
        assert applied[-1][3] == b"after"


def test_a_follower_that_lost_acknowledged_entries_is_stalled_not_flooded() -> None:
    """Found by the simulator (`--bug skip-fsync`): a disk that lies about fsync drops entries
    a follower had acknowledged; the leader must not re-probe the same index forever."""
    import random

    from node.consensus.cluster import Cluster

    c = Cluster(["a", "b", "c"], rng=random.Random(1))
    c.elect("a")
    c.propose("a", b"x")
    c.settle(2)
    c.crash("b")
    c.storage("b").entries = c.storage("b").entries[:-1]  # lost an acknowledged entry
    c.restart("b")
    c.core("a").report_unreachable("b")
    c.propose("a", b"y")
    rounds = c.deliver(rounds_max=10_000)
    assert rounds < 100  # settles instead of an endless append/reject exchange
    leader = c.core("a")
    assert leader.commit_index == leader.last_index  # a and c still commit


def test_lazy_commit_notify_rides_on_the_next_append_or_the_next_tick() -> None:
    sent: list[tuple[str, Message]] = []
    cluster = make(log=sent, lazy_commit_notify=True, heartbeat_ticks=3)
    cluster.elect("a")
    cluster.settle(1)
    sent.clear()
    cluster.propose("a", b"x")
    cluster.deliver()
    leader = cluster.core("a")
    assert leader.commit_index == 2
    # Committed on the leader, yet no commit-only Append went out: one Append per follower.
    appends = [m for _, m in sent if isinstance(m, Append)]
    assert sorted(m.to for m in appends) == ["b", "c"]
    assert all(m.entries for m in appends)
    assert cluster.core("b").commit_index == 1
    # A new proposal carries the commit index with its entries...
    cluster.propose("a", b"y")
    cluster.deliver()
    assert cluster.core("b").commit_index == 2
    assert payloads_applied(cluster, "b") == [b"x"]
    # ...and with nothing more to send, the next tick sends it alone (not a heartbeat).
    sent.clear()
    cluster.tick(["a"])
    empty = [m for _, m in sent if isinstance(m, Append)]
    assert sorted(m.to for m in empty) == ["b", "c"] and not any(m.entries for m in empty)
    cluster.deliver()
    assert payloads_applied(cluster, "b") == [b"x", b"y"]
    # Once told, an idle tick sends nothing.
    sent.clear()
    cluster.tick(["a"])
    assert not [m for _, m in sent if isinstance(m, Append)]


def test_eager_commit_notify_broadcasts_the_commit_at_once() -> None:
    sent: list[tuple[str, Message]] = []
    cluster = make(log=sent, heartbeat_ticks=3)
    cluster.elect("a")
    cluster.settle(1)
    sent.clear()
    cluster.propose("a", b"x")
    cluster.deliver()
    assert cluster.core("b").commit_index == 2
    assert len([m for _, m in sent if isinstance(m, Append) and not m.entries]) == 2


# -- leadership transfer


def test_leadership_transfer_hands_over_at_once_despite_stickiness() -> None:
    sent: list[tuple[str, Message]] = []
    cluster = make(["a", "b", "c", "d", "e"], log=sent)
    cluster.elect("a")
    cluster.settle(2)
    cluster.propose("a", b"x")
    cluster.deliver()
    term = cluster.core("a").term
    sent.clear()
    cluster.core("a").transfer_leadership("c")
    cluster.process("a")
    cluster.deliver()
    # c campaigned on TimeoutNow with a TransferVote; the others, though they had just heard
    # from a, granted it (a plain Vote would be refused: leader stickiness).
    assert any(isinstance(m, TimeoutNow) and m.to == "c" for _, m in sent)
    assert any(isinstance(m, TransferVote) for _, m in sent)
    assert cluster.leader() == "c" and cluster.core("c").term == term + 1
    assert cluster.core("a").role is Role.FOLLOWER
    cluster.propose("c", b"y")
    cluster.settle(1)
    for node_id in "abcde":
        assert payloads_applied(cluster, node_id) == [b"x", b"y"]


def test_leadership_transfer_catches_the_target_up_first_and_refuses_proposals() -> None:
    cluster = make(["a", "b", "c"])
    cluster.elect("a")
    cluster.settle(2)
    cluster.block("a", "c")
    cluster.propose("a", b"x")
    cluster.deliver()
    assert cluster.core("c").last_index < cluster.core("a").last_index
    cluster.core("a").transfer_leadership("c")
    with pytest.raises(NotLeader):
        cluster.propose("a", b"refused while handing over")
    cluster.heal()
    cluster.tick(["a"])  # the next heartbeat round finds c behind and sends it the entries
    cluster.settle(3)
    assert cluster.leader() == "c"
    assert payloads_applied(cluster, "c") == [b"x"]


def test_a_transfer_that_does_not_complete_is_given_up_and_proposals_resume() -> None:
    cluster = make(["a", "b", "c"])
    cluster.elect("a")
    cluster.settle(2)
    cluster.isolate("c")
    cluster.core("a").transfer_leadership("c")
    cluster.tick(["a", "b"], times=10)  # election_ticks
    assert cluster.core("a").transferring_to is None
    assert cluster.leader() == "a"
    cluster.propose("a", b"after")
    cluster.settle(1)
    assert payloads_applied(cluster, "b") == [b"after"]


def test_leadership_cannot_go_to_a_learner_or_to_itself() -> None:
    cluster = make(["a", "b", "c"], membership=Membership.of(["a", "b"], ["c"]))
    cluster.elect("a")
    cluster.settle(1)
    for target in ("a", "c"):
        with pytest.raises(InvalidRequest):
            cluster.core("a").transfer_leadership(target)
