"""``baas-chaos``: a real cluster under paced load while nodes are killed, partitioned, wiped and
corrupted; then everything is healed and checked against a history of every acknowledged write.

    baas-chaos --seed 7 --duration-s 600 --out chaos.json      # rate: half a measured one
    baas-chaos --seed 1 --duration-s 60 --rate 30              # CI's short run (a test runs it)

One run: a new 5-node cluster (k=3, n=5, no chain) and its gateway as OS processes; a short
closed-loop measurement of the committed single-write rate (``--measure-s``; skipped with
``--rate``) whose half is the paced rate; paced single-record writes through the gateway, open
loop, for ``--before-s`` calm, ``--duration-s`` of faults and ``--after-s`` healed; then the
writes stop and the command waits (at most ``--heal-timeout-s``) for the healed cluster to settle.

**Faults** (:mod:`tools.chaos_faults`, one schedule from ``--seed``): kill -9 of a random node
every few seconds, restarted; one partition of a minority from the rest (iptables on loopback,
healed); one disk wipe, after which the node comes back the way the runbook says (``baas-cluster
rejoin-node``: a new incarnation, then repair fills it); one shard's bytes flipped in a table
file of a stopped node.

**The history**: every acknowledged write (record id, SHA-256 of its body, when, latency). Writes
that failed or timed out are counted by reason, never checked: the system promised nothing.
Beside them, ledger transfers between four funded test accounts of an onboarded partner at
``--ledger-rate`` (:mod:`tools.chaos_ledger`); those of unknown outcome are resolved after the
heal by sending them again with the same idempotency key.

**Checks** (:mod:`tools.chaos_check`): every acknowledged write reads back identical through the
gateway; the leader's repairer finished a clean pass (backlog 0, nothing below n) that started
after the last write could be planned; every sampled record (``--shard-check-records``, plus the
corrupted one) holds all n shard indices healthy across the nodes; every replica answers the
same applied index, Merkle log size and root, ledger and Bridge state digests; every ledger's
totals balance on every node and every test account holds what the transfer history says; every
fault kind was injected and every node came back. The healing time is
from the heal until all of that holds.

**Report** (``--out``, JSON ``"format": 1``): parameters, the rate and where it came from, the
load average, every fault with its times, writes acked/failed by phase and reason, latency
p50/p99 per phase and per fault in force, healing time, each check's verdict, and the line that
reproduces the run. Exit status 0 when every check holds, 1 when one fails, 2 on a usage or
setup error. Partitions need iptables and root (``--no-partition`` runs without them and fails
the faults check, so that a run without partitions never passes as a full one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from node.errors import BaasError, OperationFailed
from tools.chaos_check import (
    Ack,
    ReadBack,
    ReplicaState,
    Verdict,
    body_sha256,
    check_faults,
    check_ledger_history,
    check_ledgers,
    check_reads,
    check_repair,
    check_replicas,
    check_shards,
    latency_summary,
)
from tools.chaos_faults import (
    FaultEvent,
    LoopbackPartitioner,
    PartitionNode,
    corrupt_one_shard,
    plan_faults,
    run_tag,
    wipe_data_dir,
)
from tools.chaos_ledger import LedgerTraffic
from tools.client import PartnerClient
from tools.cluster_init import ClusterLayout, init_cluster
from tools.local_cluster import LocalCluster
from tools.local_partners import onboard_partner
from tools.members import rejoin
from tools.status import read_token

__all__ = ["ChaosSettings", "main", "open_loop", "run_chaos"]

PARTNER = "chaos-shop"
LEDGER_PARTNER = "chaos-ledger"  # onboarded on the log: the ledger refuses unknown partners
REPORT_FORMAT = 1
# Repair and scrub paced for a run of minutes rather than a production day: a pass every 2 s
# over records older than 2 s, and a scrub pass every 10 s (defaults: 10 s, 10 s, a day).
NODE_TOML = (
    "\n[repair]\npass_interval_s = 2.0\nfresh_record_s = 2.0\n[scrub]\npass_interval_s = 10.0\n"
)
FRESH_RECORD_MS = 2000
GID_BASE = 50_000  # node i of this run runs with gid GID_BASE + 16 * (pid % 900) + i
MEASURE_CLIENTS = 16
READ_CLIENTS = 16
READ_ATTEMPTS_MAX = 3  # a read after the heal may meet a 503 while a node catches up
POLL_S = 0.5
NODE_TIMEOUT_S = 2.0
REJOIN_ATTEMPTS_MAX = 10
REJOIN_RETRY_S = 3.0
# A restarted node is ready once it applied the log far enough to see itself a member: 15-27 s
# at load 11-13, once over 30 s (LocalCluster's default); past this the restart counts as failed.
READY_TIMEOUT_S = 60.0
REJOINED_READY_S = 120.0  # a rejoined node catches up from nothing first
STARTUP_READY_S = 120.0  # five nodes importing at once on a busy box
REPLICA_READS_MAX = 3  # a tick entry between a node's reads: read it again


@dataclass(frozen=True, slots=True)
class ChaosSettings:
    seed: int
    duration_s: float
    rate: float | None  # None: half the measured rate
    measure_s: float
    before_s: float
    after_s: float
    kill_every_s: tuple[float, float]
    heal_timeout_s: float
    nodes: int
    inflight_max: int  # writes in flight at once; past it a scheduled write is skipped, counted
    write_timeout_s: float
    shard_check_records: int
    ledger_rate: float  # transfers/s (0: no ledger traffic)
    partition: bool
    directory: Path | None
    out: Path

    def reproduce(self, rate: float) -> str:
        return (
            f"baas-chaos --seed {self.seed} --duration-s {self.duration_s:g} --rate {rate:g} "
            f"--nodes {self.nodes} --ledger-rate {self.ledger_rate:g}"
            + ("" if self.partition else " --no-partition")
        )


class NodeApi:
    """The nodes' internal HTTP API with the cluster's token (None when a node does not answer)."""

    def __init__(self, layout: ClusterLayout) -> None:
        self.layout = layout
        self._headers = {"Authorization": f"Bearer {read_token(Path(layout.directory))}"}
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    async def close(self) -> None:
        await self._session.close()

    async def get(self, name: str, path: str) -> Any:
        node = next(n for n in self.layout.nodes if n.name == name)
        try:
            async with self._session.get(
                f"http://{node.http_addr}{path}",
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=NODE_TIMEOUT_S),
            ) as response:
                if response.status != 200:
                    return None
                return await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None


async def open_loop(rate: float, stop: asyncio.Event, start: Callable[[], None]) -> None:
    """Open loop: slot i is due at i / rate (late ones go at once), whatever the answers;
    ``start()`` runs for each slot until ``stop`` is set. The chaos writer and the repair
    benchmark's reader both pace this way."""
    started, i = time.monotonic(), 0
    while not stop.is_set():
        due = started + i / rate
        if due > time.monotonic():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), due - time.monotonic())
            continue
        i += 1
        start()


