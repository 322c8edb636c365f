"""The node's Bridge reads (node/api/bridge_routes.py) answer from a real LevelDB state built by
the node's dispatcher at feature 8: assets, policies and their audited versions, a user's lots,
supply, the reserve with its history, a quote, and the Bridge state digest."""

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
    POINTS,
    Node,
    market,
    policy,
    rid,
    wallet_account,
    wallet_of,
    world,
)
from identitykit import SHOP

from business.bridge import (
    Direction,
    Quote,
    SetReserveThreshold,
    Swap,
    TopUpReserve,
    bridge_state_digest,
)
from node.api.bridge_routes import add_bridge_routes
from node.api.ledger_routes import LedgerReads, add_ledger_routes
from node.api.problem import problem_middleware
from node.ledger_metrics import ledger_stat_families
from node.metrics import Metrics


def more(node: Node) -> None:
    """bridgeopskit's market, then one more top-up and a second policy version."""
    market(node)
    assert node.code(TopUpReserve(rid(8), SHOP, BAAS, BAAS_UNIT)) == "ok"
    assert node.code(policy(9, fee_bps=50)) == "ok"


def read_at(node: Node) -> Callable[[bytes, Callable[[Iterator[tuple[bytes, bytes]]], Any]], Any]:
    def read(prefix: bytes, fn: Callable[[Iterator[tuple[bytes, bytes]]], Any]) -> Any:
        with node.db.iterator(prefix=prefix) as it:
            return node.index, fn(it)

    return read


