"""Consensus observations for ``baas-bench``: elections under steady load, and leader fail-over.

:class:`RaftWatcher` is a thread that asks every node's ``/internal/v1/status`` (bearer token)
every ``interval_s`` and keeps each round's ``raft`` objects (role, term, leader, ...).
:func:`election_summary` turns those rounds into what the ``steady`` phase reports: how far the
term moved (every election, won or not, takes a new term; pre-votes that fail do not) and how
often the leader changed. :func:`recovery_summary` reads a ``kill-leader`` phase's completions:
how long after the SIGKILL the first write *sent after it* succeeded through the gateway --
it can only succeed once a new leader commits its index entry.

The sampling and the kill are I/O; the two summaries are pure and unit-tested.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from node.errors import OperationFailed
from tools.cluster_init import ClusterLayout
from tools.local_cluster import LocalCluster
from tools.status import node_report

__all__ = [
    "KillLeader",
    "RaftWatcher",
    "Round",
    "election_summary",
    "recovery_summary",
    "settled_leader",
]

ROUNDS_MAX = 100_000  # at 1 s that is 27 hours of status rounds
STATUS_TIMEOUT_S = 1.0
FAILOVER_POLL_S = 0.05
SETTLE_TIMEOUT_S = 30.0

Round = tuple[float, dict[str, dict[str, Any] | None]]  # wall time, node -> raft (None: no answer)


class RaftWatcher:
    """Every node's raft status, every ``interval_s``, on a thread."""

    def __init__(self, layout: ClusterLayout, token: str, interval_s: float) -> None:
        self._layout = layout
        self._token = token
        self.interval_s = interval_s
        self.rounds: list[Round] = []
        self._pool = ThreadPoolExecutor(max_workers=len(layout.nodes), thread_name_prefix="raft")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-raft-watch", daemon=True)

    def poll(self) -> Round:
        """One round now, kept (up to ROUNDS_MAX) for :func:`election_summary`."""
        taken = self._ask()
        if len(self.rounds) < ROUNDS_MAX:
            self.rounds.append(taken)
        return taken

    def _ask(self) -> Round:
        def raft_of(node: Any) -> dict[str, Any] | None:
            report, _ = node_report(node, self._token, STATUS_TIMEOUT_S)
            raft = None if report is None else report.get("raft")
            return raft if isinstance(raft, dict) else None

        nodes = self._layout.nodes
        answers = list(self._pool.map(raft_of, nodes))
        return time.time(), {n.name: a for n, a in zip(nodes, answers, strict=True)}

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def wait_settled(self, timeout_s: float) -> float:
        """Seconds until every node follows one leader (a fresh cluster may not have one yet:
        its first election is not an election *during* the load)."""
        started = time.monotonic()
        while True:
            answers = self._ask()[1]
            if settled_leader(answers) is not None:
                return round(time.monotonic() - started, 3)
            if time.monotonic() - started >= timeout_s:
                break
            time.sleep(FAILOVER_POLL_S)
        seen = ", ".join(
            f"{name} {a['role']}/{a['term']}" if a else f"{name} silent"
            for name, a in answers.items()
        )
        raise OperationFailed(
            f"the nodes did not agree on a leader within {timeout_s:g} s (last: {seen})"
        )

    def start(self) -> None:
        self.poll()
        self._thread.start()

    def stop(self) -> list[Round]:
        self._stop.set()
        self._thread.join()
        self.poll()
        self._pool.shutdown()
        return self.rounds


def _leader(answers: dict[str, dict[str, Any] | None]) -> tuple[str | None, int | None]:
    """(peer id, term) of the node that says it leads in the highest term; (None, None)."""
    leading = [a for a in answers.values() if a is not None and a.get("role") == "leader"]
    if not leading:
        return None, None
    best = max(leading, key=lambda a: int(a["term"]))
    return str(best.get("leader") or ""), int(best["term"])


def settled_leader(answers: dict[str, dict[str, Any] | None]) -> str | None:
    """The leader every node answers with, in one term (None: not settled or a node silent)."""
    leader, term = _leader(answers)
    if leader is None or any(a is None for a in answers.values()):
        return None
    agreed = all(a["term"] == term and a.get("leader") == leader for a in answers.values() if a)
    return leader if agreed else None


def _terms(answers: dict[str, dict[str, Any] | None]) -> list[int]:
    return [int(a["term"]) for a in answers.values() if a is not None and "term" in a]