class Writer:
    """Paced single-record writes through the gateway; remembers every acknowledged one."""

    def __init__(self, client: PartnerClient, settings: ChaosSettings, started: float) -> None:
        self._client = client
        self._settings = settings
        self._started = started
        self._rng = random.Random(settings.seed)
        self._tasks: set[asyncio.Task[bool]] = set()
        self._seq = 0
        self.phase = "measure"
        self.faults_now: set[str] = set()  # kinds in force, set by the fault runner
        self.acks: list[Ack] = []
        self.failures: Counter[tuple[str, str]] = Counter()  # (phase, reason)
        self.sent: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()  # past inflight_max: never sent
        self.by_phase: defaultdict[str, list[float]] = defaultdict(list)
        self.by_fault: defaultdict[str, list[float]] = defaultdict(list)

    async def write_one(self) -> bool:
        seq, phase = self._seq, self.phase
        self._seq += 1
        fault = "+".join(sorted(self.faults_now)) or "none"
        body = {"chaos_seed": self._settings.seed, "seq": seq, "pad": self._rng.randbytes(24).hex()}
        key = f"chaos-{self._settings.seed}-{seq}-{secrets.token_hex(4)}"
        self.sent[phase] += 1
        sent = time.monotonic()
        try:
            answer = await asyncio.wait_for(
                self._client.put_record(body, idempotency_key=key), self._settings.write_timeout_s
            )
        except TimeoutError:
            self.failures[(phase, "timeout")] += 1
            return False
        except aiohttp.ClientError as exc:
            self.failures[(phase, type(exc).__name__)] += 1
            return False
        latency_ms = (time.monotonic() - sent) * 1000
        if answer.status not in (200, 201) or not isinstance(answer.body, dict):
            code = answer.body.get("code") if isinstance(answer.body, dict) else None
            self.failures[(phase, f"{answer.status} {code}")] += 1
            return False
        self.acks.append(
            Ack(
                seq,
                str(answer.body["record_id"]),
                body_sha256(body),
                round(sent - self._started, 3),
                round(latency_ms, 1),
                phase,
            )
        )
        self.by_phase[phase].append(latency_ms)
        self.by_fault[fault].append(latency_ms)
        return True

    async def closed_loop(self, seconds: float, clients: int) -> float:
        """Acknowledged writes per second of ``clients`` writing back to back."""
        deadline = time.monotonic() + seconds
        before = len(self.acks)

        async def client() -> None:
            while time.monotonic() < deadline:
                await self.write_one()

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        return (len(self.acks) - before) / (time.monotonic() - started)

    async def paced(self, rate: float, stop: asyncio.Event) -> None:
        """Open loop at ``rate`` writes/s (:func:`open_loop`), at most ``inflight_max`` at once."""
        await open_loop(rate, stop, self._start_write)

    def _start_write(self) -> None:
        if len(self._tasks) >= self._settings.inflight_max:
            self.skipped[self.phase] += 1
            return
        task = asyncio.create_task(self.write_one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks))


