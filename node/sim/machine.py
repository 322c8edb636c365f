"""The simulated replicated state machine: client commands, applied once per idempotency id.

A command is one small client write, ``client|seq|origin|value``. ``(client, seq)`` is its
idempotency id: a client that got no answer sends the same id again, so one id may be
committed at several log positions.

Dedupe rule: the first committed occurrence of an id is applied (it enters the applied
stream) and its log index is the id's position for good; every later occurrence is a no-op
whose result is that first position. So an id appears once in the applied stream, and every
acknowledgement of it names the same position. The set of seen ids is part of the state (and
of its snapshot), so the rule survives restarts and snapshot installs. (Unbounded here; the
real index bounds it by the proposal expiry of issue 4, item 4.)
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from node.consensus.types import Entry, EntryKind, NodeId

__all__ = ["Command", "DedupMachine", "RequestId", "StreamRecord"]

RequestId = tuple[str, int]  # (client id, the client's sequence number)
StreamRecord = tuple[int, str, int, int]  # (log index, client, seq, value), applied once per id


@dataclass(frozen=True, slots=True)
class Command:
    client: str
    seq: int
    origin: NodeId  # the node that proposed it; it acknowledges the client once applied
    value: int

    @property
    def request_id(self) -> RequestId:
        return (self.client, self.seq)

    def encode(self) -> bytes:
        return f"{self.client}|{self.seq}|{self.origin}|{self.value}".encode()

    @classmethod
    def decode(cls, payload: bytes) -> Command:
        client, seq, origin, value = payload.decode("utf-8", "replace").split("|")
        return cls(client, int(seq), origin, int(value))


class DedupMachine:
    """Applies committed entries; ``stream`` is the applied commands, in log order."""

    def __init__(self, *, dedupe: bool = True) -> None:
        self.dedupe = dedupe  # False only for the deliberately broken variant no-dedupe
        self.applied_index = 0
        self.stream: list[StreamRecord] = []
        self.positions: dict[RequestId, int] = {}

    def apply(self, entry: Entry) -> tuple[Command, int, StreamRecord | None] | None:
        """Apply one committed entry: (command, its id's position, the new stream record)."""
        self.applied_index = entry.index
        if entry.kind is not EntryKind.NORMAL:
            return None
        command = Command.decode(entry.payload)
        first = self.positions.get(command.request_id)
        if first is not None and self.dedupe:
            return command, first, None
        record = (entry.index, command.client, command.seq, command.value)
        self.stream.append(record)
        self.positions.setdefault(command.request_id, entry.index)
        return command, entry.index, record

    def data(self) -> bytes:
        """The snapshot of the state: the applied stream (the seen ids derive from it)."""
        return msgpack.packb([list(r) for r in self.stream], use_bin_type=True)  # type: ignore[no-any-return]

    def load(self, stream: list[StreamRecord], applied_index: int) -> None:
        self.stream = list(stream)
        self.applied_index = applied_index
        self.positions = {}
        for index, client, seq, _ in self.stream:
            self.positions.setdefault((client, seq), index)

    @staticmethod
    def decode_stream(data: bytes) -> list[StreamRecord]:
        raw = msgpack.unpackb(data) if data else []
        return [(int(i), str(c), int(s), int(v)) for i, c, s, v in raw]
