"""The webhook deliverer (gateway/webhook_deliverer.py) against the node's real payments routes
over a real LevelDB state (the ack route proposing on that state) and a real aiohttp receiver on
127.0.0.1 that verifies every signature with ``verify_signature``: events arrive signed, the
receiver's 500s and a timeout are retried, the log is acknowledged once the deliveries are
durably queued, a restart resumes the queue from LevelDB, and the SSRF rule refuses a loopback
URL at registration and at delivery unless ``allow_hosts`` names it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from bridgeopskit import ALICE, POINTS, Node, rid
from paymentsopskit import ALICE_PTS, run, shop_world
from test_payments_node import LocalProposer, reads

from business.identity.ids import Mode
from business.payments import Authorise, Capture
from business.payments.delivery import DeliveryLimits, Status
from business.payments.outbox import read_head
from business.payments.webhooks import WebhookConfig, verify_signature
from gateway.config import GatewayLimits, GatewayTimeouts, NodeEndpoint, WebhooksConfig
from gateway.keyring import Keyring, load_keyring, new_partner, save_keyring
from gateway.node_client import NodeClient
from gateway.webhook_deliverer import SIGNATURE_HEADER, SaveDisabled, WebhookDeliverer
from gateway.webhook_endpoints import (
    UrlPolicy,
    WebhookEndpoint,
    add_endpoint,
    check_url,
    endpoint_object,
    set_enabled,
)
from gateway.webhook_routes import change_endpoints, disable_in_keyring
from node.api.ledger_routes import add_ledger_routes
from node.api.payments_routes import AckRoutes, add_ack_routes, add_payments_routes
from node.api.problem import problem_middleware
from node.consensus.state_machine import AppEntry
from node.errors import InvalidRequest
from node.metrics import Metrics

FAST = WebhookConfig(
    base_delay_s=1, delay_s_max=1, jitter_bps=0, attempts_max=4, retry_span_s_min=0
)
ALLOW_LOCAL = UrlPolicy(allow_hosts=frozenset({"127.0.0.1"}))


@dataclass
class Receiver:
    """A partner's webhook receiver: fails its first ``fail_first`` posts with 500, sleeps
    ``slow_first_s`` on the first, verifies every signature, records what it accepted."""

    secrets: list[bytes]
    fail_first: int = 0
    slow_first_s: float = 0.0
    posts: int = 0
    accepted: list[dict[str, Any]] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.posts += 1
        body = await request.read()
        try:
            verify_signature(
                self.secrets, request.headers[SIGNATURE_HEADER], body, int(time.time()), FAST
            )
        except (InvalidRequest, KeyError) as exc:
            self.bad.append(repr(exc))
            return web.Response(status=400)
        if self.posts == 1 and self.slow_first_s:
            await asyncio.sleep(self.slow_first_s)
        if self.posts <= self.fail_first:
            return web.Response(status=500)
        self.accepted.append(json.loads(body))
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[TestServer]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def node_app(node: Node) -> web.Application:
    """The node's real payments reads and ack route over ``node``'s LevelDB state."""

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def propose_local(entry: AppEntry) -> Any:
        return node.apply(entry)

    app = web.Application(middlewares=[problem_middleware])
    app.router.add_get("/internal/v1/ready", ready)
    add_ledger_routes(app, reads(node))
    add_payments_routes(app)
    add_ack_routes(app, AckRoutes(LocalProposer(node), propose_local, lambda: True, 5.0))  # type: ignore[arg-type]
    return app


def pay(node: Node) -> None:
    """Three events of demo-shop's test mode: authorised, authorised, captured."""
    for n in (100, 101):
        assert (
            run(node, n, Authorise(rid(n), _shop(), POINTS, ALICE_PTS, 10, 600), signers=(ALICE,))
            == "ok"
        )
    assert run(node, 102, Capture(rid(102), _shop(), rid(100), 5)) == "ok"


