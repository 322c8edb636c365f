"""Webhooks end to end on real processes: 5 nodes and the gateway (delivering:
``[webhooks] deliver = true``, its receiver's host on the allow-list), a partner onboarded and its
endpoint registered with the real ``baas-partners webhook add``; the same URL is refused by a
config without the allow-list entry. A Bridge swap storm drains the partner's reserve below its
threshold: the log's ``reserve.low`` event arrives at the partner's aiohttp receiver signed
(checked with ``verify_signature``), carrying the reserve as the API shows it, and the outbox
on the log is acknowledged past it afterwards; the delivery is listed with its attempt through
the partner API."""

from __future__ import annotations

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

from business.payments.webhooks import WebhookConfig, verify_signature
from gateway.webhook_deliverer import SIGNATURE_HEADER
from tools.client import PartnerClient
from tools.cluster_init import init_cluster
from tools.ledger_client import BridgeClient, LedgerClient
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

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
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
    added = partners_cli(
        layout.gateway_config_path, "webhook", "add", "--partner", "shop-w", "--url", url,
        "--events", "reserve.low",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    endpoint = json.loads(added.stdout)
    assert endpoint["secret"].startswith("whsec_") and endpoint["enabled_events"] == ["reserve.low"]
    rx.secret = bytes.fromhex(endpoint["secret"].removeprefix("whsec_"))
    listed = partners_cli(layout.gateway_config_path, "webhook", "list", "--partner", "shop-w")
    assert "secret" not in json.loads(listed.stdout)["data"][0]  # shown once only

    c = LedgerClient(PartnerClient(layout.gateway_url, key, secret), attempts_max=20)
    c.wait_s_max = 1.0
    bridge = BridgeClient(c)
    users = await _market(c, "shop-w", "WPTS", 1, 10 * BAAS, threshold=5 * BAAS)
    for i in range(6):  # 6 swaps of 1 BAAS: the reserve falls from 10 to below 5
        quote = (await _quote(c, "WPTS", users[0][1], "in", "100")).body
        got = await bridge.swap(users[0][0], users[0][1], quote, key=f"swap-{i}")
        assert got.body.get("status") == "succeeded", got

    await wait_for("the signed reserve.low event", lambda: rx.events, 60)
    (event,) = rx.events
    assert rx.refused == []
    assert event["type"] == "reserve.low" and event["livemode"] is False
    reserve = event["data"]["object"]
    assert reserve["object"] == "bridge_reserve" and reserve["partner"] == "shop-w"
    assert reserve["low"] is True and int(reserve["level"]) < 5 * BAAS

    def acked() -> bool:
        page = node_get(local, layout.nodes[0].name, "/internal/v1/payments/events")
        return page is not None and page["acked"] >= event["sequence"]

    await wait_for("the outbox acknowledged past the event", acked, 30)
    page = await c.call("GET", f"/v1/webhook_endpoints/{endpoint['id']}/deliveries")
    assert page.status == 200, page
    (delivery,) = page.body["data"]
    assert delivery["status"] == "delivered" and delivery["event"] == event["id"]
    assert [a["status"] for a in delivery["attempts"]] == [200]
