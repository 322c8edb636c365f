"""The Raft message codec, its bounds, snapshot chunking, config validation and core purity."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import msgpack
import pytest

from node.consensus.config import RaftConfig
from node.consensus.messages import (
    Append,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    PreVote,
    PreVoteResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    TransferVote,
    Vote,
    VoteResponse,
    WireLimits,
    join_snapshot,
    message_from_wire,
    split_snapshot,
)
from node.consensus.types import (
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    HardState,
    Membership,
    SnapshotMeta,
)
from node.errors import ConfigError, InvalidRequest, PeerProtocolError

LIMITS = WireLimits(entries_per_message_max=8, bytes_per_message_max=1024)
META = SnapshotMeta(9, 2, Membership.of(["a", "b", "c"], ["d"]))
CHANGE = ConfChange(ConfChangeKind.ADD_LEARNER, "d", META.membership)
ENTRIES = (
    Entry(4, 2, EntryKind.NORMAL, b"payload", 1_700_000_000_000),
    Entry(5, 2, EntryKind.CONFIG, CHANGE.encode(), 1),
    Entry(6, 2, EntryKind.NOOP, b"", 2),
)

EVERY_MESSAGE: list[Message] = [
    PreVote("a", "b", 3, 10, 2),
    Vote("a", "b", 3, 10, 2),
    TransferVote("a", "b", 3, 10, 2),
    TimeoutNow("a", "b", 3),
    PreVoteResponse("b", "a", 3, False),
    VoteResponse("b", "a", 3, True),
    Append("a", "b", 3, 3, 2, ENTRIES, 5),
    Append("a", "b", 3, 3, 2, (), 5),
    AppendResponse("b", "a", 3, 6),
    AppendResponse("b", "a", 3, 6, True, 4, 1),
    Heartbeat("a", "b", 3, 5, b"read-1"),
    HeartbeatResponse("b", "a", 3, b"read-1"),
    InstallSnapshot("a", "b", 3, META, 0, 3, b"abc", True),
    ReadIndexRequest("b", "a", 3, b"ctx"),
    ReadIndexResponse("a", "b", 3, 7, b"ctx"),
]


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_msgpack(message: Message) -> None:
    packed = msgpack.packb(message.to_wire(), use_bin_type=True)
    assert message_from_wire(msgpack.unpackb(packed, raw=False), LIMITS) == message


def test_conf_change_and_hard_state_round_trip() -> None:
    change = ConfChange(ConfChangeKind.PROMOTE_LEARNER, "d", Membership.of("abcd"))
    assert ConfChange.decode(change.encode()) == change
    state = HardState(4, "b", 9)
    assert HardState.from_wire(state.to_wire()) == state
    assert HardState.from_wire(HardState().to_wire()) == HardState()


def _append_wire(**changes: Any) -> dict[str, Any]:
    wire = Append("a", "b", 3, 3, 2, ENTRIES, 5).to_wire()
    wire.update(changes)
    return wire


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ([1, 2], "not a map"),
        (_append_wire(v=2), "version"),
        (_append_wire(t="gossip"), "unknown raft message type"),
        ({k: v for k, v in _append_wire().items() if k != "commit"}, "lacks field"),
        (_append_wire(term=-1), "non-negative"),
        (_append_wire(term=2**64), "non-negative"),
        (_append_wire(term=True), "non-negative"),
        (_append_wire(sender=""), "node id"),
        (_append_wire(sender="x" * 200), "node id"),
        (_append_wire(entries=[ENTRIES[0].to_wire()] * 9), "at most 8"),
        (_append_wire(entries=[[4, 2, 0, b"x" * 1025, 0]]), "exceeds"),
        (_append_wire(entries=[[4, 2, 0, b"x" * 600, 0], [5, 2, 0, b"y" * 600, 0]]), "exceed"),
        (_append_wire(entries=[[4, 2, 9, b"", 0]]), "unknown entry kind"),
        (_append_wire(entries=[[4, 2, 0, "text", 0]]), "bytes"),
        (_append_wire(entries=[ENTRIES[0].to_wire(), ENTRIES[2].to_wire()]), "consecutive"),
        ({**Heartbeat("a", "b", 1, 0, b"").to_wire(), "context": b"c" * 257}, "exceeds"),
        ({**InstallSnapshot("a", "b", 1, META, 0, 2, b"abc", True).to_wire()}, "outside"),
        ({**PreVoteResponse("a", "b", 1, True).to_wire(), "reject": 1}, "boolean"),
    ],
)
def test_malformed_or_oversized_messages_are_refused(wire: Any, message: str) -> None:
    with pytest.raises(PeerProtocolError, match=message):
        message_from_wire(wire, LIMITS)


def test_snapshot_chunks_rebuild_the_whole_message_and_refuse_gaps() -> None:
    whole = InstallSnapshot("a", "b", 3, META, 0, 10, b"0123456789", True)
    chunks = split_snapshot(whole, 4)
    assert [c.chunk for c in chunks] == [b"0123", b"4567", b"89"]
    assert [c.last for c in chunks] == [False, False, True]
    wired = [message_from_wire(c.to_wire(), LIMITS) for c in chunks]
    assert join_snapshot(wired) == whole  # type: ignore[arg-type]
    with pytest.raises(PeerProtocolError, match="expected"):
        join_snapshot([chunks[0], chunks[2]])
    with pytest.raises(PeerProtocolError, match="incomplete"):
        join_snapshot(chunks[:2])
    empty = InstallSnapshot("a", "b", 3, META, 0, 0, b"", True)
    assert join_snapshot(split_snapshot(empty, 4)) == empty


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"node_id": ""}, "node_id"),
        ({"election_ticks": 0}, "election_ticks"),
        ({"heartbeat_ticks": 10}, "heartbeat_ticks"),
        ({"inflight_messages_max": True}, "inflight_messages_max"),
        ({"entry_payload_bytes_max": 2 * 1024 * 1024}, "entry_payload_bytes_max"),
        ({"snapshot_timeout_ticks": -1}, "snapshot_timeout_ticks"),
    ],
)
def test_invalid_raft_config_names_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RaftConfig(**{"node_id": "a", **changes})


@pytest.mark.parametrize(
    ("voters", "learners", "kind", "node", "error"),
    [
        ("abc", "", ConfChangeKind.ADD_VOTER, "a", "already a voter"),
        ("abc", "", ConfChangeKind.PROMOTE_LEARNER, "d", "not a learner"),
        ("abc", "d", ConfChangeKind.ADD_LEARNER, "d", "already a member"),
        ("abc", "", ConfChangeKind.REMOVE_NODE, "z", "not a member"),
        ("a", "", ConfChangeKind.REMOVE_NODE, "a", "last voter"),
    ],
)
def test_illegal_membership_changes_are_refused(
    voters: str, learners: str, kind: ConfChangeKind, node: str, error: str
) -> None:
    with pytest.raises(InvalidRequest, match=error):
        Membership.of(voters, learners).apply(ConfChange(kind, node))


ROOT = Path(__file__).resolve().parent.parent
IO_MODULES = {"socket", "threading", "os", "io", "pathlib", "subprocess", "select", "datetime"}


@pytest.mark.parametrize("module", sorted(p.name for p in (ROOT / "node/consensus").glob("*.py")))
def test_consensus_modules_do_no_io_either(module: str) -> None:
    """Beyond the shared purity test: no sockets, threads, files or wall clock in consensus."""
    text = (ROOT / "node/consensus" / module).read_text()
    nodes = list(ast.walk(ast.parse(text)))
    imported = {a.name.split(".")[0] for n in nodes if isinstance(n, ast.Import) for a in n.names}
    imported |= {
        n.module.split(".")[0] for n in nodes if isinstance(n, ast.ImportFrom) and n.module
    }
    assert not imported & IO_MODULES
    # A call of the builtin open (a name like chain_open is no file).
    calls = {n.func.id for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "open" not in calls
