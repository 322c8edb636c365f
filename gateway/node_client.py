"""The gateway's client of the node HTTP APIs: coalesces, spreads, backs off, fails over.

* **Coalescing.** Records from concurrent partner requests are gathered (a few ms, bounded by
  ``node_batch_records_max`` / ``node_batch_bytes_max``) into one node call; the cost of a
  node call is mostly per call, not per record (shared/REFERENCE.md). Reads likewise.
* **Spreading.** Calls go round-robin over the nodes that are healthy and not full. Every node
  answer carries the node's queue depth (``X-Baas-Queue-Depth`` / ``X-Baas-Queue-Max``, also on
  the health probes), and a node at ``node_queue_fill_max_percent`` or more gets no new work
  while others have room.
* **Backing off.** When every healthy node is full, or the gateway's own queue
  (``queue_records_max``) is, the caller gets :class:`Overloaded` (503) with a Retry-After
  computed from the queued records and the recent drain rate.
* **Failing over.** A connection error, a timeout or a 503 from a node marks it and the same
  call goes to the next node (writes are safe to resend: the record id makes them idempotent).
  A background loop probes every node's ``/internal/v1/ready`` and brings recovered nodes back.
* **Deadlines.** Each item carries its request's deadline; a node call gets the latest deadline
  of its items as ``X-Baas-Deadline-Ms`` (remaining budget), and items whose caller gave up
  are dropped before the call is made.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack

from gateway.config import GatewayLimits, GatewayTimeouts, NodeEndpoint
from node.api.identity_routes import IDENTITY_ENTRIES_PATH
from node.api.wire import (
    APPLIED_INDEX_HEADER,
    DEADLINE_HEADER,
    MSGPACK,
    QUEUE_DEPTH_HEADER,
    QUEUE_MAX_HEADER,
)
from node.batcher import Batcher
from node.consensus.state_machine import AppEntry, encode_app_entry
from node.errors import (
    BaasError,
    CallerError,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    OperationFailed,
    Overloaded,
    RecordUnavailable,
)
from node.logs import REQUEST_ID_HEADER

__all__ = ["NodeClient", "NodeState", "ReadItem", "WriteItem"]

log = logging.getLogger("baas.gateway.nodes")


def error_from_problem(status: int, body: dict[str, Any]) -> BaasError:
    code = str(body.get("code", "node_error"))
    detail = str(body.get("detail", "node error"))
    if status == 404:
        return NotFound(detail, code=code)
    if status == 503 and code == RecordUnavailable.code:
        return RecordUnavailable(detail)
    if status == 504:
        return DeadlineExceeded(detail)
    if 400 <= status < 500:
        error = CallerError(detail, code=code)
        error.http_status = status  # type: ignore[misc]
        return error
    return OperationFailed(detail, code=code)


@dataclass(frozen=True, slots=True)
class WriteItem:
    record: dict[str, Any]  # the node wire form: rid, blob, pid, fp[, pc, ev, ap, pt, md, ur]
    deadline: float  # loop.time() by which the caller stops waiting
    request_id: str

    @classmethod
    def operation(
        cls,
        record: dict[str, Any],
        events: bytes,
        approvals: bytes | None,
        *,
        deadline: float,
        request_id: str,
        partner: bytes | None = None,
        mode: int | None = None,
        user_refs: Sequence[bytes] = (),
    ) -> WriteItem:
        """A record that carries a ledger operation: its events in the wire form
        (business/ledger/wire.py) and the users' approvals, applied with its index entry.

        ``partner`` (16 bytes, business.identity.ids.partner_id of the AUTHENTICATED partner,
        or 16 zero bytes for the platform's own operations) and ``mode`` (business.identity.
        ids.Mode) say who proposes it; ``user_refs`` (ids.user_ref of the partner's linked
        users) name the wallets it may credit. Never take them from the client: from log
        feature 7 the state machine refuses operations with events but no proposer, and
        checks every account and approval against them (node/consensus/ledger_ops.py)."""
        extra: dict[str, Any] = {"ev": events}
        if approvals is not None:
            extra["ap"] = approvals
        if partner is not None:
            extra["pt"] = partner
            extra["md"] = mode
        if user_refs:
            extra["ur"] = list(user_refs)
        return cls({**record, **extra}, deadline, request_id)

    @classmethod
    def bridge_operation(
        cls,
        record: dict[str, Any],
        request: bytes,
        approvals: bytes | None,
        *,
        deadline: float,
        request_id: str,
        partner: bytes,
        mode: int,
        user_refs: Sequence[bytes] = (),
        field: str = "br",
    ) -> WriteItem:
        """A record that carries a Bridge request (log feature 8; ``field`` ``"br"``:
        business.bridge.wire.encode_request) or a payments or Market request (log feature 9;
        ``field`` ``"pm"``: business.payments.wire.encode_request), of a request whose op id
        is the record id; the state machine makes its ledger events. The proposer is the
        AUTHENTICATED partner, as for :meth:`operation`; ``user_refs`` name the linked users
        it issues to or swaps for; ``approvals`` carry the user's signature over
        operation_digest(record id, request)."""
        item = cls.operation(
            record, b"", approvals, deadline=deadline, request_id=request_id,
            partner=partner, mode=mode, user_refs=user_refs,
        )  # fmt: skip
        if field not in ("br", "pm"):
            raise InvalidRequest(f"an operation carries no request field {field!r}")
        del item.record["ev"]
        item.record[field] = request
        return item


@dataclass(frozen=True, slots=True)
class ReadItem:
    record_id: bytes
    deadline: float
    request_id: str


@dataclass(slots=True)
class NodeState:
    healthy: bool = True
    queue_depth: int = 0
    queue_max: int = 0

    @property
    def fill_percent(self) -> int:
        return 100 * self.queue_depth // self.queue_max if self.queue_max else 0


class _DrainRate:
    """Records completed per second, smoothed: the basis of Retry-After."""

    def __init__(self) -> None:
        self._rate = 0.0
        self._count = 0
        self._since = time.monotonic()

    def add(self, records: int) -> None:
        self._count += records
        now = time.monotonic()
        if now - self._since >= 0.5:
            sample = self._count / (now - self._since)
            self._rate = sample if self._rate == 0 else 0.7 * self._rate + 0.3 * sample
            self._count = 0
            self._since = now

    @property
    def per_s(self) -> float:
        return self._rate


class NodeClient:
    def __init__(
        self,
        nodes: tuple[NodeEndpoint, ...],
        api_token: str,
        limits: GatewayLimits,
        timeouts: GatewayTimeouts,
    ) -> None:
        self._nodes = nodes
        self.node_state: dict[str, NodeState] = {n.name: NodeState() for n in nodes}
        self._cycle = itertools.cycle(nodes)
        self._token = api_token
        self._limits = limits
        self._timeouts = timeouts
        self._session: aiohttp.ClientSession | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._drain = _DrainRate()
        shared = {
            "window_s": timeouts.coalesce_window_s,
            "inflight_max": limits.node_calls_inflight_max,
            "pending_max": limits.queue_records_max,
            "held_back_s_max": timeouts.queue_wait_s_max,
        }
        self._writes: Batcher[str, WriteItem, dict[str, Any]] = Batcher(
            self._write_call,
            items_max=limits.node_batch_records_max,
            bytes_max=limits.node_batch_bytes_max,
            size_of=lambda item: len(item.record["blob"]) + 128,
            unfilled_inflight_max=limits.node_write_calls_unfilled_max,
            stalled_after_s=timeouts.node_write_call_stalled_s,
            **shared,  # type: ignore[arg-type]
        )
        self._reads: Batcher[str, ReadItem, dict[str, Any]] = Batcher(
            self._read_call,
            items_max=limits.node_batch_records_max,
            bytes_max=limits.node_batch_bytes_max,
            **shared,  # type: ignore[arg-type]
        )
        self.node_calls = 0
        self.node_call_failures = 0
        self.direct_records = 0  # records of big partner batches in their own node calls

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._limits.node_connections_max),
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=aiohttp.ClientTimeout(total=self._timeouts.node_request_s),
        )
        self._health_task = asyncio.create_task(self._probe_forever())

    async def stop(self) -> None:
        await self._writes.close()
        await self._reads.close()
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # ----------------------------------------------------------------- state

    def healthy_nodes(self) -> list[str]:
        return [n.name for n in self._nodes if self.node_state[n.name].healthy]

    @property
    def queued_records(self) -> int:
        return self._writes.pending_items + self._reads.pending_items

    @property
    def inflight_records(self) -> int:
        return self._writes.inflight_items + self._reads.inflight_items + self.direct_records

    def batcher_stats(self) -> dict[str, dict[str, int]]:
        return {"write": self._writes.snapshot(), "read": self._reads.snapshot()}

    def retry_after_s(self) -> int:
        """Seconds until the records queued in the cluster should have drained."""
        queued = self.queued_records + sum(s.queue_depth for s in self.node_state.values())
        rate = self._drain.per_s
        estimate = math.ceil(queued / rate) if rate > 0 else 1
        return max(1, min(self._limits.retry_after_s_max, estimate))

    def _full(self, node: NodeEndpoint) -> bool:
        state = self.node_state[node.name]
        return state.fill_percent >= self._limits.node_queue_fill_max_percent

    def _order(self) -> list[NodeEndpoint]:
        start = next(self._cycle)
        index = self._nodes.index(start)
        rotated = self._nodes[index:] + self._nodes[:index]
        usable = [n for n in rotated if self.node_state[n.name].healthy and not self._full(n)]
        if not usable and any(self.node_state[n.name].healthy for n in rotated):
            raise Overloaded(
                "every node's queue is full",
                code="cluster_overloaded",
                retry_after_s=self.retry_after_s(),
            )
        # Usable first; unhealthy ones last, as a fallback when their state is stale.
        return usable + [n for n in rotated if n not in usable]

    def _note_queue(self, node: NodeEndpoint, headers: Any) -> None:
        try:
            depth = int(headers.get(QUEUE_DEPTH_HEADER, ""))
            queue_max = int(headers.get(QUEUE_MAX_HEADER, ""))
        except ValueError:
            return
        state = self.node_state[node.name]
        state.queue_depth, state.queue_max = max(0, depth), max(0, queue_max)

    # ----------------------------------------------------------------- health

    async def _probe(self, node: NodeEndpoint) -> None:
        assert self._session is not None
        try:
            async with self._session.get(
                f"http://{node.http_addr}/internal/v1/ready",
                timeout=aiohttp.ClientTimeout(total=1.0),
            ) as response:
                healthy = response.status == 200
                self._note_queue(node, response.headers)
        except (aiohttp.ClientError, TimeoutError):
            healthy = False
        state = self.node_state[node.name]
        if healthy != state.healthy:
            log.info("node %s is now %s", node.name, "healthy" if healthy else "unhealthy")
        state.healthy = healthy

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.gather(*(self._probe(n) for n in self._nodes))
            await asyncio.sleep(self._timeouts.health_interval_s)

    # ----------------------------------------------------------------- calls

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        deadline: float,
        request_id: str | None,
        json_reply: bool = False,
        json_body: bool = False,
        next_node_on: frozenset[int] = frozenset(),
    ) -> dict[str, Any]:
        """Call nodes in turn until one answers; ``next_node_on``: statuses that send the
        call on to the next node too (a lagging node may not know a log entry yet)."""
        assert self._session is not None, "NodeClient.start() was not called"
        data = (
            None
            if body is None
            else json.dumps(body).encode()
            if json_body
            else msgpack.packb(body, use_bin_type=True)
        )
        last: BaasError = OperationFailed("no node is reachable", code="no_node_available")
        loop = asyncio.get_running_loop()
        for node in self._order():
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                raise DeadlineExceeded("the request's deadline passed before a node answered")
            headers = {DEADLINE_HEADER: str(max(1, int(remaining_s * 1000)))}
            if data is not None:
                headers["Content-Type"] = "application/json" if json_body else MSGPACK
            if request_id is not None:
                headers[REQUEST_ID_HEADER] = request_id
            self.node_calls += 1
            try:
                async with self._session.request(
                    method,
                    f"http://{node.http_addr}{path}",
                    data=data,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(
                        total=min(remaining_s, self._timeouts.node_request_s)
                    ),
                ) as response:
                    raw = await response.read()
                    self._note_queue(node, response.headers)
                    if response.status == 200:
                        decoded: dict[str, Any] = (
                            json.loads(raw) if json_reply else msgpack.unpackb(raw, raw=False)
                        )
                        return decoded
                    problem = await self._problem(response, raw)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.node_call_failures += 1
                if loop.time() >= deadline:
                    raise DeadlineExceeded("no node answered within the deadline") from exc
                self.node_state[node.name].healthy = False
                last = OperationFailed(
                    f"node {node.name} unreachable: {type(exc).__name__}", code="node_unreachable"
                )
                continue
            error = error_from_problem(response.status, problem)
            if response.status in next_node_on:
                last = error
                continue
            if response.status == 503 and not isinstance(error, RecordUnavailable):
                self.node_call_failures += 1
                last = error  # that node is overloaded or not ready: try the next one
                continue
            raise error
        if isinstance(last, OperationFailed) and last.code == Overloaded.code:
            raise Overloaded(
                "every node refused: overloaded",
                code="cluster_overloaded",
                retry_after_s=self.retry_after_s(),
            )
        raise last

    @staticmethod
    async def _problem(response: aiohttp.ClientResponse, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
            return body if isinstance(body, dict) else {}
        except ValueError:
            return {"detail": f"node answered {response.status}"}

    @staticmethod
    def _shared_request_id(request_ids: list[str]) -> str | None:
        first = request_ids[0]
        return first if all(r == first for r in request_ids) else None

    async def _write_call(self, _key: str, items: list[WriteItem]) -> list[dict[str, Any]]:
        # A node refuses a call that repeats a record id; concurrent requests with the same
        # Idempotency-Key go in successive calls, so the later one sees the earlier's result.
        results: list[dict[str, Any] | None] = [None] * len(items)
        remaining = list(enumerate(items))
        while remaining:
            seen: set[bytes] = set()
            this_round: list[tuple[int, WriteItem]] = []
            later: list[tuple[int, WriteItem]] = []
            for position, item in remaining:
                rid = bytes(item.record["rid"])
                (later if rid in seen else this_round).append((position, item))
                seen.add(rid)
            reply = await self._call(
                "POST",
                "/internal/v1/records",
                {
                    "records": [item.record for _, item in this_round],
                    "reqs": [item.request_id for _, item in this_round],
                },
                deadline=max(item.deadline for _, item in this_round),
                request_id=self._shared_request_id([i.request_id for _, i in this_round]),
            )
            for (position, _), result in zip(this_round, reply["results"], strict=True):
                results[position] = result
            remaining = later
        self._drain.add(len(items))
        return [r for r in results if r is not None]

    async def _read_call(self, _key: str, items: list[ReadItem]) -> list[dict[str, Any]]:
        first_by_id: dict[bytes, ReadItem] = {}
        for item in items:
            first_by_id.setdefault(item.record_id, item)
        unique = list(first_by_id)
        reply = await self._call(
            "POST",
            "/internal/v1/records/read",
            {"ids": unique, "reqs": [first_by_id[rid].request_id for rid in unique]},
            deadline=max(item.deadline for item in items),
            request_id=self._shared_request_id([item.request_id for item in items]),
        )
        by_id = dict(zip(unique, reply["results"], strict=True))
        self._drain.add(len(items))
        return [by_id[item.record_id] for item in items]

    # ----------------------------------------------------------------- public

    async def write_records(self, items: list[WriteItem]) -> list[dict[str, Any]]:
        """One result map per item: ``{"ok": True, ...}`` or ``{"ok": False, code, status}``.

        A partner batch of at least half a node call is already a good batch: it goes to a
        node as its own call(s), concurrently with others, so big batches keep every node's
        coordinator busy instead of queueing behind the coalesced lane's few calls.
        """
        size = self._limits.node_batch_records_max
        if len(items) < size // 2:
            return await self._writes.run_many("write", items)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        self.direct_records += len(items)
        try:
            replies = await asyncio.gather(*(self._write_call("direct", c) for c in chunks))
        finally:
            self.direct_records -= len(items)
        return [result for reply in replies for result in reply]

    async def write_operations(self, items: list[WriteItem]) -> list[dict[str, Any]]:
        """Records carrying ledger operations (:meth:`WriteItem.operation`, or
        :meth:`WriteItem.bridge_operation` with ``br`` or ``pm``), one result each.

        As :meth:`write_records`; a success carries ``outcome``, what the ledger did
        (``{"log_time_ms", "events": [{"id", "result", "amount", ...}]}``, ids and amounts as
        strings of digits), the first outcome for a retry of the same record id too. A node
        refuses operations with ``ledger_not_enabled`` (503) until the cluster's log has
        enabled them: refused before the log, so safe to retry.
        """
        for item in items:
            # a ledger operation carries its events (ev), a Bridge or payments operation its
            # request (br, pm)
            carried = [item.record.get(name) for name in ("ev", "br", "pm")]
            if [type(x) for x in carried if x is not None] != [bytes]:
                raise InvalidRequest(
                    "an operation record carries its events (ev), Bridge (br) or payments (pm) "
                    "request as bytes"
                )
        return await self.write_records(items)

    async def log_document(
        self, path: str, *, deadline: float, request_id: str | None
    ) -> dict[str, Any]:
        """A verifiable-log document (receipt, consistency, anchors) as JSON from the first node
        that has it: a node that lags (404 / 409) passes the call on to the next."""
        return await self._call(
            "GET",
            path,
            None,
            deadline=deadline,
            request_id=request_id,
            json_reply=True,
            next_node_on=frozenset({404, 409}),
        )

    async def read_record(self, item: ReadItem) -> dict[str, Any]:
        result = await self._reads.submit("read", item)
        if not result.get("ok"):
            raise error_from_problem(int(result.get("status", 503)), result)
        return result

    # ----------------------------------------------------------------- identity (feature 7)

    async def identity_propose(
        self, entry: AppEntry, *, deadline: float, request_id: str | None
    ) -> dict[str, Any]:
        """Propose an identity entry through any node (it forwards to the leader); its
        outcome ``{"code", "detail"}`` once applied on that node."""
        return await self._call(
            "POST",
            IDENTITY_ENTRIES_PATH,
            {"entry": encode_app_entry(entry)},
            deadline=deadline,
            request_id=request_id,
        )

    async def identity_read(
        self, path: str, *, deadline: float, request_id: str | None
    ) -> dict[str, Any]:
        """An identity read (JSON carrying ``applied_index``): the freshest answer of every
        healthy node (:meth:`_freshest`), so a caller reads its own changes (a link, an
        unlink, an onboarding) right after they were acknowledged; the node's 404 if none has
        it."""
        found = await self._freshest(path, deadline=deadline, request_id=request_id)
        if isinstance(found, NotFound):
            raise found
        return found

    async def payments_ack(self, upto: int, *, deadline: float) -> dict[str, Any]:
        """The webhook deliverer acknowledges the outbox up to ``upto`` (any node proposes
        ``payments.ack`` through the leader): ``{"code", "detail": {"acked", "first"}}``."""
        return await self._call(
            "POST",
            "/internal/v1/payments/ack",
            {"upto": upto},
            deadline=deadline,
            request_id=None,
            json_reply=True,
            json_body=True,
        )

    # ----------------------------------------------------------------- ledger reads

    async def ledger_read(
        self, path: str, *, deadline: float, request_id: str | None
    ) -> dict[str, Any] | None:
        """A ledger read: the freshest answer of every healthy node (:meth:`_freshest`), None
        if no node has the object."""
        found = await self._freshest(path, deadline=deadline, request_id=request_id)
        return None if isinstance(found, NotFound) else found

    async def _freshest(
        self, path: str, *, deadline: float, request_id: str | None
    ) -> dict[str, Any] | NotFound:
        """A read (JSON carrying ``applied_index``) from every healthy node at once: the answer,
        found or a 404, with the highest applied index (a 404 names its own in a header; one
        without counts as 0, so a found answer beats it). A write is acknowledged once applied
        on the node that coordinated it, so asking them all reads the caller's own writes,
        whichever node lags: a creation, and a deletion (an unlink: the 404 is newer)."""
        assert self._session is not None, "NodeClient.start() was not called"
        nodes = [n for n in self._nodes if self.node_state[n.name].healthy] or list(self._nodes)
        remaining_s = deadline - asyncio.get_running_loop().time()
        if remaining_s <= 0:
            raise DeadlineExceeded("the request's deadline passed before a node answered")
        headers = {DEADLINE_HEADER: str(max(1, int(remaining_s * 1000)))}
        if request_id is not None:
            headers[REQUEST_ID_HEADER] = request_id
        timeout = aiohttp.ClientTimeout(total=min(remaining_s, self._timeouts.node_request_s))

        async def one(node: NodeEndpoint) -> tuple[int, dict[str, Any] | BaasError]:
            self.node_calls += 1
            try:
                async with self._session.get(  # type: ignore[union-attr]
                    f"http://{node.http_addr}{path}", headers=headers, timeout=timeout
                ) as response:
                    raw = await response.read()
                    if response.status == 200:
                        found: dict[str, Any] = json.loads(raw)
                        return int(found.get("applied_index", 0)), found
                    index = response.headers.get(APPLIED_INDEX_HEADER, "")
                    problem = await self._problem(response, raw)
                    applied = int(index) if index.isdigit() else 0
                    return applied, error_from_problem(response.status, problem)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.node_call_failures += 1
                return 0, OperationFailed(f"node {node.name}: {type(exc).__name__}")

        answers = await asyncio.gather(*(one(n) for n in nodes))
        known = [(i, a) for i, a in answers if isinstance(a, dict | NotFound)]
        if not known:  # no node could say: every answer failed
            raise next(a for _, a in answers if isinstance(a, BaasError))
        # The freshest; at one index every node holds the same state, a found answer first.
        _, best = max(known, key=lambda pair: (pair[0], isinstance(pair[1], dict)))
        assert isinstance(best, dict | NotFound)
        return best
