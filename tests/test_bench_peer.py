"""``baas-bench --peer etcd`` and ``--profile``: the ratio and growth verdicts (pure), a real
5-member etcd cluster on loopback driven by the bench's load, and py-spy on a real process.

The etcd test installs Debian's ``etcd-server`` the way the bench does when it is missing (CI
runs as root): no skip.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

import tools.bench as bench_module
from node.errors import ConfigError
from tools.bench import _parser, _run_peer
from tools.bench_etcd import EtcdCluster, ensure_etcd, etcd_key, etcd_version
from tools.bench_load import WorkerSpec, run_worker
from tools.bench_peer import (
    GROWTH_TARGETS,
    RATIO_TARGETS,
    compare,
    cpu_at,
    growth_summary,
    growth_targets,
    longest_gap_s,
)
from tools.bench_profile import (
    PhaseProfiler,
    counter_deltas,
    find_py_spy,
    parse_collapsed,
    rounds_per_record,
    stage_summary,
)
from tools.bench_profile import _counter_samples as counter_samples
from tools.bench_report import ProcessSampler

# ---------------------------------------------------------------- ratios (pure)


def _phase(rate: float, p99_ms: float = 10.0, cpu_ms: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {
        "records_per_s": rate,
        "latency_ms": {"p99": p99_ms},
        "cluster_cpu_ms_per_record": cpu_ms,
        "errors": {},
        **extra,
    }


PARAMS = {"clients": 32, "rate": 1000.0, "peer_txn_size": 100, "index_writes": True}


def test_each_figure_is_a_ratio_to_etcds_with_the_issues_bounds() -> None:
    ours = {
        "single-write": _phase(1700, cpu_ms=1.6),
        "batch-write": _phase(10_000),
        "read": _phase(800),
        "paced-write": _phase(1000, p99_ms=50.0, rate_target_per_s=1000.0),
    }
    etcd = {
        "single-write": _phase(1700, cpu_ms=0.8),
        "batch-write": _phase(15_000),
        "read": _phase(2000),
        "paced-write": _phase(1000, p99_ms=28.0, rate_target_per_s=1000.0),
    }
    rows = {row["name"]: row for row in compare(ours, etcd, PARAMS)}
    assert set(rows) == {t.name for t in RATIO_TARGETS}
    assert all(row["conclusive"] and row["issue"] == 13 for row in rows.values()), rows
    single = rows["single_write_vs_etcd"]
    assert (single["ours"], single["etcd"], single["ratio"], single["pass"]) == (
        1700,
        1700,
        1.0,
        True,
    )  # the bound itself passes
    assert rows["batch_write_vs_etcd"]["ratio"] == pytest.approx(0.667, abs=1e-3)
    assert rows["batch_write_vs_etcd"]["pass"] is False  # < 0.7
    assert rows["paced_write_p99_vs_etcd"]["ratio"] == pytest.approx(1.786, abs=1e-3)
    assert rows["paced_write_p99_vs_etcd"]["pass"] is True  # <= 2: lower is better
    assert rows["read_vs_etcd"]["pass"] is False  # 0.4 < 0.5
    assert rows["cpu_per_single_write_vs_etcd"]["ratio"] == 2.0
    assert rows["cpu_per_single_write_vs_etcd"]["pass"] is True


def test_a_ratio_is_inconclusive_off_the_targets_load_or_with_errors() -> None:
    ours = {
        "single-write": _phase(500),
        "batch-write": _phase(900, errors={"index_unavailable": 500}),
        "paced-write": _phase(400, rate_target_per_s=1000.0),
    }
    etcd = {"single-write": _phase(1000), "batch-write": _phase(9000), "paced-write": _phase(1000)}
    rows = {r["name"]: r for r in compare(ours, etcd, {**PARAMS, "clients": 8})}
    assert "32 clients" in rows["single_write_vs_etcd"]["note"]
    assert rows["single_write_vs_etcd"]["pass"] is False
    assert "ours: the phase had errors" in rows["batch_write_vs_etcd"]["note"]
    assert "only 400 of the 1000/s" in rows["paced_write_p99_vs_etcd"]["note"]
    assert rows["read_vs_etcd"]["ratio"] is None and rows["read_vs_etcd"]["pass"] is False
    assert not any(row["conclusive"] for row in rows.values())
    no_log = {r["name"]: r for r in compare(ours, etcd, {**PARAMS, "index_writes": False})}
    assert "index_writes" in no_log["single_write_vs_etcd"]["note"]
    txn = {r["name"]: r for r in compare(ours, etcd, {**PARAMS, "peer_txn_size": 50})}
    assert "txns of 100" in txn["batch_write_vs_etcd"]["note"]
    assert all(row["etcd"] is None for row in compare(ours, {}, PARAMS))


# ---------------------------------------------------------------- growth (pure)


def test_cpu_at_interpolates_cumulative_samples() -> None:
    series = [(0.0, 0.0), (10.0, 5.0), (20.0, 5.0)]
    assert cpu_at(series, 5.0) == 2.5
    assert cpu_at(series, -1.0) == 0.0 and cpu_at(series, 30.0) == 5.0
    assert cpu_at(series, 15.0) == 5.0
    assert cpu_at([], 1.0) is None


def test_growth_compares_cpu_per_record_of_the_first_and_last_tenth() -> None:
    completions = [(float(t), 100) for t in range(1, 101)]  # 100 records a second for 100 s
    # the cluster burns 1 CPU s per second for the first 50 s, then 2: twice the cost per record
    series = [(float(t), float(t) if t <= 50 else 50.0 + 2 * (t - 50)) for t in range(0, 101)]
    summary = growth_summary(completions, series, 0.0)
    assert summary["records_first"] == 1000 and summary["records_last"] == 1000
    assert summary["cpu_ms_per_record_first"] == pytest.approx(10.0)
    assert summary["cpu_ms_per_record_last"] == pytest.approx(20.0)
    assert summary["cpu_per_record_last_over_first"] == pytest.approx(2.0)
    assert summary["longest_gap_s"] == 1.0
    assert growth_summary([], series, 0.0)["cpu_per_record_last_over_first"] is None


def test_longest_gap_counts_successes_only() -> None:
    rows = [(1.0, 5), (1.5, 0), (2.0, 0), (3.2, 5), (3.4, 5)]
    assert longest_gap_s(rows, 0.0) == pytest.approx(2.2)
    assert longest_gap_s([(1.0, 0)], 0.0) is None


def test_growth_verdicts_need_a_million_records() -> None:
    result = {
        "cpu_per_record_last_over_first": 1.2,
        "node_rss_growth_second_half_pct_max": 12.0,
        "longest_gap_s": 0.4,
        "errors": {},
    }
    rows = {r["name"]: r for r in growth_targets(result, {"growth_records": 1_000_000})}
    assert set(rows) == {t.name for t in GROWTH_TARGETS}
    assert rows["growth_cpu_per_record_flat"]["pass"] is True
    assert rows["growth_node_memory_flat"]["pass"] is False
    assert rows["growth_no_stall"]["pass"] is True
    assert all(row["conclusive"] for row in rows.values())
    small = growth_targets(result, {"growth_records": 2000})
    assert all("10^6" in row["note"] and not row["conclusive"] for row in small)
    assert all(not row["pass"] for row in growth_targets(None, {}))


# ---------------------------------------------------------------- profile summary (pure)

COLLAPSED = """\
run (/repo/node/runtime.py:10);select (/usr/lib/python3.11/selectors.py:468) 30
run (/repo/node/runtime.py:10);apply (/repo/node/consensus/state_machine.py:5);put (/v/site-packages/plyvel/x.py:1) 20
run (/repo/node/runtime.py:10);step (/repo/node/consensus/raft.py:9) 10
main (/repo/gateway/main.py:3);post_record (/repo/gateway/app.py:40) 25
run (/repo/node/runtime.py:10);append (/repo/node/merkle/log.py:7) 10
TrioBridge._thread_main (/repo/node/p2p/bridge.py:80);run (/v/site-packages/trio/_run.py:2) 5
garbage line
"""  # noqa: E501


def test_stage_summary_attributes_samples_to_the_innermost_project_frame() -> None:
    stacks = parse_collapsed(COLLAPSED)
    assert len(stacks) == 6 and stacks[0][1] == 30
    summary = stage_summary(stacks, "/repo")
    assert summary["samples"] == 100
    stages = {row["name"]: row["share"] for row in summary["stages"]}
    assert stages == {
        "outside project code: selectors": 0.3,  # the loop's own runner is no stage
        "gateway": 0.25,
        "apply": 0.2,  # the LevelDB call below it counts for apply
        "merkle": 0.1,
        "raft core": 0.1,
        "outside project code: trio": 0.05,  # the bridge thread's runner is no stage either
    }
    assert summary["top_self"][0] == {
        "name": "select (selectors)",
        "samples": 30,
        "share": 0.3,
    }
    assert summary["top_project"][0]["name"] == "post_record (gateway/app.py)"
    assert {"name": "put (plyvel)", "samples": 20, "share": 0.2} in summary["top_self"]


EXPOSITION = """\
# HELP node_raft_entries_total entries
# TYPE node_raft_entries_total counter
node_raft_entries_total 120.0
node_raft_entries_created 1.7e9
# TYPE node_fsync_seconds histogram
node_fsync_seconds_bucket{le="0.001"} 3.0
node_fsync_seconds_sum 0.25
node_fsync_seconds_count 40.0
# TYPE node_queue_records gauge
node_queue_records 7.0
# TYPE node_http_requests_total counter
node_http_requests_total{route="/x",method="POST",status="201"} 9.0
"""


def test_counters_are_the_counter_and_histogram_samples_that_moved() -> None:
    before = counter_samples(EXPOSITION)
    assert before == {
        "node_raft_entries_total": 120.0,
        "node_fsync_seconds_sum": 0.25,
        "node_fsync_seconds_count": 40.0,
        'node_http_requests_total{route="/x",method="POST",status="201"}': 9.0,
    }  # no gauge, no bucket, no _created
    after = {**before, "node_raft_entries_total": 620.0, "node_fsync_seconds_count": 41.0}
    assert counter_deltas(before, after) == {
        "node_raft_entries_total": 500.0,
        "node_fsync_seconds_count": 1.0,
    }
    assert list(counter_deltas(before, after, limit=1)) == ["node_raft_entries_total"]
    assert counter_deltas({}, {"new_total": 2.0}) == {"new_total": 2.0}


def test_rounds_per_record_divides_the_round_counters_by_the_records() -> None:
    leader = {
        'baas_node_http_requests_total{method="POST",route="/internal/v1/index",status="200"}': 40,
        'baas_node_http_requests_total{method="POST",route="/internal/v1/index",status="503"}': 2,
        'baas_node_http_requests_total{method="POST",route="/internal/v1/records",status="200"}': 9,
        "baas_node_ledger_entry_operations_count": 50.0,
        'baas_node_raft_link_frames_total{kind="sent"}': 300.0,
        'baas_node_coalesce_frames_total{op="put"}': 50.0,
        'baas_node_coalesce_frames_total{op="read"}': 7.0,
    }
    assert rounds_per_record(leader, 500) == {
        "forwards_received": 0.084,
        "log_entries_applied": 0.1,
        "raft_frames_sent": 0.6,
        "shard_put_frames_sent": 0.1,
    }
    assert rounds_per_record({"baas_gateway_node_calls_total": 32.0}, 500) == {
        "gateway_node_calls": 0.064
    }
    assert rounds_per_record(leader, 0) == {}


SPIN = """
import time
def spin_here():
    total = 0
    for i in range(200_000):
        total += i
    return total
