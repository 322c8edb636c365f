"""The node's payments reads (node/api/payments_routes.py) answer from a real LevelDB state
built by the node's dispatcher at feature 9: a payment and a merchant's payments newest first,
an order, the listing search, the outbox from a cursor and the payments state digest; and the
metrics count payments requests by kind and result."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from bridgeopskit import ALICE, POINTS, Node, rid
from identitykit import OTHER_SHOP, SHOP
from paymentsopskit import ALICE_PTS, ISSUED, run, shop_world

from business.payments import Authorise, Capture, PlaceOrder, PutListing, Void
from business.payments.outbox import PAYMENTS_ACK
from business.payments.views import payments_state_digest
from node.api.ledger_routes import LedgerReads, add_ledger_routes
from node.api.payments_routes import AckRoutes, add_ack_routes, add_payments_routes
from node.api.problem import problem_middleware
from node.consensus.state_machine import AppEntry, encode_app_entry
from node.ledger_metrics import ledger_stat_families
from node.metrics import Metrics

Items = Iterator[tuple[bytes, bytes]]


def reads(node: Node) -> LedgerReads:
    def read_at(prefix: bytes, fn: Callable[[Items], Any]) -> Any:
        with node.db.iterator(prefix=prefix) as it:
            return node.index, fn(it)

    def read_range_at(
        start: bytes, stop: bytes, fn: Callable[[Items], Any], *, reverse: bool = False
    ) -> Any:
        with node.db.iterator(start=start, stop=stop, reverse=reverse) as it:
            return node.index, fn(it)

    return LedgerReads(lambda: node.view, read_at, 10_000, read_range_at=read_range_at)


def pay(node: Node) -> None:
    for n in (100, 101, 102):
        request = Authorise(rid(n), SHOP, POINTS, ALICE_PTS, 10 * (n - 99), 600)
        assert run(node, n, request, signers=(ALICE,)) == "ok"
    assert run(node, 103, Capture(rid(103), SHOP, rid(100), 5)) == "ok"
    assert run(node, 104, Void(rid(104), SHOP, rid(101))) == "ok"
    for n, title, stock in ((105, "Blue mug", 3), (106, "Red mug", 0), (107, "Tea", 9)):
        listing = PutListing(rid(n), SHOP, bytes([n]) * 16, POINTS, 10, stock, True, title, "")
        assert run(node, n, listing) == "ok"
    order = PlaceOrder(rid(108), SHOP, bytes([105]) * 16, ALICE_PTS, 1, 600)
    assert run(node, 108, order, signers=(ALICE,)) == "ok"


async def test_the_payments_reads_answer_from_leveldb(tmp_path: Path) -> None:
    node = shop_world(tmp_path / "db")
    try:
        pay(node)
        app = web.Application(middlewares=[problem_middleware])
        add_ledger_routes(app, reads(node))
        add_payments_routes(app)
        now = f"now_ms={node.now_ms}"
        async with TestClient(TestServer(app)) as client:

            async def get(path: str, status: int = 200) -> Any:
                response = await client.get("/internal/v1/payments" + path)
                assert response.status == status, (path, await response.text())
                return await response.json()

            p = await get(f"/payments/{rid(100).hex()}?partner={SHOP.hex()}&{now}")
            assert (p["state"], p["amount"], p["captured"]) == ("captured", "10", "5")
            assert (await get(f"/payments/{rid(101).hex()}?partner={SHOP.hex()}"))["state"] == (
                "voided"
            )
            other = f"/payments/{rid(100).hex()}?partner={OTHER_SHOP.hex()}"
            assert (await get(other, 404))["code"] == "payment_not_found"
            listed = await get(f"/partners/{SHOP.hex()}/payments?mode=0&limit=2&{now}")
            ids = [d["id"] for d in listed["data"]]
            assert ids == [rid(108).hex(), rid(102).hex()] and listed["has_more"]
            after = f"starting_after={ids[-1]}"
            rest = await get(f"/partners/{SHOP.hex()}/payments?mode=0&{after}&{now}")
            assert [d["id"] for d in rest["data"]] == [rid(101).hex(), rid(100).hex()]
            assert not rest["has_more"]
            assert (await get(f"/partners/{SHOP.hex()}/payments?mode=1"))["data"] == []
            order = await get(f"/orders/{rid(108).hex()}?partner={SHOP.hex()}&{now}")
            assert (order["state"], order["quantity"]) == ("authorised", 1)
            found = await get("/listings?text=MUG&in_stock=true")
            assert [x["title"] for x in found["data"]] == ["Blue mug"]
            assert found["data"][0]["stock"] == 2
            page = await get("/listings?limit=1")
            assert page["has_more"] and len(page["data"]) == 1
            nxt = await get(f"/listings?limit=5&after={page['resume_after']}")
            assert len(nxt["data"]) == 2 and not nxt["has_more"]
            one = await get(f"/listings/{(bytes([107]) * 16).hex()}")
            assert one["title"] == "Tea"
            events = await get("/events?limit=3")
            assert [e["type"] for e in events["data"]] == ["payment.authorised"] * 3
            assert events["has_more"] and events["acked"] == 0 and events["next"] == 8
            # whose each event is: the deliverer routes on it (the order's: its payment's)
            assert {(e["partner"], e["ledger"]) for e in events["data"]} == {(SHOP.hex(), POINTS)}
            more = await get(f"/events?after={events['data'][-1]['seq']}")
            assert [e["type"] for e in more["data"]] == [
                "payment.captured",
                "payment.voided",
                "order.placed",
                "payment.authorised",
            ]
            assert {(e["partner"], e["ledger"]) for e in more["data"]} == {(SHOP.hex(), POINTS)}
            node.apply(AppEntry(PAYMENTS_ACK, {"upto": 3}))
            acked = await get("/events")
            assert acked["acked"] == 3 and acked["data"][0]["seq"] == 4
            digest = await get("/digest")
            assert digest["digest"] == payments_state_digest(node.items()).hex()
            assert (await get("/payments/zz?partner=00", 400))["code"] == "field_invalid"
            assert (await get("/listings?in_stock=maybe", 400))["param"] == "in_stock"
    finally:
        node.close()


def test_payments_metrics_count_requests_by_kind_and_result(tmp_path: Path) -> None:
    metrics = Metrics("t")
    node = shop_world(tmp_path / "db", metrics)
    try:
        assert node.measured is not None
        ok = Authorise(rid(100), SHOP, POINTS, ALICE_PTS, 10, 600)
        assert run(node, 100, ok, signers=(ALICE,)) == "ok"
        too_much = Authorise(rid(101), SHOP, POINTS, ALICE_PTS, ISSUED, 600)
        assert run(node, 101, too_much, signers=(ALICE,)) == "insufficient_funds"
        assert node.measured.payments == {"Authorise:ok": 1, "Authorise:insufficient_funds": 1}

        def state_items(prefix: bytes) -> Items:
            with node.db.iterator(prefix=prefix) as it:
                yield from it

        metrics.add_stats(ledger_stat_families(node.measured, state_items))
        text = metrics.exposition().decode()
        assert 'payments_operations_total{result="Authorise:ok"} 1.0' in text
    finally:
        node.close()


class LocalProposer:
    """The node's ForwardingProposer on a leader: propose on its own log (here: apply)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def propose(self, entry: AppEntry, *, timeout_s: float) -> Any:
        return self.node.apply(entry).outcome


