"""Webhooks end to end on real processes: 5 nodes and the gateway (delivering:
``[webhooks] deliver = true``, its receiver's host on the allow-list), a partner onboarded and its
endpoint registered with the real ``baas-partners webhook add``; the same URL is refused by a
config without the allow-list entry. A Bridge swap storm drains the partner's reserve below its
threshold: the log's ``reserve.low`` event arrives at the partner's aiohttp receiver signed
(checked with ``verify_signature``), carrying the reserve exactly as ``GET /v1/bridge/reserve``
shows it, and the outbox
on the log is acknowledged past it afterwards; the delivery is listed with its attempt through
the partner API. And kill -9 of the delivering gateway after the log acknowledged an event
still undelivered (its receiver down): restarted, it delivers the event from its LevelDB queue."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from nodeapi import node_get, wait_for
from test_cluster_bridge_api import _quote
from test_cluster_bridge_storm import BAAS, _market
from test_cluster_payments_api import U, _first, _pay, _user

from business.payments.webhooks import WebhookConfig, verify_signature
from gateway.webhook_deliverer import SIGNATURE_HEADER
from tools.client import PartnerClient
from tools.cluster_init import init_cluster
from tools.ledger_client import BridgeClient, LedgerClient, UserWallet
from tools.local_cluster import LocalCluster
from tools.local_partners import onboard_partner

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    directory = tmp_path_factory.mktemp("webhooks")
    layout = init_cluster(directory, nodes=5, partners=(), chain="none")
    config = Path(layout.gateway_config_path)
    plain = config.read_text()
    (directory / "gateway-no-allow.toml").write_text(plain)  # the same, without the entry
    config.write_text(
        plain + '\n[webhooks]\ndeliver = true\ndata_dir = "gateway-webhooks"\n'
        'allow_hosts = ["127.0.0.1"]\npoll_interval_s = 0.2\n'
        # retries 2 s apart at first (the restart test waits for one); the span rule off
        "base_delay_s = 2\nretry_span_s_min = 0\n"
    )
    local = LocalCluster(layout, ready_timeout_s=120)
    local.start()
    try:
        yield local
    finally:
        local.stop()


class Receiver:
    def __init__(self) -> None:
        self.secret = b""
        self.events: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.down = False  # answer 500 to everything
        self.failed_posts = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.down:
            self.failed_posts += 1
            return web.Response(status=500)
        try:
            verify_signature(
                [self.secret], request.headers[SIGNATURE_HEADER], body, int(time.time()),
                WebhookConfig(),
            )  # fmt: skip
        except Exception as exc:
            self.refused.append(repr(exc))
            return web.Response(status=400)
        self.events.append(json.loads(body))
        return web.Response(status=200)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", rx.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield rx, int(server.port or 0)
    finally:
        await server.close()


def partners_cli(config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.partners_cli", "--config", config, *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip


async def _register(
    layout: Any, partner: str, rx: Receiver, port: int, events: str = "reserve.low"
) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/hooks"
    added = partners_cli(
        layout.gateway_config_path, "webhook", "add", "--partner", partner, "--url", url,
        "--events", events,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    endpoint: dict[str, Any] = json.loads(added.stdout)
    rx.secret = bytes.fromhex(endpoint["secret"].removeprefix("whsec_"))
    return endpoint


async def _drain_reserve(c: LedgerClient, partner: str, code: str) -> None:
    """A reserve of 10 BAAS with a 5 BAAS threshold, then 6 swaps of 1 BAAS: reserve.low."""
    bridge = BridgeClient(c)
    users = await _market(c, partner, code, 1, 10 * BAAS, threshold=5 * BAAS)
    for i in range(6):
        quote = (await _quote(c, code, users[0][1], "in", "100")).body
        got = await bridge.swap(users[0][0], users[0][1], quote, key=f"swap-{i}")
        assert got.body.get("status") == "succeeded", got


def _outbox(local: LocalCluster) -> dict[str, Any] | None:
    page: dict[str, Any] | None = node_get(
        local, local.layout.nodes[0].name, "/internal/v1/payments/events"
    )
    return page


async def test_a_kill_9_of_the_delivering_gateway_loses_no_acknowledged_event(
    cluster: LocalCluster, receiver: tuple[Receiver, int]
) -> None:
    """The receiver is down; the event is queued at the gateway and the log acknowledges (and
    forgets) it; kill -9 of the gateway; restarted, it delivers the event from its LevelDB
    queue once the receiver is back."""
    local, (rx, port) = cluster, receiver
    layout = local.layout
    key, secret = onboard_partner(layout, "shop-k")["test"]
    await _register(layout, "shop-k", rx, port)
    rx.down = True
    c = LedgerClient(PartnerClient(layout.gateway_url, key, secret), attempts_max=20)
    c.wait_s_max = 1.0
    await _drain_reserve(c, "shop-k", "KPTS")
    await wait_for("a failed attempt", lambda: rx.failed_posts >= 1, 90)

    def all_acked() -> bool:
        page = _outbox(local)
        return page is not None and page["acked"] == page["next"] - 1 and page["data"] == []

    await wait_for("the outbox acknowledged (the log forgot the event)", all_acked, 30)
    local.kill("gateway")  # SIGKILL
    rx.down = False
    local.start_gateway()
    await wait_for("the event delivered after the restart", lambda: rx.events, 90)
    assert rx.refused == []
    assert {e["type"] for e in rx.events} == {"reserve.low"}
    assert len({e["id"] for e in rx.events}) == 1  # the same event (maybe more than once)
    assert rx.events[0]["data"]["object"]["object"] == "bridge_reserve"


async def test_a_reserve_low_event_arrives_signed_and_the_outbox_is_acked(
    cluster: LocalCluster, receiver: tuple[Receiver, int]
) -> None:
    local, (rx, port) = cluster, receiver
    layout = local.layout
    key, secret = onboard_partner(layout, "shop-w")["test"]
    url = f"http://127.0.0.1:{port}/hooks"
    no_allow = str(Path(layout.gateway_config_path).parent / "gateway-no-allow.toml")
    refused = partners_cli(no_allow, "webhook", "add", "--partner", "shop-w", "--url", url)
    assert refused.returncode == 1 and "webhook_url_forbidden" in refused.stderr, refused
    endpoint = await _register(layout, "shop-w", rx, port)
    assert endpoint["secret"].startswith("whsec_") and endpoint["enabled_events"] == ["reserve.low"]
    listed = partners_cli(layout.gateway_config_path, "webhook", "list", "--partner", "shop-w")
    assert "secret" not in json.loads(listed.stdout)["data"][0]  # shown once only

    c = LedgerClient(PartnerClient(layout.gateway_url, key, secret), attempts_max=20)
    c.wait_s_max = 1.0
    await _drain_reserve(c, "shop-w", "WPTS")
    await wait_for("the signed reserve.low event", lambda: rx.events, 90)
    (event,) = rx.events
    assert rx.refused == []
    assert event["type"] == "reserve.low" and event["livemode"] is False
    reserve = event["data"]["object"]
    assert reserve["object"] == "bridge_reserve" and reserve["livemode"] is False
    assert reserve["low"] is True and int(reserve["level"]) < 5 * BAAS
    # The API's own object, field for field: the last swap made the reserve low, so GET now
    # reads the reserve as it was when the deliverer read it.
    shown = await c.call("GET", "/v1/bridge/reserve")
    assert shown.status == 200 and reserve == shown.body, (reserve, shown.body)

    def acked() -> bool:
        page = _outbox(local)
        return page is not None and page["acked"] >= event["sequence"]

    await wait_for("the outbox acknowledged past the event", acked, 30)
    page = await c.call("GET", f"/v1/webhook_endpoints/{endpoint['id']}/deliveries")
    assert page.status == 200, page
    (delivery,) = page.body["data"]
    assert delivery["status"] == "delivered" and delivery["event"] == event["id"]
    assert [a["status"] for a in delivery["attempts"]] == [200]


async def test_payment_events_arrive_with_the_payment_as_the_api_shows_it(
    cluster: LocalCluster, receiver: tuple[Receiver, int]
) -> None:
    """A payment authorised with the user's approval and captured in part through the Payment
    API: its two events arrive signed, in order, each carrying the payment as
    ``GET /v1/payments/{id}`` shows it then (events of types not subscribed stay away)."""
    local, (rx, port) = cluster, receiver
    layout = local.layout
    key, secret = onboard_partner(layout, "shop-y")["test"]
    endpoint = await _register(
        layout, "shop-y", rx, port, events="payment.authorised,payment.captured"
    )
    c = LedgerClient(PartnerClient(layout.gateway_url, key, secret), attempts_max=20)
    c.wait_s_max = 1.0
    float_account = await _first(c)

    async def endpoint_known() -> bool:
        # The gateway matches events to the endpoints it knows when it reads them: one it has
        # not loaded from the keyring yet would miss them (rightly, as a later endpoint would).
        listed = await c.call("GET", "/v1/webhook_endpoints")
        return listed.status == 200 and endpoint["id"] in {e["id"] for e in listed.body["data"]}

    deadline = time.monotonic() + 60
    while not await endpoint_known():
        assert time.monotonic() < deadline, "the gateway never loaded the endpoint"
        await asyncio.sleep(0.5)
    carol = UserWallet(bytes([21] * 32))
    await _user(c, "shop-y", float_account, carol, "carol", str(1000 * U))
    paid = await _pay(c, carol, {"user": "carol", "amount": str(300 * U)}, "pay-y-1")
    assert paid.status == 201 and paid.body["status"] == "authorised", paid
    payment = paid.body["id"]
    path = f"/v1/payments/{payment}"
    captured = await c.call("POST", path + "/capture", {"amount": str(200 * U)}, key="cap-y-1")
    assert captured.status == 201, captured
    refunded = await c.call("POST", path + "/refunds",
                          {"amount": str(50 * U)}, key="ref-y-1")  # fmt: skip
    assert refunded.status == 201, refunded  # payment.refunded: not subscribed
    await wait_for("both payment events", lambda: len(rx.events) >= 2, 90)
    assert rx.refused == []
    by_type = {e["type"]: e for e in rx.events}
    assert set(by_type) == {"payment.authorised", "payment.captured"}, rx.events
    assert by_type["payment.authorised"]["sequence"] < by_type["payment.captured"]["sequence"]
    for event in rx.events:
        assert event["livemode"] is False and event["data"]["object"]["id"] == payment
    shown = by_type["payment.captured"]["data"]["object"]
    assert shown["amount_captured"] == str(200 * U) and shown["object"] == "payment", shown
