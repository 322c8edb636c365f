"""What a coordinator needs of the record index, on any node.

* :meth:`RecordIndexClient.lookup` -- the locally applied index. Committed index entries never
  change, so a hit needs no consensus round.
* :meth:`RecordIndexClient.lookup_confirmed` -- a local miss is confirmed with a read barrier
  (ReadIndex through the leader) before anyone is told "not found": this node may lag.
* :meth:`RecordIndexClient.propose` -- index entries go through the leader: proposed locally on
  the leader, else forwarded to the leader's node API (``POST /internal/v1/index``), retried
  once the leader moves. Each proposal carries an expiry (a term and
  ``last_index + proposal_expiry_entries``, stamped by the coordinator before it stores the
  shards, see :meth:`RecordIndexClient.stamp`), so a proposal lost in a leader change can never
  commit late.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import msgpack

from node.api.wire import MSGPACK
from node.config import ClusterMember
from node.consensus.record_index import IndexEntry, IndexProposal, RecordIndex
from node.errors import NotLeader, OperationFailed
from node.replication.log import ReplicatedLog

__all__ = ["INDEX_PATH", "RecordIndexClient", "outcome_wire"]

INDEX_PATH = "/internal/v1/index"
_LEADER_WAIT_S = 0.1


def outcome_wire(
    code: str, index: int, term: int, leader_time_ms: int, detail: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "code": code,
        "index": index,
        "term": term,
        "ts": leader_time_ms,
        "first_index": detail.get("index"),
        "first_ch": detail.get("content_hash"),
    }


class _View:
    def __init__(self, log: ReplicatedLog) -> None:
        self._log = log

    def get(self, key: bytes) -> bytes | None:
        return self._log.state_get(key)


class RecordIndexClient:
    def __init__(
        self,
        log: ReplicatedLog,
        members: Sequence[ClusterMember],
        *,
        api_token: str,
        proposal_expiry_entries: int,
        request_timeout_s: float,
        address_of: Callable[[str], str | None] | None = None,
    ) -> None:
        self._log = log
        configured = {m.peer_id: m.http_addr for m in members}
        # Where a leader's node API listens: the committed membership knows members that
        # joined after this node started (node/membership.py); else the configuration.
        self._address_of = address_of or configured.get
        self._token = api_token
        self._expiry_entries = proposal_expiry_entries
        self._timeout_s = request_timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    def lookup(self, record_id: bytes) -> IndexEntry | None:
        return RecordIndex.lookup(_View(self._log), record_id)

    async def lookup_confirmed(self, record_id: bytes) -> IndexEntry | None:
        found = self.lookup(record_id)
        if found is not None:
            return found
        await self._log.read_barrier(timeout_s=self._timeout_s)
        return self.lookup(record_id)

    def stamp(self) -> tuple[int, int]:
        """(term, max log index) for a proposal about to be made from this node.

        The coordinator stamps before it stores any shard, and every holder keeps the max
        index as the record's pending marker: the apply refuses the entry outside the term or
        beyond the index, so once the log passes it an unindexed record's shards are orphans.
        Stamped from this node's view: a lagging node stamps a lower index (an earlier
        expiry, never a later one than the leader would).
        """
        status = self._log.status()
        return status.term, status.last_index + self._expiry_entries

    async def propose_local(self, proposals: Sequence[IndexProposal]) -> list[dict[str, Any]]:
        """On the leader: stamp the term, append, wait until applied.

        The term is the leader's own (a coordinator that has not heard of the latest election
        yet would stamp an older one, and its write would expire for nothing). The maximum
        index is the coordinator's whenever it gave one: holders collect shards by it, so it is
        never raised here.
        """
        term, max_index = self.stamp()
        stamped = [
            dataclasses.replace(
                p,
                expiry_term=term,
                expiry_max_index=p.expiry_max_index if p.expiry_max_index > 0 else max_index,
            )
            for p in proposals
        ]
        applied = await self._log.propose(
            [p.to_entry() for p in stamped], timeout_s=self._timeout_s
        )
        return [
            outcome_wire(
                a.outcome.code,
                a.position.index,
                a.position.term,
                a.position.leader_time_ms,
                a.outcome.detail,
            )
            for a in applied
        ]

    async def propose(self, proposals: Sequence[IndexProposal]) -> list[dict[str, Any]]:
        """Through the leader, wherever it is; raises OperationFailed (retryable) if none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        last: Exception = OperationFailed("no leader", code="index_unavailable")
        while loop.time() < deadline:
            leader = self._log.status().leader_id
            try:
                if leader is None:
                    raise NotLeader("no leader known yet")
                if leader == self._log.status().node_id:
                    return await self.propose_local(proposals)
                return await self._forward(leader, proposals)
            except NotLeader as exc:
                last = exc
                await asyncio.sleep(_LEADER_WAIT_S)
        raise OperationFailed(
            f"the record index could not take the entries: {last}", code="index_unavailable"
        )

    async def _forward(
        self, leader: str, proposals: Sequence[IndexProposal]
    ) -> list[dict[str, Any]]:
        assert self._session is not None, "RecordIndexClient.start() was not called"
        address = self._address_of(leader)
        if address is None:
            raise NotLeader(f"leader {leader} is not a known member")
        body = msgpack.packb(
            {"proposals": [dict(p.to_entry().body) for p in proposals]}, use_bin_type=True
        )
        try:
            async with self._session.post(
                f"http://{address}{INDEX_PATH}", data=body, headers={"Content-Type": MSGPACK}
            ) as response:
                raw = await response.read()
                if response.status == 200:
                    results: list[dict[str, Any]] = msgpack.unpackb(raw, raw=False)["results"]
                    return results
                try:
                    code = json.loads(raw).get("code")
                except ValueError:
                    code = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotLeader(f"leader {leader} unreachable: {type(exc).__name__}") from exc
        if code == "not_leader":
            raise NotLeader(f"{leader} is no longer the leader")
        raise OperationFailed(
            f"the leader refused index entries ({response.status} {code})",
            code="index_unavailable",
        )
