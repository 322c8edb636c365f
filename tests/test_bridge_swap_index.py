"""Log feature 11 on a real LevelDB through the node's dispatcher: every swap (succeeded or
refused) gets one entry in its partner's index, from feature 11 only; the node's list read
filters it (user, wallet, asset, status, log time) and pages it newest first with a cursor
that stays stable while swaps are added; a reserve crossing below its threshold keeps one
``reserve.low`` event per reserve (its count in the reserve read and the metric)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from bridgeopskit import (
    ALICE,
    ALICE_REF,
    BAAS,
    BAAS_UNIT,
    CAROL,
    CAROL_REF,
    POINTS,
    Node,
    market,
    rid,
    wallet_of,
    world,
)
from identitykit import OTHER_SHOP, SHOP
from test_bridge_node import read_at

from business.bridge import Direction, SetReserveThreshold, Swap, TopUpReserve
from business.bridge.model import (
    EVENT_RESERVE_LOW,
    RESERVE_LOW_PREFIX,
    SWAP_INDEX_PREFIX,
    event_id,
)
from business.bridge.views import reserve_low
from business.identity.ids import Mode
from node.api.bridge_routes import add_bridge_routes
from node.api.ledger_routes import LedgerReads, add_ledger_routes
from node.api.problem import problem_middleware
from node.ledger_metrics import reserve_low_counts

SIGNED_ALICE: dict[str, Any] = {"refs": (ALICE_REF,), "signers": (ALICE,)}
SIGNED_CAROL: dict[str, Any] = {"refs": (CAROL_REF,), "signers": (CAROL,)}


def swap(node: Node, n: int, who: Any, amount: int, direction: Direction = Direction.IN) -> str:
    q = node.ops_machine.bridge.quote(
        node.view, SHOP, POINTS, wallet_of(who), direction, amount, node.now_ms
    )
    assert not isinstance(q, str), q
    signed = SIGNED_ALICE if who is ALICE else SIGNED_CAROL
    return node.code(Swap(rid(n), SHOP, POINTS, q.wallet, q, q.digest()), **signed)


def keys(node: Node, prefix: bytes) -> list[bytes]:
    return [k for k, _ in node.items() if k.startswith(prefix)]


def read_range_at(node: Node) -> Callable[..., Any]:
    def read(start: bytes, stop: bytes, fn: Any, *, reverse: bool = False) -> Any:
        with node.db.iterator(start=start, stop=stop, reverse=reverse) as it:
            return node.index, fn(it)

    return read


def test_swaps_and_reserve_low_events_are_kept_from_feature_11_only(tmp_path: Path) -> None:
    for feature, indexed in ((8, False), (11, True)):
        node = world(tmp_path / f"db{feature}", feature=feature)
        try:
            market(node)
            assert node.code(SetReserveThreshold(rid(10), SHOP, BAAS, 9 * BAAS_UNIT // 2)) == "ok"
            assert swap(node, 11, ALICE, 100) == "ok"  # 5 BAAS - 1 < 4.5: low
            assert swap(node, 12, ALICE, 600) == "reserve_exhausted"
            assert len(keys(node, SWAP_INDEX_PREFIX)) == (2 if indexed else 0)
            assert len(keys(node, RESERVE_LOW_PREFIX)) == (1 if indexed else 0)
        finally:
            node.close()


def test_reserve_low_events_count_each_crossing_once(tmp_path: Path) -> None:
    node = world(tmp_path / "db", feature=11)
    try:
        market(node)
        assert node.code(SetReserveThreshold(rid(10), SHOP, BAAS, 9 * BAAS_UNIT // 2)) == "ok"
        assert reserve_low(node.view, SHOP, BAAS) is None  # 5 BAAS: not low
        assert swap(node, 11, ALICE, 100) == "ok"  # 4 BAAS: crosses
        first = reserve_low(node.view, SHOP, BAAS)
        assert first is not None and first.count == 1 and first.op == rid(11)
        assert first.event == event_id(EVENT_RESERVE_LOW, rid(11))
        assert (first.level, first.threshold) == (4 * BAAS_UNIT, 9 * BAAS_UNIT // 2)
        assert swap(node, 12, ALICE, 10) == "ok"  # still low: no new event
        assert reserve_low(node.view, SHOP, BAAS) == first
        assert node.code(TopUpReserve(rid(13), SHOP, BAAS, 2 * BAAS_UNIT)) == "ok"  # back up
        assert reserve_low(node.view, SHOP, BAAS) == first
        assert swap(node, 14, ALICE, 300) == "ok"  # crosses again
        second = reserve_low(node.view, SHOP, BAAS)
        assert second is not None and second.count == 2 and second.op == rid(14)

        def state_items(prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
            with node.db.iterator(prefix=prefix) as it:
                yield from it

        assert reserve_low_counts(state_items) == {"test": 2.0, "live": 0.0}
    finally:
        node.close()


async def test_the_swaps_list_filters_and_pages_newest_first(tmp_path: Path) -> None:
    node = world(tmp_path / "db", feature=11)
    try:
        market(node)
        made: list[tuple[int, str]] = []  # (op n, result), oldest first
        for n, who, amount, direction in (
            (11, ALICE, 100, Direction.IN),
            (12, CAROL, 100, Direction.IN),  # carol holds no points
            (13, ALICE, BAAS_UNIT // 2, Direction.OUT),
            (14, ALICE, 600, Direction.IN),  # 6 BAAS > the reserve
            (15, ALICE, 50, Direction.IN),
        ):
            made.append((n, swap(node, n, who, amount, direction)))
        assert [r for _, r in made] == ["ok", "insufficient_funds", "ok", "reserve_exhausted", "ok"]
        before = len(keys(node, SWAP_INDEX_PREFIX))
        assert swap(node, 11, ALICE, 100) == "ok"  # a retry of op 11: its first outcome
        assert len(keys(node, SWAP_INDEX_PREFIX)) == before == 5

        reads = LedgerReads(lambda: node.view, read_at(node), 10_000, read_range_at(node))
        app = web.Application(middlewares=[problem_middleware])
        add_ledger_routes(app, reads)
        add_bridge_routes(app)
        base = f"/internal/v1/bridge/swaps?partner={SHOP.hex()}&mode={int(Mode.TEST)}"
        async with TestClient(TestServer(app)) as client:

            async def ids(query: str = "", status: int = 200) -> Any:
                response = await client.get(base + query)
                assert response.status == status, await response.text()
                body = await response.json()
                if status != 200:
                    return body
                return [d["operation"] for d in body["data"]], body

            newest_first = [rid(n).hex() for n, _ in reversed(made)]
            got, body = await ids()
            assert got == newest_first and body["has_more"] is False
            entry = body["data"][-1]
            assert (entry["wallet"], entry["user_ref"]) == (wallet_of(ALICE).hex(), ALICE_REF.hex())
            assert (entry["direction"], entry["amount_in"], entry["result"]) == ("in", "100", "ok")
            failed, _ = await ids("&status=failed")
            assert failed == [rid(14).hex(), rid(12).hex()]
            ok, _ = await ids("&status=succeeded")
            assert ok == [rid(15).hex(), rid(13).hex(), rid(11).hex()]
            carol, _ = await ids(f"&user_ref={CAROL_REF.hex()}")
            assert carol == [rid(12).hex()]
            alice, _ = await ids(f"&wallet={wallet_of(ALICE).hex()}&ledger={POINTS}")
            assert alice == [rid(n).hex() for n in (15, 14, 13, 11)]
            assert (await ids(f"&ledger={POINTS + 2}"))[0] == []
            times = [d["log_time_ms"] for d in body["data"]]  # newest first
            window, _ = await ids(f"&created_gte={times[3]}&created_lt={times[1]}")
            assert window == newest_first[2:4]

            # Paging one by one walks the same list, and a swap made meanwhile (newer than
            # every page) neither repeats nor hides one.
            walked: list[str] = []
            cursor = ""
            while True:
                page, body = await ids(f"&limit=2{cursor}")
                walked += page
                if len(walked) == 2:
                    assert swap(node, 16, ALICE, 20) == "ok"
                if not body["has_more"]:
                    break
                cursor = f"&starting_after={page[-1]}"
            assert walked == newest_first
            assert (await ids())[0][0] == rid(16).hex()

            # A bounded walk: past list_scan_keys_max keys the page says where it got.
            small = LedgerReads(lambda: node.view, read_at(node), 10_000, read_range_at(node), 2)
            app2 = web.Application(middlewares=[problem_middleware])
            add_ledger_routes(app2, small)
            add_bridge_routes(app2)
            async with TestClient(TestServer(app2)) as bounded:
                response = await bounded.get(base + "&status=failed")
                page2 = await response.json()
                assert page2["data"] == [] and page2["has_more"] is True
                assert page2["scanned_to"] == rid(15).hex()

            # Another partner's list is its own; a cursor of another partner is refused.
            theirs = base.replace(SHOP.hex(), OTHER_SHOP.hex())
            other = await client.get(theirs)
            assert (await other.json())["data"] == []
            refused = await client.get(theirs + f"&starting_after={rid(11).hex()}")
            assert refused.status == 400 and (await refused.json())["param"] == "starting_after"
            bad = await ids("&status=pending", status=400)
            assert bad["param"] == "status"
    finally:
        node.close()
