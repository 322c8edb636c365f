"""Membership changes from the command line: the node API calls ``baas-cluster`` makes.

* :func:`announce` -- ``POST /internal/v1/members``: add a prepared node (``add_node`` in
  :mod:`tools.cluster_init`) to the cluster's storage membership; the leader then adds it to
  Raft as a learner and promotes it while fewer than 5 vote.
* :func:`retire` -- ``DELETE /internal/v1/members/{peer}``: take a node out of placement; the
  leader then removes it from Raft. Stop its process once ``members`` no longer lists it in
  Raft.
* :func:`members` -- ``GET /internal/v1/members``.
* :func:`rejoin` -- ``POST /internal/v1/members/{peer}/rejoin``: a node whose data directory
  was lost (it refuses to start: its old life is recorded) is taken out of Raft and added back
  as a new member while it stays in placement; once the leader has done so, its config is set
  to ``[raft] join_existing = true`` so its next start joins as a learner (caught up by
  snapshot, then promoted) instead of voting as the voter it was.

Any running node answers; it forwards changes to the leader.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from node.api.wire import MEMBERS_PATH
from node.errors import OperationFailed
from tools.cluster_init import ClusterLayout, NodeLayout, set_toml_keys
from tools.status import read_token

__all__ = ["announce", "members", "rejoin", "retire"]

REJOIN_WAIT_S = 60.0
REJOIN_POLL_S = 0.5


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


def rejoin(
    layout: ClusterLayout,
    node: NodeLayout,
    via: NodeLayout,
    timeout_s: float = 10.0,
    wait_s: float = REJOIN_WAIT_S,
) -> dict[str, Any]:
    """Bring ``node`` back as a new member (see the module docstring); its process must be
    stopped. Returns the committed member once the leader has re-added it."""
    before = members(layout, via, timeout_s)
    known = next((m for m in before["members"] if m["peer_id"] == node.peer_id), None)
    if known is not None and known["state"] == "rejoining":
        rejoin_epoch = int(before["epoch"])  # asked already (a retry): only wait
    else:
        path = f"{MEMBERS_PATH}/{node.peer_id}/rejoin"
        answer = _call(layout, via, "POST", path, None, timeout_s)
        rejoin_epoch = int(answer.get("epoch") or 0)
    deadline = time.monotonic() + wait_s
    while True:
        view = members(layout, via, timeout_s)
        me = next((m for m in view["members"] if m["peer_id"] == node.peer_id), None)
        # The leader records it active again only once its old life is out of Raft.
        if view["epoch"] > rejoin_epoch and me is not None and me["state"] == "active":
            break
        if time.monotonic() > deadline:
            raise OperationFailed(
                f"{node.name} was not taken out of Raft within {wait_s:g} s; run "
                "rejoin-node again once the cluster has a leader"
            )
        time.sleep(REJOIN_POLL_S)
    config = Path(node.config_path)
    config.write_text(set_toml_keys(config.read_text(), "raft", {"join_existing": True}))
    return {"member": me, "config": str(config), "join_existing": True}
