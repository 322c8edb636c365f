"""``baas-bench``: load the 5-node + gateway cluster through the gateway and write JSON + PNG.

    baas-bench --out bench-results                       # a temporary cluster, every phase
    baas-bench --dir .cluster --phases batch-write,read  # a cluster started by baas-cluster run
    baas-bench --peer etcd --profile single-write        # + etcd in the same run, + py-spy
    baas-bench --phases growth --growth-records 1000000  # cost flat as data grows

Phases (``--phases``, in the order given):

* ``single-write``  one record per request, ``--clients`` concurrent, closed loop
* ``batch-write``   ``POST /v1/records/batch`` of ``--batch-size``, ``--batch-clients`` concurrent,
                    ``--records`` in all; throughput in ``--window-s`` windows ("sustained")
* ``read``          single-record GETs of records written earlier, ``--clients`` concurrent
* ``paced-write``   open loop at ``--rate`` for ``--duration-s``; latency from the scheduled send
* ``cpu``           per-record CPU of encrypt + erasure-code + store, in process, one thread
* ``steady``        (not by default) paced writes at ``--rate`` for ``--steady-duration-s``
                    (300) while every node's raft status is read every ``--status-interval-s``:
                    elections (term increase) and leader changes during the load
* ``kill-leader``   (not by default; the bench's own cluster only) paced writes at
                    ``--kill-rate`` (200) for ``--kill-duration-s``; ``--kill-after-s`` in,
                    SIGKILL the leader's process; time until a write sent after the kill
                    succeeds; restart the node
* ``growth``        (not by default) a batched run of ``--growth-records``: cluster CPU per
                    record of its first vs last 10% of records, node RSS growth over its second
                    half, the longest gap between successful completions

Every load phase reports records/s, p50/p90/p99/max latency, errors by code, the bench client's
own CPU seconds, each cluster process's CPU and their sum per committed record; RSS of every
node and the gateway is sampled over the whole run. ``--peer etcd`` then runs the same load
shapes against 5 etcd members on loopback (:mod:`tools.bench_etcd`) and the JSON's
``"comparison"`` holds each of our figures as a ratio to etcd's with issue #13's bound
(:mod:`tools.bench_peer`); ``--profile`` samples the gateway, the leader and a follower with
py-spy during the named phases (:mod:`tools.bench_profile`). The JSON (``"format": 1``) also
holds machine info, the parameters, and a verdict per target of issue #4 (zero elections under
steady load, fail-over within 3 s) and of issue #13's growth run. Other work on the same machine
skews every number: the JSON records the load average at start and end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing
import os
import queue
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil
from tqdm import tqdm

from node.config import load_node_config
from node.errors import BaasError, ConfigError
from tools.bench_consensus import SETTLE_TIMEOUT_S, KillLeader, RaftWatcher, election_summary
from tools.bench_cpu import run_cpu_phase
from tools.bench_etcd import ETCD_PHASES, EtcdCluster, ensure_etcd, etcd_version
from tools.bench_load import (
    WorkerResult,
    WorkerSpec,
    pool_init,
    pool_run,
    pool_warm,
    run_worker,
    sample_ids,
)
from tools.bench_peer import compare, cpu_at, growth_summary, growth_targets
from tools.bench_profile import PhaseProfiler, find_py_spy, rounds_per_record
from tools.bench_report import (
    ProcessSampler,
    machine_info,
    plot,
    rss_growth_second_half_pct,
    rss_report,
)
from tools.bench_stats import (
    evaluate_targets,
    latency_summary_ms,
    split_count,
    throughput_windows,
    window_summary,
)
from tools.cluster_init import ClusterLayout, init_cluster, load_layout
from tools.local_cluster import LocalCluster, _is_ready
from tools.status import read_token

__all__ = ["DEFAULT_PHASES", "PHASES", "main"]

FORMAT_VERSION = 1
DEFAULT_PHASES = ("single-write", "batch-write", "read", "paced-write", "cpu")
PHASES = (*DEFAULT_PHASES, "steady", "kill-leader", "growth")
BATCHED_PHASES = ("batch-write", "growth")  # POST /v1/records/batch, closed loop
PACED_PHASES = ("paced-write", "steady", "kill-leader")  # open loop at --rate
REPO = Path(__file__).resolve().parent.parent
READ_PREFILL_RECORDS_MAX = 5000
PEER_TXN_SIZE_MAX = 128  # etcd's default --max-txn-ops
START_DELAY_S = {True: 0.6, False: 0.05}  # until every client starts sending (pool, in process)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="baas-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dir", type=Path, help="an initialised, running cluster (baas-cluster run)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="where JSON + PNG go")
    p.add_argument("--phases", default=",".join(DEFAULT_PHASES), help="comma-separated, in order")
    p.add_argument("--partner", help="partner id whose credentials to use (default: the first)")
    p.add_argument("--clients", type=int, default=32, help="single-write and read concurrency")
    p.add_argument("--single-writes", type=int, default=10_000, help="requests in single-write")
    p.add_argument("--records", type=int, default=100_000, help="records in batch-write")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--batch-clients", type=int, default=4, help="batch-write concurrency")
    p.add_argument("--reads", type=int, default=10_000, help="requests in read")
    p.add_argument("--rate", type=float, default=1000.0, help="paced-write records/s")
    p.add_argument("--duration-s", type=float, default=10.0, help="paced-write duration")
    p.add_argument("--cpu-records", type=int, default=20_000, help="records in the cpu phase")
    p.add_argument("--steady-duration-s", type=float, default=300.0, help="steady phase length")
    p.add_argument("--status-interval-s", type=float, default=1.0, help="raft status sampling")
    p.add_argument("--kill-duration-s", type=float, default=20.0, help="kill-leader phase length")
    p.add_argument("--kill-after-s", type=float, default=5.0, help="when in it the leader dies")
    p.add_argument("--kill-rate", type=float, default=200.0, help="kill-leader records/s")
    p.add_argument("--client-procs", type=int, default=1, help="client processes for load")
    p.add_argument("--window-s", type=float, default=1.0, help="throughput window")
    p.add_argument("--sample-interval-s", type=float, default=0.5, help="RSS/CPU sampling")
    p.add_argument("--growth-records", type=int, default=1_000_000, help="records in growth")
    p.add_argument("--peer", choices=("etcd", "none"), default="none", help="the peer to compare")
    p.add_argument("--peer-txn-size", type=int, default=100, help="etcd puts per batched txn")
    p.add_argument("--peer-batch-clients", type=int, default=16, help="etcd batched concurrency")
    p.add_argument("--peer-value-bytes", type=int, default=512, help="etcd value size")
    p.add_argument("--profile", default="", help="comma-separated phases to sample with py-spy")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--keep-cluster", action="store_true", help="keep the temporary cluster dir")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _phases(text: str, option: str = "--phases", empty_ok: bool = False) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(PHASES))
    if unknown or (not chosen and not empty_ok) or len(set(chosen)) != len(chosen):
        raise ConfigError(f"{option} takes distinct names from {', '.join(PHASES)}; got {text!r}")
    return chosen


def _check_args(args: argparse.Namespace) -> None:
    positive = (
        "clients", "single_writes", "records", "batch_size", "batch_clients", "reads", "rate",
        "duration_s", "cpu_records", "client_procs", "window_s", "sample_interval_s",
        "steady_duration_s", "status_interval_s", "kill_duration_s", "kill_after_s", "kill_rate",
        "growth_records", "peer_txn_size", "peer_batch_clients", "peer_value_bytes",
        "profile_rate",
    )  # fmt: skip
    for name in positive:
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    if args.batch_size > 500:
        raise ConfigError("--batch-size is at most 500 (the gateway's records_per_batch_max)")
    if args.kill_after_s >= args.kill_duration_s:
        raise ConfigError("--kill-after-s must be less than --kill-duration-s")
    if args.dir is not None and "kill-leader" in _phases(args.phases):
        raise ConfigError("kill-leader restarts the node it kills: only on the bench's own cluster")
    profiled = _phases(args.profile, "--profile", empty_ok=True)
    if set(profiled) - set(_phases(args.phases)) or "cpu" in profiled:
        raise ConfigError("--profile names load phases that --phases runs")
    if args.peer_txn_size > PEER_TXN_SIZE_MAX:
        raise ConfigError(f"--peer-txn-size is at most {PEER_TXN_SIZE_MAX} (etcd's max-txn-ops)")


# ---------------------------------------------------------------- the cluster


def _pids_by_config(layout: ClusterLayout) -> dict[str, int]:
    """Find a running cluster's processes by the ``--config`` path on their command line."""
    wanted = {str(Path(n.config_path).resolve()): n.name for n in layout.nodes}
    wanted[str(Path(layout.gateway_config_path).resolve())] = "gateway"
    found: dict[str, int] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "--config" in cmdline[:-1]:
            path = cmdline[cmdline.index("--config") + 1]
            with contextlib.suppress(OSError, psutil.Error):
                cwd = proc.cwd()
                name = wanted.get(str((Path(cwd) / path).resolve()))
                if name is not None:
                    found[name] = int(proc.info["pid"])
    return found