class FaultRunner:
    """Runs the schedule against the cluster, one event after another; records what it did."""

    def __init__(
        self,
        cluster: LocalCluster,
        partitioner: LoopbackPartitioner | None,
        writer: Writer,
        rng: random.Random,
        calm_s: float,
    ) -> None:
        self._cluster = cluster
        self._calm_s = calm_s
        self._partitioner = partitioner
        self._writer = writer
        self._rng = rng
        self.events: list[dict[str, Any]] = []
        self.corrupted: list[str] = []  # record ids whose shard was flipped
        self.kills_dropped = 0  # kills skipped: the next event was already due

    async def run(self, plan: tuple[FaultEvent, ...], started: float) -> None:
        """Each event at its planned time, or late when the one before overran (a restart waits
        for readiness, a rejoin for the leader); a late partition still holds for its planned
        time. A kill also waits ``calm_s`` after the last
        fault ended, and is dropped (counted) when the next event is already due: a busy box
        runs fewer kills, each after a calm moment, rather than a longer schedule."""
        last_done = started
        cut_late_s = 0.0  # a partition that started late holds its planned time all the same
        for i, event in enumerate(plan):
            due = started + event.at_s
            if event.kind == "heal":
                due += cut_late_s
            if event.kind == "kill":
                following = plan[i + 1] if i + 1 < len(plan) else None
                if following is not None and started + following.at_s <= time.monotonic():
                    self.kills_dropped += 1
                    continue
                due = max(due, last_done + self._calm_s)
            wait_s = due - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            record: dict[str, Any] = {
                "kind": event.kind,
                "nodes": list(event.nodes),
                "planned_s": event.at_s,
                "at_s": round(time.monotonic() - started, 1),
            }
            if event.kind == "partition":
                cut_late_s = max(0.0, time.monotonic() - started - event.at_s)
            try:
                await self._inject(event, record)
            except BaasError as exc:
                record["error"] = exc.detail
            record["done_s"] = round(time.monotonic() - started, 1)
            self.events.append(record)
            last_done = time.monotonic()

    async def _inject(self, event: FaultEvent, record: dict[str, Any]) -> None:
        name = event.nodes[0]
        kinds = self._writer.faults_now
        if event.kind == "partition":
            if self._partitioner is None:
                raise OperationFailed("partitions are off (--no-partition)")
            await asyncio.to_thread(self._partitioner.cut, event.nodes)
            kinds.add("partition")
        elif event.kind == "heal":
            if self._partitioner is not None:
                await asyncio.to_thread(self._partitioner.heal)
            kinds.discard("partition")
        elif event.kind == "kill":
            kinds.add("kill")
            try:
                await asyncio.to_thread(self._cluster.kill, name)
                await asyncio.sleep(event.down_s)
                await self._restart(name, record)
            finally:
                kinds.discard("kill")
        elif event.kind == "wipe":
            kinds.add("wipe")
            try:
                await self._wipe(name, record)
            finally:
                kinds.discard("wipe")
        elif event.kind == "corrupt":
            kinds.add("corrupt")
            try:
                await asyncio.to_thread(self._cluster.kill, name)
                shard_db = data_dir_of(self._cluster, name) / "shards"
                record_id = await asyncio.to_thread(corrupt_one_shard, shard_db, self._rng)
                self.corrupted.append(record_id)
                record["record_id"] = record_id
                await self._restart(name, record)
            finally:
                kinds.discard("corrupt")

    async def _restart(self, name: str, record: dict[str, Any]) -> None:
        await restart_node(self._cluster, name, record, READY_TIMEOUT_S)

    async def _wipe(self, name: str, record: dict[str, Any]) -> None:
        await wipe_and_rejoin(self._cluster, name, self._rng, record)


