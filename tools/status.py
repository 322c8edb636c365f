"""``baas-cluster status``: every node and the gateway of a cluster at a glance.

Reads the cluster directory ``baas-cluster init`` wrote (``cluster.json`` and the node API token
in ``secrets/``), asks every node's ``GET /internal/v1/status`` (bearer token) and the gateway's
``GET /readyz``, all at once, and prints one table (or ``--json``). A node that does not answer,
answers with an error, or reports another peer id than the cluster gave it is *down*. Exit
status: 0 when every node is up and the gateway ready, 1 otherwise, 2 when the directory is not
a cluster.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgpack

from node.errors import BaasError, ConfigError
from tools.cluster_init import ClusterLayout, NodeLayout, load_layout

__all__ = [
    "ClusterStatus",
    "GatewayStatus",
    "NodeStatus",
    "cluster_status",
    "node_report",
    "run_status",
]

STATUS_PATH = "/internal/v1/status"
# Fields a node may report (older nodes lack some): the first one present is shown.
BYTES_FIELDS = ("shard_bytes", "bytes", "store_bytes")
QUEUE_FIELDS = ("queue_depth", "commit_queue_depth", "commit_queue_shards")


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    url: str
    up: bool
    peer_id: str  # the one the cluster config names
    connected_peers: int | None = None
    shards: int | None = None
    shard_bytes: int | None = None
    queue_depth: int | None = None
    hints: int | None = None
    error: str | None = None
    raft: str | None = None  # "<role>/<term>" of the node's consensus replica
    repair: dict[str, Any] | None = None  # the repairer's stats (meaningful on the leader)
    scrub: dict[str, Any] | None = None  # the node's scrubber: its own shards checked


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    url: str
    state: str  # "ready", "not ready" or "down"
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    cluster_id: str
    k: int
    n: int
    nodes: tuple[NodeStatus, ...]
    gateway: GatewayStatus

    @property
    def healthy(self) -> bool:
        return all(node.up for node in self.nodes) and self.gateway.state == "ready"


def _get(url: str, headers: dict[str, str], timeout_s: float) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), exc.read()


def _decode(content_type: str, body: bytes) -> Any:
    if content_type == "application/msgpack":
        return msgpack.unpackb(body, raw=False)
    return json.loads(body)


def _first_int(report: dict[str, Any], names: tuple[str, ...]) -> int | None:
    for name in names:
        if isinstance(report.get(name), int):
            return int(report[name])
    return None


def _count(value: Any) -> int | None:
    if isinstance(value, list | tuple):
        return len(value)
    return int(value) if isinstance(value, int) else None


def node_report(
    node: NodeLayout, token: str, timeout_s: float
) -> tuple[dict[str, Any] | None, str | None]:
    """A node's status report, or None and why not (unreachable, an error, another peer)."""
    try:
        code, content_type, body = _get(
            f"http://{node.http_addr}{STATUS_PATH}", {"Authorization": f"Bearer {token}"}, timeout_s
        )
        report = _decode(content_type, body)
    except (OSError, ValueError, msgpack.UnpackException) as exc:
        return None, str(getattr(exc, "reason", exc))
    if code != 200 or not isinstance(report, dict):
        return None, f"HTTP {code}"
    if report.get("peer_id") != node.peer_id:
        return None, f"reports peer {report.get('peer_id')}"
    return report, None


def node_status(node: NodeLayout, token: str, timeout_s: float) -> NodeStatus:
    url = f"http://{node.http_addr}"
    report, error = node_report(node, token, timeout_s)
    if report is None:
        return NodeStatus(name=node.name, url=url, up=False, peer_id=node.peer_id, error=error)
    return NodeStatus(
        name=node.name,
        url=url,
        up=True,
        peer_id=node.peer_id,
        connected_peers=_count(report.get("connected_peers")),
        shards=_count(report.get("shards")),
        shard_bytes=_first_int(report, BYTES_FIELDS),
        queue_depth=_first_int(report, QUEUE_FIELDS),
        hints=_count(report.get("hints")),
        raft=_raft(report.get("raft")),
        repair=report["repair"] if isinstance(report.get("repair"), dict) else None,
        scrub=report["scrub"] if isinstance(report.get("scrub"), dict) else None,
    )


def _raft(raw: Any) -> str | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("term"), int):
        return None
    return f"{raw.get('role')}/{raw['term']}"


def gateway_status(url: str, timeout_s: float) -> GatewayStatus:
    try:
        code, _, _ = _get(url + "/readyz", {}, timeout_s)
    except OSError as exc:
        return GatewayStatus(url=url, state="down", error=str(getattr(exc, "reason", exc)))
    if code == 200:
        return GatewayStatus(url=url, state="ready")
    return GatewayStatus(url=url, state="not ready", error=f"HTTP {code}")


