"""The dashboard's HTML: server-rendered pages, every value escaped, no script of their own.

One layout (:func:`page`) gives every page its header, navigation (by role: the partner and
user sections come with the ledger), sign-out form (with the session's CSRF token) and one
stylesheet from the gateway. Pages are functions from plain data to a string; the handlers in
:mod:`gateway.dashboard.routes` gather the data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from gateway.dashboard.sessions import Session

__all__ = [
    "NodeView",
    "anchors_page",
    "error_page",
    "moves_page",
    "nodes_page",
    "page",
    "signin_page",
]

BASE = "/dashboard"
CSS_PATH = f"{BASE}/static/dashboard.css"
VERIFY_PATH = f"{BASE}/verify"
# (path, title) of each role's pages, in navigation order. Partner and user pages add rows.
NAVIGATION: Mapping[str, Sequence[tuple[str, str]]] = {
    "operator": (
        (f"{BASE}/operator/nodes", "Nodes"),
        (f"{BASE}/operator/anchors", "Anchors"),
        (f"{BASE}/operator/moves", "Repair and moves"),
    ),
}


def e(value: object) -> str:
    return escape(str(value), quote=True)


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as its status API answered (or did not)."""

    name: str
    url: str
    up: bool
    error: str = ""
    status: Mapping[str, Any] | None = None

    def get(self, *keys: str) -> Any:
        value: Any = self.status
        for key in keys:
            if not isinstance(value, Mapping):
                return None
            value = value.get(key)
        return value


def page(
    title: str,
    body: str,
    *,
    session: Session | None = None,
    current: str = "",
    verify_href: str = VERIFY_PATH,
    nav_html: str = "",
    script: str = "",
) -> str:
    """``nav_html``: the role's own navigation items (the partner pages carry their mode);
    ``script``: the path of one script of the gateway's the page loads (CSP: 'self')."""
    links = [(path, name) for path, name in NAVIGATION.get(session.role, ())] if session else []
    links.append((verify_href, "Verify a receipt"))
    current_attr = ' aria-current="page"'
    nav = nav_html + "".join(
        f'<li><a href="{e(path)}"{current_attr if path == current else ""}>{e(name)}</a></li>'
        for path, name in links
    )
    script_tag = f'<script src="{e(script)}" defer></script>' if script else ""
    account = ""
    if session is not None:
        account = (
            f'<form method="post" action="{BASE}/signout" class="signout">'
            f'<input type="hidden" name="csrf" value="{e(session.csrf_token)}">'
            f"<span>Signed in as {e(session.subject)}</span> "
            f'<button type="submit">Sign out</button></form>'
        )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} - BaaS dashboard</title>"
        f'<link rel="stylesheet" href="{CSS_PATH}">{script_tag}</head><body>'
        '<header><p class="brand">BaaS B&amp;P dashboard</p>'
        f'<nav aria-label="Main"><ul>{nav}</ul></nav>{account}</header>'
        f"<main><h1>{e(title)}</h1>{body}</main></body></html>\n"
    )


def problem_box(code: str, message: str) -> str:
    """A refused action or failed read, as the issue asks: its problem code and message."""
    return (
        f'<div class="problem" role="alert"><p><strong>Problem <code class="code">{e(code)}'
        f'</code></strong></p><p class="message">{e(message)}</p></div>'
    )


def error_page(status: int, code: str, message: str, session: Session | None) -> str:
    body = problem_box(code, message) + f'<p><a href="{BASE}/">Back to the dashboard</a></p>'
    return page(f"Error {status}", body, session=session)


def signin_page(csrf: str, problem: tuple[str, str] | None = None, name: str = "") -> str:
    body = (problem_box(*problem) if problem else "") + (
        f'<form method="post" action="{BASE}/signin" class="card">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        '<label for="name">Operator name</label>'
        f'<input id="name" name="name" autocomplete="username" required value="{e(name)}">'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" autocomplete="current-password"'
        " required>"
        '<label for="totp">Code from your authenticator app</label>'
        '<input id="totp" name="totp" inputmode="numeric" autocomplete="one-time-code"'
        ' pattern="[0-9]{6}" maxlength="6" required>'
        '<button type="submit">Sign in</button></form>'
        f'<p><a href="{BASE}/partner/signin">Partner sign-in</a></p>'
    )
    return page("Sign in", body)