@contextlib.contextmanager
def _cluster(
    args: argparse.Namespace,
) -> Iterator[tuple[ClusterLayout, dict[str, int], LocalCluster | None]]:
    """Yield (layout, process ids by name, the cluster when the bench started it)."""
    if args.dir is not None:
        layout = load_layout(args.dir)
        if not _is_ready(f"{layout.gateway_url}/readyz"):
            raise ConfigError(f"the gateway of {args.dir} is not ready at {layout.gateway_url}")
        pids = _pids_by_config(layout)
        missing = [n.name for n in layout.nodes if n.name not in pids] + (
            [] if "gateway" in pids else ["gateway"]
        )
        if missing:
            print(
                f"no local process found for {', '.join(missing)}: no RSS/CPU for them",
                file=sys.stderr,
            )
        yield layout, pids, None
        return
    directory = Path(tempfile.mkdtemp(prefix="baas-bench-"))
    try:
        layout = init_cluster(directory / "cluster", partners=("bench",))
        with LocalCluster(layout, log_level="WARNING") as local:
            local.start()
            names = [n.name for n in layout.nodes] + ["gateway"]
            yield layout, {name: local.pid(name) for name in names}, local
    finally:
        if args.keep_cluster:
            print(f"cluster kept in {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------- running phases


@dataclass(frozen=True, slots=True)
class _Plan:
    specs: list[WorkerSpec]
    total: int  # records, for the progress bar
    unit: str


@dataclass(frozen=True, slots=True)
class _Target:
    """What a bench drives: our gateway (with a partner's credentials) or etcd's members."""

    gateway_url: str = ""
    api_key: str = ""
    secret_hex: str = ""
    etcd_urls: tuple[str, ...] = ()
    value_bytes: int = 512


def _our_target(args: argparse.Namespace, layout: ClusterLayout) -> _Target:
    partner = args.partner or sorted(layout.partners)[0]
    if partner not in layout.partners:
        raise ConfigError(f"no credentials for partner {partner!r} in this cluster")
    credentials = layout.partners[partner]
    return _Target(layout.gateway_url, credentials["api_key"], credentials["secret_hex"])


class _Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        target: _Target,
        sampler: ProcessSampler,
        pool: ProcessPoolExecutor | None,
        progress: Any,
        cluster: tuple[ClusterLayout, LocalCluster | None] | None,  # None: the peer's
    ) -> None:
        self.args = args
        self.target = target
        self.layout: ClusterLayout | None = None
        self.local: LocalCluster | None = None
        if cluster is not None:
            self.layout, self.local = cluster
        self.sampler = sampler
        self.pool = pool
        self.progress_queue = progress
        self.origin_s = time.time()
        self.written_ids: list[str] = []  # a sample of the records written, for the read phase
        self.rng = random.Random(1)
        self.worker_cpu_s = 0.0  # CPU of spawned client processes (the bench's own is separate)
        self._leader_wait_s: dict[str, float] = {}  # phase -> wait for one agreed leader
        self.profiles: dict[str, dict[str, Any]] = {}  # phase -> process label -> summary
        self._py_spy = find_py_spy() if args.profile and cluster is not None else None

    @property
    def peer(self) -> bool:
        return bool(self.target.etcd_urls)

    def _base(self, phase: str, proc: int) -> WorkerSpec:
        procs = self.args.client_procs
        return WorkerSpec(
            phase=phase,
            gateway_url=self.target.gateway_url,
            api_key=self.target.api_key,
            secret_hex=self.target.secret_hex,
            start_at_s=0.0,
            proc_index=proc,
            procs=procs,
            seed=proc + 1 + 100 * PHASES.index(phase),
            etcd_urls=self.target.etcd_urls,
            value_bytes=self.target.value_bytes,
        )

    def _plan(self, phase: str, records: int | None = None) -> _Plan:
        a, procs = self.args, self.args.client_procs
        bases = [self._base(phase, p) for p in range(procs)]

        def spread(concurrency: int, total: int, **extra: Any) -> list[WorkerSpec]:
            shares = zip(split_count(concurrency, procs), split_count(total, procs), strict=True)
            return [
                replace(b, concurrency=max(1, c), requests=r, **extra)
                for b, (c, r) in zip(bases, shares, strict=True)
            ]

        if phase == "single-write":
            return _Plan(spread(a.clients, a.single_writes), a.single_writes, "req")
        if phase in BATCHED_PHASES:
            total = records if records is not None else a.records
            if phase == "growth":
                total = a.growth_records
            if self.peer:  # etcd's batched shape: txns of --peer-txn-size puts
                specs = spread(a.peer_batch_clients, total, batch_size=a.peer_txn_size)
            else:
                specs = spread(a.batch_clients, total, batch_size=a.batch_size)
            return _Plan([replace(s, phase="batch-write") for s in specs], total, "rec")
        if phase == "read":
            ids = tuple(self.written_ids)
            specs = spread(a.clients, a.reads)
            specs = [replace(s, record_ids=ids[i::procs] or ids) for i, s in enumerate(specs)]
            return _Plan(specs, a.reads, "req")
        rate, duration_s = self._pace(phase)
        specs = [
            replace(b, phase="paced-write", rate_per_s=rate, duration_s=duration_s) for b in bases
        ]
        return _Plan(specs, round(rate * duration_s), "req")

    def _pace(self, phase: str) -> tuple[float, float]:
        """(records/s, seconds) of a paced phase."""
        a = self.args
        if phase == "kill-leader":
            return a.kill_rate, a.kill_duration_s
        return a.rate, a.steady_duration_s if phase == "steady" else a.duration_s

    def _execute(
        self, label: str, plan: _Plan, on_start: Callable[[float], None] | None = None
    ) -> tuple[WorkerResult, float]:
        start_at = time.time() + START_DELAY_S[self.pool is not None]
        specs = [replace(s, start_at_s=start_at) for s in plan.specs if s.requests or s.rate_per_s]
        if self.peer:
            label = f"etcd {label}"
        bar = tqdm(total=plan.total, desc=label, unit=plan.unit, disable=self.args.quiet)
        if on_start is not None:
            on_start(start_at)  # before the load: an in-process worker blocks this thread
        try:
            if self.pool is None:
                return run_worker(specs[0], bar.update), start_at
            futures: list[Future[WorkerResult]] = [self.pool.submit(pool_run, s) for s in specs]
            while not all(f.done() for f in futures):
                with contextlib.suppress(queue.Empty):
                    bar.update(self.progress_queue.get(timeout=0.1))
            with contextlib.suppress(queue.Empty):
                while True:  # what the workers reported last
                    bar.update(self.progress_queue.get(timeout=0.05))
            merged = WorkerResult()
            for future in futures:
                merged.merge(future.result(), self.rng)
            return merged, start_at
        finally:
            bar.close()

    def run_load(self, phase: str) -> dict[str, Any]:
        prefill = 0
        if phase == "read" and not self.written_ids:
            prefill = min(self.args.reads, READ_PREFILL_RECORDS_MAX)
            written, _ = self._execute("read prefill", self._plan("batch-write", prefill))
            self.written_ids = sample_ids(self.written_ids, written.record_ids, self.rng)
            self.worker_cpu_s += written.cpu_s if self.pool else 0.0
        plan = self._plan(phase)
        watcher, killer = self._observers(phase)
        profiler = self._profiler(phase)
        before = self.sampler.snapshot()
        main_cpu = time.process_time()
        with profiler or contextlib.nullcontext():
            worker, start_at = self._execute(phase, plan, killer.start if killer else None)
            after = self.sampler.snapshot()
            if profiler is not None:
                self.profiles[phase] = profiler.stop()
        observed: dict[str, Any] = {}
        if killer is not None:
            observed.update(killer.finish(worker.completions))
        if watcher is not None:
            observed.update(election_summary(watcher.stop()))
        worker_cpu_s = worker.cpu_s if self.pool else 0.0
        self.worker_cpu_s += worker_cpu_s
        client_cpu_s = time.process_time() - main_cpu + worker_cpu_s
        if phase != "read":
            self.written_ids = sample_ids(self.written_ids, worker.record_ids, self.rng)
        result = self._summary(worker, start_at, client_cpu_s, before, after)
        if phase in BATCHED_PHASES:
            result["batch_size"] = self.args.peer_txn_size if self.peer else self.args.batch_size
            result["clients"] = plan.specs[0].concurrency * len(plan.specs)
        if phase == "growth":
            series = self._cluster_cpu_series(start_at, start_at + result["wall_s"])
            completions = [(row[0], row[2]) for row in worker.completions]
            result.update(growth_summary(completions, series, start_at))
            growth = {
                name: rss_growth_second_half_pct(
                    self.sampler, name, start_at, start_at + result["wall_s"]
                )
                for name in self.sampler.names()
                if name.startswith("node-")
            }
            result["node_rss_growth_second_half_pct"] = growth
            measured = [g for g in growth.values() if g is not None]
            result["node_rss_growth_second_half_pct_max"] = max(measured) if measured else None
        if phase == "read":
            result["record_ids_sampled"] = len(self.written_ids)
            result["prefill_records"] = prefill
        if phase in PACED_PHASES:
            result["rate_target_per_s"] = self._pace(phase)[0]
            result["send_lag_ms"] = latency_summary_ms(worker.send_lag_s)
            result["sends_waited_for_inflight_slot"] = worker.sends_waited_for_slot
        if phase in self._leader_wait_s:
            result["leader_settle_wait_s"] = self._leader_wait_s[phase]
        for entry in self.profiles.get(phase, {}).values():
            entry["per_record"] = rounds_per_record(entry.get("counters", {}), result["records_ok"])
        return {**result, **observed}

    def _our_layout(self, phase: str) -> ClusterLayout:
        if self.layout is None:
            raise ConfigError(f"{phase} runs on our cluster only, not on the peer")
        return self.layout

    def _profiler(self, phase: str) -> PhaseProfiler | None:
        """py-spy on the gateway, the leader and one follower, when --profile names ``phase``."""
        if self._py_spy is None or phase not in _phases(self.args.profile, "--profile", True):
            return None
        layout = self._our_layout(phase)
        watcher = RaftWatcher(layout, read_token(Path(layout.directory)), 1.0)
        watcher.wait_settled(SETTLE_TIMEOUT_S)
        _, answers = watcher.poll()
        leader = next(n for n, a in answers.items() if a and a.get("role") == "leader")
        follower = next(n for n in sorted(answers) if n != leader)
        pids = {
            name: pid
            for name, pid in self.sampler.pids().items()
            if name in ("gateway", leader, follower)
        }
        labels = {
            "gateway": "gateway",
            leader: f"leader {leader}",
            follower: f"follower {follower}",
        }
        out_dir = self.args.out / f"profile-{self.args.stamp}"
        urls = {n.name: f"http://{n.http_addr}/metrics" for n in layout.nodes}
        urls["gateway"] = f"{layout.gateway_url}/metrics"
        return PhaseProfiler(
            self._py_spy,
            {labels[name]: pid for name, pid in pids.items()},
            out_dir,
            phase,
            REPO,
            self.args.profile_rate,
            {labels[name]: urls[name] for name in pids},
        )

    def _cluster_cpu_series(self, start_s: float, end_s: float) -> list[tuple[float, float]]:
        """The cluster processes' summed cumulative CPU seconds at each sampling round."""
        rows_by_name = {
            name: [(t, cpu) for t, _, cpu in self.sampler.series(name)]
            for name in self.sampler.names()
            if name != "bench"
        }
        times = sorted(
            {t for rows in rows_by_name.values() for t, _ in rows if start_s - 1 <= t <= end_s + 1}
        )
        return [(t, sum(cpu_at(rows, t) or 0.0 for rows in rows_by_name.values())) for t in times]

    def _observers(self, phase: str) -> tuple[RaftWatcher | None, KillLeader | None]:
        """The raft status watcher (steady, kill-leader) and the leader killer (kill-leader)."""
        if phase not in ("steady", "kill-leader"):
            return None, None
        layout = self._our_layout(phase)
        if phase == "kill-leader" and self.local is None:
            raise ConfigError("kill-leader needs the cluster the bench started")
        token = read_token(Path(layout.directory))
        watcher = RaftWatcher(layout, token, self.args.status_interval_s)
        self._leader_wait_s[phase] = watcher.wait_settled(SETTLE_TIMEOUT_S)
        watcher.start()
        if self.local is None or phase == "steady":
            return watcher, None
        wait_s = self.args.kill_duration_s - self.args.kill_after_s
        return watcher, KillLeader(self.local, watcher, self.args.kill_after_s, wait_s)

    def _summary(
        self,
        worker: WorkerResult,
        start_at: float,
        client_cpu_s: float,
        before: dict[str, tuple[float, int, float]],
        after: dict[str, tuple[float, int, float]],
    ) -> dict[str, Any]:
        rows = worker.completions
        end = max((row[0] for row in rows), default=start_at)
        wall_s = max(end - start_at, 1e-6)
        ok = sum(row[2] for row in rows)
        windows = throughput_windows([(r[0], r[2]) for r in rows], start_at, self.args.window_s)
        process_cpu = {
            name: round(after[name][2] - before[name][2], 3) for name in before if name in after
        }
        cluster_cpu_s = sum(cpu for name, cpu in process_cpu.items() if name != "bench")
        return {
            "started_at_s": round(start_at - self.origin_s, 3),
            "wall_s": round(wall_s, 3),
            "requests": len(rows),
            "records_ok": ok,
            "records_per_s": round(ok / wall_s, 1),
            "requests_per_s": round(len(rows) / wall_s, 1),
            "latency_ms": latency_summary_ms([row[1] for row in rows]),
            "errors": dict(sorted(worker.errors.items())),
            "error_count": sum(worker.errors.values()),
            "client_cpu_s": round(client_cpu_s, 3),
            "client_cores": round(client_cpu_s / wall_s, 3),
            "process_cpu_s": process_cpu,
            "process_cores": {name: round(cpu / wall_s, 3) for name, cpu in process_cpu.items()},
            "cluster_cpu_s": round(cluster_cpu_s, 3),  # every node and the gateway, or etcd's
            "cluster_cpu_ms_per_record": round(cluster_cpu_s / ok * 1000.0, 4) if ok else None,
            "windows": [[t, round(rate, 1)] for t, rate in windows],
            "window_records_per_s": window_summary(windows),
        }

    def run_cpu(self) -> dict[str, Any]:
        started = time.time()
        if not self.args.quiet:
            print(f"cpu: {self.args.cpu_records} records, in process", file=sys.stderr)
        layout = self._our_layout("cpu")
        result = run_cpu_phase(self.args.cpu_records, k=layout.k, n=layout.n)
        return {"started_at_s": round(started - self.origin_s, 3), **result}