def _shop() -> bytes:
    from identitykit import SHOP

    return SHOP


def keyring_with(url: str, events: tuple[str, ...] = ("*",), mode: Mode = Mode.TEST) -> Keyring:
    keys = new_partner("demo-shop", "pk_demo-shop_1")
    # registered while allowed (the allow-list changed since, or the name was re-pointed)
    endpoints, _ = add_endpoint((), url, mode, events, UrlPolicy(allow_private_addresses=True), 0)
    return Keyring(1, {"demo-shop": replace(keys, webhook_endpoints=endpoints)})


@dataclass
class World:
    node: Node
    nodes: NodeClient
    config: WebhooksConfig
    keyring: Keyring

    def deliverer(
        self,
        policy: UrlPolicy = ALLOW_LOCAL,
        metrics: Metrics | None = None,
        save_disabled: SaveDisabled | None = None,
    ) -> WebhookDeliverer:
        return WebhookDeliverer(
            self.config, self.nodes, lambda: self.keyring, policy, metrics or Metrics("t"),
            rng=random.Random(3), save_disabled=save_disabled,
        )  # fmt: skip

    @property
    def endpoint(self) -> WebhookEndpoint:
        return self.keyring.partners["demo-shop"].webhook_endpoints[0]


@contextlib.asynccontextmanager
async def world(tmp_path: Path, **webhooks: Any) -> AsyncIterator[World]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    node = shop_world(tmp_path / "node")
    try:
        async with serve(node_app(node)) as server:
            endpoint = NodeEndpoint("n1", f"127.0.0.1:{server.port}")
            nodes = NodeClient((endpoint,), "token", GatewayLimits(), GatewayTimeouts())
            await nodes.start()
            try:
                config = WebhooksConfig(
                    deliver=True, data_dir=tmp_path / "gw", poll_interval_s=0.1,
                    attempt_timeout_s=1.0, schedule=FAST, **webhooks,
                )  # fmt: skip
                yield World(node, nodes, config, Keyring(1, {}))
            finally:
                await nodes.stop()
    finally:
        node.close()