until = time.time() + 30
while time.time() < until:
    spin_here()
"""


@pytest.mark.timeout(60)
def test_py_spy_profiles_a_real_process_into_stages(tmp_path: Path) -> None:
    module = tmp_path / "node" / "spin.py"  # "node other": a file of the "repository" tmp_path
    module.parent.mkdir()
    module.write_text(SPIN)
    child = subprocess.Popen([sys.executable, str(module)])
    try:
        time.sleep(1.0)  # py-spy finds the interpreter once it is loaded
        profiler = PhaseProfiler(find_py_spy(), {"spinner": child.pid}, tmp_path, "x", tmp_path)
        with profiler:
            time.sleep(1.5)
            report = profiler.stop()
    finally:
        child.kill()
        child.wait()
    entry = report["spinner"]
    assert "error" not in entry, entry
    assert Path(entry["file"]).read_text().strip()  # the collapsed stacks, for flame graphs
    assert entry["samples"] >= 50  # 100 Hz for 1.5 s, on a busy box
    assert entry["stages"][0]["name"] == "node other"
    assert entry["top_project"][0]["name"] == "spin_here (node/spin.py)"


# ---------------------------------------------------------------- etcd, for real


def _etcd_listeners(pids: dict[str, int]) -> set[str]:
    addresses = set()
    for pid in pids.values():
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                addresses.add(conn.laddr.ip)
    return addresses


def _get(url: str, key: str) -> dict[str, Any]:
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    request = urllib.request.Request(f"{url}/v3/kv/range", body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as reply:
        answer: dict[str, Any] = json.loads(reply.read())
    return answer


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_etcd_members_start_on_loopback_commit_puts_and_are_removed() -> None:
    binary = ensure_etcd()  # installs etcd-server with apt when missing (root)
    assert etcd_version(binary).startswith("3.")
    with EtcdCluster(binary) as etcd:
        pids = etcd.pids()
        assert len(pids) == 5
        assert _etcd_listeners(pids) == {"127.0.0.1"}
        sampler = ProcessSampler(pids, 0.2)
        before = sampler.snapshot()
        base = WorkerSpec(
            phase="single-write",
            gateway_url="",
            api_key="",
            secret_hex="",
            start_at_s=time.time(),
            concurrency=4,
            requests=40,
            seed=7,
            etcd_urls=etcd.client_urls,
        )
        single = run_worker(base, lambda n: None)
        batch = run_worker(
            replace(base, phase="batch-write", requests=300, batch_size=100, seed=8),
            lambda n: None,
        )
        after = sampler.snapshot()
        assert sum(r[2] for r in single.completions) == 40 and not single.errors
        assert sum(r[2] for r in batch.completions) == 300 and not batch.errors
        # committed: another member than the one written through serves the value
        value = _get(etcd.client_urls[4], etcd_key(7, 0))
        assert value["count"] == "1"
        assert len(base64.b64decode(value["kvs"][0]["value"])) == 512
        assert _get(etcd.client_urls[0], etcd_key(8, 299))["count"] == "1"
        assert sum(after[n][2] - before[n][2] for n in pids) > 0  # CPU sampled
        directory = etcd.directory
    assert not directory.exists()
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids.values()
    )


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_the_bench_runs_every_shape_on_etcd_and_cleans_up(tmp_path: Path) -> None:
    args: argparse.Namespace = _parser().parse_args(
        [
            "--out", str(tmp_path),
            "--quiet",
            "--clients", "4",
            "--single-writes", "40",
            "--records", "400",
            "--peer-txn-size", "100",
            "--peer-batch-clients", "2",
            "--reads", "40",
            "--rate", "50",
            "--duration-s", "1",
            "--sample-interval-s", "0.2",
        ]
    )  # fmt: skip
    before = {p.pid for p in psutil.process_iter() if p.name() == "etcd"}
    phases = ["single-write", "batch-write", "read", "paced-write", "cpu"]
    peer = _run_peer(args, phases, None, None)
    assert list(peer["phases"]) == ["single-write", "batch-write", "read", "paced-write"]
    expected = {"single-write": 40, "batch-write": 400, "read": 40, "paced-write": 50}
    for name, result in peer["phases"].items():
        assert result["records_ok"] == expected[name] and result["errors"] == {}, name
        assert result["cluster_cpu_s"] > 0 and result["cluster_cpu_ms_per_record"] > 0, name
    assert peer["phases"]["batch-write"]["batch_size"] == 100
    assert peer["phases"]["batch-write"]["requests"] == 4  # txns of 100
    assert peer["members"] == 5 and peer["fsync"] is True
    assert all(p["rss_mib_max"] for n, p in peer["processes"].items() if n != "bench")
    after = {p.pid for p in psutil.process_iter() if p.name() == "etcd"}
    assert after <= before  # every member the bench started is gone


def test_a_failed_peer_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> str:
        raise ConfigError("etcd is not installed: run `sudo apt-get install etcd-server`")

    monkeypatch.setattr(bench_module, "ensure_etcd", missing)
    args = _parser().parse_args(["--peer", "etcd"])
    peer = bench_module._peer_or_error(args, ["single-write"], None, None)
    assert peer == {
        "name": "etcd",
        "error": "etcd is not installed: run `sudo apt-get install etcd-server`",
        "phases": {},
    }
    assert all(row["etcd"] is None and not row["pass"] for row in compare({}, peer["phases"], {}))