# ---------------------------------------------------------------- the report


def _parameters(args: argparse.Namespace, phases: list[str]) -> dict[str, Any]:
    names = (
        "clients", "single_writes", "records", "batch_size", "batch_clients", "reads", "rate",
        "duration_s", "cpu_records", "client_procs", "window_s", "sample_interval_s",
        "steady_duration_s", "status_interval_s", "kill_duration_s", "kill_after_s", "kill_rate",
        "growth_records", "peer", "peer_txn_size", "peer_batch_clients", "peer_value_bytes",
        "profile", "profile_rate",
    )  # fmt: skip
    return {"phases": phases, **{name: getattr(args, name) for name in names}}


def _index_writes(layout: ClusterLayout) -> bool | None:
    """Whether every node acknowledges writes only once committed (None: a config unreadable)."""
    try:
        return all(
            load_node_config(Path(node.config_path)).raft.index_writes for node in layout.nodes
        )
    except BaasError:
        return None


def _phase_line(name: str, result: dict[str, Any]) -> str:
    latency = result.get("latency_ms") or {}
    cpu_ms = result.get("cluster_cpu_ms_per_record")
    return (
        f"{name:18} {result['records_per_s']:>10,.0f} records/s"
        + (
            f"  p50 {latency['p50']} ms  p99 {latency['p99']} ms  max {latency['max']} ms"
            if latency.get("p50") is not None
            else f"  {result.get('cpu_us_per_record')} µs/record (cpu)"
        )
        + (f"  cluster cpu {cpu_ms} ms/record" if cpu_ms is not None else "")
        + f"  errors {result.get('error_count', 0)}  client cpu {result['client_cpu_s']} s"
    )


