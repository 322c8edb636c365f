"""Membership changes from the command line: the node API calls ``baas-cluster`` makes.

* :func:`announce` -- ``POST /internal/v1/members``: add a prepared node (``add_node`` in
  :mod:`tools.cluster_init`) to the cluster's storage membership; the leader then adds it to
  Raft as a learner and promotes it while fewer than 5 vote.
* :func:`retire` -- ``DELETE /internal/v1/members/{peer}``: take a node out of placement; the
  leader then removes it from Raft. Stop its process once ``members`` no longer lists it in
  Raft.
* :func:`members` -- ``GET /internal/v1/members``.

Any running node answers; it forwards changes to the leader.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from node.api.wire import MEMBERS_PATH
from node.errors import OperationFailed
from tools.cluster_init import ClusterLayout, NodeLayout
from tools.status import read_token

__all__ = ["announce", "members", "retire"]


def _call(
    layout: ClusterLayout, via: NodeLayout, method: str, path: str, body: Any, timeout_s: float
) -> dict[str, Any]:
    token = read_token(Path(layout.directory))
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{via.http_addr}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        try:
            problem = json.loads(exc.read())
        except ValueError:
            problem = {}
        raise OperationFailed(
            f"{via.name} refused: {exc.code} {problem.get('code')}: {problem.get('detail')}",
            code=str(problem.get("code") or "membership_change_failed"),
        ) from exc
    except OSError as exc:
        raise OperationFailed(f"{via.name} unreachable: {exc}") from exc


def announce(
    layout: ClusterLayout, node: NodeLayout, via: NodeLayout, timeout_s: float = 10.0
) -> dict[str, Any]:
    body = {
        "peer_id": node.peer_id,
        "name": node.name,
        "p2p_addr": node.p2p_addr,
        "http_addr": node.http_addr,
    }
    return _call(layout, via, "POST", MEMBERS_PATH, body, timeout_s)


def retire(
    layout: ClusterLayout, node: NodeLayout, via: NodeLayout, timeout_s: float = 10.0
) -> dict[str, Any]:
    return _call(layout, via, "DELETE", f"{MEMBERS_PATH}/{node.peer_id}", None, timeout_s)


def members(layout: ClusterLayout, via: NodeLayout, timeout_s: float = 5.0) -> dict[str, Any]:
    return _call(layout, via, "GET", MEMBERS_PATH, None, timeout_s)
