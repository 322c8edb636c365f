"""The webhook deliverer: the thin asyncio adapter around :mod:`business.payments.delivery`.

One gateway of a cluster runs it (``[webhooks] deliver = true``; docs/webhooks.md). Its loop:

1. read the outbox after the local cursor (``GET /internal/v1/payments/events?after=``, the
   freshest node), while the core has room; for each event, the endpoints that want it (the
   partner's, in the event's mode, enabled, subscribed to the type) from the keyring; when
   any does, read the object as the API shows it (a payment, an order, the reserve) and build
   the JSON body here -- payloads never exist on the nodes;
2. persist what changed (LevelDB under ``data_dir``, synced), THEN acknowledge the log up to
   the durable cursor (``payments.ack``): the log forgets only what this store holds;
3. POST every due delivery: signed (``Baas-Signature: t=..,v1=..``, one ``v1`` per live
   secret), ``attempt_timeout_s``, no redirects, to addresses :class:`GuardedResolver` checked
   (the SSRF rule again, at delivery); a 2xx delivers, anything else is retried on the
   schedule.

**Disabled endpoints.** The core decides when an endpoint that keeps failing is disabled
(:mod:`business.payments.delivery`); :meth:`WebhookDeliverer.flush` saves each decision where
endpoints live (``save_disabled``: the keyring, with ``disabled_reason`` ``failing``), and every
round reconciles the core with the keyring (``sync_endpoints``) once its version changed: a
partner's disable pauses the endpoint's queue, a re-enable (API or ``baas-partners``) sends its
paused deliveries again, a removal drops them.

A restart resumes from the store (pending deliveries due again: at least once); a store lost
with its disk re-reads the log from the acknowledged point, whose earlier events are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import plyvel
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from prometheus_client import Counter

from business.identity.ids import Mode, mode_of_ledger, partner_id
from business.payments.delivery import (
    CURSOR_KEY,
    DELIVERY_PREFIX,
    FAILING_PREFIX,
    Attempt,
    Delivery,
    DeliveryCore,
    EndpointDisabled,
    Status,
    Target,
    decode_cursor,
    decode_delivery,
    decode_failing,
)
from business.payments.webhooks import sign_payload
from gateway.bridge_routes import RESERVE_HISTORY_DEFAULT, render_reserve, reserve_path
from gateway.config import WebhooksConfig
from gateway.keyring import Keyring
from gateway.node_client import NodeClient
from gateway.payments_routes import order_object, payment_object
from gateway.webhook_endpoints import (
    DISABLED_BY_PARTNER,
    UrlPolicy,
    WebhookEndpoint,
    address_allowed,
)
from node.api.bridge_routes import BRIDGE_PATH
from node.api.payments_routes import PAYMENTS_PATH
from node.errors import BaasError, OperationFailed
from node.metrics import Metrics, StatFamily

__all__ = ["SIGNATURE_HEADER", "GuardedResolver", "SaveDisabled", "WebhookDeliverer"]

log = logging.getLogger("baas.gateway.webhooks")

SIGNATURE_HEADER = "Baas-Signature"
USER_AGENT = "baas-webhooks/1"
READ_TIMEOUT_S = 10.0
ANSWER_BYTES_MAX = 4096  # of a receiver's answer, read and dropped
NO_PARTNER = bytes(16).hex()

# Saves disable decisions (partner name, decision) with the endpoints; answers the version of
# the keyring that holds them.
SaveDisabled = Callable[[Sequence[tuple[str, EndpointDisabled]]], Awaitable[int]]


class BlockedAddress(OSError):
    """A webhook host resolved to an address the SSRF rule refuses."""


class GuardedResolver(AbstractResolver):
    """The system resolver, refusing names that resolve to a forbidden address: checked on
    every connection, so a name re-pointed after registration (DNS rebinding) is caught."""

    def __init__(self, policy: UrlPolicy) -> None:
        self._inner = DefaultResolver()
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        name = host.lower()
        blocked = [r["host"] for r in found if not address_allowed(r["host"], name, self._policy)]
        if blocked:
            raise BlockedAddress(f"{host} resolves to a forbidden address {blocked[0]}")
        return found

    async def close(self) -> None:
        await self._inner.close()


def _literal_blocked(url: str, policy: UrlPolicy) -> bool:
    """aiohttp does not resolve an IP literal: check it here."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return not address_allowed(host, host, policy)


