"""The gateway's reads of the replicated state (``NodeClient.ledger_read`` / ``identity_read``):
every node is asked, the answer with the highest ``applied_index`` wins, so a read right after
an acknowledged write never gets the older answer of a node that lags. Three small aiohttp
servers stand in for nodes at different applied indexes (the cluster tests prove it end to end:
test_cluster_partners.py reads the audit trail right after onboarding, with no poll)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import GatewayLimits, GatewayTimeouts, NodeEndpoint
from gateway.node_client import NodeClient
from node.api.wire import APPLIED_INDEX_HEADER
from node.errors import NotFound


def _node(answer: dict[str, Any] | None, applied: int | None = None) -> web.Application:
    async def read(request: web.Request) -> web.Response:
        if answer is None:
            headers = {} if applied is None else {APPLIED_INDEX_HEADER: str(applied)}
            return web.json_response(
                {"status": 404, "code": "link_not_found", "detail": "not here"},
                status=404,
                headers=headers,
                content_type="application/problem+json",
            )
        return web.json_response(answer)

    app = web.Application()
    app.router.add_get("/internal/v1/identity/audit", read)
    app.router.add_get("/internal/v1/ledger/accounts/{id}", read)
    return app


@contextlib.asynccontextmanager
async def _client(apps: list[web.Application]) -> AsyncIterator[NodeClient]:
    """A gateway's node client in front of ``apps``, one fake node each."""
    servers = [TestServer(app) for app in apps]
    for server in servers:
        await server.start_server()
    client = NodeClient(
        tuple(NodeEndpoint(f"n{i}", f"127.0.0.1:{s.port}") for i, s in enumerate(servers)),
        "token",
        GatewayLimits(),
        GatewayTimeouts(),
    )
    await client.start()
    try:
        yield client
    finally:
        await client.stop()
        for server in servers:
            await server.close()


@pytest.fixture
async def nodes() -> AsyncIterator[NodeClient]:
    # The freshest node is the middle one: neither the first nor the last asked wins by order.
    answers = [
        {"data": [], "has_more": False, "applied_index": 5},
        {"data": [{"seq": 0}], "has_more": False, "applied_index": 9},
        None,  # has not applied anything of it: 404
    ]
    async with _client([_node(a) for a in answers]) as client:
        yield client


async def test_the_freshest_answer_wins(nodes: NodeClient) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    page = await nodes.identity_read(
        "/internal/v1/identity/audit?scope=00&mode=test", deadline=deadline, request_id="r"
    )
    assert page["applied_index"] == 9 and page["data"] == [{"seq": 0}]
    doc = await nodes.ledger_read(
        "/internal/v1/ledger/accounts/1", deadline=deadline, request_id="r"
    )
    assert doc is not None and doc["applied_index"] == 9


async def test_not_found_only_when_no_node_has_it() -> None:
    async with _client([_node(None)]) as client:
        deadline = asyncio.get_running_loop().time() + 5
        with pytest.raises(NotFound) as raised:
            await client.identity_read(
                "/internal/v1/identity/audit", deadline=deadline, request_id="r"
            )
        assert raised.value.code == "link_not_found"  # the node's own code, kept
        missing = await client.ledger_read(
            "/internal/v1/ledger/accounts/1", deadline=deadline, request_id="r"
        )
        assert missing is None


async def test_a_fresher_not_found_beats_a_stale_answer() -> None:
    """An unlink: the node that applied it answers 404 at index 12, a lagging one still has
    the link at index 11. The 404 is the newer state: the read is not found."""
    stale = _node({"wallet": "0x" + "ab" * 20, "applied_index": 11})
    async with _client([stale, _node(None, applied=12)]) as client:
        deadline = asyncio.get_running_loop().time() + 5
        with pytest.raises(NotFound):
            await client.identity_read(
                "/internal/v1/identity/audit", deadline=deadline, request_id="r"
            )
