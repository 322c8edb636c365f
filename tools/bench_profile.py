"""``baas-bench --profile``: where the time of the write path goes, per process and per stage.

During each profiled phase, py-spy (PyPI, the ``bench`` extra) samples the gateway, the Raft
leader and one follower (``py-spy record --format raw --full-filenames``: one collapsed stack per
line with its sample count; ``flamegraph.pl`` or speedscope read these files). py-spy reads the
target's memory with ptrace, so it needs root or ``CAP_SYS_PTRACE`` (or a ptrace_scope of 0).
It samples only threads holding the GIL (``--gil``): a sample is a moment the process ran
Python code (time in C with the GIL released, such as an fsync or a LevelDB write that drops it,
is not counted; waiting threads of the event loops and thread pools are not either).

:func:`stage_summary` (pure) reads a collapsed file into what the JSON reports: samples per stage
of the write path, where a sample belongs to the innermost frame of this project's code on its
stack (a LevelDB write called from the shard store is the shard store's time; a sample with no
project frame is the event loop, libp2p or another library on its own), plus the top functions
by own samples (the leaf) and by innermost project frame. Beside the samples, the counters each
profiled process exports on ``/metrics`` (Prometheus counters and histogram sums and counts:
requests, raft entries, fsyncs ...) are read before and after the phase;
:func:`counter_deltas` (pure) reports what moved. The processes' entry points (the
event loop runners in ``ENTRY_POINTS``) are no stage: a sample whose only project frame is one of
them is the loop or a library on its own.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import ConfigError

__all__ = [
    "ENTRY_POINTS",
    "STAGES",
    "PhaseProfiler",
    "counter_deltas",
    "find_py_spy",
    "parse_collapsed",
    "rounds_per_record",
    "scrape_metrics",
    "stage_of",
    "stage_summary",
]

PROFILE_RATE_HZ = 100
STOP_TIMEOUT_S = 30.0
TOP_FUNCTIONS_MAX = 15
COUNTERS_MAX = 80  # per process: the counters that moved most
METRICS_TIMEOUT_S = 5.0
INSTALL_HINT = "py-spy is not installed: pip install -e '.[bench]' (or pip install py-spy==0.4.3)"

# (stage, path prefixes relative to the repository), the first match wins: the more specific
# prefixes come first (apply and the log adapter live under node/consensus and node/replication)
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gateway", ("gateway/",)),
    ("merkle", ("node/merkle/",)),
    ("anchoring", ("node/anchoring/",)),
    ("apply", ("node/consensus/state_machine.py", "node/consensus/record_index.py")),
    ("raft log/snapshots", ("node/replication/", "node/consensus/storage.py")),
    ("raft core", ("node/consensus/",)),
    ("shard store/LevelDB", ("node/storage/",)),
    ("p2p/shard protocol", ("node/p2p/", "node/dataplane/")),
    ("coordinator", ("node/coordinator.py", "node/batcher.py", "node/records.py")),
    ("node api", ("node/api/",)),
    ("node other", ("node/",)),
)


# the runners of the processes' event loops: the asyncio loop of a node or the gateway, and the
# trio thread of the p2p bridge (its samples without a deeper project frame are trio's scheduler)
ENTRY_POINTS = ("node/runtime.py", "node/main.py", "gateway/main.py")
ENTRY_FUNCTIONS = (("node/p2p/bridge.py", "TrioBridge._thread_main"),)


def find_py_spy() -> str:
    """The py-spy binary: on PATH, or beside this interpreter (a venv not activated)."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise ConfigError(INSTALL_HINT)
    return found


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    path: str  # as py-spy wrote it (absolute with --full-filenames)


def _frame(text: str) -> Frame:
    name, sep, rest = text.rpartition(" (")
    if not sep or not rest.endswith(")"):
        return Frame(text, "")
    location = rest[:-1]
    path, colon, line = location.rpartition(":")
    return Frame(name, path if colon and line.isdigit() else location)