async def test_the_bridge_reads_answer_from_leveldb(tmp_path: Path) -> None:
    node = world(tmp_path / "db")
    try:
        more(node)
        app = web.Application(middlewares=[problem_middleware])
        add_ledger_routes(app, LedgerReads(lambda: node.view, read_at(node), 10_000))
        add_bridge_routes(app)
        base = "/internal/v1/bridge"
        async with TestClient(TestServer(app)) as client:

            async def get(path: str, status: int = 200) -> Any:
                response = await client.get(base + path)
                assert response.status == status, (path, await response.text())
                return await response.json()

            asset = await get(f"/assets/{POINTS}")
            assert (asset["partner"], asset["kind"], asset["validity_days"]) == (
                SHOP.hex(),
                "points",
                30,
            )
            current = await get(f"/policies/{POINTS}")
            assert current["version"] == 2 and current["fee_bps"] == 50
            first = await get(f"/policies/{POINTS}?version=1")
            assert first["policy"]["fee_bps"] == 100 and first["actor"] == "0a" * 16
            lots = await get(f"/lots/{POINTS}/{wallet_account(ALICE, POINTS)}?at_ms={node.now_ms}")
            assert lots["total"] == lots["spendable"] == "1000" and len(lots["lots"]) == 1
            assert (await get(f"/supply/{POINTS}"))["supply"] == "1000"
            reserve = await get(f"/reserves/{SHOP.hex()}/{BAAS}")
            assert reserve["level"] == str(6 * BAAS_UNIT)
            assert [h["level"] for h in reserve["history"]] == [
                str(5 * BAAS_UNIT),
                str(6 * BAAS_UNIT),
            ]
            after = reserve["history"][0]["timestamp"]
            paged = await get(f"/reserves/{SHOP.hex()}/{BAAS}?after_ts={after}&limit=1")
            assert [h["level"] for h in paged["history"]] == [str(6 * BAAS_UNIT)]
            wallet = wallet_of(ALICE).hex()
            query = (
                f"ledger={POINTS}&wallet={wallet}&direction=in&amount_in=100&now_ms={node.now_ms}"
            )
            quote = await get(f"/quotes?{query}")
            assert (
                quote["amount_out"] == str(BAAS_UNIT - BAAS_UNIT // 200)
                and quote["policy_version"] == 2
            )
            too_big = query.replace("amount_in=100", f"amount_in={10**10}")
            assert (await get(f"/quotes?{too_big}", 400))["code"] == "above_max"
            digest = await get("/digest")
            assert digest["digest"] == bridge_state_digest(node.items()).hex()
            assert (await get("/assets/99", 404))["code"] == "asset_not_found"
            assert (await get("/assets/x", 400))["code"] == "field_invalid"
            assert (await get(f"/reserves/zz/{BAAS}", 400))["param"] == "partner"
    finally:
        node.close()


def test_bridge_metrics_count_swaps_by_result_limits_and_reserve_levels(tmp_path: Path) -> None:
    metrics = Metrics("t")
    node = world(tmp_path / "db", metrics=metrics)
    try:
        market(node)
        assert node.measured is not None
        threshold = SetReserveThreshold(rid(10), SHOP, BAAS, 4 * BAAS_UNIT)
        assert node.code(threshold) == "ok"
        signed: dict[str, Any] = {"refs": (ALICE_REF,), "signers": (ALICE,)}
        q = node.quote(ALICE, 100)
        assert node.code(Swap(rid(11), SHOP, POINTS, q.wallet, q, q.digest()), **signed) == "ok"
        big = node.quote(ALICE, 600)
        swap = Swap(rid(12), SHOP, POINTS, big.wallet, big, big.digest())
        assert node.code(swap, **signed) == "reserve_exhausted"
        assert node.measured.bridge["Swap:ok"] == 1
        assert node.measured.bridge["Swap:reserve_exhausted"] == 1
        assert node.measured.bridge["IssuePoints:ok"] == 1
        assert dict(node.measured.bridge_limits) == {"reserve_exhausted": 1}

        def state_items(prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
            with node.db.iterator(prefix=prefix) as it:
                yield from it

        metrics.add_stats(ledger_stat_families(node.measured, state_items))
        text = metrics.exposition().decode()
        level = float(4 * BAAS_UNIT)  # 5 BAAS less the swap's gross 1 BAAS
        assert f'bridge_reserve_level{{reserve="{SHOP.hex()}/{BAAS}"}} {level}' in text
        assert 't_bridge_operations_total{result="Swap:ok"} 1.0' in text
        assert 't_bridge_limit_refusals_total{code="reserve_exhausted"} 1.0' in text
    finally:
        node.close()


async def test_a_quote_is_issued_at_the_last_applied_log_time(tmp_path: Path) -> None:
    """Without ``now_ms`` a quote is issued at the log time this node applied last, not at its
    clock: a swap is stamped at or after it (stamps never run backwards), so log time lagging
    the wall clock (a new leader's first stamps) never makes a quote "issued after the log
    time" (quote_altered, for good). The kit's log time is years off the wall clock."""
    node = world(tmp_path / "db")
    try:
        market(node)
        app = web.Application(middlewares=[problem_middleware])
        add_ledger_routes(app, LedgerReads(lambda: node.view, read_at(node), 10_000))
        add_bridge_routes(app)
        wallet = wallet_of(ALICE).hex()
        async with TestClient(TestServer(app)) as client:
            got = await client.get(
                f"/internal/v1/bridge/quotes?ledger={POINTS}&wallet={wallet}"
                "&direction=in&amount_in=100"
            )
            doc = await got.json()
        # The last ledger apply: a Bridge entry that moved nothing (the policy) may come after.
        assert got.status == 200, doc
        assert node.now_ms - 5 <= doc["issued_ms"] <= node.now_ms, (doc, node.now_ms)
        q = Quote(
            SHOP, POINTS, BAAS, wallet_of(ALICE), Direction.IN, 100, int(doc["amount_out"]),
            int(doc["fee"]), int(doc["rate_num"]), int(doc["rate_den"]), doc["policy_version"],
            doc["issued_ms"], doc["expires_ms"],
        )  # fmt: skip
        swap = Swap(rid(11), SHOP, POINTS, q.wallet, q, q.digest())
        assert node.code(swap, refs=(ALICE_REF,), signers=(ALICE,)) == "ok"
    finally:
        node.close()