def read_token(directory: Path) -> str:
    path = directory / "secrets" / "node-api.token"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the node API token {path}: {exc}") from exc


def cluster_status(layout: ClusterLayout, token: str, timeout_s: float = 2.0) -> ClusterStatus:
    """Ask every node and the gateway at once; never raises for an unreachable process."""
    with ThreadPoolExecutor(max_workers=len(layout.nodes) + 1) as pool:
        gateway = pool.submit(gateway_status, layout.gateway_url, timeout_s)
        nodes = list(pool.map(lambda node: node_status(node, token, timeout_s), layout.nodes))
        return ClusterStatus(
            cluster_id=layout.cluster_id,
            k=layout.k,
            n=layout.n,
            nodes=tuple(nodes),
            gateway=gateway.result(),
        )


def _short(peer_id: str) -> str:
    return f"{peer_id[:8]}...{peer_id[-6:]}" if len(peer_id) > 17 else peer_id


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def repair_line(status: ClusterStatus) -> str:
    """The leader's repair progress in one line (the leader alone repairs)."""
    leader = next((n for n in status.nodes if (n.raft or "").startswith("leader/")), None)
    if leader is None or leader.repair is None:
        return "repair: no leader report"
    r = leader.repair
    if not r.get("passes"):
        progress = f"first pass running, {r.get('pass_records_scanned', 0)} records scanned"
    else:
        below = r.get("below_n_by_healthy") or {}
        found = ", ".join(f"{c} with {h}/{status.n}" for h, c in sorted(below.items())) or "none"
        progress = (
            f"last pass {r.get('last_pass_s')} s: below n {found}; "
            f"backlog {r.get('backlog_records')} records ({r.get('lost_records')} lost); "
            f"{r.get('last_pass_rate_shards_per_s')} shards/s over the pass"
        )
    return (
        f"repair ({leader.name}): {r.get('passes', 0)} passes, {progress}; "
        f"rebuilt {r.get('shards_rebuilt', 0)} shards ({r.get('shard_bytes_rebuilt', 0)} B), "
        f"relocated {r.get('shards_relocated', 0)}, failed {r.get('shards_failed', 0)}, "
        f"{r.get('rate_shards_per_s', 0)} shards/s while repairing"
    )


def scrub_line(status: ClusterStatus) -> str:
    """Every node's scrubber summed in one line (each node scrubs its own shards)."""
    reports = [n.scrub for n in status.nodes if n.scrub is not None]
    if not reports:
        return "scrub: no node report"

    def total(field: str) -> int:
        return sum(int(r.get(field, 0)) for r in reports)

    corrupt: dict[str, int] = {}
    for r in reports:
        for why, count in (r.get("corrupt") or {}).items():
            corrupt[why] = corrupt.get(why, 0) + int(count)
    found = ", ".join(f"{c} {why}" for why, c in sorted(corrupt.items()) if c) or "none"
    passes = [int(r.get("passes", 0)) for r in reports]
    slowest = max(float(r.get("last_pass_s", 0.0)) for r in reports)
    return (
        f"scrub ({len(reports)} nodes): {total('shards_checked')} shards checked "
        f"({total('cross_checked')} cross-checked), bad: {found}, "
        f"{total('quarantined')} quarantined; passes {min(passes)}-{max(passes)} per node, "
        f"slowest last pass {slowest} s"
    )


def format_table(status: ClusterStatus) -> str:
    header = (
        "NODE", "STATE", "PEER ID", "PEERS", "SHARDS", "BYTES", "QUEUE", "HINTS", "RAFT", "API",
    )  # fmt: skip
    rows = [header]
    for node in status.nodes:
        rows.append(
            (
                node.name,
                "up" if node.up else "down",
                _short(node.peer_id),
                _cell(node.connected_peers),
                _cell(node.shards),
                _cell(node.shard_bytes),
                _cell(node.queue_depth),
                _cell(node.hints),
                node.raft or "-",
                node.url + (f"  ({node.error})" if node.error else ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]
    up = sum(node.up for node in status.nodes)
    gateway = status.gateway
    return "\n".join(
        [
            f"cluster {status.cluster_id}: k={status.k} n={status.n}, "
            f"{up}/{len(status.nodes)} nodes up",
            *lines,
            repair_line(status),
            scrub_line(status),
            f"gateway {gateway.url}: {gateway.state}"
            + (f" ({gateway.error})" if gateway.error else ""),
        ]
    )


def status_document(status: ClusterStatus) -> dict[str, Any]:
    return {**asdict(status), "healthy": status.healthy}


def run_status(directory: Path, *, as_json: bool, timeout_s: float) -> int:
    try:
        layout = load_layout(directory)
        token = read_token(directory)
    except BaasError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 2
    status = cluster_status(layout, token, timeout_s)
    if as_json:
        print(json.dumps(status_document(status), indent=2))
    else:
        print(format_table(status))
    return 0 if status.healthy else 1