def parse_collapsed(text: str) -> list[tuple[list[Frame], int]]:
    """(frames outermost first, samples) per line of py-spy's raw (collapsed) output."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append(([_frame(part) for part in stack.split(";")], int(count)))
    return stacks


def _relative(path: str, repo_root: str) -> str | None:
    root = repo_root.rstrip("/") + "/"
    if path.startswith(root):
        return path[len(root) :]
    return None


def stage_of(relative_path: str) -> str | None:
    """The write-path stage of a file of this repository (None: not one of ours)."""
    if relative_path.startswith(ENTRY_POINTS):
        return None
    for stage, prefixes in STAGES:
        if relative_path.startswith(prefixes):
            return stage
    return None


def _library(path: str) -> str:
    """A short name for code outside the repository: the package under site-packages, or the
    standard library module."""
    parts = Path(path).parts
    if "site-packages" in parts:
        index = parts.index("site-packages")
        return parts[index + 1] if index + 1 < len(parts) else "site-packages"
    name = Path(path).stem
    for part in reversed(parts[:-1]):
        if part.startswith("python3"):
            break
        name = part
    return name or "unknown"


def _label(frame: Frame, repo_root: str) -> str:
    relative = _relative(frame.path, repo_root)
    return f"{frame.function} ({relative if relative is not None else _library(frame.path)})"


def stage_summary(stacks: Iterable[tuple[list[Frame], int]], repo_root: str) -> dict[str, Any]:
    """Samples per stage (innermost project frame), top leaf and top project functions."""
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    project: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        if frames:
            leaves[_label(frames[-1], repo_root)] += count
        innermost = None
        for frame in reversed(frames):
            relative = _relative(frame.path, repo_root)
            if (relative, frame.function) in ENTRY_FUNCTIONS:
                continue
            if relative is not None and stage_of(relative) is not None:
                innermost = (frame, relative)
                break
        if innermost is None:
            library = _library(frames[-1].path) if frames else "unknown"
            stages[f"outside project code: {library}"] += count
            continue
        frame, relative = innermost
        stages[str(stage_of(relative))] += count
        project[f"{frame.function} ({relative})"] += count

    def share(counter: Counter[str], limit: int | None = None) -> list[dict[str, Any]]:
        return [
            {"name": name, "samples": n, "share": round(n / total, 4) if total else 0.0}
            for name, n in counter.most_common(limit)
        ]

    return {
        "samples": total,
        "stages": share(stages),
        "top_self": share(leaves, TOP_FUNCTIONS_MAX),
        "top_project": share(project, TOP_FUNCTIONS_MAX),
    }


def _counter_samples(text: str) -> dict[str, float]:
    """The samples of counter and histogram families (``_total``, ``_sum``, ``_count``) of a
    Prometheus text exposition, by sample name with labels."""
    kinds: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) == 4:
                kinds[parts[2]] = parts[3]
            continue
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        family = key.split("{", 1)[0]
        # prometheus_client types a counter under its sample name (x_total), a histogram
        # under its base name (x, with samples x_sum, x_count, x_bucket)
        counted = kinds.get(family) == "counter" or any(
            family.endswith(suffix) and kinds.get(family.removesuffix(suffix)) == "histogram"
            for suffix in ("_sum", "_count")
        )
        if counted:
            with contextlib.suppress(ValueError):  # a NaN or garbled line: skipped
                samples[key] = float(value)
    return samples


def scrape_metrics(url: str) -> dict[str, float]:
    """Counter samples from ``url`` (empty when it does not answer: the profile goes on)."""
    try:
        with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as reply:
            return _counter_samples(reply.read().decode(errors="replace"))
    except (OSError, urllib.error.URLError, ValueError):
        return {}


def counter_deltas(
    before: dict[str, float], after: dict[str, float], limit: int = COUNTERS_MAX
) -> dict[str, float]:
    """How much each counter moved over a phase, the largest moves first (at most ``limit``)."""
    moved = {
        key: round(value - before.get(key, 0.0), 6)
        for key, value in after.items()
        if value != before.get(key, 0.0)
    }
    ranked = sorted(moved.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:limit]
    return dict(ranked)


# What one committed record costs in rounds, read from a process's counter deltas
# (docs/performance.md, "Records per round"): name -> metric prefixes summed.
_FORWARDS = 'baas_node_http_requests_total{method="POST",route="/internal/v1/index"'
ROUND_COUNTERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gateway_node_calls", ("baas_gateway_node_calls_total",)),
    ("forwards_received", (_FORWARDS,)),
    ("log_entries_applied", ("baas_node_ledger_entry_operations_count",)),
    ("raft_frames_sent", ('baas_node_raft_link_frames_total{kind="sent"}',)),
    ("raft_frames_received", ('baas_node_raft_link_frames_total{kind="received"}',)),
    ("raft_stream_writes", ('baas_node_raft_link_frames_total{kind="writes"}',)),
    ("shard_put_frames_sent", ('baas_node_coalesce_frames_total{op="put"}',)),
    ("p2p_requests_sent", ("baas_node_p2p_requests_sent_total",)),
    ("shard_commit_batches", ("baas_node_commit_batches_total",)),
)  # fmt: skip


def rounds_per_record(counters: dict[str, float], records: int) -> dict[str, float]:
    """Per committed record, the calls, entries, frames and fsyncs a process's counters moved.

    Only what moved is reported (a follower receives no forwards); nothing when no record was.
    """
    if records <= 0:
        return {}
    per_record = {}
    for name, prefixes in ROUND_COUNTERS:
        moved = sum(v for k, v in counters.items() if k.startswith(prefixes))
        if moved:
            per_record[name] = round(moved / records, 4)
    return per_record


class PhaseProfiler:
    """py-spy on some processes for the length of one phase (started before, stopped after)."""

    def __init__(
        self,
        py_spy: str,
        targets: dict[str, int],  # label (gateway, leader node-3, ...) -> pid
        out_dir: Path,
        phase: str,
        repo_root: Path,
        rate_hz: int = PROFILE_RATE_HZ,
        metrics_urls: dict[str, str] | None = None,  # label -> its /metrics
    ) -> None:
        self.py_spy = py_spy
        self.targets = targets
        self.out_dir = out_dir
        self.phase = phase
        self.repo_root = repo_root
        self.rate_hz = rate_hz
        self._procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self.metrics_urls = metrics_urls or {}
        self._counters_before: dict[str, dict[str, float]] = {}

    def start(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._counters_before = {
            label: scrape_metrics(url) for label, url in self.metrics_urls.items()
        }
        for label, pid in self.targets.items():
            path = self.out_dir / f"{self.phase}-{label.replace(' ', '-')}.txt"
            argv = [
                self.py_spy, "record", "--pid", str(pid), "--rate", str(self.rate_hz),
                "--format", "raw", "--full-filenames", "--gil", "--output", str(path),
            ]  # fmt: skip
            log = (self.out_dir / f"{path.stem}.log").open("wb")
            with log:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            self._procs[label] = (proc, path)

    def stop(self) -> dict[str, Any]:
        """SIGINT every py-spy (it writes its file then), wait, summarise each file."""
        for proc, _ in self._procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
        report: dict[str, Any] = {}
        counters_after = {label: scrape_metrics(url) for label, url in self.metrics_urls.items()}
        for label, (proc, path) in self._procs.items():
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            entry: dict[str, Any] = {"pid": self.targets[label], "file": str(path)}
            if label in counters_after:
                before = self._counters_before.get(label, {})
                entry["counters"] = counter_deltas(before, counters_after[label])
            if path.exists():
                stacks = parse_collapsed(path.read_text(errors="replace"))
                entry.update(stage_summary(stacks, str(self.repo_root)))
            else:
                log = path.parent / f"{path.stem}.log"
                text = log.read_text(errors="replace") if log.exists() else ""
                tail = text.strip().splitlines()[-1:]
                entry["error"] = tail[0] if tail else f"py-spy exited {proc.returncode}"
            report[label] = entry
        self._procs.clear()
        return report

    def __enter__(self) -> PhaseProfiler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._procs:
            self.stop()