class WebhookDeliverer:
    """Reads the outbox, keeps the local queue, POSTs and acknowledges (module docstring)."""

    def __init__(
        self,
        config: WebhooksConfig,
        nodes: NodeClient,
        keyring: Callable[[], Keyring],
        policy: UrlPolicy,
        metrics: Metrics,
        clock_s: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        save_disabled: SaveDisabled | None = None,
    ) -> None:
        assert config.data_dir is not None, "validated: deliver needs data_dir"
        self.config = config
        self._nodes = nodes
        self._keyring = keyring
        self._policy = policy
        self._clock_s = clock_s
        self._rng = rng or random.Random()
        self._db_path: Path = config.data_dir / "webhooks"
        self._db: Any = None
        # A write runs in a thread that a cancelled flush does not stop: closing the store
        # under it would crash LevelDB (seen: a segfault), so writes and close take this lock.
        self._db_lock = threading.Lock()
        self.core = DeliveryCore(config.limits, config.schedule, self._rng)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._by_id: tuple[int, dict[str, tuple[str, WebhookEndpoint]]] = (-1, {})
        self._save_disabled = save_disabled
        self._save_due_s = 0.0
        self._synced_version = -1  # the keyring version the core was last reconciled with
        self._saved_version = 0  # ... never with one older than a disable we saved
        self.log_next_seq = 0  # the outbox's next sequence number, as last read
        # Reads and acks at most once per poll interval (each attempt's outcome wakes the
        # loop: without this every outcome would cost a read of every node and a log entry),
        # except that a full page is followed at once.
        self._read_due_s = 0.0
        self._ack_due_s = 0.0
        self.log_dropped = 0
        self.deliveries: Counter = metrics.counter(
            "webhook_deliveries",
            "webhook attempts and outcomes: delivered, retry (an attempt failed), failed "
            "(given up), dropped, paused (its endpoint is disabled)",
            ("result",),
        )
        metrics.add_stats(self._stat_families())

    # ------------------------------------------------------------------ life cycle

    def open(self) -> None:
        """Open the local store and load the queue (blocking: call before serving)."""
        self._db_path.mkdir(parents=True, exist_ok=True)
        self._db = plyvel.DB(str(self._db_path), create_if_missing=True)
        raw_cursor = self._db.get(CURSOR_KEY)
        restored = [decode_delivery(k, v) for k, v in self._db.iterator(prefix=DELIVERY_PREFIX)]
        failing = dict(decode_failing(k, v) for k, v in self._db.iterator(prefix=FAILING_PREFIX))
        cursor = 0 if raw_cursor is None else decode_cursor(raw_cursor)
        self.core = DeliveryCore(
            self.config.limits, self.config.schedule, self._rng, cursor_seq=cursor,
            restored=restored, failing=failing,
        )  # fmt: skip
        self._synced_version = -1
        self.core.advance(self.core.ready())  # restored records are already on disk
        log.info("webhooks: %d deliveries restored, cursor %d", len(restored), cursor)

    def close(self) -> None:
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled (the store is opened and closed around it)."""
        await asyncio.to_thread(self.open)
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._policy), limit=self.config.limits.inflight_max
        )
        self._session = aiohttp.ClientSession(connector=connector)
        try:
            while True:
                try:
                    await self.step()
                except BaasError as exc:  # nodes away, store trouble: try again later
                    log.warning("webhooks: %s (%s)", exc.detail, exc.code)
                await self._sleep()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._session.close()
            await asyncio.to_thread(self.close)

    async def _sleep(self) -> None:
        wait_s = self.config.poll_interval_s
        due = self.core.next_due_ms()
        if due is not None:
            wait_s = min(wait_s, max(0.0, due / 1000 - self._clock_s()))
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
        # races the wake-up, and then the deliverer would never stop (seen in a test).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._wake.wait()
        self._wake.clear()

    async def step(self) -> None:
        """One round: reconcile with the endpoints, read events, persist, acknowledge, launch
        due attempts."""
        self._sync_endpoints()
        try:
            await self._read_events()
        finally:
            await self.flush()
            self._launch_due()

    # ------------------------------------------------------------------ the outbox

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + READ_TIMEOUT_S

    async def _read_events(self) -> None:
        if self.core.room() < 1 or self._clock_s() < self._read_due_s:
            return  # events wait on the log (bounded there by EVENTS_MAX)
        self._read_due_s = self._clock_s() + self.config.poll_interval_s
        path = f"{PAYMENTS_PATH}/events?after={self.core.cursor_seq}"
        page = await self._nodes.ledger_read(
            f"{path}&limit={self.config.events_page_max}",
            deadline=self._deadline(),
            request_id=None,
        )
        if page is None:
            return
        self.core.learned_acked(int(page["acked"]))
        self.log_next_seq, self.log_dropped = int(page["next"]), int(page["dropped"])
        if page["has_more"]:
            self._read_due_s = 0.0  # a backlog: the next page at once
            self.wake()
        names = {partner_id(n).hex(): n for n in self._keyring().partners}
        plan: list[tuple[dict[str, Any], str, Mode, list[WebhookEndpoint]]] = []
        room = self.core.room()
        for event in page["data"]:
            partner = names.get(event["partner"], "")
            mode = mode_of_ledger(int(event["ledger"]))
            wanting = self._wanting(partner, event["type"], mode) if partner else []
            if len(wanting) > room:
                break
            room -= len(wanting)
            plan.append((event, partner, mode, wanting))
        # The objects of a page are read at once (one node read each), then queued in order.
        bodies = await asyncio.gather(
            *(self._body(e, p, m) for e, p, m, wanting in plan if wanting)
        )
        made = iter(bodies)
        for event, _, _, wanting in plan:
            body = next(made) if wanting else b""
            targets = [Target(e.id, body) for e in wanting]
            self.core.enqueue(
                int(event["seq"]), bytes.fromhex(event["id"]), targets, self._now_ms()
            )

    def _wanting(self, partner: str, event_type: str, mode: Mode) -> list[WebhookEndpoint]:
        keys = self._keyring().partners.get(partner)
        endpoints = () if keys is None else keys.webhook_endpoints
        return [e for e in endpoints if e.wants(event_type, mode)]

    async def _body(self, event: dict[str, Any], partner: str, mode: Mode) -> bytes:
        document = {
            "id": "evt_" + event["id"],
            "object": "event",
            "type": event["type"],
            "created": int(event["log_time_ms"]) // 1000,
            "created_ms": int(event["log_time_ms"]),
            "livemode": mode == Mode.LIVE,
            "sequence": int(event["seq"]),
            "data": {"object": await self._object(event)},
        }
        body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        if len(body) > self.config.body_bytes_max:  # the bare event: the receiver reads it
            document["data"] = {"object": None}
            body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        return body

    async def _object(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event's object as the API shows it, read now (so: its state at delivery)."""
        kind, obj, pid = event["type"], event["object"], event["partner"]
        mode = mode_of_ledger(int(event["ledger"]))
        if kind != "reserve.low":
            # The payments API's own objects (ids with their prefixes, amounts as it names them).
            payment = await self._read(f"{PAYMENTS_PATH}/payments/{obj}?partner={pid}")
            if payment is None:
                return None
            if not kind.startswith("order."):
                return payment_object(mode, payment)
            order = await self._read(f"{PAYMENTS_PATH}/orders/{obj}?partner={pid}")
            return None if order is None else order_object(mode, order, payment)
        # GET /v1/bridge/reserve's object, read and rendered as that route does (its default
        # history page): a receiver sees the reserve exactly as the API shows it.
        path = reserve_path(pid, int(event["ledger"]), RESERVE_HISTORY_DEFAULT, "&after_ts=0")
        found = await self._read(BRIDGE_PATH + path)
        return None if found is None else render_reserve(mode, found)

    async def _read(self, path: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self._nodes.ledger_read(
            path, deadline=self._deadline(), request_id=None
        )
        return found

    def _sync_endpoints(self) -> None:
        keyring = self._keyring()
        if keyring.version == self._synced_version or keyring.version < self._saved_version:
            return
        saved = {e.id: e.enabled for p in keyring.partners.values() for e in p.webhook_endpoints}
        self.core.sync_endpoints(saved, self._now_ms())
        self._synced_version = keyring.version

    async def _save(self, marks: tuple[EndpointDisabled, ...]) -> None:
        """The core's disable decisions, saved with the endpoints (tried again each poll
        interval while the keyring cannot be written; the core holds them meanwhile)."""
        if self._save_disabled is None or self._clock_s() < self._save_due_s:
            return
        self._save_due_s = self._clock_s() + self.config.poll_interval_s
        owned = [(found[0], m) for m in marks if (found := self.endpoint(m.endpoint)) is not None]
        if owned:  # the rest were removed meanwhile: nothing to save
            try:
                version = await self._save_disabled(owned)
            except BaasError as exc:
                log.warning("webhooks: saving disabled endpoints failed: %s", exc.detail)
                return
            self._saved_version = max(self._saved_version, version)
        self.core.disable_saved([m.endpoint for m in marks])
        for partner, mark in owned:
            log.warning(
                "webhooks: endpoint %s of %s disabled: every attempt failed since %d ms",
                mark.endpoint, partner, self.core.failing_since_ms(mark.endpoint) or mark.at_ms,
            )  # fmt: skip

    async def flush(self) -> None:
        """Persist what changed, then acknowledge the durable cursor (the written order);
        save disable decisions with the endpoints."""
        ready = self.core.ready()
        if ready.disable:
            # Saved first: a crash before the local write then restores the deliveries as
            # pending, and the sync pauses them again from the keyring (the other order would
            # restore them paused with the endpoint enabled: a re-enable, wrongly).
            await self._save(ready.disable)
        if ready.writes:
            await asyncio.to_thread(self._write, ready.writes)
        self.core.advance(ready)
        if ready.ack_upto is not None and self._clock_s() >= self._ack_due_s:
            self._ack_due_s = self._clock_s() + self.config.poll_interval_s
            try:
                done = await self._nodes.payments_ack(ready.ack_upto, deadline=self._deadline())
            except BaasError as exc:  # asked again at the next flush: acked_seq is unchanged
                log.warning("webhooks: ack up to %d failed: %s", ready.ack_upto, exc.detail)
                return
            if done.get("code") == "applied":
                self.core.learned_acked(int(done["detail"]["acked"]))

    def _write(self, writes: tuple[tuple[bytes, bytes | None], ...]) -> None:
        with self._db_lock:
            if self._db is None:
                raise OperationFailed("the webhook store is closed", code="webhooks_closed")
            with self._db.write_batch(sync=True) as batch:
                for key, value in writes:
                    if value is None:
                        batch.delete(key)
                    else:
                        batch.put(key, value)

    # ------------------------------------------------------------------ attempts

    def _now_ms(self) -> int:
        return int(self._clock_s() * 1000)

    def _launch_due(self) -> None:
        for d in self.core.due(self._now_ms()):
            task = asyncio.create_task(self._attempt(d))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def endpoint(self, endpoint_id: str) -> tuple[str, WebhookEndpoint] | None:
        """The partner and endpoint an id names, from the keyring in use."""
        keyring = self._keyring()
        if self._by_id[0] != keyring.version:
            self._by_id = (
                keyring.version,
                {e.id: (p.partner_id, e) for p in keyring.partners.values()
                 for e in p.webhook_endpoints},
            )  # fmt: skip
        return self._by_id[1].get(endpoint_id)

    async def _attempt(self, d: Delivery) -> None:
        found = self.endpoint(d.endpoint)
        if found is None or not found[1].enabled:  # changed since the last sync
            if found is None:
                self.core.abandon(d.number, "endpoint_removed")
            else:
                reason = found[1].disabled_reason or DISABLED_BY_PARTNER
                self.core.hold(d.number, reason, self._now_ms())
            self.deliveries.labels("dropped" if found is None else "paused").inc()
            self.wake()
            return
        attempt = await self._post(found[1], d.body)
        settled = self.core.settle(d.number, attempt)
        result = {
            Status.DELIVERED: "delivered", Status.FAILED: "failed", Status.PAUSED: "paused"
        }.get(settled.status)  # fmt: skip
        self.deliveries.labels(result or "retry").inc()
        self.wake()  # persist the outcome; a retry may be due earlier than the poll

    async def _post(self, endpoint: WebhookEndpoint, body: bytes) -> Attempt:
        started_s = self._clock_s()
        at_ms = int(started_s * 1000)
        if _literal_blocked(endpoint.url, self._policy):
            return Attempt(at_ms, 0, "blocked_address")
        timestamp = int(started_s)
        signatures = ",".join(
            f"v1={sign_payload(s, timestamp, body)}" for s in endpoint.signing_secrets(at_ms)
        )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: f"t={timestamp},{signatures}",
        }
        assert self._session is not None, "run() opens the session"
        try:
            async with self._session.post(
                endpoint.url,
                data=body,
                headers=headers,
                allow_redirects=False,  # a redirect could point anywhere: it is a failure
                timeout=aiohttp.ClientTimeout(total=self.config.attempt_timeout_s),
            ) as response:
                await response.content.read(ANSWER_BYTES_MAX)
                status = response.status
                error = "" if 200 <= status <= 299 else f"HTTP {status}"
        except BlockedAddress:
            status, error = 0, "blocked_address"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status, error = 0, type(exc).__name__
            if isinstance(exc.__cause__, BlockedAddress) or "forbidden address" in str(exc):
                error = "blocked_address"
        duration_ms = int((self._clock_s() - started_s) * 1000)
        return Attempt(at_ms, status, error, max(0, duration_ms))

    # ------------------------------------------------------------------ metrics

    def _stat_families(self) -> list[StatFamily]:
        def core() -> DeliveryCore:  # open() replaces the core: read it at scrape time
            return self.core

        def oldest_s() -> float:
            oldest = core().oldest_pending_ms()
            return 0.0 if oldest is None else max(0.0, self._clock_s() - oldest / 1000)

        return [
            StatFamily(
                "webhook_queue_deliveries", "deliveries pending", lambda: core().pending_count
            ),
            StatFamily(
                "webhook_inflight_deliveries", "attempts in flight", lambda: core().inflight_count
            ),
            StatFamily(
                "webhook_oldest_pending_age_seconds",
                "age of the oldest undelivered delivery",
                oldest_s,
            ),
            StatFamily(
                "webhook_cursor_lag_events",
                "outbox events not yet read by the deliverer",
                lambda: max(0, self.log_next_seq - 1 - core().cursor_seq),
            ),
            StatFamily("webhook_cursor_seq", "events read", lambda: core().cursor_seq),
            StatFamily(
                "webhook_untracked_failing_endpoints",
                "failed attempts of endpoints not tracked for disabling (endpoints_failing_max)",
                lambda: core().untracked_failing,
            ),
            StatFamily("webhook_log_acked_seq", "the log's acked cursor", lambda: core().acked_seq),
            StatFamily(
                "webhook_outbox_dropped_events",
                "unacknowledged events the full outbox dropped (the log's count)",
                lambda: self.log_dropped,
            ),
        ]
