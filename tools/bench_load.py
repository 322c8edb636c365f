"""The load side of ``baas-bench``: one client process's share of a phase, through the gateway.

A :class:`WorkerSpec` says what to send; :func:`run_worker` sends it with the real signing
client (:class:`tools.client.PartnerClient`, one session) and returns a :class:`WorkerResult`:
one (completion time, latency, records) row per request, errors by code, a bounded sample of
the record ids written, and the process's own CPU seconds. The same function runs in the bench
process (``--client-procs 1``) or in spawned worker processes, which report progress through a
queue.

Keeping the client cheap: request bodies are built once per process and reused (no
``Idempotency-Key`` is sent, so the gateway makes a fresh key and every send is a new record);
only the signature (timestamp + nonce + HMAC) is made per request, because the gateway refuses
a byte-identical signed request as a replay. Signing costs ~3 µs for a single record and ~40 µs
for a 500-record batch (measured), against ~90 µs of aiohttp client work per request, so
pre-signing would not pay; ``--client-procs`` spreads the rest over processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tools.bench_stats import pacing_offsets_s
from tools.client import PartnerClient

__all__ = [
    "TRANSPORT_ERRORS",
    "Recorder",
    "WorkerResult",
    "WorkerSpec",
    "batch_sizes",
    "bench_record",
    "closed_loop",
    "pool_init",
    "pool_run",
    "pool_warm",
    "run_paced",
    "run_worker",
    "sample_ids",
    "sleep_until_wall",
]

BODY_POOL_MAX = 16  # distinct pre-built bodies per process, cycled
RECORD_IDS_KEPT_MAX = 20_000  # reservoir of written record ids each process keeps for reads
PACED_INFLIGHT_MAX = 512  # open-loop sends in flight per process (the gateway's own bound)
PROGRESS_INTERVAL_S = 0.25
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)  # counted by class name


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    phase: str  # single-write | batch-write | read | paced-write
    gateway_url: str
    api_key: str
    secret_hex: str
    start_at_s: float  # wall clock (time.time) at which every process starts sending
    concurrency: int = 1
    requests: int = 0  # closed loop: requests this process sends
    batch_size: int = 1
    rate_per_s: float = 0.0  # open loop: the whole run's rate (this process sends its share)
    duration_s: float = 0.0
    proc_index: int = 0
    procs: int = 1
    record_ids: tuple[str, ...] = ()  # what read sends
    seed: int = 0
    etcd_urls: tuple[str, ...] = ()  # set: the load goes to these etcd members, not the gateway
    value_bytes: int = 512  # etcd: the size of each put's value


@dataclass(slots=True)
class WorkerResult:
    completions: list[tuple[float, float, int]] = field(default_factory=list)  # end, latency, ok
    errors: Counter[str] = field(default_factory=Counter)
    record_ids: list[str] = field(default_factory=list)
    record_ids_seen: int = 0
    send_lag_s: list[float] = field(default_factory=list)  # open loop: how late sends went out
    sends_waited_for_slot: int = 0  # open loop: sends held back by the in-flight bound
    cpu_s: float = 0.0

    def merge(self, other: WorkerResult, rng: random.Random) -> None:
        self.completions.extend(other.completions)
        self.errors.update(other.errors)
        self.send_lag_s.extend(other.send_lag_s)
        self.sends_waited_for_slot += other.sends_waited_for_slot
        self.cpu_s += other.cpu_s
        self.record_ids_seen += other.record_ids_seen
        self.record_ids = sample_ids(self.record_ids, other.record_ids, rng)


def sample_ids(kept: list[str], more: list[str], rng: random.Random) -> list[str]:
    """A random sample of at most RECORD_IDS_KEPT_MAX ids out of two samples."""
    pool = kept + more
    rng.shuffle(pool)
    return pool[:RECORD_IDS_KEPT_MAX]


def bench_record(seq: int) -> dict[str, Any]:
    """A typical transaction record (~130 bytes of canonical JSON)."""
    return {
        "type": "payment",
        "seq": seq,
        "amount_minor": 1000 + seq % 100_000,
        "asset": "BAAS",
        "from": f"acct-{seq % 9973:05d}",
        "to": f"shop-{seq % 101:03d}",
        "memo": "baas-bench",
    }


class Recorder:
    """Collects one process's rows; keeps a reservoir sample of record ids; reports progress."""

    def __init__(self, seed: int, progress: Callable[[int], None]) -> None:
        self.result = WorkerResult()
        self._rng = random.Random(seed)
        self._progress = progress
        self._unreported = 0
        self._reported_at = time.monotonic()

    def keep_id(self, record_id: str) -> None:
        ids = self.result.record_ids
        self.result.record_ids_seen += 1
        if len(ids) < RECORD_IDS_KEPT_MAX:
            ids.append(record_id)
        else:
            slot = self._rng.randrange(self.result.record_ids_seen)
            if slot < RECORD_IDS_KEPT_MAX:
                ids[slot] = record_id

    def done(self, started: float, ok: int, attempted: int) -> None:
        now = time.perf_counter()
        self.result.completions.append((time.time(), now - started, ok))
        self._unreported += attempted
        if time.monotonic() - self._reported_at >= PROGRESS_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self._unreported:
            self._progress(self._unreported)
            self._unreported = 0
        self._reported_at = time.monotonic()


