"""``baas-cluster status``: run as a real command against a real local cluster and a dead one."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.client import PartnerClient
from tools.cluster_init import ClusterLayout, init_cluster
from tools.local_cluster import LocalCluster
from tools.status import (
    ClusterStatus,
    GatewayStatus,
    NodeStatus,
    format_table,
    repair_line,
    scrub_line,
)

ROOT = Path(__file__).resolve().parent.parent


def _status(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "tools.cluster_cli", "status", "--dir", str(directory), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _status_json(directory: Path) -> tuple[int, dict[str, Any]]:
    result = _status(directory, "--json", "--timeout", "2")
    return result.returncode, json.loads(result.stdout)


# ------------------------------------------------------------------ no processes


def test_status_of_a_cluster_that_is_not_running_is_all_down(tmp_path: Path) -> None:
    layout = init_cluster(tmp_path)  # free ports, nothing listens on them
    code, report = _status_json(tmp_path)
    assert code == 1
    assert [node["name"] for node in report["nodes"]] == [n.name for n in layout.nodes]
    assert [node["peer_id"] for node in report["nodes"]] == [n.peer_id for n in layout.nodes]
    assert not any(node["up"] for node in report["nodes"])
    assert all(node["error"] for node in report["nodes"])
    assert report["gateway"]["state"] == "down" and report["healthy"] is False
    table = _status(tmp_path)
    assert table.returncode == 1
    rows = [line.split() for line in table.stdout.splitlines() if line.startswith("node-")]
    assert "0/5 nodes up" in table.stdout and [row[1] for row in rows] == ["down"] * 5
    assert table.stdout.splitlines()[-1].startswith(f"gateway {layout.gateway_url}: down")


def test_status_of_a_directory_without_a_cluster_exits_2(tmp_path: Path) -> None:
    result = _status(tmp_path)
    assert result.returncode == 2 and "not an initialised cluster" in result.stderr


def test_table_shows_every_column_and_marks_missing_values() -> None:
    peer = "12D3KooWAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdef"
    status = ClusterStatus(
        cluster_id="baas-x",
        k=3,
        n=5,
        nodes=(
            NodeStatus(
                "node-1", "http://127.0.0.1:1", True, peer, 4, 10, 2048, 3, 0, raft="leader/7"
            ),
            NodeStatus("node-2", "http://127.0.0.1:2", False, peer, error="refused"),
        ),
        gateway=GatewayStatus("http://127.0.0.1:3", "ready"),
    )
    lines = format_table(status).splitlines()
    assert lines[0] == "cluster baas-x: k=3 n=5, 1/2 nodes up"
    assert lines[1].split() == [
        "NODE", "STATE", "PEER", "ID", "PEERS", "SHARDS", "BYTES", "QUEUE", "HINTS", "RAFT", "API",
    ]  # fmt: skip
    assert lines[2].split() == [
        "node-1", "up", "12D3KooW...abcdef", "4", "10", "2048", "3", "0", "leader/7",
        "http://127.0.0.1:1",
    ]  # fmt: skip
    assert lines[3].split()[:9] == [
        "node-2", "down", "12D3KooW...abcdef", "-", "-", "-", "-", "-", "-",
    ]  # fmt: skip
    assert lines[3].endswith("http://127.0.0.1:2  (refused)")
    assert lines[4] == "repair: no leader report"  # node-1 leads but sent no repair stats
    assert lines[5] == "scrub: no node report"
    assert lines[6] == "gateway http://127.0.0.1:3: ready"
    assert not status.healthy


def test_the_leaders_repair_progress_is_one_line() -> None:
    peer = "12D3KooWAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdef"
    report = {
        "passes": 3, "last_pass_s": 4.5, "below_n_by_healthy": {"4": 120, "3": 2},
        "backlog_records": 1, "lost_records": 0, "last_pass_rate_shards_per_s": 27.1,
        "shards_rebuilt": 124, "shard_bytes_rebuilt": 9000, "shards_relocated": 0,
        "shards_failed": 1, "rate_shards_per_s": 250.0,
    }  # fmt: skip
    follower = NodeStatus("node-1", "u", True, peer, raft="follower/2", repair={"passes": 9})
    leader = NodeStatus("node-2", "u", True, peer, raft="leader/2", repair=report)
    status = ClusterStatus("c", 3, 5, (follower, leader), GatewayStatus("g", "ready"))
    assert repair_line(status) == (
        "repair (node-2): 3 passes, last pass 4.5 s: below n 2 with 3/5, 120 with 4/5; "
        "backlog 1 records (0 lost); 27.1 shards/s over the pass; rebuilt 124 shards (9000 B), "
        "relocated 0, failed 1, 250.0 shards/s while repairing"
    )
    no_leader = ClusterStatus("c", 3, 5, (follower,), GatewayStatus("g", "ready"))
    assert repair_line(no_leader) == "repair: no leader report"


def test_every_nodes_scrubber_sums_into_one_line() -> None:
    peer = "12D3KooWAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdef"
    one = {
        "passes": 2, "last_pass_s": 3.5, "shards_checked": 900, "cross_checked": 40,
        "corrupt": {"checksum": 1, "shard_hash": 0}, "quarantined": 1,
    }  # fmt: skip
    two = {
        "passes": 1, "last_pass_s": 7.25, "shards_checked": 100, "cross_checked": 2,
        "corrupt": {"checksum": 0, "shard_hash": 2}, "quarantined": 2,
    }  # fmt: skip
    nodes = (
        NodeStatus("node-1", "u", True, peer, scrub=one),
        NodeStatus("node-2", "u", True, peer, scrub=two),
        NodeStatus("node-3", "u", False, peer),
    )
    status = ClusterStatus("c", 3, 5, nodes, GatewayStatus("g", "ready"))
    assert scrub_line(status) == (
        "scrub (2 nodes): 1000 shards checked (42 cross-checked), bad: 1 checksum, "
        "2 shard_hash, 3 quarantined; passes 1-2 per node, slowest last pass 7.25 s"
    )
    assert scrub_line(ClusterStatus("c", 3, 5, nodes[2:], GatewayStatus("g", "ready"))) == (
        "scrub: no node report"
    )


# ------------------------------------------------------------------ a real cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    layout = init_cluster(tmp_path_factory.mktemp("status-cluster"))
    local = LocalCluster(layout)
    local.start()
    try:
        yield local
    finally:
        local.stop()


def _wait_for(directory: Path, done: Any, timeout_s: float = 30.0) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        code, report = _status_json(directory)
        if done(report) or time.monotonic() > deadline:
            return code, report
        time.sleep(0.5)


async def _write_records(layout: ClusterLayout, count: int) -> None:
    creds = layout.partners["demo-shop"]
    async with PartnerClient(
        layout.gateway_url, creds["api_key"], bytes.fromhex(creds["secret_hex"])
    ) as client:
        for i in range(count):
            created = await client.put_record({"type": "payment", "amount_minor": i})
            assert created.status == 201, created


@pytest.mark.cluster
@pytest.mark.timeout(300)
async def test_status_of_a_running_cluster_then_one_node_killed(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    layout = cluster.layout
    directory = Path(layout.directory)
    code, report = _wait_for(
        directory, lambda r: all(node["connected_peers"] == 4 for node in r["nodes"])
    )
    assert code == 0 and report["healthy"] is True, report
    assert [node["peer_id"] for node in report["nodes"]] == [n.peer_id for n in layout.nodes]
    assert all(node["up"] and node["error"] is None for node in report["nodes"])
    assert report["gateway"] == {"url": layout.gateway_url, "state": "ready", "error": None}
    assert (report["cluster_id"], report["k"], report["n"]) == (layout.cluster_id, 3, 5)

    # Shard counts move with writes: every record is n=5 shards, one per node here.
    before = sum(node["shards"] for node in report["nodes"])
    await _write_records(layout, 3)
    code, report = _wait_for(
        directory, lambda r: sum(node["shards"] for node in r["nodes"]) == before + 15
    )
    assert sum(node["shards"] for node in report["nodes"]) == before + 15, report
    assert all(node["queue_depth"] in (None, 0) for node in report["nodes"]), report
    roles = sorted(str(node["raft"]).split("/")[0] for node in report["nodes"])
    assert roles == ["follower"] * 4 + ["leader"], report

    table = _status(directory)
    assert table.returncode == 0, table.stderr
    assert "5/5 nodes up" in table.stdout
    for node in layout.nodes:
        row = next(line for line in table.stdout.splitlines() if line.startswith(node.name))
        assert row.split()[1:3] == ["up", f"{node.peer_id[:8]}...{node.peer_id[-6:]}"]
    assert f"gateway {layout.gateway_url}: ready" in table.stdout

    # A wrong API token: every node refuses to report, so every node counts as down.
    wrong = tmp_path / "wrong-token"
    (wrong / "secrets").mkdir(parents=True)
    shutil.copy(directory / "cluster.json", wrong / "cluster.json")
    shutil.copy(directory / "secrets" / "partners.json", wrong / "secrets" / "partners.json")
    (wrong / "secrets" / "node-api.token").write_text("not-the-token\n")
    code, report = _status_json(wrong)
    assert code == 1 and {node["error"] for node in report["nodes"]} == {"HTTP 401"}

    # One node killed: shown down, the others up, the command exits non-zero.
    cluster.kill("node-3", signal.SIGKILL)
    code, report = _status_json(directory)
    assert code == 1 and report["healthy"] is False
    states = {node["name"]: node["up"] for node in report["nodes"]}
    assert states == {
        "node-1": True,
        "node-2": True,
        "node-3": False,
        "node-4": True,
        "node-5": True,
    }
    assert report["gateway"]["state"] == "ready"  # it needs only one ready node
    table = _status(directory)
    assert table.returncode == 1 and "4/5 nodes up" in table.stdout
    row = next(line for line in table.stdout.splitlines() if line.startswith("node-3"))
    assert row.split()[1] == "down"
