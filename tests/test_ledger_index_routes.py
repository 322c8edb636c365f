"""The list routes over feature 13's index: the node's ``/internal/v1/ledger/accounts|transfers``
(node/api/ledger_routes.py) from the Raft storage's real LevelDB, paged by the gateway's own
walker (gateway/ledger_routes.py ``walk_pages``, with its ``ledger_list_node_calls_max``).

A sparse partner among a dense one -- demo-shop's 3 accounts and 3 transfers between
other-shop's 150 accounts -- with a node scan bound of 20 keys and 2 node calls a page: with
the complete index every page is full and one node call; the same ledger built at feature 11
and upgraded (index incomplete: the walk) is 503 ``ledger_list_too_sparse`` under those
bounds, and with generous ones lists every object, old and new, exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from bridgeopskit import Node, rid, world
from identitykit import OTHER_SHOP
from ledgerindexkit import (
    OTHER_RESERVE,
    RESERVE,
    TAG,
    fund,
    open_accounts,
    pay,
    results,
    upgrade_to_13,
)
from test_raft_durable import entries, make_ready

from business.identity.ids import account_id, transfer_id
from business.ledger.index import index_complete
from gateway.ledger_routes import walk_pages
from node.api.ledger_routes import LedgerReads, add_ledger_routes
from node.api.problem import problem_middleware
from node.consensus.types import HardState
from node.errors import OperationFailed
from node.membership import StoreView
from node.replication.durable import DurableRaftStorage

OTHERS_PER_OP = 50


def sparse_ledger(path: Path, feature: int) -> tuple[Node, list[int], list[int]]:
    """demo-shop's 3 accounts (one before, two after other-shop's 150) and 3 transfers among
    other-shop's 150 transfers; at ``feature`` 11 the first half is made before the upgrade."""
    node = world(path, feature=feature)
    fund(node)
    mine = open_accounts(node, 10, 1)
    theirs = [a for n in range(3) for a in open_accounts(node, 11 + n, OTHERS_PER_OP, OTHER_SHOP)]
    assert results(node, pay(20, RESERVE, mine[0], 1000)) == [["ok"]]
    for i in range(OTHERS_PER_OP):
        move = pay(100 + i, OTHER_RESERVE, theirs[i], 1, partner=OTHER_SHOP)
        assert results(node, move) == [["ok"]]
    if feature < 13:
        upgrade_to_13(node)
    mine += open_accounts(node, 30, 2)
    for i in range(OTHERS_PER_OP, 2 * OTHERS_PER_OP):
        move = pay(100 + i, OTHER_RESERVE, theirs[i], 1, partner=OTHER_SHOP)
        assert results(node, move) == [["ok"]]
    assert results(node, pay(21, mine[0], mine[1], 10), pay(22, mine[0], mine[2], 20)) == [
        ["ok"],
        ["ok"],
    ]
    transfers = sorted(transfer_id(rid(n), 0) for n in (20, 21, 22))
    return node, sorted(mine), transfers


@dataclass
class Served:
    client: TestClient
    calls: int = 0

    async def page(self, kind: str, limit: int, cursor: str | None, calls_max: int) -> Any:
        """One gateway page (``walk_pages``) of demo-shop's ``kind``, counting node calls."""

        async def fetch(after: str | None, remaining: int) -> dict[str, Any] | None:
            self.calls += 1
            query = f"scope={TAG}&limit={remaining}"
            if after is not None:
                query += f"&starting_after={after}"
            reply = await self.client.get(f"/internal/v1/ledger/{kind}?{query}")
            assert reply.status == 200, await reply.text()
            body: dict[str, Any] = await reply.json()
            return body

        state = SimpleNamespace(
            config=SimpleNamespace(limits=SimpleNamespace(ledger_list_node_calls_max=calls_max))
        )
        return await walk_pages(state, limit, cursor, fetch)

    async def everything(self, kind: str, limit: int, calls_max: int) -> list[list[int]]:
        """Every page from the start, as the gateway's clients page (``starting_after``)."""
        pages: list[list[int]] = []
        cursor = None
        while True:
            data, has_more = await self.page(kind, limit, cursor, calls_max)
            pages.append([int(d["id"]) for d in data])
            if not has_more:
                return pages
            cursor = data[-1]["id"]


@asynccontextmanager
async def served(node: Node, path: Path, scan_keys_max: int) -> AsyncIterator[Served]:
    """The node's ledger routes over a Raft storage holding ``node``'s log, applied."""
    storage = DurableRaftStorage(path)
    try:
        log = list(zip(node.positions, node.payloads, strict=True))
        _, writes = node.dispatcher.apply_batch(log, StoreView(storage))
        last = len(log)
        storage.persist(make_ready(entries(1, last, 2), HardState(2, None, last)))
        storage.commit_applied(writes, last)
        reads = LedgerReads(
            lambda: StoreView(storage),
            storage.read_state_at,
            100_000,
            read_range_at=storage.read_state_range_at,
            list_scan_keys_max=scan_keys_max,
        )
        app = web.Application(middlewares=[problem_middleware])
        add_ledger_routes(app, reads)
        async with TestClient(TestServer(app)) as client:
            yield Served(client)
    finally:
        storage.close()


async def test_with_the_index_every_page_is_full_and_one_node_call(tmp_path: Path) -> None:
    node, accounts, transfers = sparse_ledger(tmp_path / "db", 13)
    assert index_complete(node.view)
    async with served(node, tmp_path / "raft", scan_keys_max=20) as nodes:
        assert await nodes.everything("accounts", 2, calls_max=2) == [accounts[:2], accounts[2:]]
        assert nodes.calls == 2  # one node call per page
        nodes.calls = 0
        pages = await nodes.everything("transfers", 1, calls_max=2)
        assert pages == [[t] for t in transfers] and nodes.calls == 3
        # by account: that account's transfers, newest first (the ledger's own index)
        funded = account_id(rid(10), 0)  # demo-shop's first account: 20 in, 21 and 22 out
        reply = await nodes.client.get(
            f"/internal/v1/ledger/transfers?scope={TAG}&account={funded}&limit=10"
        )
        newest_first = [int(t["id"]) for t in (await reply.json())["data"]]
        assert newest_first == [transfer_id(rid(n), 0) for n in (22, 21, 20)]
        # a node page answers no scanned_to: the caller never walks on
        raw = await (await nodes.client.get(f"/internal/v1/ledger/accounts?scope={TAG}")).json()
        assert raw["scanned_to"] is None and len(raw["data"]) == 3 and not raw["has_more"]
    node.close()


async def test_an_upgraded_ledger_lists_by_the_walk_everything_once(tmp_path: Path) -> None:
    node, accounts, transfers = sparse_ledger(tmp_path / "db", 11)
    assert not index_complete(node.view)
    async with served(node, tmp_path / "raft", scan_keys_max=20) as nodes:
        with pytest.raises(OperationFailed) as refused:  # the sparse case: 503 before
            await nodes.page("accounts", 2, None, calls_max=2)
        assert refused.value.code == "ledger_list_too_sparse"
    async with served(node, tmp_path / "raft2", scan_keys_max=1000) as nodes:
        pages = await nodes.everything("accounts", 2, calls_max=2)
        assert [a for p in pages for a in p] == accounts  # old and new, each once, id order
        pages = await nodes.everything("transfers", 2, calls_max=2)
        assert [t for p in pages for t in p] == transfers
    node.close()
