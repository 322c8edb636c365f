"""The consensus log in real node processes: election, kill -9 of the leader, catch-up."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nodeapi import node_get, running_cluster

from tools.local_cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]
NEW_LEADER_WITHIN_S = 3.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("consensus")) as local:
        yield local


def raft(cluster: LocalCluster, name: str) -> dict[str, Any] | None:
    status = node_get(cluster, name, "/internal/v1/status", timeout_s=1.0)
    return None if status is None else dict(status["raft"])


def agreed_leader(cluster: LocalCluster, names: list[str]) -> tuple[str, int] | None:
    """(leader peer id, term) when every named node reports the same leader and term."""
    views = [raft(cluster, name) for name in names]
    if any(v is None for v in views):
        return None
    pairs = {(v["leader"], v["term"]) for v in views if v is not None}
    if len(pairs) != 1:
        return None
    leader, term = pairs.pop()
    return (leader, term) if leader else None


def wait_for_leader(
    cluster: LocalCluster, names: list[str], timeout_s: float, *, other_than: str = ""
) -> tuple[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = agreed_leader(cluster, names)
        if found is not None and found[0] != other_than:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{names} did not agree on a leader within {timeout_s} s")


def test_the_leader_measures_every_follower_clock_and_stamps_real_time(
    cluster: LocalCluster,
) -> None:
    """Clock reports cross the real transport: the leader's status and /metrics show each
    follower's offset (same machine clock: near 0, no alarm), and log time is real time."""
    names = [n.name for n in cluster.layout.nodes]
    peer_of = {n.name: n.peer_id for n in cluster.layout.nodes}
    leader, _ = wait_for_leader(cluster, names, timeout_s=15)
    leader_name = next(name for name, peer in peer_of.items() if peer == leader)
    deadline = time.monotonic() + 15
    status: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        status = raft(cluster, leader_name)
        if status is not None and len(status["clock_offsets_ms"]) == 4:
            break
        time.sleep(0.1)
    assert status is not None, "no status from the leader"
    offsets = status["clock_offsets_ms"]
    assert set(offsets) == {peer for name, peer in peer_of.items() if name != leader_name}
    limit = status["clock_offset_max_ms"]
    assert all(abs(ms) <= limit for ms in offsets.values()), offsets
    assert status["clock_alarm"] is False
    now_ms = time.time_ns() // 1_000_000
    assert now_ms - 600_000 < status["log_time_ms"] <= now_ms + limit
    url = f"http://{cluster.node(leader_name).http_addr}/metrics"
    token = (Path(cluster.layout.directory) / "secrets" / "node-api.token").read_text().strip()
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    peers = {
        line.split('peer="')[1].split('"')[0]
        for line in text.splitlines()
        if "_raft_clock_offset_ms{" in line
    }
    assert peers == set(offsets), text[:2000]
    # The raft link's frames and the stream writes carrying them (several frames per write
    # when a burst queues; never more writes than frames).
    link = {
        line.split('kind="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("baas_node_raft_link_frames_total{")
    }
    assert set(link) == {"sent", "writes", "received"}, text[:2000]
    assert 0 < link["writes"] <= link["sent"] and link["received"] > 0, link


def test_five_nodes_elect_one_leader_and_replace_it_after_kill_9(cluster: LocalCluster) -> None:
    names = [n.name for n in cluster.layout.nodes]
    peer_of = {n.name: n.peer_id for n in cluster.layout.nodes}
    leader, term = wait_for_leader(cluster, names, timeout_s=15)
    statuses = {name: raft(cluster, name) for name in names}
    roles = sorted(s["role"] for s in statuses.values() if s is not None)
    assert roles == ["follower"] * 4 + ["leader"]
    assert all(len(s["voters"]) == 5 for s in statuses.values() if s is not None)

    leader_name = next(name for name, peer in peer_of.items() if peer == leader)
    cluster.kill(leader_name)
    killed_at = time.monotonic()
    survivors = [name for name in names if name != leader_name]
    new_leader, new_term = wait_for_leader(cluster, survivors, timeout_s=15, other_than=leader)
    elapsed = time.monotonic() - killed_at
    assert new_leader != leader and new_term > term
    print(f"new leader after {elapsed:.2f} s")
    assert elapsed <= NEW_LEADER_WITHIN_S, f"new leader after {elapsed:.2f} s"

    # The killed node restarts from its own disk, follows the new leader and catches up.
    cluster.start_node(leader_name)
    wait_for_leader(cluster, names, timeout_s=15)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        views = [raft(cluster, name) for name in names]
        if all(v is not None for v in views):
            commits = {v["commit_index"] for v in views if v is not None}
            applied = {v["applied_index"] for v in views if v is not None}
            if len(commits) == 1 and applied == commits:
                break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the restarted node did not catch up: {views}")
    restarted = raft(cluster, leader_name)
    assert restarted is not None and restarted["role"] == "follower"
    assert restarted["leader"] == new_leader
