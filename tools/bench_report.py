"""Observing and reporting a ``baas-bench`` run: process sampler, machine info, the PNG plot.

:class:`ProcessSampler` is a thread that reads each cluster process's RSS and CPU seconds
(psutil) every ``interval_s``; the bench also takes a snapshot at every phase boundary, so even a
short phase has its start and end. :func:`plot` draws throughput over time per phase, latency
percentiles per phase, RSS per node over time and CPU per process over time into one PNG
(matplotlib, Agg backend: no display needed).
"""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after use(): the backend must be chosen first
import psutil

__all__ = ["ProcessSampler", "machine_info", "plot"]

SAMPLES_MAX = 50_000  # per process; at 0.5 s that is ~7 hours
MIB = 1024 * 1024


class ProcessSampler:
    """RSS and CPU seconds (user + sys) of named processes over time, on wall-clock time."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.5) -> None:
        self._procs: dict[str, Any] = {}
        for name, pid in pids.items():
            try:
                self._procs[name] = psutil.Process(pid)
            except psutil.Error:
                continue  # gone already: reported as no samples
        self.interval_s = interval_s
        self.samples: dict[str, list[tuple[float, int, float]]] = {n: [] for n in self._procs}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def snapshot(self) -> dict[str, tuple[float, int, float]]:
        """Sample every process now; returns name -> (time, rss bytes, cpu seconds)."""
        taken: dict[str, tuple[float, int, float]] = {}
        for name, proc in self._procs.items():
            try:
                with proc.oneshot():
                    cpu = proc.cpu_times()
                    row = (time.time(), int(proc.memory_info().rss), cpu.user + cpu.system)
            except psutil.Error:
                continue
            taken[name] = row
            with self._lock:
                if len(self.samples[name]) < SAMPLES_MAX:
                    self.samples[name].append(row)
        return taken

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.snapshot()

    def start(self) -> None:
        self.snapshot()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.snapshot()

    def series(self, name: str) -> list[tuple[float, int, float]]:
        with self._lock:
            return sorted(self.samples.get(name, []))

    def names(self) -> list[str]:
        return list(self._procs)

    def pids(self) -> dict[str, int]:
        return {name: int(proc.pid) for name, proc in self._procs.items()}


def rss_report(sampler: ProcessSampler) -> dict[str, dict[str, float | None]]:
    report: dict[str, dict[str, float | None]] = {}
    for name in sampler.names():
        rows = sampler.series(name)
        if not rows:
            report[name] = {"rss_mib_start": None, "rss_mib_end": None, "rss_mib_max": None}
            continue
        report[name] = {
            "rss_mib_start": round(rows[0][1] / MIB, 1),
            "rss_mib_end": round(rows[-1][1] / MIB, 1),
            "rss_mib_max": round(max(r[1] for r in rows) / MIB, 1),
            "cpu_s": round(rows[-1][2] - rows[0][2], 2),
        }
    return report


def rss_growth_second_half_pct(
    sampler: ProcessSampler, name: str, start_s: float, end_s: float
) -> float | None:
    """How much a process's RSS grew from the middle of [start, end] to its max after it."""
    middle = (start_s + end_s) / 2
    rows = [r for r in sampler.series(name) if start_s <= r[0] <= end_s + sampler.interval_s]
    at_middle = [r for r in rows if r[0] >= middle]
    if not at_middle:
        return None
    base = at_middle[0][1]
    return round((max(r[1] for r in at_middle) - base) / base * 100.0, 2)


def git_commit(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def machine_info(repo: Path) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_mib": round(psutil.virtual_memory().total / MIB),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "git": git_commit(repo),
    }


def _cores_over_time(
    rows: list[tuple[float, int, float]], gap_min_s: float
) -> tuple[list[float], list[float]]:
    """CPU cores used between samples at least ``gap_min_s`` apart (CPU times tick in 10 ms
    steps, so two samples close together would show a spike)."""
    times: list[float] = []
    cores: list[float] = []
    previous = rows[0]
    for row in rows[1:]:
        if row[0] - previous[0] >= gap_min_s:
            times.append(row[0])
            cores.append((row[2] - previous[2]) / (row[0] - previous[0]))
            previous = row
    return times, cores


def _shade_phases(ax: Any, phases: dict[str, dict[str, Any]]) -> None:
    """Mark each phase's time span; phase start times are relative to the run's start."""
    for i, (name, result) in enumerate(phases.items()):
        if "started_at_s" not in result:
            continue
        start = result["started_at_s"]
        ax.axvspan(start, start + result["wall_s"], alpha=0.08, color=f"C{i}")
        ax.annotate(
            name,
            (start, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            va="top",
            rotation=90,
        )


def plot(
    path: Path,
    phases: dict[str, dict[str, Any]],
    sampler: ProcessSampler,
    origin_s: float,
    title: str,
) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    ax_rate, ax_lat, ax_rss, ax_cpu = axes[0][0], axes[0][1], axes[1][0], axes[1][1]
    for i, (name, result) in enumerate(phases.items()):
        windows = result.get("windows") or []
        if windows:
            start = result["started_at_s"]
            times = [start + t for t, _ in windows] + [start + result["wall_s"]]
            rates = [r for _, r in windows]
            ax_rate.step(times, [*rates, rates[-1]], where="post", label=name, color=f"C{i}")
    ax_rate.set(title="throughput over time", xlabel="s since start", ylabel="records/s")
    ax_rate.legend(fontsize=8)
    loaded = [(n, r["latency_ms"]) for n, r in phases.items() if r.get("latency_ms", {}).get("p50")]
    width = 0.25
    for j, q in enumerate(("p50", "p99", "max")):
        ax_lat.bar(
            [i + (j - 1) * width for i in range(len(loaded))],
            [lat[q] for _, lat in loaded],
            width,
            label=q,
        )
    ax_lat.set_xticks(range(len(loaded)), [n for n, _ in loaded], fontsize=8)
    ax_lat.set(title="latency per request", ylabel="ms (log)")
    ax_lat.set_yscale("log")
    ax_lat.legend(fontsize=8)
    for name in sampler.names():
        rows = sampler.series(name)
        if len(rows) < 2:
            continue
        times = [r[0] - origin_s for r in rows]
        ax_rss.plot(times, [r[1] / MIB for r in rows], label=name)
        cpu_times, cores = _cores_over_time(rows, sampler.interval_s / 2)
        ax_cpu.plot([t - origin_s for t in cpu_times], cores, label=name)
    ax_rss.set(title="RSS per process", xlabel="s since start", ylabel="MiB")
    ax_cpu.set(title="CPU per process", xlabel="s since start", ylabel="cores")
    for ax in (ax_rss, ax_cpu):
        _shade_phases(ax, phases)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
