"""The node's side of the shard protocol: answers put/get/has/delete from peers and itself.

Runs on the libp2p (trio) thread. Requests are validated against the node's limits before
anything is stored; puts and deletes go through the group committer; gets and has are served
from the shard store, which never returns a corrupt entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from node.config import NodeLimits
from node.errors import CallerError, OperationFailed
from node.p2p.messages import (
    DeletedReply,
    DeleteShards,
    ErrorReply,
    GetRecords,
    GetShards,
    HasRecords,
    HasShards,
    Message,
    MetasReply,
    PutShards,
    PutShardsReply,
    RecordsShardsReply,
    ShardsReply,
)
from node.records import Shard
from node.storage.group_commit import GroupCommitter
from node.storage.shard_store import ShardStore

__all__ = ["ShardService"]

log = logging.getLogger("baas.node.shards")


class ShardService:
    def __init__(
        self,
        store: ShardStore,
        limits: NodeLimits,
        on_commit: Callable[[int, float], None] | None = None,
        quarantine_kept_max: int = 1000,
    ) -> None:
        self._store = store
        self._limits = limits
        self.committer = GroupCommitter(
            store,
            queue_shards_max=limits.commit_queue_shards_max,
            batch_shards_max=limits.put_batch_shards_max,
            on_commit=on_commit,
            quarantine_kept_max=quarantine_kept_max,
        )

    async def serve(self) -> None:
        await self.committer.serve()

    async def handle(self, message: Message, from_peer: str) -> Message:
        if log.isEnabledFor(logging.DEBUG) and isinstance(
            message, PutShards | GetRecords | HasRecords
        ):
            log.debug(
                "%s from %s",
                type(message).__name__,
                from_peer,
                extra={"request_ids": message.request_ids},
            )
        try:
            return await self._dispatch(message)
        except (CallerError, OperationFailed) as exc:
            return ErrorReply(exc.code, exc.detail)

    async def _dispatch(self, message: Message) -> Message:
        match message:
            case PutShards(shards=shards):
                if len(shards) > self._limits.put_batch_shards_max:
                    return ErrorReply("too_many_shards", "put batch exceeds put_batch_shards_max")
                if any(len(s.data) > self._limits.record_blob_bytes_max for s in shards):
                    return ErrorReply("shard_too_large", "shard exceeds record_blob_bytes_max")
                refused = await self.committer.submit(
                    shards, exclusive=message.exclusive, expiries=message.expiries
                )
                if not refused:
                    return PutShardsReply(len(shards))
                stored = sum(1 for s in shards if s.meta.record_id not in refused)
                ordered = tuple(sorted(refused))
                existing = tuple(m for rid in ordered for m in self._store.metas(rid))
                return PutShardsReply(stored, ordered, existing)
            case GetShards(record_id, indexes):
                found, corrupt = self._store.get(record_id, indexes)
                return ShardsReply(tuple(found), corrupt)
            case GetRecords(record_ids):
                if len(record_ids) > self._limits.read_batch_records_max:
                    return ErrorReply("too_many_records", "exceeds read_batch_records_max")
                held: list[Shard] = []
                corrupt_ids: list[bytes] = []
                for rid in record_ids:
                    found, corrupt = self._store.get(rid)
                    held.extend(found)
                    corrupt_ids.extend([rid] * corrupt)
                return RecordsShardsReply(tuple(held), tuple(corrupt_ids))
            case HasShards(record_id):
                return MetasReply(tuple(self._store.metas(record_id)))
            case DeleteShards(keys):
                if len(keys) > self._limits.put_batch_shards_max:
                    return ErrorReply("too_many_shards", "delete exceeds put_batch_shards_max")
                await self.committer.delete(keys)
                return DeletedReply(len(keys))
            case HasRecords(record_ids):
                if len(record_ids) > self._limits.records_per_request_max:
                    return ErrorReply("too_many_records", "exceeds records_per_request_max")
                return MetasReply(tuple(m for rid in record_ids for m in self._store.metas(rid)))
        return ErrorReply("unsupported_request", f"{type(message).__name__} is not a request")
