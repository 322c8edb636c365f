"""baas-bench-repair: a node holding a shard of many records loses its disk; how fast is repair?

Issue 17's target: "a wiped node holding 10^5 records' shards is fully repaired in <= 10 minutes
while the cluster serves half its sustained committed write rate, with read p99 during repair
<= 2x before it". One run, on a new 5-node cluster (k=3, n=5, no chain: every node holds one
shard of every record) as OS processes:

1. **Fill**: ``--records`` records written through the gateway in batches (250 a request, a few
   requests in flight), then the leader's repairer must make a clean pass over them.
2. **Rate**: 16 clients write single records back to back for ``--measure-s``; the paced rate
   is half the committed rate they reached (as ``baas-chaos``), unless ``--rate`` is given.
3. **Before**: ``--before-s`` of paced single writes and paced reads of filled records.
4. **Wipe**: a node that is not the leader is killed with -9, its data directory deleted, and
   the runbook followed (``baas-cluster rejoin-node``, start: a new incarnation with an empty
   shard store), while the paced writes and reads go on.
5. **Repair**: until the leader's repairer finishes a clean pass that started after the node
   was back (every record at n healthy shards, backlog 0), or ``--timeout-s``.

The JSON report (``"format": 1``) has the fill rate, the paced rate, the wiped node, the time
from the node's start to backlog 0, the shards the leader rebuilt and their rate (one shard per
record on the wiped node: records/s repaired), the wiped node's shard count over time, writes
and reads by phase (acknowledged per second against the paced rate: the traffic repair left
for writes; p50/p99), the load average at start and end, each target's verdict, the fill
batches that were resent, and every filled record read back through the gateway at the end
(answers by status: anything but 200 is an acknowledged record lost; exit status 1).
The node settings are ``baas-chaos``'s (repair passes every 2 s over records older than 2 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import BaasError, OperationFailed
from tools.chaos import (
    MEASURE_CLIENTS,
    NODE_TOML,
    PARTNER,
    STARTUP_READY_S,
    ChaosSettings,
    NodeApi,
    Writer,
    _leader,
    _load_average,
    open_loop,
    wipe_and_rejoin,
)
from tools.chaos_check import check_repair, latency_summary
from tools.client import PartnerClient
from tools.cluster_init import init_cluster
from tools.local_cluster import LocalCluster

__all__ = ["RepairBenchSettings", "main", "run_repair_bench"]

REPORT_FORMAT = 1
FILL_BATCH_RECORDS = 250
FILL_INFLIGHT = 4
FILL_ATTEMPTS_MAX = 50
FILL_RETRY_S = 0.5
READ_SAMPLE_MAX = 5000  # filled record ids kept for the paced reads
POLL_S = 1.0
TIMELINE_EVERY_S = 5.0
REPAIR_TARGET_S = 600.0  # the bound for 10^5 records
TARGET_RECORDS = 100_000
FRESH_RECORD_MS = 2000
READ_BACK_CLIENTS = 16
READ_BACK_FAILED_MAX = 50  # NODE_TOML's fresh_record_s: a pass skips records younger than this


@dataclass(frozen=True, slots=True)
class RepairBenchSettings:
    records: int
    rate: float | None  # None: half the measured rate
    read_rate: float
    measure_s: float
    before_s: float
    timeout_s: float
    seed: int
    directory: Path | None
    out: Path


class Reader:
    """Paced reads of filled records through the gateway; latency and failures by phase."""

    def __init__(self, client: PartnerClient, ids: list[str], rng: random.Random) -> None:
        self._client, self._ids, self._rng = client, ids, rng
        self._tasks: set[asyncio.Task[None]] = set()
        self.phase = "before"
        self.latency_ms: dict[str, list[float]] = {}
        self.failed: dict[str, int] = {}

    async def _read_one(self) -> None:
        phase, started = self.phase, time.monotonic()
        try:
            answer = await asyncio.wait_for(
                self._client.get_record(self._rng.choice(self._ids)), 15.0
            )
            ok = answer.status == 200
        except (TimeoutError, OSError, BaasError):
            ok = False
        if ok:
            self.latency_ms.setdefault(phase, []).append((time.monotonic() - started) * 1000)
        else:
            self.failed[phase] = self.failed.get(phase, 0) + 1

    async def paced(self, rate: float, stop: asyncio.Event) -> None:
        await open_loop(rate, stop, self._start_read)

    def _start_read(self) -> None:
        task = asyncio.create_task(self._read_one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks))


async def fill(client: PartnerClient, records: int, seed: int, resent: list[int]) -> list[str]:
    """Write ``records`` records in batches; return their ids. A batch with any record refused
    is sent again with the same keys (its first record's number goes to ``resent``)."""
    ids: list[str] = []
    starts = list(range(0, records, FILL_BATCH_RECORDS))
    next_start = 0

    async def batch(start: int) -> None:
        items = [
            {"idempotency_key": f"fill-{seed}-{seq}", "record": {"seq": seq, "pad": "x" * 64}}
            for seq in range(start, min(start + FILL_BATCH_RECORDS, records))
        ]
        for attempt in range(FILL_ATTEMPTS_MAX):
            if attempt:
                resent.append(start)
            with contextlib.suppress(TimeoutError, OSError):
                answer = await client.put_records(items)
                results = answer.body.get("results") if isinstance(answer.body, dict) else None
                if (
                    answer.status == 200
                    and results
                    and all(r["status"] in (200, 201) for r in results)
                ):
                    ids.extend(str(r["record_id"]) for r in results)
                    return
            await asyncio.sleep(FILL_RETRY_S)
        raise OperationFailed(f"the fill batch at {start} was never acknowledged")

    async def worker() -> None:
        nonlocal next_start
        while next_start < len(starts):
            start = starts[next_start]
            next_start += 1
            await batch(start)
            if len(ids) % 10_000 < FILL_BATCH_RECORDS:
                print(f"filled {len(ids)} of {records}", file=sys.stderr, flush=True)

    await asyncio.gather(*(worker() for _ in range(FILL_INFLIGHT)))
    return ids


async def wait_clean_pass(
    api: NodeApi, names: list[str], after_ms: int, timeout_s: float, on_poll: Any = None
) -> tuple[float | None, str | None, dict[str, Any] | None]:
    """Seconds until the leader's repairer finished a clean pass started after ``after_ms``
    (None: not within ``timeout_s``), the leader and its repair stats then."""
    started = time.monotonic()
    while True:
        leader, repair = await _leader(api, names)
        if on_poll is not None:
            await on_poll(leader, repair)
        if check_repair(leader, repair, after_ms).ok:
            return round(time.monotonic() - started, 1), leader, repair
        if time.monotonic() - started > timeout_s:
            return None, leader, repair
        await asyncio.sleep(POLL_S)


async def read_back(client: PartnerClient, ids: list[str]) -> dict[str, Any]:
    """Every filled (acknowledged) record read through the gateway: answers by status, and the
    first failures (a 429/503 is asked again, twice)."""
    statuses: Counter[int] = Counter()
    failed: list[dict[str, Any]] = []
    pending = list(enumerate(ids))

    async def worker() -> None:
        while pending:
            number, record_id = pending.pop()
            status = 0
            for _ in range(3):
                with contextlib.suppress(TimeoutError, OSError):
                    status = (await asyncio.wait_for(client.get_record(record_id), 15.0)).status
                if status not in (0, 429, 503):
                    break
                await asyncio.sleep(FILL_RETRY_S)
            statuses[status] += 1
            if status != 200 and len(failed) < READ_BACK_FAILED_MAX:
                failed.append({"fill_record": number, "record_id": record_id, "status": status})

    await asyncio.gather(*(worker() for _ in range(READ_BACK_CLIENTS)))
    return {
        "records": len(ids),
        "by_status": {str(k): v for k, v in sorted(statuses.items())},
        "failed": sorted(failed, key=lambda f: f["fill_record"]),
    }


def _phase_json(writer: Writer, reader: Reader, phase: str, seconds: float) -> dict[str, Any]:
    writes = writer.by_phase.get(phase, [])
    return {
        "seconds": round(seconds, 1),
        "writes_sent": writer.sent[phase],
        "writes_acked": len(writes),
        "writes_acked_per_s": round(len(writes) / seconds, 1) if seconds > 0 else None,
        "writes_failed": sum(v for (p, _), v in writer.failures.items() if p == phase),
        "writes_skipped": writer.skipped[phase],
        "write_latency": latency_summary(writes),
        "reads_failed": reader.failed.get(phase, 0),
        "read_latency": latency_summary(reader.latency_ms.get(phase, [])),
    }


async def _bench(
    settings: RepairBenchSettings, cluster: LocalCluster, report: dict[str, Any]
) -> None:
    layout = cluster.layout
    names = [n.name for n in layout.nodes]
    credentials = layout.partners[PARTNER]
    api = NodeApi(layout)
    client = PartnerClient(
        layout.gateway_url,
        credentials["api_key"],
        bytes.fromhex(credentials["secret_hex"]),
        connections_max=256,
    )
    rng = random.Random(settings.seed)
    try:
        began = time.monotonic()
        resent: list[int] = []
        ids = await fill(client, settings.records, settings.seed, resent)
        fill_s = time.monotonic() - began
        clean_s, _, _ = await wait_clean_pass(
            api, names, int(time.time() * 1000) + FRESH_RECORD_MS, settings.timeout_s
        )
        report["fill"] = {
            "records": len(ids),
            "seconds": round(fill_s, 1),
            "records_per_s": round(len(ids) / fill_s, 1),
            "first_clean_pass_after_s": clean_s,
            "batches_resent": len(resent),
            "batches_resent_first_records": sorted(set(resent))[:50],
        }
        # The writer is baas-chaos's: its settings give it a seed, a timeout and a bound.
        writer_settings = ChaosSettings(
            seed=settings.seed, duration_s=1.0, rate=None, measure_s=settings.measure_s,
            before_s=settings.before_s, after_s=0.0, kill_every_s=(1.0, 1.0),
            heal_timeout_s=settings.timeout_s, nodes=len(names), inflight_max=256,
            write_timeout_s=15.0, shard_check_records=1, ledger_rate=0.0, partition=False,
            directory=None, out=settings.out,
        )  # fmt: skip
        writer = Writer(client, writer_settings, time.monotonic())
        rate = settings.rate
        measured = None
        if rate is None:
            measured = await writer.closed_loop(settings.measure_s, MEASURE_CLIENTS)
            rate = max(1.0, measured / 2)
        report["rate"] = {
            "measured_committed_per_s": None if measured is None else round(measured, 1),
            "paced_per_s": round(rate, 1),
            "source": "half the measured rate" if measured is not None else "--rate",
            "reads_per_s": settings.read_rate,
        }
        reader = Reader(client, ids[:READ_SAMPLE_MAX], rng)
        stop = asyncio.Event()
        writer.phase = reader.phase = "before"
        load = [
            asyncio.create_task(writer.paced(rate, stop)),
            asyncio.create_task(reader.paced(settings.read_rate, stop)),
        ]
        try:
            await asyncio.sleep(settings.before_s)
            await _wipe_and_repair(
                settings, cluster, api, names, writer, reader, report, rng, len(ids)
            )
        finally:
            stop.set()
            await asyncio.gather(*load)
            await writer.drain()
            await reader.drain()
        report["phases"] = {
            "before": _phase_json(writer, reader, "before", settings.before_s),
            "repair": _phase_json(writer, reader, "repair", report["repair"]["seconds"]),
        }
        report["targets"] = _targets(report, rate)
        report["read_back"] = await read_back(client, ids)
    finally:
        await client.close()
        await api.close()


async def _wipe_and_repair(
    settings: RepairBenchSettings,
    cluster: LocalCluster,
    api: NodeApi,
    names: list[str],
    writer: Writer,
    reader: Reader,
    report: dict[str, Any],
    rng: random.Random,
    filled: int,
) -> None:
    leader, _ = await _leader(api, names)
    victim = next(n for n in reversed(names) if n != leader)
    wipe: dict[str, Any] = {"node": victim, "leader": leader}
    writer.phase = reader.phase = "repair"
    started = time.monotonic()
    await wipe_and_rejoin(cluster, victim, rng, wipe)
    back_s = time.monotonic() - started
    back_ms = int(time.time() * 1000)
    timeline: list[dict[str, Any]] = []
    # Every node holds one shard of every record (n = nodes): the wiped node is whole again
    # once it holds a shard of every filled record and of every write acknowledged since the
    # wipe (those it got directly; counting only the filled ones overstated the rate).
    full: dict[str, float] = {}

    async def on_poll(_leader_now: str | None, _repair: dict[str, Any] | None) -> None:
        at_s = round(time.monotonic() - started, 1)
        status = await api.get(victim, "/internal/v1/status")
        shards = None if status is None else int(status["shards"])
        expected = filled + len(writer.by_phase.get("repair", []))
        if shards is not None and shards >= expected and "at_s" not in full:
            full["at_s"] = at_s
        if not timeline or at_s - timeline[-1]["at_s"] >= TIMELINE_EVERY_S:
            timeline.append({"at_s": at_s, "shards_on_wiped_node": shards})

    clean_s, now_leader, repair = await wait_clean_pass(
        api, names, back_ms + FRESH_RECORD_MS, settings.timeout_s, on_poll
    )
    total_s = time.monotonic() - started
    filling_s = full["at_s"] - back_s if "at_s" in full else None
    report["wipe"] = wipe
    report["repair"] = {
        "seconds": round(total_s, 1),
        "node_back_after_s": round(back_s, 1),
        "backlog_zero_after_node_back_s": clean_s,
        "backlog_zero_after_wipe_s": None if clean_s is None else round(total_s, 1),
        "filled_records": filled,
        "wiped_node_held_them_after_node_back_s": (
            None if filling_s is None else round(filling_s, 1)
        ),
        "records_repaired_per_s": (
            round(filled / max(filling_s, POLL_S), 1) if filling_s is not None else None
        ),
        "leader_before": leader,
        "leader_then": now_leader,
        "leader_repair": repair,
        "wiped_node_shards": timeline,
    }


def _targets(report: dict[str, Any], rate: float) -> dict[str, Any]:
    repair, phases = report["repair"], report["phases"]
    per_s = repair["records_repaired_per_s"]
    before_p99 = phases["before"]["read_latency"].get("p99_ms")
    during_p99 = phases["repair"]["read_latency"].get("p99_ms")
    acked_per_s = phases["repair"]["writes_acked_per_s"] or 0.0
    return {
        "repaired_within_s": repair["backlog_zero_after_wipe_s"],
        "records_per_s_needed_for_1e5_in_600_s": round(TARGET_RECORDS / REPAIR_TARGET_S, 1),
        "extrapolated_1e5_repair_s": round(TARGET_RECORDS / per_s, 1) if per_s else None,
        "read_p99_ratio_during_to_before": (
            round(during_p99 / before_p99, 2) if before_p99 and during_p99 else None
        ),
        "writes_served_fraction_of_paced": round(acked_per_s / rate, 3),
    }


def run_repair_bench(settings: RepairBenchSettings) -> dict[str, Any]:
    """One run (see the module docstring); returns the report, also written to ``settings.out``."""
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "tool": "baas-bench-repair",
        "parameters": {
            "records": settings.records,
            "rate": settings.rate,
            "read_rate": settings.read_rate,
            "measure_s": settings.measure_s,
            "before_s": settings.before_s,
            "timeout_s": settings.timeout_s,
            "seed": settings.seed,
            "node_toml": NODE_TOML.strip(),
        },
        "load_average_start": _load_average(),
    }
    with contextlib.ExitStack() as stack:
        directory = settings.directory
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="repair-")))
        layout = init_cluster(directory, nodes=5, partners=(PARTNER,), chain="none")
        for node in layout.nodes:
            config = Path(node.config_path)
            config.write_text(config.read_text() + NODE_TOML)
        report["cluster"] = {"directory": str(directory), "k": layout.k, "n": layout.n}
        cluster = LocalCluster(layout)
        try:
            cluster.start(STARTUP_READY_S)
            asyncio.run(_bench(settings, cluster, report))
        finally:
            cluster.stop()
            report["load_average_end"] = _load_average()
            settings.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baas-bench-repair", description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=TARGET_RECORDS, help="records filled first")
    p.add_argument("--rate", type=float, default=None, help="paced writes/s (default: half)")
    p.add_argument("--read-rate", type=float, default=20.0, help="paced reads/s")
    p.add_argument("--measure-s", type=float, default=10.0)
    p.add_argument("--before-s", type=float, default=30.0)
    p.add_argument("--timeout-s", type=float, default=1800.0, help="per clean pass wait")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dir", type=Path, default=None, help="cluster directory (default: temporary)")
    p.add_argument("--out", type=Path, default=Path("repair-bench.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.records < 1 or args.read_rate <= 0 or args.before_s <= 0 or args.timeout_s <= 0:
        print("baas-bench-repair: --records >= 1, rates and times > 0", file=sys.stderr)
        return 2
    settings = RepairBenchSettings(
        records=args.records,
        rate=args.rate,
        read_rate=args.read_rate,
        measure_s=args.measure_s,
        before_s=args.before_s,
        timeout_s=args.timeout_s,
        seed=args.seed,
        directory=args.dir,
        out=args.out,
    )
    try:
        report = run_repair_bench(settings)
    except BaasError as exc:
        print(f"baas-bench-repair: {exc.detail}", file=sys.stderr)
        return 2
    repair = report.get("repair", {})
    print(
        f"baas-bench-repair: {report['fill']['records']} records; wiped {report['wipe']['node']}; "
        f"backlog 0 after {repair.get('backlog_zero_after_wipe_s')} s; "
        f"{repair.get('records_repaired_per_s')} records/s; targets {report.get('targets')}"
    )
    read = report.get("read_back", {})
    print(f"baas-bench-repair: filled records read back: {read.get('by_status')}")
    whole = read.get("by_status") == {"200": read.get("records")}
    return 0 if repair.get("backlog_zero_after_wipe_s") is not None and whole else 1


if __name__ == "__main__":
    sys.exit(main())