def _print_summary(document: dict[str, Any], json_path: Path, png_path: Path) -> None:
    for name, result in document["phases"].items():
        print(_phase_line(name, result))
        if "elections" in result:
            print(
                f"{'':18} elections {result['elections']}  leader changes "
                f"{result['leader_changes']}  over {result['status_rounds']} status rounds"
            )
        if "killed_node" in result:
            print(
                f"{'':18} killed {result['killed_node']}: new leader after "
                f"{result['new_leader_s']} s, first write sent after the kill ok after "
                f"{result['recovery_s']} s, restart {result.get('restart_s')} s"
            )
    for name, result in (document.get("peer") or {}).get("phases", {}).items():
        print(_phase_line(f"etcd {name}", result))
    for row in document["comparison"]:
        verdict = "PASS" if row["pass"] else "FAIL"
        note = f" ({row['note']})" if row["note"] else ""
        print(
            f"{verdict} #{row['issue']} {row['name']}: ours {row['ours']} / etcd {row['etcd']} "
            f"= {row['ratio']} {row['op']} {row['threshold']}{note}"
        )
    for target in document["targets"]:
        verdict = "PASS" if target["pass"] else "FAIL"
        note = f" ({target['note']})" if target["note"] else ""
        print(
            f"{verdict} #{target['issue']} {target['name']}: {target['measured']} {target['op']} "
            f"{target['threshold']} {target['unit']}{note}"
        )
    print(f"wrote {json_path} and {png_path}")


