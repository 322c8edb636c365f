"""The messages Raft cores exchange, as frozen dataclasses, and their msgpack-friendly codec.

Every message names its ``sender``, its recipient ``to`` and the sender's ``term``. The codec is
driven by one table (:data:`_SPECS`): a message becomes ``{"v": 1, "t": name, field: value...}``
of plain ints, strings, bytes, lists and maps; decoding checks every field against its kind and
the caller's limits and raises :class:`~node.errors.PeerProtocolError` for anything malformed or
oversized (the transport drops the stream and counts it).

=====================  ===========================================================
message                meaning
=====================  ===========================================================
``PreVote``            "would you vote for me at ``term``?" (the sender's term is not raised)
``Vote``               a real vote request at ``term``
``TransferVote``       a vote request of a leadership transfer (granted despite stickiness)
``TimeoutNow``         the leader hands over: campaign now
``PreVoteResponse``    / ``VoteResponse``: ``reject`` or grant
``Append``             entries after (``prev_index``, ``prev_term``) and the leader's commit
``AppendResponse``     ``index`` matched, or ``reject`` with a (hint_index, hint_term) to
                       skip a whole conflicting term at once (fast backtracking); ``clock_ms``
``Heartbeat``          leadership + commit; ``context`` names a pending ReadIndex round
``HeartbeatResponse``  echoes ``context``; ``clock_ms``
``InstallSnapshot``    one chunk of a snapshot: ``offset``, ``total_bytes``, ``last``
``ReadIndexRequest``   a follower asks the leader for a read index
``ReadIndexResponse``  the leader's confirmed read index for that ``context``
=====================  ===========================================================

``clock_ms`` is the responder's clock input (its core's latest ``now_ms``): the leader bounds
its entries' stamps by what a quorum's clocks say (:mod:`node.consensus.log_time`). It is
optional on the wire: a node without it (older code, or a core never given the time) leaves it
out and the leader treats its clock as unknown; older nodes ignore the extra key.

``ack_wanted`` (Append, optional, default true): false marks a lazy commit notice -- no
entries, sent to a follower the leader already knows matches its whole log -- which the
follower answers only if it refuses it. Its acceptance would teach the leader nothing (the
match is known, the follower's liveness and clock came with its answers to the entries), so
the answer would only be one more frame each way. Older nodes ignore the key and answer.

The core emits ``InstallSnapshot`` whole (offset 0, ``last``); the transport may cut it with
:func:`split_snapshot` and must rebuild it with :func:`join_snapshot` before ``step``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

from node.consensus.types import (
    Entry,
    NodeId,
    SnapshotMeta,
    wire_bytes,
    wire_field,
    wire_int,
    wire_map,
    wire_node_id,
)
from node.errors import PeerProtocolError

__all__ = [
    "CONTEXT_BYTES_MAX",
    "WIRE_VERSION",
    "Append",
    "AppendResponse",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "Message",
    "PreVote",
    "PreVoteResponse",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "TimeoutNow",
    "TransferVote",
    "Vote",
    "VoteResponse",
    "WireLimits",
    "join_snapshot",
    "message_from_wire",
    "message_to_wire",
    "split_snapshot",
]

WIRE_VERSION = 1
CONTEXT_BYTES_MAX = 256


class _Wire:
    """Gives every message ``to_wire()``; the fields live on the dataclasses below."""

    __slots__ = ()

    def to_wire(self) -> dict[str, Any]:
        return message_to_wire(self)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class _VoteRequest(_Wire):
    sender: NodeId
    to: NodeId
    term: int
    last_log_index: int
    last_log_term: int


@dataclass(frozen=True, slots=True)
class PreVote(_VoteRequest):
    pass


@dataclass(frozen=True, slots=True)
class Vote(_VoteRequest):
    pass


@dataclass(frozen=True, slots=True)
class TransferVote(_VoteRequest):
    """A vote request of a leadership transfer: voters grant it even while they still hear
    from the (handing-over) leader, which a plain :class:`Vote` would not get (stickiness)."""


@dataclass(frozen=True, slots=True)
class TimeoutNow(_Wire):
    """The leader hands over: the receiver campaigns at once (a :class:`TransferVote`)."""

    sender: NodeId
    to: NodeId
    term: int


@dataclass(frozen=True, slots=True)
class _VoteReply(_Wire):
    sender: NodeId
    to: NodeId
    term: int
    reject: bool


@dataclass(frozen=True, slots=True)
class PreVoteResponse(_VoteReply):
    pass


@dataclass(frozen=True, slots=True)
class VoteResponse(_VoteReply):
    pass


@dataclass(frozen=True, slots=True)
class Append(_Wire):
    sender: NodeId
    to: NodeId
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    # False: a commit notice (no entries) to a follower already matched: it is answered only if
    # refused (see the module doc). Left out on the wire when True; older nodes answer anyway.
    ack_wanted: bool = True


@dataclass(frozen=True, slots=True)
class AppendResponse(_Wire):
    sender: NodeId
    to: NodeId
    term: int
    index: int  # accepted: last index now matching; rejected: the prev_index refused
    reject: bool = False
    hint_index: int = 0  # rejected: probe from here (largest index with term <= hint_term)
    hint_term: int = 0
    clock_ms: int | None = None  # the responder's clock; None: unknown (see the module doc)


@dataclass(frozen=True, slots=True)
class Heartbeat(_Wire):
    sender: NodeId
    to: NodeId
    term: int
    commit: int
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class HeartbeatResponse(_Wire):
    sender: NodeId
    to: NodeId
    term: int
    context: bytes = b""
    clock_ms: int | None = None  # as AppendResponse.clock_ms


@dataclass(frozen=True, slots=True)
class InstallSnapshot(_Wire):
    sender: NodeId
    to: NodeId
    term: int
    meta: SnapshotMeta
    offset: int
    total_bytes: int
    chunk: bytes
    last: bool


@dataclass(frozen=True, slots=True)
class ReadIndexRequest(_Wire):
    sender: NodeId
    to: NodeId
    term: int
    context: bytes


@dataclass(frozen=True, slots=True)
class ReadIndexResponse(_Wire):
    sender: NodeId
    to: NodeId
    term: int
    index: int
    context: bytes


Message = (
    PreVote
    | Vote
    | TransferVote
    | TimeoutNow
    | PreVoteResponse
    | VoteResponse
    | Append
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | ReadIndexRequest
    | ReadIndexResponse
)


@dataclass(frozen=True, slots=True)
class WireLimits:
    """Bounds applied while decoding; a message beyond them is refused, never truncated."""

    entries_per_message_max: int
    bytes_per_message_max: int


def _fields(spec: str) -> tuple[tuple[str, str], ...]:
    """``"index:int context:ctx"`` -> the sender/to/term head plus those (name, kind) pairs."""
    pairs = [tuple(part.split(":")) for part in f"sender:id to:id term:int {spec}".split()]
    return tuple((name, kind) for name, kind in pairs)


_VOTE_REQ = _fields("last_log_index:int last_log_term:int")
_VOTE_REPLY = _fields("reject:bool")
_SPECS: dict[str, tuple[type[Any], tuple[tuple[str, str], ...]]] = {
    "pre_vote": (PreVote, _VOTE_REQ),
    "vote": (Vote, _VOTE_REQ),
    "transfer_vote": (TransferVote, _VOTE_REQ),
    "timeout_now": (TimeoutNow, _fields("")),
    "pre_vote_resp": (PreVoteResponse, _VOTE_REPLY),
    "vote_resp": (VoteResponse, _VOTE_REPLY),
    "app": (
        Append,
        _fields("prev_index:int prev_term:int entries:entries commit:int ack_wanted:optbool"),
    ),
    "app_resp": (
        AppendResponse,
        _fields("index:int reject:bool hint_index:int hint_term:int clock_ms:optint"),
    ),
    "hb": (Heartbeat, _fields("commit:int context:ctx")),
    "hb_resp": (HeartbeatResponse, _fields("context:ctx clock_ms:optint")),
    "snap": (
        InstallSnapshot,
        _fields("meta:meta offset:int total_bytes:int chunk:bytes last:bool"),
    ),
    "read": (ReadIndexRequest, _fields("context:ctx")),
    "read_resp": (ReadIndexResponse, _fields("index:int context:ctx")),
}
_NAME_OF: dict[type[Any], str] = {cls: name for name, (cls, _) in _SPECS.items()}

_ENCODE: dict[str, Callable[[Any], Any]] = {
    "id": lambda v: v,
    "int": lambda v: v,
    "optint": lambda v: v,
    "bool": lambda v: v,
    "optbool": lambda v: v,
    "bytes": lambda v: v,
    "ctx": lambda v: v,
    "entries": lambda v: [e.to_wire() for e in v],
    "meta": lambda v: v.to_wire(),
}


def message_to_wire(message: Message) -> dict[str, Any]:
    name = _NAME_OF.get(type(message))
    if name is None:
        raise TypeError(f"not a raft message: {message!r}")
    out: dict[str, Any] = {"v": WIRE_VERSION, "t": name}
    for field, kind in _SPECS[name][1]:
        value = getattr(message, field)
        if (kind == "optint" and value is None) or (kind == "optbool" and value is True):
            continue  # optional: left out, as a node that does not know the field sends it
        out[field] = _ENCODE[kind](value)
    return out


def _decode_bool(raw: Any, what: str) -> bool:
    if not isinstance(raw, bool):
        raise PeerProtocolError(f"{what} must be a boolean")
    return raw


def _decode_entries(raw: Any, limits: WireLimits) -> tuple[Entry, ...]:
    if not isinstance(raw, list) or len(raw) > limits.entries_per_message_max:
        raise PeerProtocolError(
            f"entries must be a list of at most {limits.entries_per_message_max}"
        )
    entries = tuple(Entry.from_wire(e, payload_bytes_max=limits.bytes_per_message_max) for e in raw)
    if sum(len(e.payload) for e in entries) > limits.bytes_per_message_max:
        raise PeerProtocolError(f"entries exceed {limits.bytes_per_message_max} bytes")
    if any(b.index != a.index + 1 for a, b in pairwise(entries)):
        raise PeerProtocolError("entries are not consecutive")
    return entries


def _decode_field(kind: str, raw: Any, what: str, limits: WireLimits) -> Any:
    match kind:
        case "id":
            return wire_node_id(raw, what)
        case "int" | "optint":
            return wire_int(raw, what)
        case "bool" | "optbool":
            return _decode_bool(raw, what)
        case "bytes":
            return wire_bytes(raw, what, limits.bytes_per_message_max)
        case "ctx":
            return wire_bytes(raw, what, CONTEXT_BYTES_MAX)
        case "entries":
            return _decode_entries(raw, limits)
        case "meta":
            return SnapshotMeta.from_wire(raw)
    raise AssertionError(kind)


def message_from_wire(raw: Any, limits: WireLimits) -> Message:
    """Decode one message; :class:`PeerProtocolError` if malformed, unknown or oversized."""
    raw = wire_map(raw, "raft message")
    if raw.get("v") != WIRE_VERSION:
        raise PeerProtocolError(f"unknown raft message version {raw.get('v')!r}")
    name = raw.get("t")
    # A non-string name (a list or map: unhashable) is as unknown as a wrong string, not a
    # TypeError that would escape the consensus loop's refusal of malformed frames.
    spec = _SPECS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise PeerProtocolError(f"unknown raft message type {raw.get('t')!r}")
    cls, fields = spec
    values = {
        field: _decode_field(kind, wire_field(raw, field, "raft message"), field, limits)
        for field, kind in fields
        # optional: absent -> the default
        if kind not in ("optint", "optbool") or raw.get(field) is not None
    }
    message: Message = cls(**values)
    if isinstance(message, InstallSnapshot):
        _check_chunk(message)
    return message


def _check_chunk(chunk: InstallSnapshot) -> None:
    end = chunk.offset + len(chunk.chunk)
    if end > chunk.total_bytes or (chunk.last and end != chunk.total_bytes):
        raise PeerProtocolError("snapshot chunk lies outside its snapshot")


def split_snapshot(message: InstallSnapshot, chunk_bytes_max: int) -> tuple[InstallSnapshot, ...]:
    """Cut a whole snapshot message into chunks of at most ``chunk_bytes_max`` bytes."""
    if chunk_bytes_max <= 0:
        raise ValueError("chunk_bytes_max must be positive")
    data, total = message.chunk, message.total_bytes
    offsets = range(0, max(total, 1), chunk_bytes_max)
    return tuple(
        replace(
            message,
            offset=off,
            chunk=data[off : off + chunk_bytes_max],
            last=off + chunk_bytes_max >= total,
        )
        for off in offsets
    )


def join_snapshot(chunks: Sequence[InstallSnapshot]) -> InstallSnapshot:
    """Rebuild a whole snapshot message from its chunks, in order; refuses gaps and mixes."""
    if not chunks:
        raise PeerProtocolError("no snapshot chunks")
    first, offset = chunks[0], 0
    for chunk in chunks:
        same = (chunk.sender, chunk.term, chunk.meta, chunk.total_bytes)
        if same != (first.sender, first.term, first.meta, first.total_bytes):
            raise PeerProtocolError("snapshot chunks of different snapshots")
        if chunk.offset != offset:
            raise PeerProtocolError(f"snapshot chunk at {chunk.offset}, expected {offset}")
        _check_chunk(chunk)
        offset += len(chunk.chunk)
    if not chunks[-1].last or offset != first.total_bytes:
        raise PeerProtocolError("snapshot chunks incomplete")
    data = b"".join(c.chunk for c in chunks)
    return replace(first, offset=0, chunk=data, last=True)