def _error_code(status: int, body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        return str(body["code"])
    return f"http_{status}"


async def _signed_send(
    client: PartnerClient, method: str, path: str, body: bytes
) -> tuple[int, Any]:
    response = await client.send(method, path, body, client.signed_headers(method, path, body))
    return response.status, response.body


async def _write_one(client: PartnerClient, rec: Recorder, body: bytes, started: float) -> None:
    try:
        status, reply = await _signed_send(client, "POST", "/v1/records", body)
    except TRANSPORT_ERRORS as exc:
        rec.result.errors[type(exc).__name__] += 1
        rec.done(started, 0, 1)
        return
    if status in (200, 201) and isinstance(reply, dict):
        rec.keep_id(str(reply["record_id"]))
        rec.done(started, 1, 1)
    else:
        rec.result.errors[_error_code(status, reply)] += 1
        rec.done(started, 0, 1)


async def _write_batch(client: PartnerClient, rec: Recorder, body: bytes, size: int) -> None:
    started = time.perf_counter()
    try:
        status, reply = await _signed_send(client, "POST", "/v1/records/batch", body)
    except TRANSPORT_ERRORS as exc:
        rec.result.errors[type(exc).__name__] += size
        rec.done(started, 0, size)
        return
    if status != 200 or not isinstance(reply, dict):
        rec.result.errors[_error_code(status, reply)] += size
        rec.done(started, 0, size)
        return
    ok = 0
    for item in reply["results"]:
        if item["status"] in (200, 201):
            ok += 1
            rec.keep_id(str(item["record_id"]))
        else:
            rec.result.errors[str(item.get("code") or f"http_{item['status']}")] += 1
    rec.done(started, ok, size)


async def _read_one(client: PartnerClient, rec: Recorder, record_id: str) -> None:
    started = time.perf_counter()
    try:
        status, reply = await _signed_send(client, "GET", f"/v1/records/{record_id}", b"")
    except TRANSPORT_ERRORS as exc:
        rec.result.errors[type(exc).__name__] += 1
        rec.done(started, 0, 1)
        return
    if status == 200:
        rec.done(started, 1, 1)
    else:
        rec.result.errors[_error_code(status, reply)] += 1
        rec.done(started, 0, 1)


async def sleep_until_wall(at_s: float) -> None:
    delay = at_s - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def closed_loop(
    spec: WorkerSpec, send: Callable[[int], Any], concurrency: int, requests: int
) -> None:
    next_index = 0

    async def loop() -> None:
        nonlocal next_index
        while next_index < requests:
            index = next_index
            next_index += 1
            await send(index)

    await sleep_until_wall(spec.start_at_s)
    await asyncio.gather(*(loop() for _ in range(concurrency)))


def _single_bodies(spec: WorkerSpec) -> list[bytes]:
    count = min(BODY_POOL_MAX, max(1, spec.requests))
    first = spec.seed * 1_000_003
    return [json.dumps({"record": bench_record(first + i)}).encode() for i in range(count)]


async def _run_single_write(spec: WorkerSpec, client: PartnerClient, rec: Recorder) -> None:
    bodies = _single_bodies(spec)

    async def send(index: int) -> None:
        await _write_one(client, rec, bodies[index % len(bodies)], time.perf_counter())

    await closed_loop(spec, send, spec.concurrency, spec.requests)


def batch_sizes(records: int, batch_size: int) -> list[int]:
    full, rest = divmod(records, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


async def _run_batch_write(spec: WorkerSpec, client: PartnerClient, rec: Recorder) -> None:
    sizes = batch_sizes(spec.requests, spec.batch_size)  # requests = records here
    first = spec.seed * 1_000_003
    bodies: dict[tuple[int, int], bytes] = {}

    def body(index: int) -> bytes:
        key = (index % BODY_POOL_MAX, sizes[index])
        if key not in bodies:
            base = first + key[0] * spec.batch_size
            items = [{"record": bench_record(base + j)} for j in range(key[1])]
            bodies[key] = json.dumps({"records": items}).encode()
        return bodies[key]

    for index in range(min(len(sizes), BODY_POOL_MAX)):
        body(index)  # built before the clock starts

    async def send(index: int) -> None:
        await _write_batch(client, rec, body(index), sizes[index])

    await closed_loop(spec, send, spec.concurrency, len(sizes))


async def _run_read(spec: WorkerSpec, client: PartnerClient, rec: Recorder) -> None:
    ids = spec.record_ids
    if not ids:
        raise ValueError("the read phase needs record ids written earlier")

    async def send(index: int) -> None:
        await _read_one(client, rec, ids[index % len(ids)])

    await closed_loop(spec, send, spec.concurrency, spec.requests)


async def run_paced(
    spec: WorkerSpec, rec: Recorder, send_one: Callable[[int, float], Awaitable[None]]
) -> None:
    """This process's share of an open loop at ``spec.rate_per_s``: ``send_one(i, due)`` for
    send ``i`` at its scheduled time ``due`` (perf_counter), at most PACED_INFLIGHT_MAX in
    flight; latency counts from ``due``."""
    offsets = pacing_offsets_s(spec.rate_per_s, spec.duration_s, spec.proc_index, spec.procs)
    slots = asyncio.Semaphore(PACED_INFLIGHT_MAX)
    tasks: set[asyncio.Task[None]] = set()

    async def send(index: int, due: float) -> None:
        try:
            await send_one(index, due)
        finally:
            slots.release()

    await sleep_until_wall(spec.start_at_s)
    origin = time.perf_counter()
    for i, offset in enumerate(offsets):
        due = origin + offset
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if slots.locked():
            rec.result.sends_waited_for_slot += 1  # the cluster is behind: PACED_INFLIGHT_MAX
        await slots.acquire()
        rec.result.send_lag_s.append(max(0.0, time.perf_counter() - due))
        task = asyncio.create_task(send(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


async def _run_paced_write(spec: WorkerSpec, client: PartnerClient, rec: Recorder) -> None:
    count = len(pacing_offsets_s(spec.rate_per_s, spec.duration_s, spec.proc_index, spec.procs))
    bodies = _single_bodies(dataclasses.replace(spec, requests=count))

    async def send_one(index: int, due: float) -> None:
        await _write_one(client, rec, bodies[index % len(bodies)], due)

    await run_paced(spec, rec, send_one)


PHASES: dict[str, Callable[[WorkerSpec, PartnerClient, Recorder], Any]] = {
    "single-write": _run_single_write,
    "batch-write": _run_batch_write,
    "read": _run_read,
    "paced-write": _run_paced_write,
}


async def run_worker_async(spec: WorkerSpec, progress: Callable[[int], None]) -> WorkerResult:
    rec = Recorder(spec.seed, progress)
    cpu_start = time.process_time()
    if spec.etcd_urls:
        # imported here: tools.bench_etcd builds its load from this module's pieces
        from tools.bench_etcd import run_etcd_phase

        await run_etcd_phase(spec, rec)
        rec.flush()
        rec.result.cpu_s = time.process_time() - cpu_start
        return rec.result
    async with PartnerClient(
        spec.gateway_url,
        spec.api_key,
        bytes.fromhex(spec.secret_hex),
        connections_max=max(spec.concurrency, PACED_INFLIGHT_MAX if spec.rate_per_s else 1),
    ) as client:
        await PHASES[spec.phase](spec, client, rec)
    rec.flush()
    rec.result.cpu_s = time.process_time() - cpu_start
    return rec.result


def run_worker(spec: WorkerSpec, progress: Callable[[int], None]) -> WorkerResult:
    return asyncio.run(run_worker_async(spec, progress))


# ---------------------------------------------------------------- worker processes (spawned)

_progress_queue: Any = None  # set in each worker process by pool_init


def pool_init(queue: Any) -> None:
    global _progress_queue
    _progress_queue = queue


def pool_warm(seconds: float) -> None:
    """Occupy a worker so that every process of the pool is started before a phase."""
    time.sleep(seconds)


def pool_run(spec: WorkerSpec) -> WorkerResult:
    queue = _progress_queue
    return run_worker(spec, (lambda n: queue.put(n)) if queue is not None else (lambda n: None))