def election_summary(rounds: Sequence[Round]) -> dict[str, Any]:
    """Elections (term increase) and leader changes over status rounds in time order."""
    if not rounds:
        return {"status_rounds": 0, "elections": None, "leader_changes": None}
    rounds = sorted(rounds, key=lambda r: r[0])  # the kill thread polls too
    start_terms = _terms(rounds[0][1]) or [0]
    all_terms = [t for _, answers in rounds for t in _terms(answers)] or [0]
    leaders: list[str] = []
    rounds_without_leader = 0
    for _, answers in rounds:
        leader, _term = _leader(answers)
        if leader is None:
            rounds_without_leader += 1
        elif not leaders or leaders[-1] != leader:
            leaders.append(leader)
    return {
        "status_rounds": len(rounds),
        "status_span_s": round(rounds[-1][0] - rounds[0][0], 3),
        "term_start": max(start_terms),
        "term_end": max(all_terms),
        "elections": max(all_terms) - max(start_terms),
        "leader_changes": max(0, len(leaders) - 1),
        "leaders_seen": sorted(set(leaders)),
        "rounds_without_leader": rounds_without_leader,
        "node_answers_missing": sum(
            1 for _, answers in rounds for a in answers.values() if a is None
        ),
    }


def recovery_summary(
    completions: Sequence[tuple[float, float, int]], killed_at_s: float
) -> dict[str, Any]:
    """Completions are (end wall time, latency from the scheduled send, records ok).

    ``recovery_s``: from the kill to the first success of a write scheduled after it.
    ``ok_gap_s``: the longest stretch without any successful completion that spans the kill.
    """
    oks = sorted(end for end, _, ok in completions if ok)
    after = sorted(end for end, latency, ok in completions if ok and end - latency >= killed_at_s)
    before = [end for end in oks if end < killed_at_s]
    later = [end for end in oks if end >= killed_at_s]
    gap = None
    if later:
        ends = ([before[-1]] if before else [killed_at_s]) + later
        gap = max(b - a for a, b in pairwise(ends))
    failed = sum(1 for end, _, ok in completions if not ok and end >= killed_at_s)
    return {
        "recovery_s": None if not after else round(after[0] - killed_at_s, 3),
        "ok_gap_s": None if gap is None else round(gap, 3),
        "failed_requests_after_kill": failed,
    }


@dataclass(slots=True)
class KillLeader:
    """SIGKILL the leader's process ``after_s`` into a phase; time the new leader (status)."""

    local: LocalCluster
    watcher: RaftWatcher
    after_s: float
    failover_wait_s: float
    killed: str | None = None
    killed_at_s: float | None = None
    old_term: int | None = None
    new_leader_s: float | None = None
    error: str | None = None
    _thread: threading.Thread | None = field(default=None)

    def start(self, start_at_s: float) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(start_at_s,), name="bench-kill-leader", daemon=True
        )
        self._thread.start()

    def _node_of(self, peer_id: str) -> str | None:
        return next((n.name for n in self.local.layout.nodes if n.peer_id == peer_id), None)

    def _run(self, start_at_s: float) -> None:
        time.sleep(max(0.0, start_at_s + self.after_s - time.time()))
        leader, term = _leader(self.watcher.poll()[1])
        name = None if leader is None else self._node_of(leader)
        if name is None:
            self.error = "no leader to kill"
            return
        self.killed, self.old_term = name, term
        self.killed_at_s = time.time()
        self.local.kill(name)  # SIGKILL
        deadline = self.killed_at_s + self.failover_wait_s
        while time.time() < deadline:
            new, new_term = _leader(self.watcher.poll()[1])
            if new is not None and new != leader and (new_term or 0) > (term or 0):
                self.new_leader_s = round(time.time() - self.killed_at_s, 3)
                return
            time.sleep(FAILOVER_POLL_S)

    def finish(self, completions: Sequence[tuple[float, float, int]]) -> dict[str, Any]:
        """Wait for the kill thread, restart the killed node, summarise."""
        if self._thread is not None:
            self._thread.join()
        result: dict[str, Any] = {
            "killed_node": self.killed,
            "killed_term": self.old_term,
            "new_leader_s": self.new_leader_s,
            "kill_error": self.error,
        }
        if self.killed is None or self.killed_at_s is None:
            return {**result, "recovery_s": None, "ok_gap_s": None, "restart_s": None}
        result["killed_after_s"] = self.after_s
        result.update(recovery_summary(completions, self.killed_at_s))
        restarted = time.monotonic()
        self.local.start_node(self.killed)  # same identity and data; waits until ready
        result["restart_s"] = round(time.monotonic() - restarted, 3)
        return result
