"""Messages of the shard protocol ``/baas/shard/1.0.0`` and their msgpack codec.

A frame on a stream is ``u32 big-endian length || msgpack map``. The map is the envelope
``{"v": 1, "id": request id, "op": name, "b": body}``; a reply carries the request's id, so one
long-lived stream carries many requests. Unknown versions or ops are refused with a typed error.

Requests and their replies:

=================  ======================  =============================================
request            reply                   meaning
=================  ======================  =============================================
``PutShards``      ``PutShardsReply``      store shards durably (one fsynced batch)
``GetShards``      ``ShardsReply``         shards of a record (all, or the given indexes)
``HasShards``      ``MetasReply``          metas only, of every shard held for a record
``HasRecords``     ``MetasReply``          the same for many records at once (batch writes)
``GetRecords``     ``RecordsShardsReply``  every shard held for each of many records
``DeleteShards``   ``DeletedReply``        remove these shards (a finished move's old copy)
any                ``ErrorReply``          the request failed; ``code`` is stable
=================  ======================  =============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from node.errors import InvalidRequest, PeerProtocolError, UnsupportedFormat
from node.records import HASH_BYTES, Shard, ShardKey, ShardMeta

__all__ = [
    "FRAME_VERSION",
    "PROTOCOL_ID",
    "REQUEST_IDS_MAX",
    "DeleteShards",
    "DeletedReply",
    "ErrorReply",
    "GetRecords",
    "GetShards",
    "HasRecords",
    "HasShards",
    "Message",
    "MetasReply",
    "PutShards",
    "PutShardsReply",
    "RecordsShardsReply",
    "ShardsReply",
    "decode_frame",
    "encode_frame",
]

PROTOCOL_ID = "/baas/shard/1.0.0"
FRAME_VERSION = 1


@dataclass(frozen=True, slots=True)
class PutShards:
    shards: tuple[Shard, ...]
    request_ids: tuple[str, ...] = ()  # the gateway requests these serve (for the logs)
    # If-absent: do not store a shard when another version of its record is held (unless the
    # holder's index names this shard's version: the other is then an orphan and replaced);
    # the reply then lists the metas held for that record instead.
    exclusive: bool = False
    # Per shard (empty: none), the log index after which its record's index proposal has
    # expired: the holder keeps it as the record's pending marker (orphan collection).
    expiries: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PutShardsReply:
    stored: int
    refused: tuple[bytes, ...] = ()  # exclusive puts: records held in another version
    existing: tuple[ShardMeta, ...] = ()  # the metas held for the refused records


@dataclass(frozen=True, slots=True)
class GetShards:
    record_id: bytes
    indexes: tuple[int, ...] = ()  # empty: every shard held for the record


@dataclass(frozen=True, slots=True)
class ShardsReply:
    shards: tuple[Shard, ...]
    corrupt: int = 0  # entries found but failing their checksum (never served)


@dataclass(frozen=True, slots=True)
class GetRecords:
    record_ids: tuple[bytes, ...]
    request_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordsShardsReply:
    shards: tuple[Shard, ...]
    corrupt_record_ids: tuple[bytes, ...] = ()  # one per corrupt entry found (never served)


@dataclass(frozen=True, slots=True)
class HasShards:
    record_id: bytes


@dataclass(frozen=True, slots=True)
class HasRecords:
    record_ids: tuple[bytes, ...]
    request_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MetasReply:
    metas: tuple[ShardMeta, ...]


@dataclass(frozen=True, slots=True)
class DeleteShards:
    keys: tuple[ShardKey, ...]  # exactly these (record, version, index); others stay


@dataclass(frozen=True, slots=True)
class DeletedReply:
    requested: int


@dataclass(frozen=True, slots=True)
class ErrorReply:
    code: str
    detail: str


Message = (
    PutShards
    | PutShardsReply
    | GetShards
    | ShardsReply
    | GetRecords
    | RecordsShardsReply
    | HasShards
    | HasRecords
    | MetasReply
    | DeleteShards
    | DeletedReply
    | ErrorReply
)


def _body_of(message: Message) -> tuple[str, dict[str, Any]]:
    match message:
        case PutShards(shards, request_ids, exclusive, expiries):
            body = {"s": [s.to_wire() for s in shards], "rq": list(request_ids)}
            if exclusive:
                body["x"] = True
            if expiries:
                body["e"] = list(expiries)
            return "put", body
        case PutShardsReply(stored, refused, existing):
            return "put_ok", {
                "n": stored,
                "rf": list(refused),
                "ex": [m.to_wire() for m in existing],
            }
        case GetShards(record_id, indexes):
            return "get", {"rid": record_id, "ix": list(indexes)}
        case ShardsReply(shards, corrupt):
            return "shards", {"s": [s.to_wire() for s in shards], "bad": corrupt}
        case GetRecords(record_ids, request_ids):
            return "get_many", {"rids": list(record_ids), "rq": list(request_ids)}
        case RecordsShardsReply(shards, corrupt_record_ids):
            return "rshards", {"s": [s.to_wire() for s in shards], "bad": list(corrupt_record_ids)}
        case HasShards(record_id):
            return "has", {"rid": record_id}
        case HasRecords(record_ids, request_ids):
            return "has_many", {"rids": list(record_ids), "rq": list(request_ids)}
        case MetasReply(metas):
            return "metas", {"m": [m.to_wire() for m in metas]}
        case DeleteShards(keys):
            return "delete", {"k": [[k.record_id, k.content_hash, k.index] for k in keys]}
        case DeletedReply(requested):
            return "deleted", {"n": requested}
        case ErrorReply(code, detail):
            return "error", {"c": code, "d": detail}
    raise TypeError(f"not a shard protocol message: {message!r}")


def _record_id(raw: Any) -> bytes:
    if not isinstance(raw, bytes) or len(raw) != HASH_BYTES:
        raise UnsupportedFormat("record id must be 32 bytes")
    return raw


REQUEST_IDS_MAX = 1024
REQUEST_ID_CHARS_MAX = 64


def _request_ids(body: dict[str, Any]) -> tuple[str, ...]:
    """Optional request ids (absent in frames from before they existed), bounded."""
    raw = body.get("rq", [])
    if not isinstance(raw, list) or len(raw) > REQUEST_IDS_MAX:
        raise UnsupportedFormat("request ids must be a list of at most 1024")
    if not all(isinstance(r, str) and 0 < len(r) <= REQUEST_ID_CHARS_MAX for r in raw):
        raise UnsupportedFormat("a request id must be 1..64 characters")
    return tuple(raw)


def _shard_key(raw: Any) -> ShardKey:
    if not isinstance(raw, list) or len(raw) != 3 or not isinstance(raw[2], int):
        raise UnsupportedFormat("a shard key is [record id, content hash, index]")
    try:
        return ShardKey(_record_id(raw[0]), _record_id(raw[1]), raw[2])
    except InvalidRequest as exc:
        raise UnsupportedFormat(exc.detail) from exc


def _message_of(op: str, body: dict[str, Any]) -> Message:
    if op == "put":
        shards = tuple(Shard.from_wire(s) for s in body["s"])
        expiries = body.get("e", [])
        if not isinstance(expiries, list) or (expiries and len(expiries) != len(shards)):
            raise UnsupportedFormat("expiries must be a list with one per shard")
        if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in expiries):
            raise UnsupportedFormat("an expiry is a log index")
        return PutShards(shards, _request_ids(body), body.get("x") is True, tuple(expiries))
    if op == "put_ok":
        return PutShardsReply(
            int(body["n"]),
            tuple(_record_id(rid) for rid in body.get("rf", [])),
            tuple(ShardMeta.from_wire(m) for m in body.get("ex", [])),
        )
    if op == "get":
        return GetShards(_record_id(body["rid"]), tuple(int(i) for i in body["ix"]))
    if op == "shards":
        return ShardsReply(tuple(Shard.from_wire(s) for s in body["s"]), int(body["bad"]))
    if op == "get_many":
        return GetRecords(tuple(_record_id(rid) for rid in body["rids"]), _request_ids(body))
    if op == "rshards":
        return RecordsShardsReply(
            tuple(Shard.from_wire(s) for s in body["s"]),
            tuple(_record_id(rid) for rid in body["bad"]),
        )
    if op == "has":
        return HasShards(_record_id(body["rid"]))
    if op == "has_many":
        return HasRecords(tuple(_record_id(rid) for rid in body["rids"]), _request_ids(body))
    if op == "metas":
        return MetasReply(tuple(ShardMeta.from_wire(m) for m in body["m"]))
    if op == "delete":
        raw = body["k"]
        if not isinstance(raw, list) or len(raw) > REQUEST_IDS_MAX:
            raise UnsupportedFormat("delete keys must be a list of at most 1024")
        return DeleteShards(tuple(_shard_key(k) for k in raw))
    if op == "deleted":
        return DeletedReply(int(body["n"]))
    if op == "error":
        return ErrorReply(str(body["c"]), str(body["d"]))
    raise UnsupportedFormat(f"unknown op {op!r}")


def encode_frame(request_id: int, message: Message) -> bytes:
    """Encode one frame, length prefix included."""
    op, body = _body_of(message)
    payload: bytes = msgpack.packb(
        {"v": FRAME_VERSION, "id": request_id, "op": op, "b": body}, use_bin_type=True
    )
    return len(payload).to_bytes(4, "big") + payload


def decode_frame(payload: bytes) -> tuple[int, Message]:
    """Decode one frame's payload (without its length prefix).

    Raises :class:`PeerProtocolError` for anything malformed: the caller drops the stream.
    """
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        if not isinstance(raw, dict) or raw.get("v") != FRAME_VERSION:
            raise UnsupportedFormat("unknown frame version")
        request_id = raw["id"]
        if not isinstance(request_id, int) or request_id < 0:
            raise UnsupportedFormat("bad request id")
        body = raw["b"]
        if not isinstance(body, dict):
            raise UnsupportedFormat("frame body is not a map")
        return request_id, _message_of(str(raw["op"]), body)
    except (UnsupportedFormat, KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
        raise PeerProtocolError(f"malformed shard protocol frame: {exc}") from exc
