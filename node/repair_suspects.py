"""How a node's scrubber tells the leader's repairer which records lost a shard.

A scrubber that quarantined shards reports their record ids to the Raft leader on the one
shared leader path (:class:`~node.replication.leader_route.LeaderRoute`): locally when this
node leads, else ``POST /internal/v1/repair/suspects`` (msgpack ``{"rids": [<32 bytes>...]}``,
at most ``records_per_request_max`` ids) to the leader's node API, which hands them to
:meth:`node.repair.ShardRepairer.report_suspects` and answers ``{"taken": n}``. A report only
makes repair sooner: one that fails (no leader for a while, a full list) is logged and
dropped, and the repairer's walk over the index finds the record in its time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from node.api.app import _msgpack_response, _read_msgpack
from node.errors import BaasError, InvalidRequest, NotLeader
from node.records import HASH_BYTES
from node.replication.leader_route import LeaderRoute

__all__ = ["SUSPECTS_PATH", "SuspectReporter", "SuspectRoute", "add_suspect_route"]

log = logging.getLogger("baas.node.repair")

SUSPECTS_PATH = "/internal/v1/repair/suspects"


@dataclass(frozen=True, slots=True)
class SuspectRoute:
    take: Callable[[Sequence[bytes]], int]  # the local repairer's report_suspects
    is_leader: Callable[[], bool]
    records_max: int  # ids in one report


ROUTE = web.AppKey("repair_suspect_route", SuspectRoute)


def decode_suspects(body: object, records_max: int) -> list[bytes]:
    rids = body.get("rids") if isinstance(body, dict) else None
    if not isinstance(rids, list) or not 0 < len(rids) <= records_max:
        raise InvalidRequest(f"body must be {{rids: [...]}} with 1..{records_max} record ids")
    if not all(isinstance(r, bytes) and len(r) == HASH_BYTES for r in rids):
        raise InvalidRequest(f"every record id is {HASH_BYTES} bytes (msgpack bin)")
    return list(rids)


async def post_suspects(request: web.Request) -> web.Response:
    """Leader only: records whose shard a scrubber quarantined (others: 503 not_leader)."""
    route = request.app[ROUTE]
    rids = decode_suspects(await _read_msgpack(request), route.records_max)
    if not route.is_leader():
        raise NotLeader("this node is not the leader")
    return _msgpack_response({"taken": route.take(rids)})


def add_suspect_route(app: web.Application, route: SuspectRoute) -> None:
    app[ROUTE] = route
    app.router.add_post(SUSPECTS_PATH, post_suspects)


class SuspectReporter:
    """The scrubber's side: report record ids to the leader, wherever it is."""

    def __init__(
        self,
        route: LeaderRoute,
        take_local: Callable[[Sequence[bytes]], int],
        *,
        records_max: int,
        timeout_s: float,
    ) -> None:
        self._route = route
        self._take_local = take_local
        self._records_max = records_max
        self._timeout_s = timeout_s
        self.reported = 0
        self.failed = 0

    async def start(self) -> None:
        await self._route.start()

    async def stop(self) -> None:
        await self._route.stop()

    async def report(self, record_ids: Sequence[bytes]) -> None:
        for first in range(0, len(record_ids), self._records_max):
            chunk = list(record_ids[first : first + self._records_max])

            async def local(ids: list[bytes] = chunk) -> int:
                return self._take_local(ids)

            async def remote(leader: str, left_s: float, ids: list[bytes] = chunk) -> int:
                answer = await self._route.post(leader, SUSPECTS_PATH, {"rids": ids}, left_s)
                return int(answer.get("taken", 0)) if isinstance(answer, dict) else 0

            try:
                await self._route.run(local, remote, timeout_s=self._timeout_s)
                self.reported += len(chunk)
            except BaasError as exc:  # the repairer's walk finds these records in its time
                self.failed += len(chunk)
                log.info("%d suspect records not reported to the leader: %s", len(chunk), exc)