def _client_pool(stack: contextlib.ExitStack, procs: int) -> tuple[ProcessPoolExecutor | None, Any]:
    """Spawned client processes (with their progress queue) when ``procs`` > 1."""
    if procs <= 1:
        return None, None
    context = multiprocessing.get_context("spawn")  # no fork of a threaded process
    progress = context.Queue()
    pool = stack.enter_context(
        ProcessPoolExecutor(procs, mp_context=context, initializer=pool_init, initargs=(progress,))
    )
    for warm in [pool.submit(pool_warm, 0.3) for _ in range(procs)]:
        warm.result()
    return pool, progress


def _run_phases(bench: _Bench, phases: list[str]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    try:
        for phase in phases:
            results[phase] = bench.run_cpu() if phase == "cpu" else bench.run_load(phase)
    finally:
        bench.sampler.stop()
    return results


def _run_peer(
    args: argparse.Namespace,
    phases: list[str],
    pool: ProcessPoolExecutor | None,
    progress: Any,
) -> dict[str, Any]:
    """etcd's figures for the same load shapes: its own cluster, started and removed here."""
    binary = ensure_etcd()
    chosen = [phase for phase in phases if phase in ETCD_PHASES]
    with EtcdCluster(binary, keep=args.keep_cluster) as etcd:
        sampler = ProcessSampler({**etcd.pids(), "bench": os.getpid()}, args.sample_interval_s)
        sampler.start()
        target = _Target(etcd_urls=etcd.client_urls, value_bytes=args.peer_value_bytes)
        bench = _Bench(args, target, sampler, pool, progress, None)
        results = _run_phases(bench, chosen)
        if args.keep_cluster:
            print(f"etcd data kept in {etcd.directory}", file=sys.stderr)
        return {
            "name": "etcd",
            "version": etcd_version(binary),
            "members": len(etcd.names),
            "fsync": True,
            "client_urls": list(etcd.client_urls),
            "phases": results,
            "processes": rss_report(sampler),
            "worker_cpu_s": bench.worker_cpu_s,
        }


def _peer_or_error(
    args: argparse.Namespace,
    phases: list[str],
    pool: ProcessPoolExecutor | None,
    progress: Any,
) -> dict[str, Any]:
    """etcd's figures, or why there are none: our cluster's figures are reported either way
    (the members are stopped and removed by then)."""
    try:
        return _run_peer(args, phases, pool, progress)
    except (BaasError, OSError) as exc:
        detail = exc.detail if isinstance(exc, BaasError) else f"{type(exc).__name__}: {exc}"
        print(f"etcd peer failed: {detail}", file=sys.stderr)
        return {"name": "etcd", "error": detail, "phases": {}}


def run(args: argparse.Namespace) -> tuple[Path, Path]:
    phases = _phases(args.phases)
    _check_args(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.stamp = stamp  # profile files go in --out/profile-<stamp>/
    json_path, png_path = args.out / f"bench-{stamp}.json", args.out / f"bench-{stamp}.png"
    machine = machine_info(REPO)
    cpu_start = os.times()
    if args.peer == "etcd":
        ensure_etcd()  # before our cluster runs: a missing etcd fails fast
    with contextlib.ExitStack() as outer:
        pool, progress = _client_pool(outer, args.client_procs)
        with _cluster(args) as (layout, pids, local):
            index_writes = _index_writes(layout)  # now: a temporary cluster's files go at the end
            sampler = ProcessSampler({**pids, "bench": os.getpid()}, args.sample_interval_s)
            sampler.start()
            target = _our_target(args, layout)
            bench = _Bench(args, target, sampler, pool, progress, (layout, local))
            results = _run_phases(bench, phases)
        # our cluster is stopped (or, with --dir, idle) while etcd runs: one cluster at a time
        peer = _peer_or_error(args, phases, pool, progress) if args.peer == "etcd" else None
    cpu_end = os.times()
    own = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
    parameters = _parameters(args, phases)
    judged = {**parameters, "index_writes": index_writes}
    peer_cpu_s = float(peer.get("worker_cpu_s", 0.0)) if peer else 0.0
    document: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "tool": "baas-bench",
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "cluster": {
            "started_by_bench": local is not None,
            "index_writes": index_writes,
            "k": layout.k,
            "n": layout.n,
            "write_quorum": layout.write_quorum,
            "nodes": [n.name for n in layout.nodes],
            "gateway_url": layout.gateway_url,
        },
        "parameters": parameters,
        "phases": results,
        "peer": peer,
        "comparison": compare(results, peer.get("phases", {}) if peer else {}, judged),
        "targets": [
            *evaluate_targets(results, judged),
            *growth_targets(results.get("growth"), judged),
        ],
        "profiles": bench.profiles,
        "processes": rss_report(sampler),
        "client": {
            "procs": args.client_procs,
            "cpu_s_bench_process": round(own, 3),
            "cpu_s_total": round(own + bench.worker_cpu_s + peer_cpu_s, 3),
            "wall_s": round(time.time() - bench.origin_s, 3),
        },
        "notes": [
            "Everything runs on one machine; other work on it (see load_average_*) skews results.",
            "Request bodies are built once per client process and reused; each send is signed "
            "anew and the gateway makes a fresh idempotency key, so every send is a new record.",
            "etcd runs after our cluster, with the same client counts except batched "
            "(--peer-batch-clients txns of --peer-txn-size puts), values of --peer-value-bytes.",
        ],
    }
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    plot(
        png_path,
        results,
        sampler,
        bench.origin_s,
        f"baas-bench {stamp}  ({machine['cpu_count']} cpus, commit "
        f"{str(machine['git']['commit'])[:10]}, load avg {machine['load_average_start']})",
    )
    _print_summary(document, json_path, png_path)
    return json_path, png_path


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run(args)
    except BaasError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