@contextlib.asynccontextmanager
async def running(d: WebhookDeliverer) -> AsyncIterator[WebhookDeliverer]:
    task = asyncio.create_task(d.run())
    try:
        yield d
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(what: str, check: Callable[[], Any], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def receiver_app(receiver: Receiver) -> web.Application:
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    return app


async def test_events_arrive_signed_failures_are_retried_and_the_log_is_acked(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        receiver = Receiver([], fail_first=2)
        async with serve(receiver_app(receiver)) as rx:
            w.keyring = keyring_with(f"http://127.0.0.1:{rx.port}/hooks")
            receiver.secrets = w.endpoint.signing_secrets(0)
            pay(w.node)
            metrics = Metrics("t")
            async with running(w.deliverer(metrics=metrics)) as d:
                await until("3 events delivered", lambda: len(receiver.accepted) == 3)
                await until("the log acked", lambda: read_head(w.node.view).acked_seq == 3)
                # The receiver answers before the deliverer records the answer (and the log is
                # acked once events are queued locally): a CI run read the core in between.
                await until(
                    "the core saw every answer",
                    lambda: [x.status for x in d.core.listing({w.endpoint.id}, 10, None)]
                    == [Status.DELIVERED] * 3,
                )
                assert receiver.bad == [] and receiver.posts == 5  # 2 x 500, then 3 x 204
                types = sorted(e["type"] for e in receiver.accepted)
                assert types == ["payment.authorised", "payment.authorised", "payment.captured"]
                captured = next(e for e in receiver.accepted if e["type"] == "payment.captured")
                shown = captured["data"]["object"]  # as GET /v1/payments/{id} shows it
                assert shown["id"] == "pay_" + rid(100).hex() and shown["object"] == "payment"
                assert shown["amount_captured"] == "5" and shown["livemode"] is False
                assert captured["livemode"] is False and captured["id"].startswith("evt_")
                assert len({e["id"] for e in receiver.accepted}) == 3  # stable, distinct ids
                retried = [
                    x for x in d.core.listing({w.endpoint.id}, 10, None) if x.attempts_total > 1
                ]
                assert retried and [a.status for a in retried[0].attempts][-1] == 204
                assert all(
                    x.status is Status.DELIVERED for x in d.core.listing({w.endpoint.id}, 10, None)
                )
                text = metrics.exposition().decode()
                for line in (
                    't_webhook_deliveries_total{result="delivered"} 3.0',
                    't_webhook_deliveries_total{result="retry"} 2.0',
                    "t_webhook_queue_deliveries 0.0",
                    "t_webhook_oldest_pending_age_seconds 0.0",
                    "t_webhook_cursor_lag_events 0.0",
                    "t_webhook_cursor_seq 3.0",
                ):
                    assert line in text, line


async def test_a_timeout_is_an_attempt_that_failed(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        receiver = Receiver([], slow_first_s=3.0)  # longer than attempt_timeout_s = 1
        async with serve(receiver_app(receiver)) as rx:
            w.keyring = keyring_with(f"http://127.0.0.1:{rx.port}/hooks", ("payment.captured",))
            receiver.secrets = w.endpoint.signing_secrets(0)
            pay(w.node)
            async with running(w.deliverer()) as d:
                await until("delivered", lambda: d.core.counts.get(w.endpoint.id) is not None
                            and d.core.counts[w.endpoint.id].delivered == 1)  # fmt: skip
                (only,) = d.core.listing({w.endpoint.id}, 10, None)  # one type subscribed
                assert [a.status for a in only.attempts] == [0, 204]
                assert only.attempts[0].error == "TimeoutError"
                await until("the log acked", lambda: read_head(w.node.view).acked_seq == 3)


async def test_a_restart_resumes_the_queue_from_leveldb(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        receiver = Receiver([], fail_first=10**6)  # down
        async with serve(receiver_app(receiver)) as rx:
            w.keyring = keyring_with(f"http://127.0.0.1:{rx.port}/hooks")
            receiver.secrets = w.endpoint.signing_secrets(0)
            pay(w.node)
            metrics = Metrics("t")
            async with running(w.deliverer(metrics=metrics)):
                await until(
                    "acked while undelivered", lambda: read_head(w.node.view).acked_seq == 3
                )
                await until("tried", lambda: receiver.posts >= 3)
                text = metrics.exposition().decode()
                assert "t_webhook_queue_deliveries 3.0" in text  # all pending, yet acked
                assert "t_webhook_oldest_pending_age_seconds 0.0\n" not in text  # older than 0
            receiver.fail_first = 0  # back up; a new deliverer process on the same store
            async with running(w.deliverer()) as d:
                await until("3 delivered after restart", lambda: len(receiver.accepted) == 3)
                assert d.core.cursor_seq == 3 and receiver.bad == []


MASTER = bytes(range(32))


async def test_an_endpoint_failing_too_long_is_disabled_in_the_keyring_then_re_enabled(
    tmp_path: Path,
) -> None:
    """Every attempt fails for endpoint_failing_s_max (1 s): the deliverer disables the
    endpoint in the real keyring file (disabled_reason "failing"), stops attempting and holds
    the deliveries paused; the partner re-enables it (as baas-partners does) and the held
    events go out."""
    limits = DeliveryLimits(endpoint_failing_s_max=1)
    async with world(tmp_path, limits=limits) as w:
        receiver = Receiver([], fail_first=10**6)  # down
        async with serve(receiver_app(receiver)) as rx:
            w.keyring = keyring_with(f"http://127.0.0.1:{rx.port}/hooks")
            receiver.secrets = w.endpoint.signing_secrets(0)
            keyring_file = tmp_path / "keyring.json"
            save_keyring(keyring_file, w.keyring, MASTER)

            async def save(marks: Any) -> int:
                w.keyring = await disable_in_keyring(keyring_file, MASTER, marks)
                return w.keyring.version

            pay(w.node)
            async with running(w.deliverer(save_disabled=save)) as d:
                await until("disabled in the keyring", lambda: not w.endpoint.enabled)
                on_disk = load_keyring(keyring_file, MASTER).partner("demo-shop")
                shown = endpoint_object(on_disk.webhook_endpoints[0], 0)
                assert shown["status"] == "disabled" and shown["disabled_reason"] == "failing"
                assert isinstance(shown["disabled_at"], int) and shown["disabled_at"] > 0
                mine = {w.endpoint.id}
                await until(
                    "all paused",
                    lambda: all(x.status is Status.PAUSED for x in d.core.listing(mine, 10, None)),
                )
                held = d.core.listing(mine, 10, None)
                assert len(held) == 3 and {x.reason for x in held} == {"endpoint_disabled"}
                posts = receiver.posts
                await asyncio.sleep(2.5)  # > the 1 s retry delay: no further attempts
                assert receiver.posts == posts and receiver.accepted == []
                receiver.fail_first = 0  # the partner fixed its receiver, and re-enables
                w.keyring = await change_endpoints(
                    keyring_file, MASTER, "demo-shop",
                    lambda e: set_enabled(e, e[0].id, True, 0),
                )  # fmt: skip
                await until("the held events delivered", lambda: len(receiver.accepted) == 3)
                assert w.endpoint.disabled_reason is None and receiver.bad == []
                assert all(x.status is Status.DELIVERED for x in d.core.listing(mine, 10, None))
                assert d.core.failing_since_ms(w.endpoint.id) is None


async def test_loopback_is_refused_unless_allow_listed(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/hooks"
    with pytest.raises(InvalidRequest) as refused:
        check_url(url, UrlPolicy())
    assert refused.value.code == "webhook_url_forbidden"
    assert check_url(url, ALLOW_LOCAL) == url
    for bad in (
        "ftp://example.com/x",
        "http://user:pw@example.com/",
        "http:///x",
        "http://localhost/",
    ):
        with pytest.raises(InvalidRequest):
            check_url(bad, UrlPolicy())
    for private in (
        "http://10.1.2.3/",
        "http://[::1]/",
        "http://169.254.169.254/",
        "http://192.168.0.1/",
    ):
        with pytest.raises(InvalidRequest):
            check_url(private, UrlPolicy())
    assert check_url("https://hooks.example.com/x", UrlPolicy()) == "https://hooks.example.com/x"
    own = UrlPolicy(own_hosts=frozenset({"node1.internal"}))
    with pytest.raises(InvalidRequest):
        check_url("http://node1.internal:8080/", own)

    # At delivery: a name that resolves to loopback (as if re-pointed after registration) and
    # a literal loopback address are both refused without the allow-list entry: no post.
    for i, host in enumerate(("localhost", "127.0.0.1")):
        async with world(tmp_path / str(i)) as w:
            receiver = Receiver([])
            async with serve(receiver_app(receiver)) as rx:
                w.keyring = keyring_with(f"http://{host}:{rx.port}/hooks")
                pay(w.node)
                async with running(w.deliverer(UrlPolicy())) as d:
                    await until("tried", lambda: any(
                        x.attempts for x in d.core.listing({w.endpoint.id}, 10, None)))  # fmt: skip
                    tried = [x for x in d.core.listing({w.endpoint.id}, 10, None) if x.attempts]
                    assert {x.attempts[0].error for x in tried} == {"blocked_address"}, host
                assert receiver.posts == 0


def test_limits_of_the_config_reach_the_core() -> None:
    config = WebhooksConfig(limits=DeliveryLimits(deliveries_max=5, endpoint_pending_max=5))
    config.validate()
    assert config.limits.deliveries_max == 5
