"""The checks of ``baas-chaos``: what the healed cluster says, judged against the run's history.

Pure functions over what the command observed (no I/O), so that a test can hand them a history
that must fail -- a record read back with another body, a replica with another digest, a record
one shard short -- and see each verdict turn false: a checker that cannot fail proves nothing.

* :func:`check_reads`: every acknowledged write reads back through the gateway, identical (the
  SHA-256 of the canonical JSON of its body);
* :func:`check_shards`: every sampled record has each of its ``n`` shard indices on some node,
  healthy (no corrupt entry left);
* :func:`check_repair`: the leader's repairer finished a pass that started after the last write
  was old enough to plan, and found no record below ``n`` and none lost;
* :func:`check_replicas`: every node answered, at one applied index, with one Merkle log (size and
  root) and one ledger and Bridge state digest (logs differ after compaction; states must not);
* :func:`check_ledgers`: every ledger's totals are balanced on every node (debits = credits);
* :func:`check_ledger_history`: every test account holds its funding plus what the applied
  transfers of the history moved (every transfer's outcome known after the heal);
* :func:`check_faults`: every fault kind was injected and every node came back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FAULT_KINDS",
    "Ack",
    "ReadBack",
    "ReplicaState",
    "Verdict",
    "body_sha256",
    "check_faults",
    "check_ledger_history",
    "check_ledgers",
    "check_reads",
    "check_repair",
    "check_replicas",
    "check_shards",
    "latency_summary",
]

VIOLATIONS_SHOWN_MAX = 20  # a verdict lists this many examples; the count is always exact
FAULT_KINDS = ("kill", "partition", "wipe", "corrupt")


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledged write of the history."""

    seq: int
    record_id: str
    body_sha256: str
    sent_s: float  # since the run started
    latency_ms: float
    phase: str


@dataclass(frozen=True, slots=True)
class ReadBack:
    """What the gateway answered for one record after healing (``body_sha256`` None: no body)."""

    record_id: str
    status: int
    body_sha256: str | None


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """One node's applied state, read at one applied index (see ``tools.chaos.replica_state``)."""

    node: str
    applied_index: int
    log_size: int
    log_root: str
    ledger_digest: str
    bridge_digest: str


@dataclass(frozen=True, slots=True)
class Verdict:
    check: str
    ok: bool
    detail: str
    violations: tuple[str, ...] = field(default=())
    violation_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "ok": self.ok,
            "detail": self.detail,
            "violation_count": self.violation_count,
            "violations": list(self.violations),
        }


def _verdict(check: str, detail: str, violations: Sequence[str]) -> Verdict:
    return Verdict(
        check,
        not violations,
        detail,
        tuple(violations[:VIOLATIONS_SHOWN_MAX]),
        len(violations),
    )


def body_sha256(record: Any) -> str:
    """The hash a write's body is remembered by: canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def check_reads(acked: Sequence[Ack], reads: Mapping[str, ReadBack]) -> Verdict:
    violations: list[str] = []
    for ack in acked:
        got = reads.get(ack.record_id)
        if got is None:
            violations.append(f"{ack.record_id} (seq {ack.seq}): never read back")
        elif got.status != 200:
            violations.append(f"{ack.record_id} (seq {ack.seq}): read answered {got.status}")
        elif got.body_sha256 != ack.body_sha256:
            violations.append(
                f"{ack.record_id} (seq {ack.seq}): body {got.body_sha256} != written "
                f"{ack.body_sha256}"
            )
    return _verdict(
        "acknowledged_writes_read_back_identical",
        f"{len(acked) - len(violations)} of {len(acked)} acknowledged writes read back identical",
        violations,
    )


def check_shards(
    n: int, holdings: Mapping[str, Mapping[str, Sequence[tuple[int, bool]]]]
) -> Verdict:
    """``holdings``: record id -> node -> its shards of the record as (index, corrupt)."""
    violations: list[str] = []
    extra = 0
    for record_id, by_node in sorted(holdings.items()):
        healthy: list[int] = []
        corrupt_on: list[str] = []
        for node, shards in sorted(by_node.items()):
            for index, corrupt in shards:
                if corrupt:
                    corrupt_on.append(f"{node}#{index}")
                else:
                    healthy.append(index)
        missing = sorted(set(range(n)) - set(healthy))
        extra += len(healthy) - len(set(healthy))
        if missing or corrupt_on:
            violations.append(
                f"{record_id}: missing shard indices {missing}, corrupt entries {corrupt_on}"
            )
    return _verdict(
        "records_back_to_n_healthy_shards",
        f"{len(holdings) - len(violations)} of {len(holdings)} sampled records hold all {n} "
        f"shard indices healthy ({extra} extra copies seen)",
        violations,
    )


def check_repair(leader: str | None, stats: Mapping[str, Any] | None, after_ms: int) -> Verdict:
    """The leader's last repair pass: clean, and started after ``after_ms``."""
    if leader is None or stats is None:
        return _verdict("repair_backlog_zero", "no leader answered", ["no leader"])
    started_ms = int(stats["last_pass_finished_ms"]) - int(1000 * float(stats["last_pass_s"]))
    violations: list[str] = []
    if started_ms <= after_ms:
        violations.append(f"the last pass started at {started_ms} ms, not after {after_ms} ms")
    if int(stats["backlog_records"]) != 0:
        violations.append(f"backlog {stats['backlog_records']} records")
    if int(stats["lost_records"]) != 0:
        violations.append(f"{stats['lost_records']} records lost (fewer than k healthy shards)")
    if stats["below_n_by_healthy"]:
        violations.append(f"records below n by healthy count: {stats['below_n_by_healthy']}")
    return _verdict(
        "repair_backlog_zero",
        f"leader {leader}: last pass {stats['last_pass_s']} s, backlog "
        f"{stats['backlog_records']}, lost {stats['lost_records']}",
        violations,
    )


