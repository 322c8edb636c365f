"""Test helper: read a node's internal HTTP API with the cluster's token (None if it is away)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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