async def test_the_deliverer_acknowledges_through_the_ack_route(tmp_path: Path) -> None:
    node = shop_world(tmp_path / "db")
    try:
        pay(node)
        leader = {"now": False}

        async def propose_local(entry: AppEntry) -> Any:
            return node.apply(entry)

        app = web.Application(middlewares=[problem_middleware])
        add_ack_routes(
            app,
            AckRoutes(
                LocalProposer(node),  # type: ignore[arg-type]
                propose_local,
                lambda: leader["now"],
                1.0,
            ),
        )
        async with TestClient(TestServer(app)) as client:
            reply = await client.post("/internal/v1/payments/ack", json={"upto": 2})
            assert reply.status == 200 and (await reply.json())["detail"] == {
                "acked": 2,
                "first": 3,
            }
            assert (await client.post("/internal/v1/payments/ack", json={"upto": -1})).status == 400
            forwarded = msgpack.packb(
                {"entry": encode_app_entry(AppEntry(PAYMENTS_ACK, {"upto": 4}))}, use_bin_type=True
            )
            headers = {"Content-Type": "application/msgpack"}
            path = "/internal/v1/payments/ack/propose"
            refused = await client.post(path, data=forwarded, headers=headers)
            assert refused.status == 503 and (await refused.json())["code"] == "not_leader"
            leader["now"] = True
            taken = await client.post(path, data=forwarded, headers=headers)
            assert taken.status == 200
            assert msgpack.unpackb(await taken.read())["detail"] == {"acked": 4, "first": 5}
            other = msgpack.packb(
                {"entry": encode_app_entry(AppEntry("anchor.lease", {}))}, use_bin_type=True
            )
            assert (await client.post(path, data=other, headers=headers)).status == 400
    finally:
        node.close()