def check_replicas(states: Sequence[ReplicaState], nodes: Iterable[str]) -> Verdict:
    expected = sorted(nodes)
    by_node = {s.node: s for s in states}
    violations = [f"{name}: no answer" for name in expected if name not in by_node]
    keys = {
        name: (s.applied_index, s.log_size, s.log_root, s.ledger_digest, s.bridge_digest)
        for name, s in sorted(by_node.items())
    }
    distinct = sorted(set(keys.values()))
    if len(distinct) > 1:
        for name, key in keys.items():
            violations.append(
                f"{name}: applied {key[0]}, log size {key[1]} root {key[2][:16]}, ledger "
                f"{key[3][:16]}, bridge {key[4][:16]}"
            )
    first = distinct[0] if distinct else None
    detail = (
        f"{len(by_node)} nodes at applied index {first[0]}, log size {first[1]}, root "
        f"{first[2][:16]}, ledger digest {first[3][:16]}, bridge digest {first[4][:16]}"
        if first is not None and len(distinct) == 1
        else f"{len(distinct)} distinct replica states over {len(by_node)} nodes"
    )
    return _verdict("replicas_identical", detail, violations)


def check_ledgers(totals_by_node: Mapping[str, Sequence[Mapping[str, Any]]]) -> Verdict:
    """Every ledger's totals on every node: posted debits = posted credits, and pending too."""
    violations: list[str] = []
    ledgers = 0
    for node, totals in sorted(totals_by_node.items()):
        for t in totals:
            ledgers += 1
            debits, credits = int(t["debits_posted"]), int(t["credits_posted"])
            pending = (int(t["debits_pending"]), int(t["credits_pending"]))
            if debits != credits or pending[0] != pending[1]:
                violations.append(
                    f"{node} ledger {t['ledger']}: posted {debits} != {credits} or pending "
                    f"{pending[0]} != {pending[1]}"
                )
    return _verdict(
        "ledgers_conserved",
        f"{ledgers} ledger totals over {len(totals_by_node)} nodes checked",
        violations,
    )


def check_ledger_history(
    expected: Mapping[str, int], observed: Mapping[str, int | None], unresolved: int
) -> Verdict:
    """Each account's posted balance against the history's; no transfer left unknown."""
    violations = [
        f"{account}: holds {observed.get(account)}, the history says {want}"
        for account, want in sorted(expected.items())
        if observed.get(account) != want
    ]
    if unresolved:
        violations.append(f"{unresolved} transfers still of unknown outcome after the heal")
    if sum(expected.values()) != sum(v or 0 for v in observed.values()):
        violations.append(
            f"the accounts hold {sum(v or 0 for v in observed.values())} in all, funded "
            f"{sum(expected.values())}"
        )
    return _verdict(
        "ledger_history_conserved",
        f"{len(expected)} accounts, {sum(expected.values())} in all",
        violations,
    )


def check_faults(events: Sequence[Mapping[str, Any]], nodes_down: Sequence[str]) -> Verdict:
    """Every fault kind injected without error, and every node running after the heal."""
    violations = [
        f"{kind}: never injected"
        for kind in FAULT_KINDS
        if not any(e["kind"] == kind and not e.get("error") for e in events)
    ]
    violations += [f"{e['kind']} at {e['at_s']} s: {e['error']}" for e in events if e.get("error")]
    violations += [f"{name}: not running after the heal" for name in nodes_down]
    counts = {kind: sum(1 for e in events if e["kind"] == kind) for kind in FAULT_KINDS}
    return _verdict("faults_injected_and_nodes_back", f"faults injected: {counts}", violations)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | int]:
    if not latencies_ms:
        return {"count": 0}
    ordered = sorted(latencies_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"count": len(ordered), "p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": at(1.0)}
