"""Test helpers: read a node's internal HTTP API with the cluster's token (None if it is away);
a partner client of the cluster's gateway; wait for a condition; a node's data directory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

from openapi_check import CheckedPartnerClient

from tools.client import PartnerClient
from tools.cluster_init import init_cluster, set_toml_keys
from tools.local_cluster import LocalCluster


def node_get(cluster: LocalCluster, name: str, path: str, timeout_s: float = 2.0) -> Any:
    token = (Path(cluster.layout.directory) / "secrets" / "node-api.token").read_text().strip()
    request = urllib.request.Request(
        f"http://{cluster.node(name).http_addr}{path}",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except (urllib.error.HTTPError, OSError):
        return None


@contextlib.asynccontextmanager
async def partner_client(cluster: LocalCluster, partner: str) -> AsyncIterator[PartnerClient]:
    """A signed client of ``partner`` against the cluster's gateway."""
    credentials = cluster.layout.partners[partner]
    async with CheckedPartnerClient(
        cluster.layout.gateway_url,
        credentials["api_key"],
        bytes.fromhex(credentials["secret_hex"]),
    ) as client:
        yield client


@contextlib.contextmanager
def running_cluster(
    directory: Path,
    node_toml: str = "",
    chain: str = "embedded",
    anchoring: Mapping[str, object] | None = None,
    nodes: int = 5,
    gateway_limits: Mapping[str, object] | None = None,
) -> Iterator[LocalCluster]:
    """A cluster of ``nodes`` nodes + gateway in real processes (partner ``shop-a``) anchoring
    on a ``chain`` (embedded, anvil or none), each node's config extended with ``node_toml``
    and its ``[anchoring]`` table with ``anchoring``, the gateway's ``[limits]`` with
    ``gateway_limits``; stopped on exit."""
    layout = init_cluster(directory, nodes=nodes, partners=("shop-a",), chain=chain)
    if gateway_limits:
        gateway_config = Path(layout.gateway_config_path)
        gateway_config.write_text(
            set_toml_keys(gateway_config.read_text(), "limits", gateway_limits)
        )
    for node in layout.nodes:
        path = Path(node.config_path)
        text = path.read_text()
        if anchoring:
            text = set_toml_keys(text, "anchoring", anchoring)
        path.write_text(text + node_toml)
    local = LocalCluster(layout)
    local.start()
    try:
        yield local
    finally:
        local.stop()


async def wait_for(what: str, check: Any, timeout_s: float = 60.0) -> Any:
    """Poll ``check`` (a blocking callable, run in a thread) until it returns something true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(check)
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def data_dir(cluster: LocalCluster, name: str) -> Path:
    return Path(cluster.node(name).config_path).parent / "data"


def raft_status_of(cluster: LocalCluster, name: str) -> dict[str, Any] | None:
    status = node_get(cluster, name, "/internal/v1/status", timeout_s=1.0)
    return None if status is None else dict(status["raft"])


def incarnations(cluster: LocalCluster) -> dict[str, str] | None:
    """Every member's recorded incarnation, once all are recorded (log feature 5)."""
    view = node_get(cluster, cluster.layout.nodes[0].name, "/internal/v1/members")
    if view is None or len(view["members"]) != len(cluster.layout.nodes):
        return None
    found = {m["peer_id"]: m["incarnation"] for m in view["members"]}
    return found if all(found.values()) else None