def data_dir_of(cluster: LocalCluster, name: str) -> Path:
    return Path(cluster.node(name).config_path).parent / "data"


async def restart_node(
    cluster: LocalCluster, name: str, record: dict[str, Any], ready_timeout_s: float
) -> None:
    started = time.monotonic()
    await asyncio.to_thread(partial(cluster.start_node, name, ready_timeout_s=ready_timeout_s))
    record["ready_after_s"] = round(time.monotonic() - started, 1)


async def wipe_and_rejoin(
    cluster: LocalCluster, name: str, rng: random.Random, record: dict[str, Any]
) -> None:
    """kill -9, the data directory gone, then the runbook: rejoin-node, start it (also what
    ``baas-bench-repair`` does to its node)."""
    layout = cluster.layout
    await asyncio.to_thread(cluster.kill, name)
    await asyncio.to_thread(wipe_data_dir, data_dir_of(cluster, name))
    node = cluster.node(name)
    for attempt in range(1, REJOIN_ATTEMPTS_MAX + 1):
        # Any running node takes the request to the leader; when the wiped node was the
        # leader, the others need an election first (the runbook: "run it again").
        running = [n.name for n in layout.nodes if n.name != name and cluster.running(n.name)]
        via = cluster.node(rng.choice(running))
        try:
            answer = await asyncio.to_thread(rejoin, layout, node, via)
        except BaasError as exc:
            if attempt == REJOIN_ATTEMPTS_MAX:
                raise
            record.setdefault("rejoin_errors", []).append(exc.detail)
            await asyncio.sleep(REJOIN_RETRY_S)
            continue
        record["incarnation"] = (answer.get("member") or {}).get("incarnation")
        record["rejoin_attempts"] = attempt
        break
    # A new incarnation is ready once it has caught up with the log as a member again.
    await restart_node(cluster, name, record, REJOINED_READY_S)


async def replica_state(api: NodeApi, name: str) -> tuple[ReplicaState, list[Any]] | None:
    """One node's state at one applied index: the ledger digest before and after the log and
    Bridge reads must name the same index (a tick entry between them: read again later)."""
    ledger = await api.get(name, "/internal/v1/ledger/digest")
    log = await api.get(name, "/internal/v1/log")
    bridge = await api.get(name, "/internal/v1/bridge/digest")
    again = await api.get(name, "/internal/v1/ledger/digest")
    if None in (ledger, log, bridge, again) or ledger["applied_index"] != again["applied_index"]:
        return None
    state = ReplicaState(
        name,
        int(ledger["applied_index"]),
        int(log["size"]),
        str(log["root"]),
        str(ledger["digest"]),
        str(bridge["digest"]),
    )
    return state, list(ledger["totals"])