def _table(caption: str, headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Cells are HTML already (escaped by the caller)."""
    head = "".join(f'<th scope="col">{e(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f'<div class="scroll" tabindex="0" role="region" aria-label="{e(caption)}">'
        f"<table><caption>{e(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def _cell(value: object) -> str:
    return "&ndash;" if value is None else e(value)


def unreachable_box(nodes: Sequence[NodeView]) -> str:
    if any(n.up for n in nodes):
        return ""
    reasons = "; ".join(f"{n.name}: {n.error}" for n in nodes)
    return problem_box(
        "cluster_unreachable", f"No node of the cluster answered its status API ({reasons})."
    )


def _refresh(path: str) -> str:
    return f'<p><a href="{e(path)}" class="button">Refresh</a></p>'


def _peers(peer_ids: Sequence[str], names: Mapping[object, str]) -> str:
    known = sorted(names.get(p, f"{p[:12]}...") for p in peer_ids)
    return f"{len(peer_ids)}: {', '.join(known)}" if known else "0"


def nodes_page(session: Session, nodes: Sequence[NodeView], path: str) -> str:
    up = sum(n.up for n in nodes)
    summary = f'<p class="summary" id="nodes-summary">{up} of {len(nodes)} nodes up.</p>'
    # Peers are reported by peer id; name the ones that are nodes of this cluster.
    names = {n.get("peer_id"): n.name for n in nodes if n.up}
    rows = []
    for n in nodes:
        state = (
            '<span class="up">up</span>'
            if n.up
            else f'<span class="down">down</span> <span class="why">{e(n.error)}</span>'
        )
        raft = n.get("raft")
        peers = n.get("connected_peers")
        queue = n.get("queue_depth")
        queue_max = n.get("queue_max")
        rows.append(
            (
                f"<strong>{e(n.name)}</strong>",
                state,
                _cell(n.get("raft", "role")),
                _cell(n.get("raft", "term")),
                _cell(n.get("raft", "commit_index")) if raft else "&ndash;",
                _cell(n.get("shards")),
                _cell(n.get("shard_bytes")),
                _cell(None if queue is None else f"{queue} of {queue_max}"),
                _cell(n.get("hints")),
                _cell(None if peers is None else _peers(peers, names)),
            )
        )
    table = _table(
        "Nodes",
        (
            "Node",
            "State",
            "Raft role",
            "Term",
            "Commit index",
            "Shards",
            "Shard bytes",
            "Queue",
            "Hints",
            "Peers",
        ),
        rows,
    )
    body = unreachable_box(nodes) + summary + _refresh(path) + table
    return page("Nodes", body, session=session, current=path)


def anchors_page(
    session: Session,
    nodes: Sequence[NodeView],
    recent: Sequence[Mapping[str, Any]],
    problem: tuple[str, str] | None,
    chain_rpc_url: str,
    path: str,
) -> str:
    reports = [n for n in nodes if n.up and isinstance(n.get("anchoring"), Mapping)]
    body = unreachable_box(nodes)
    if reports:
        best = max(reports, key=lambda n: int(n.get("anchoring", "anchored_tree_size") or 0))
        a = best.get("anchoring")
        tree = int(a.get("tree_size") or 0)
        anchored = int(a.get("anchored_tree_size") or 0)
        facts = (
            ("Anchoring enabled", a.get("enabled")),
            ("Latest anchored batch", int(a.get("next_batch_id") or 1) - 1),
            ("Leaves in the log", tree),
            ("Leaves anchored", anchored),
            ("Lag (leaves not anchored yet)", max(0, tree - anchored)),
            ("Leaves final", a.get("final_tree_size")),
            ("Lease holder", a.get("lease_holder")),
            ("Last error", a.get("last_error") or "none"),
            ("Chain RPC", chain_rpc_url or "not configured"),
            ("Reported by", best.name),
        )
        body += (
            '<dl class="facts" id="anchor-facts">'
            + "".join(f"<dt>{e(k)}</dt><dd>{_cell(v)}</dd>" for k, v in facts)
            + "</dl>"
        )
        counters = a.get("counters") or {}
        body += _table(
            "Anchoring counters",
            ("Counter", "Value"),
            ((e(k), _cell(v)) for k, v in sorted(counters.items())),
        )
    elif any(n.up for n in nodes):
        body += problem_box("anchoring_unknown", "No node reported its anchoring status.")
    if problem is not None:
        body += problem_box(*problem)
    body += _table(
        "Latest anchors and their transactions",
        ("Batch", "Tree size", "Root", "Transaction", "Block"),
        (
            (
                _cell(x.get("batch_id")),
                _cell(x.get("tree_size")),
                f"<code>{_cell(x.get('root'))}</code>",
                f"<code>{_cell(x.get('tx_hash'))}</code>",
                _cell(x.get("block_number")),
            )
            for x in reversed(recent)
        ),
    )
    return page("Anchors", _refresh(path) + body, session=session, current=path)


# (column, status path) of the repair and scrub tables: the figures an operator acts on (a
# backlog that does not fall, lost records, corrupt shards found), not every counter.
_REPAIR_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Backlog (records below n)", ("backlog_records",)),
    ("Lost (below k)", ("lost_records",)),
    ("Shards rebuilt", ("shards_rebuilt",)),
    ("Shards relocated", ("shards_relocated",)),
    ("Shards failed", ("shards_failed",)),
    ("Rate (shards/s)", ("rate_shards_per_s",)),
    ("Passes", ("passes",)),
    ("Last pass (s)", ("last_pass_s",)),
    ("Suspects waiting", ("suspects_waiting",)),
)
_SCRUB_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Passes", ("passes",)),
    ("Shards checked", ("shards_checked",)),
    ("Corrupt (checksum)", ("corrupt", "checksum")),
    ("Corrupt (shard hash)", ("corrupt", "shard_hash")),
    ("Quarantined", ("quarantined",)),
    ("Cross-checked", ("cross_checked",)),
    ("This pass", ("pass_shards_checked",)),
    ("Last pass (s)", ("last_pass_s",)),
)


def _stats_table(
    title: str,
    key: str,
    columns: tuple[tuple[str, tuple[str, ...]], ...],
    nodes: Sequence[NodeView],
) -> str:
    rows = [
        (e(n.name), *(_cell(_rounded(n.get(key, *where))) for _, where in columns))
        for n in nodes
        if n.up
    ]
    return _table(title, ("Node", *(name for name, _ in columns)), rows)


def _rounded(value: object) -> object:
    return round(value, 2) if isinstance(value, float) else value


def moves_page(session: Session, nodes: Sequence[NodeView], path: str) -> str:
    body = unreachable_box(nodes) + _refresh(path)
    body += _stats_table(
        "Repair (the leader's; back to n shards, most endangered first)",
        "repair",
        _REPAIR_COLUMNS,
        nodes,
    )
    body += _stats_table("Scrubbing (every node its own shards)", "scrub", _SCRUB_COLUMNS, nodes)
    for title, key in (
        ("Shard moves", "moves"),
        ("Garbage collection", "gc"),
        ("Hinted repair", "hints"),
    ):
        if key == "hints":
            hint_rows = [(e(n.name), _cell(n.get("hints"))) for n in nodes if n.up]
            body += _table(title + ": hints waiting per node", ("Node", "Hints"), hint_rows)
            continue
        names = sorted({k for n in nodes if n.up for k in (n.get(key) or {})})
        rows: list[tuple[str, ...]] = [
            (e(n.name), *(_cell((n.get(key) or {}).get(k)) for k in names)) for n in nodes if n.up
        ]
        body += _table(title, ("Node", *(k.replace("_", " ") for k in names)), rows)
    return page("Repair and moves", body, session=session, current=path)
