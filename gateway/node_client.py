"""The gateway's client of the node HTTP APIs: spreads requests over healthy nodes, fails over.

Requests go round-robin over the nodes currently marked healthy. A connection error, a timeout
or a 503 from a node marks it unhealthy and the same request goes to the next node (writes are
safe to resend: the record id makes them idempotent). A background loop probes every node's
``/internal/v1/ready`` and brings recovered nodes back. Connections are pooled and bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any

import aiohttp
import msgpack

from gateway.config import GatewayLimits, GatewayTimeouts, NodeEndpoint
from node.errors import BaasError, CallerError, NotFound, OperationFailed, RecordUnavailable

__all__ = ["NodeClient"]

log = logging.getLogger("baas.gateway.nodes")
MSGPACK = "application/msgpack"


def _error_from_problem(status: int, body: dict[str, Any]) -> BaasError:
    code = str(body.get("code", "node_error"))
    detail = str(body.get("detail", "node error"))
    if status == 404:
        return NotFound(detail, code=code)
    if status == 503 and code == RecordUnavailable.code:
        return RecordUnavailable(detail)
    if 400 <= status < 500:
        error = CallerError(detail, code=code)
        error.http_status = status  # type: ignore[misc]
        return error
    return OperationFailed(detail, code=code)


class NodeClient:
    def __init__(
        self,
        nodes: tuple[NodeEndpoint, ...],
        api_token: str,
        limits: GatewayLimits,
        timeouts: GatewayTimeouts,
    ) -> None:
        self._nodes = nodes
        self._healthy: dict[str, bool] = {n.name: True for n in nodes}
        self._cycle = itertools.cycle(nodes)
        self._token = api_token
        self._limits = limits
        self._timeouts = timeouts
        self._session: aiohttp.ClientSession | None = None
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._limits.node_connections_max),
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=aiohttp.ClientTimeout(total=self._timeouts.node_request_s),
        )
        self._health_task = asyncio.create_task(self._probe_forever())

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def healthy_nodes(self) -> list[str]:
        return [n.name for n in self._nodes if self._healthy[n.name]]

    def _order(self) -> list[NodeEndpoint]:
        start = next(self._cycle)
        index = self._nodes.index(start)
        rotated = self._nodes[index:] + self._nodes[:index]
        return sorted(rotated, key=lambda n: not self._healthy[n.name])  # healthy first, stable

    async def _probe(self, node: NodeEndpoint) -> None:
        assert self._session is not None
        try:
            async with self._session.get(
                f"http://{node.http_addr}/internal/v1/ready",
                timeout=aiohttp.ClientTimeout(total=1.0),
            ) as response:
                healthy = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            healthy = False
        if healthy != self._healthy[node.name]:
            log.info("node %s is now %s", node.name, "healthy" if healthy else "unhealthy")
        self._healthy[node.name] = healthy

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.gather(*(self._probe(n) for n in self._nodes))
            await asyncio.sleep(self._timeouts.health_interval_s)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        assert self._session is not None, "NodeClient.start() was not called"
        data = msgpack.packb(body, use_bin_type=True) if body is not None else None
        last: BaasError = OperationFailed("no node is reachable", code="no_node_available")
        for node in self._order():
            try:
                async with self._session.request(
                    method,
                    f"http://{node.http_addr}{path}",
                    data=data,
                    headers={"Content-Type": MSGPACK} if data is not None else None,
                ) as response:
                    raw = await response.read()
                    if response.status == 200:
                        decoded: dict[str, Any] = msgpack.unpackb(raw, raw=False)
                        return decoded
                    problem = await self._problem(response, raw)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._healthy[node.name] = False
                last = OperationFailed(
                    f"node {node.name} unreachable: {type(exc).__name__}", code="node_unreachable"
                )
                continue
            error = _error_from_problem(response.status, problem)
            if response.status == 503 and not isinstance(error, RecordUnavailable):
                last = error  # that node is overloaded or not ready: try the next one
                continue
            raise error
        raise last

    @staticmethod
    async def _problem(response: aiohttp.ClientResponse, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
            return body if isinstance(body, dict) else {}
        except ValueError:
            return {"detail": f"node answered {response.status}"}

    async def write_records(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        reply = await self._call("POST", "/internal/v1/records", {"records": records})
        results: list[dict[str, Any]] = reply["results"]
        return results

    async def read_record(self, record_id: bytes) -> dict[str, Any]:
        return await self._call("GET", f"/internal/v1/records/{record_id.hex()}", None)
