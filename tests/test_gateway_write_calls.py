"""The gateway's coalesced write calls: one call that is not full in flight at a time.

Every node call for records costs the cluster the same rounds whatever it carries (shard puts to
every holder, a forward to the leader, a log entry), so the gateway's write lane keeps at most
``node_write_calls_unfilled_max`` (1) calls with a partial batch in flight: records of requests
arriving meanwhile share the next call (docs/performance.md, "Records per round"). Fake nodes
(small aiohttp servers) count the calls and how many run at once; the real-process bench
(``baas-bench --phases single-write``) measures what it saves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import GatewayLimits, GatewayTimeouts, NodeEndpoint
from gateway.node_client import NodeClient, WriteItem
from node.api.wire import MSGPACK
from node.errors import ConfigError

NODE_CALL_S = 0.1  # a node's work on one call (shard puts, the index round): long beside a request


class Nodes:
    """What the fake nodes saw: calls, records per call, calls running at once."""

    def __init__(self, stall_first_s: float = 0.0) -> None:
        self.records_per_call: list[int] = []
        self.running = 0
        self.running_max = 0
        self.stall_first_s = stall_first_s

    def app(self) -> web.Application:
        async def records(request: web.Request) -> web.Response:
            body = msgpack.unpackb(await request.read(), raw=False)
            self.records_per_call.append(len(body["records"]))
            stall = self.stall_first_s if len(self.records_per_call) == 1 else 0.0
            self.running += 1
            self.running_max = max(self.running_max, self.running)
            try:
                await asyncio.sleep(NODE_CALL_S + stall)
            finally:
                self.running -= 1
            results = [{"ok": True, "index": 1} for _ in body["records"]]
            return web.Response(body=msgpack.packb({"results": results}), content_type=MSGPACK)

        app = web.Application()
        app.router.add_post("/internal/v1/records", records)
        return app


@contextlib.asynccontextmanager
async def _client(
    nodes: Nodes, limits: GatewayLimits, timeouts: GatewayTimeouts | None = None
) -> AsyncIterator[NodeClient]:
    servers = [TestServer(nodes.app()) for _ in range(3)]
    for server in servers:
        await server.start_server()
    client = NodeClient(
        tuple(NodeEndpoint(f"n{i}", f"127.0.0.1:{s.port}") for i, s in enumerate(servers)),
        "token",
        limits,
        timeouts or GatewayTimeouts(),
    )
    await client.start()
    try:
        yield client
    finally:
        await client.stop()
        for server in servers:
            await server.close()


def _item(n: int) -> WriteItem:
    deadline = asyncio.get_running_loop().time() + 10
    record: dict[str, Any] = {"rid": n.to_bytes(32, "big"), "blob": os.urandom(64)}
    return WriteItem(record=record, deadline=deadline, request_id=f"r{n}")


async def _closed_loop(client: NodeClient, clients: int, rounds: int) -> None:
    """``clients`` callers, each writing one record again a few ms after its answer."""

    async def one(c: int) -> None:
        for r in range(rounds):
            (result,) = await client.write_records([_item(c * 1000 + r)])
            assert result["ok"]
            await asyncio.sleep(0.01 * (c % 16))  # arrivals spread over one to two calls

    await asyncio.gather(*(one(c) for c in range(clients)))


async def test_single_writes_share_fewer_bigger_node_calls() -> None:
    two_unfilled = Nodes()
    async with _client(two_unfilled, GatewayLimits(node_write_calls_unfilled_max=2)) as client:
        await _closed_loop(client, 32, 6)
    default = Nodes()
    async with _client(default, GatewayLimits()) as client:
        await _closed_loop(client, 32, 6)
    assert sum(default.records_per_call) == sum(two_unfilled.records_per_call) == 192
    assert two_unfilled.running_max == 2 and default.running_max == 1
    calls, calls_before = len(default.records_per_call), len(two_unfilled.records_per_call)
    assert calls * 1.25 < calls_before, (calls, calls_before)


async def test_a_stalled_node_call_does_not_hold_every_write() -> None:
    nodes = Nodes(stall_first_s=2.0)  # the first call's node hangs for 2 s
    timeouts = GatewayTimeouts(node_write_call_stalled_s=0.2)
    async with _client(nodes, GatewayLimits(), timeouts) as client:
        loop = asyncio.get_running_loop()
        hung = asyncio.create_task(client.write_records([_item(0)]))
        await asyncio.sleep(0.05)
        started = loop.time()
        (result,) = await client.write_records([_item(1)])
        assert result["ok"] and loop.time() - started < 1.0  # not behind the 2 s call
        assert not hung.done()
        await hung
    assert nodes.running_max == 2


def test_unfilled_write_calls_must_fit_the_calls_in_flight() -> None:
    limits = dataclasses.replace(GatewayLimits(), node_write_calls_unfilled_max=3)
    with pytest.raises(ConfigError, match="node_write_calls_unfilled_max"):
        limits.validate()