async def _leader(api: NodeApi, names: list[str]) -> tuple[str | None, dict[str, Any] | None]:
    statuses = await asyncio.gather(*(api.get(n, "/internal/v1/status") for n in names))
    for name, status in zip(names, statuses, strict=True):
        if status is not None and status["raft"]["role"] == "leader":
            return name, dict(status["repair"])
    return None, None


@dataclass(slots=True)
class Settled:
    """The healed cluster, once it settled (or what it looked like when the time ran out)."""

    healing_s: float | None
    leader: str | None
    repair: dict[str, Any] | None
    replicas: list[ReplicaState]
    totals: dict[str, list[Any]]


async def wait_settled(
    api: NodeApi, names: list[str], after_ms: int, heal_started: float, timeout_s: float
) -> Settled:
    """Poll until the leader's repairer made a clean pass that started after ``after_ms`` and
    every replica answers one state; ``healing_s`` None if that never happened in time."""
    deadline = heal_started + timeout_s

    async def stable(name: str) -> tuple[ReplicaState, list[Any]] | None:
        for _ in range(REPLICA_READS_MAX):
            found = await replica_state(api, name)
            if found is not None:
                return found
        return None

    while True:
        leader, repair = await _leader(api, names)
        answers = await asyncio.gather(*(stable(n) for n in names))
        replicas = [a[0] for a in answers if a is not None]
        totals = {a[0].node: a[1] for a in answers if a is not None}
        repaired = check_repair(leader, repair, after_ms).ok
        same = check_replicas(replicas, names).ok
        if (repaired and same) or time.monotonic() > deadline:
            healing_s = round(time.monotonic() - heal_started, 1) if repaired and same else None
            return Settled(healing_s, leader, repair, replicas, totals)
        await asyncio.sleep(POLL_S)


async def read_back(client: PartnerClient, acks: list[Ack]) -> dict[str, ReadBack]:
    pending = [a.record_id for a in acks]
    found: dict[str, ReadBack] = {}

    async def reader() -> None:
        while pending:
            record_id = pending.pop()
            status, digest = 0, None
            for _ in range(READ_ATTEMPTS_MAX):
                try:
                    answer = await client.get_record(record_id)
                except aiohttp.ClientError:
                    continue
                status = answer.status
                if status == 200 and isinstance(answer.body, dict):
                    digest = body_sha256(answer.body.get("record"))
                    break
                if status not in (429, 503):
                    break
                await asyncio.sleep(0.5)
            found[record_id] = ReadBack(record_id, status, digest)

    await asyncio.gather(*(reader() for _ in range(READ_CLIENTS)))
    return found


async def shard_holdings(
    api: NodeApi, names: list[str], record_ids: list[str]
) -> dict[str, dict[str, list[tuple[int, bool]]]]:
    """Every node's shards of each record (a node that does not answer holds nothing)."""
    holdings: dict[str, dict[str, list[tuple[int, bool]]]] = {}
    pending = list(record_ids)

    async def worker() -> None:
        while pending:
            record_id = pending.pop()
            by_node: dict[str, list[tuple[int, bool]]] = {}
            for name in names:
                local = await api.get(name, f"/internal/v1/records/{record_id}/local")
                shards = [] if local is None else local["shards"]
                held = [(int(s["index"]), False) for s in shards]
                # corrupt entries have no readable index: each counts as a broken copy
                held += [(-1, True)] * int(0 if local is None else local["corrupt"])
                by_node[name] = held
            holdings[record_id] = by_node

    await asyncio.gather(*(worker() for _ in range(READ_CLIENTS)))
    return holdings


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _node_groups(layout: ClusterLayout) -> dict[str, int]:
    base = GID_BASE + 16 * (os.getpid() % 900)
    return {node.name: base + i for i, node in enumerate(layout.nodes)}


def _partitioner(layout: ClusterLayout, groups: dict[str, int]) -> LoopbackPartitioner:
    nodes = [
        PartitionNode(node.name, groups[node.name], (node.p2p_port, node.http_port))
        for node in layout.nodes
    ]
    return LoopbackPartitioner(nodes, run_tag())


async def _chaos(
    settings: ChaosSettings,
    cluster: LocalCluster,
    partitioner: LoopbackPartitioner | None,
    report: dict[str, Any],
    ledger_credentials: tuple[str, bytes] | None,
) -> None:
    layout = cluster.layout
    names = [n.name for n in layout.nodes]
    credentials = layout.partners[PARTNER]
    started = time.monotonic()
    api = NodeApi(layout)
    client = PartnerClient(
        layout.gateway_url,
        credentials["api_key"],
        bytes.fromhex(credentials["secret_hex"]),
        connections_max=settings.inflight_max,
    )
    ledger_http = (
        None
        if ledger_credentials is None
        else PartnerClient(layout.gateway_url, *ledger_credentials)
    )
    try:
        ledger = None
        if ledger_http is not None:
            ledger = LedgerTraffic(
                ledger_http, random.Random(settings.seed + 3), settings.write_timeout_s
            )
            await ledger.setup()
        writer = Writer(client, settings, started)
        rate = settings.rate
        measured = None
        if rate is None:
            measured = await writer.closed_loop(settings.measure_s, MEASURE_CLIENTS)
            rate = max(1.0, measured / 2)
        report["rate"] = {
            "measured_committed_per_s": None if measured is None else round(measured, 1),
            "measured_with": f"{MEASURE_CLIENTS} clients of single writes, {settings.measure_s} s"
            if measured is not None
            else None,
            "paced_per_s": round(rate, 1),
            "source": "half the measured rate" if measured is not None else "--rate",
        }
        report["reproduce"] = settings.reproduce(round(rate, 1))
        plan = plan_faults(
            random.Random(settings.seed), names, settings.duration_s, settings.kill_every_s
        )
        runner = FaultRunner(
            cluster, partitioner, writer, random.Random(settings.seed + 1), settings.kill_every_s[0]
        )
        stop = asyncio.Event()
        writer.phase = "before"
        pacing = asyncio.create_task(writer.paced(rate, stop))
        transfers = (
            None
            if ledger is None
            else asyncio.create_task(ledger.paced(settings.ledger_rate, stop))
        )
        try:
            await asyncio.sleep(settings.before_s)
            writer.phase = "chaos"
            chaos_started = time.monotonic()
            await runner.run(plan, chaos_started)
            rest_s = chaos_started + settings.duration_s - time.monotonic()
            if rest_s > 0:
                await asyncio.sleep(rest_s)
            report["chaos_s"] = round(time.monotonic() - chaos_started, 1)

            # --- heal: no partition, every node running
            heal_started = time.monotonic()
            if partitioner is not None:
                await asyncio.to_thread(partitioner.heal)
            for name in names:
                if not cluster.running(name):
                    with contextlib.suppress(BaasError):
                        await asyncio.to_thread(cluster.start_node, name)
            writer.faults_now.clear()
            writer.phase = "after"
            await asyncio.sleep(settings.after_s)
        finally:
            stop.set()
            await pacing
            if transfers is not None:
                await transfers
            await writer.drain()
        if ledger is not None:
            # Before the settling: a transfer that never applied does now, and the replicas and
            # the repair pass are judged on the state that includes it.
            sent_counts = ledger.counts()
            await ledger.resolve()
        writes_stopped_ms = time.time_ns() // 1_000_000
        settled = await wait_settled(
            api, names, writes_stopped_ms + FRESH_RECORD_MS, heal_started, settings.heal_timeout_s
        )
        down = [n for n in names if not cluster.running(n)]
        ledger_verdicts: list[Verdict] = []
        if ledger is not None:
            expected, observed = ledger.expected(), await ledger.observed()
            ledger_verdicts.append(
                check_ledger_history(expected, observed, ledger.counts()["unknown"])
            )
            report["ledger"] = {
                "transfers_when_sent": sent_counts,
                "transfers_after_resolving": ledger.counts(),
                "balances_expected": expected,
                "balances_observed": observed,
            }
        reads = await read_back(client, writer.acks)
        rng = random.Random(settings.seed + 2)
        sample = [a.record_id for a in writer.acks]
        if len(sample) > settings.shard_check_records:
            sample = rng.sample(sample, settings.shard_check_records)
        sample = sorted(set(sample) | set(runner.corrupted))
        holdings = await shard_holdings(api, names, sample)
        verdicts: list[Verdict] = [
            check_reads(writer.acks, reads),
            check_repair(settled.leader, settled.repair, writes_stopped_ms + FRESH_RECORD_MS),
            check_shards(layout.n, holdings),
            check_replicas(settled.replicas, names),
            check_ledgers(settled.totals),
            *ledger_verdicts,
            check_faults(runner.events, down),
        ]
        report.update(
            {
                "faults": runner.events,
                "kills_dropped_late": runner.kills_dropped,
                "writes": _writes_json(writer),
                "latency_by_phase": {p: latency_summary(v) for p, v in writer.by_phase.items()},
                "latency_by_fault": {f: latency_summary(v) for f, v in writer.by_fault.items()},
                "healing": {
                    "healing_s": settled.healing_s,
                    "timeout_s": settings.heal_timeout_s,
                    "leader": settled.leader,
                    "leader_repair": settled.repair,
                },
                "checks": [v.to_json() for v in verdicts],
                "ok": all(v.ok for v in verdicts) and settled.healing_s is not None,
            }
        )
    finally:
        await client.close()
        await api.close()
        if ledger_http is not None:
            await ledger_http.close()


def _writes_json(writer: Writer) -> dict[str, Any]:
    failed: dict[str, dict[str, int]] = defaultdict(dict)
    for (phase, reason), count in sorted(writer.failures.items()):
        failed[phase][reason] = count
    acked = Counter(a.phase for a in writer.acks)
    return {
        "sent": dict(writer.sent),
        "acked": dict(acked),
        "acked_total": len(writer.acks),
        "failed": dict(failed),
        "skipped_inflight_max": dict(writer.skipped),
    }


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` (iptables rules, processes) runs."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_chaos(settings: ChaosSettings) -> dict[str, Any]:
    """One run (see the module docstring); returns the report, also written to ``settings.out``."""
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "tool": "baas-chaos",
        "seed": settings.seed,
        "parameters": {
            "duration_s": settings.duration_s,
            "rate": settings.rate,
            "measure_s": settings.measure_s,
            "before_s": settings.before_s,
            "after_s": settings.after_s,
            "kill_every_s": list(settings.kill_every_s),
            "heal_timeout_s": settings.heal_timeout_s,
            "nodes": settings.nodes,
            "inflight_max": settings.inflight_max,
            "write_timeout_s": settings.write_timeout_s,
            "shard_check_records": settings.shard_check_records,
            "ledger_rate": settings.ledger_rate,
            "partition": settings.partition,
            "node_toml": NODE_TOML.strip(),
        },
        "load_average_start": _load_average(),
        "ok": False,
    }
    with contextlib.ExitStack() as stack:
        directory = settings.directory
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        layout = init_cluster(directory, nodes=settings.nodes, partners=(PARTNER,), chain="none")
        for node in layout.nodes:
            config = Path(node.config_path)
            config.write_text(config.read_text() + NODE_TOML)
        groups = _node_groups(layout)
        report["cluster"] = {
            "directory": str(directory),
            "k": layout.k,
            "n": layout.n,
            "node_gids": groups,
        }
        partitioner = _partitioner(layout, groups) if settings.partition else None
        cluster = LocalCluster(layout, node_groups=groups)
        stack.enter_context(_terminate_as_interrupt())
        try:
            if partitioner is not None:
                partitioner.install()
            cluster.start(STARTUP_READY_S)
            credentials = None
            if settings.ledger_rate > 0:
                try:
                    credentials = onboard_partner(layout, LEDGER_PARTNER)["test"]
                except RuntimeError as exc:
                    raise OperationFailed(str(exc)) from exc
            asyncio.run(_chaos(settings, cluster, partitioner, report, credentials))
        finally:
            if partitioner is not None:
                report["partition_chain"] = partitioner.chain
                report["partition_cleanup_errors"] = partitioner.remove()
            cluster.stop()
            report["load_average_end"] = _load_average()
            settings.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    pair = (float(low), float(high or low))
    if not 0 < pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError("want LOW,HIGH seconds with 0 < LOW <= HIGH")
    return pair


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baas-chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1, help="draws every fault and write body")
    p.add_argument("--duration-s", type=float, default=60.0, help="the faults' phase")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="writes/s (default: half the rate measured for --measure-s)",
    )
    p.add_argument("--measure-s", type=float, default=10.0)
    p.add_argument("--before-s", type=float, default=5.0, help="paced, before the first fault")
    p.add_argument("--after-s", type=float, default=5.0, help="paced, after the heal")
    p.add_argument("--kill-every-s", type=_pair, default=(3.0, 6.0), metavar="LOW,HIGH")
    p.add_argument("--heal-timeout-s", type=float, default=300.0)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--inflight-max", type=int, default=256)
    p.add_argument("--write-timeout-s", type=float, default=15.0)
    p.add_argument(
        "--shard-check-records",
        type=int,
        default=2000,
        help="records whose shards are counted on every node (a seeded sample)",
    )
    p.add_argument("--ledger-rate", type=float, default=2.0, help="transfers/s (0: none)")
    p.add_argument(
        "--no-partition",
        dest="partition",
        action="store_false",
        help="no iptables (the faults check then fails: not a full run)",
    )
    p.add_argument("--dir", type=Path, default=None, help="cluster directory (default: temporary)")
    p.add_argument("--out", type=Path, default=Path("chaos-report.json"))
    return p


def _settings(args: argparse.Namespace) -> ChaosSettings:
    positive = ("duration_s", "measure_s", "heal_timeout_s", "write_timeout_s")
    for name in positive:
        if getattr(args, name) <= 0:
            raise OperationFailed(f"--{name.replace('_', '-')} must be positive")
    if args.rate is not None and args.rate <= 0:
        raise OperationFailed("--rate must be positive")
    if args.ledger_rate < 0:
        raise OperationFailed("--ledger-rate must not be negative")
    if args.inflight_max < 1 or args.shard_check_records < 1 or args.nodes < 3:
        raise OperationFailed("--inflight-max, --shard-check-records >= 1 and --nodes >= 3")
    return ChaosSettings(
        seed=args.seed,
        duration_s=args.duration_s,
        rate=args.rate,
        measure_s=args.measure_s,
        before_s=args.before_s,
        after_s=args.after_s,
        kill_every_s=args.kill_every_s,
        heal_timeout_s=args.heal_timeout_s,
        nodes=args.nodes,
        inflight_max=args.inflight_max,
        write_timeout_s=args.write_timeout_s,
        shard_check_records=args.shard_check_records,
        ledger_rate=args.ledger_rate,
        partition=args.partition,
        directory=args.dir,
        out=args.out,
    )


def _summary(report: dict[str, Any]) -> str:
    lines = [f"baas-chaos seed {report['seed']}: {'OK' if report['ok'] else 'VIOLATIONS'}"]
    for check in report.get("checks", []):
        lines.append(f"  {'ok  ' if check['ok'] else 'FAIL'} {check['check']}: {check['detail']}")
        lines.extend(f"       {v}" for v in check["violations"][:5])
    healing = report.get("healing", {})
    lines.append(f"  healing {healing.get('healing_s')} s; reproduce: {report.get('reproduce')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
        report = run_chaos(settings)
    except BaasError as exc:
        print(f"baas-chaos: {exc.detail}", file=sys.stderr)
        return 2
    print(_summary(report))
    print(f"report: {settings.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
