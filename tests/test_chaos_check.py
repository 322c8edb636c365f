"""``baas-chaos``'s pieces without a cluster: every checker fails on the history or state it must
refuse (a checker that cannot fail proves nothing), the fault schedule is the seed's, and the
partitioner's iptables rules are exactly the ones it later removes."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from tools.chaos_check import (
    FAULT_KINDS,
    Ack,
    ReadBack,
    ReplicaState,
    body_sha256,
    check_faults,
    check_ledger_history,
    check_ledgers,
    check_reads,
    check_repair,
    check_replicas,
    check_shards,
    latency_summary,
)
from tools.chaos_faults import LoopbackPartitioner, PartitionNode, plan_faults

NAMES = [f"node-{i}" for i in range(1, 6)]


def _acks(count: int) -> list[Ack]:
    return [
        Ack(seq, f"{seq:064x}", body_sha256({"seq": seq}), seq * 0.1, 50.0, "chaos")
        for seq in range(count)
    ]


def _reads(acks: list[Ack]) -> dict[str, ReadBack]:
    return {a.record_id: ReadBack(a.record_id, 200, a.body_sha256) for a in acks}


def test_reads_pass_when_every_acknowledged_write_reads_back_identical() -> None:
    acks = _acks(10)
    verdict = check_reads(acks, _reads(acks))
    assert verdict.ok and verdict.violation_count == 0


def test_reads_fail_on_a_changed_body_a_missing_record_and_an_error() -> None:
    acks = _acks(10)
    reads = _reads(acks)
    reads[acks[3].record_id] = ReadBack(acks[3].record_id, 200, body_sha256({"seq": 999}))
    del reads[acks[5].record_id]
    reads[acks[7].record_id] = ReadBack(acks[7].record_id, 404, None)
    verdict = check_reads(acks, reads)
    assert not verdict.ok and verdict.violation_count == 3
    assert "seq 3" in verdict.violations[0] and "never read back" in verdict.violations[1]


def test_body_hash_is_canonical_json() -> None:
    assert body_sha256({"a": 1, "b": [1, 2]}) == body_sha256({"b": [1, 2], "a": 1})
    assert body_sha256({"a": 1}) != body_sha256({"a": 2})


def _replicas() -> list[ReplicaState]:
    return [ReplicaState(n, 900, 850, "ab" * 32, "cd" * 32, "ef" * 32) for n in NAMES]


def test_replicas_pass_when_every_node_has_one_state() -> None:
    assert check_replicas(_replicas(), NAMES).ok


@pytest.mark.parametrize(
    "change",
    [
        {"ledger_digest": "00" * 32},
        {"log_root": "11" * 32},
        {"log_size": 849},
        {"applied_index": 899},
        {"bridge_digest": "22" * 32},
    ],
)
def test_replicas_fail_when_one_node_differs(change: dict[str, Any]) -> None:
    states = _replicas()
    states[2] = replace(states[2], **change)
    verdict = check_replicas(states, NAMES)
    assert not verdict.ok and verdict.violation_count == len(NAMES)


def test_replicas_fail_when_a_node_does_not_answer() -> None:
    verdict = check_replicas(_replicas()[1:], NAMES)
    assert not verdict.ok and verdict.violations == ("node-1: no answer",)


def _holdings(n: int) -> dict[str, dict[str, list[tuple[int, bool]]]]:
    return {f"{r:064x}": {NAMES[i]: [(i, False)] for i in range(n)} for r in range(4)}


def test_shards_pass_when_every_index_is_healthy_somewhere() -> None:
    verdict = check_shards(5, _holdings(5))
    assert verdict.ok, verdict


def test_shards_fail_on_a_missing_index_and_on_a_corrupt_entry() -> None:
    holdings = _holdings(5)
    records = sorted(holdings)
    holdings[records[0]]["node-3"] = []  # index 2 gone
    holdings[records[1]]["node-4"] = [(3, False), (-1, True)]  # a corrupt entry left
    verdict = check_shards(5, holdings)
    assert not verdict.ok and verdict.violation_count == 2
    assert "missing shard indices [2]" in verdict.violations[0]
    assert "node-4#-1" in verdict.violations[1]


def _repair(**changes: Any) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "last_pass_finished_ms": 20_000,
        "last_pass_s": 2.0,
        "backlog_records": 0,
        "lost_records": 0,
        "below_n_by_healthy": {},
    }
    return stats | changes


def test_repair_passes_on_a_clean_pass_that_started_after_the_writes() -> None:
    assert check_repair("node-1", _repair(), after_ms=17_000).ok


@pytest.mark.parametrize(
    "stats",
    [
        _repair(backlog_records=3),
        _repair(lost_records=1),
        _repair(below_n_by_healthy={"4": 2}),
        _repair(last_pass_finished_ms=18_500),  # started at 16.5 s: before the last write
    ],
)
def test_repair_fails_on_a_backlog_a_loss_or_a_pass_too_early(stats: dict[str, Any]) -> None:
    assert not check_repair("node-1", stats, after_ms=17_000).ok


def test_repair_fails_without_a_leader() -> None:
    assert not check_repair(None, None, after_ms=0).ok


def _totals(debits: int, credits: int) -> dict[str, Any]:
    return {
        "ledger": 1,
        "debits_posted": str(debits),
        "credits_posted": str(credits),
        "debits_pending": "0",
        "credits_pending": "0",
    }


def test_ledgers_pass_balanced_and_fail_unbalanced() -> None:
    assert check_ledgers({n: [_totals(70, 70)] for n in NAMES}).ok
    verdict = check_ledgers({"node-1": [_totals(70, 70)], "node-2": [_totals(70, 69)]})
    assert not verdict.ok and "node-2" in verdict.violations[0]


def test_ledger_history_passes_when_balances_match_and_fails_otherwise() -> None:
    expected = {"acct_a": 1_000_300, "acct_b": 999_700}
    assert check_ledger_history(expected, dict(expected), unresolved=0).ok
    moved = check_ledger_history(expected, {"acct_a": 1_000_300, "acct_b": 999_701}, 0)
    assert not moved.ok and moved.violation_count == 2  # the account and the sum
    unknown = check_ledger_history(expected, dict(expected), unresolved=1)
    assert not unknown.ok and "unknown outcome" in unknown.violations[0]
    unread = check_ledger_history(expected, {"acct_a": 1_000_300, "acct_b": None}, 0)
    assert not unread.ok


def _events() -> list[dict[str, Any]]:
    return [{"kind": k, "at_s": float(i), "nodes": ["node-1"]} for i, k in enumerate(FAULT_KINDS)]


def test_faults_pass_when_each_kind_ran_and_every_node_is_back() -> None:
    assert check_faults(_events(), []).ok


def test_faults_fail_on_a_kind_missing_an_error_or_a_node_down() -> None:
    assert not check_faults(_events()[1:], []).ok
    failed = _events()
    failed[2] = failed[2] | {"error": "rejoin refused"}
    verdict = check_faults(failed, [])
    assert not verdict.ok and verdict.violation_count == 2  # never injected + the error
    assert not check_faults(_events(), ["node-3"]).ok


def test_latency_summary() -> None:
    summary = latency_summary([float(i) for i in range(1, 101)])
    assert summary == {"count": 100, "p50_ms": 51.0, "p99_ms": 100.0, "max_ms": 100.0}
    assert latency_summary([]) == {"count": 0}


def test_the_schedule_is_the_seeds_and_holds_every_fault_kind() -> None:
    plan = plan_faults(random.Random(7), NAMES, 60.0, (3.0, 6.0))
    assert plan == plan_faults(random.Random(7), NAMES, 60.0, (3.0, 6.0))
    assert plan != plan_faults(random.Random(8), NAMES, 60.0, (3.0, 6.0))
    kinds = [e.kind for e in plan]
    assert all(kinds.count(k) == 1 for k in ("partition", "heal", "wipe", "corrupt"))
    assert kinds.count("kill") >= 60 // 6
    assert [e.at_s for e in plan] == sorted(e.at_s for e in plan)
    cut = next(e for e in plan if e.kind == "partition")
    heal = next(e for e in plan if e.kind == "heal")
    wipe = next(e for e in plan if e.kind == "wipe")
    assert 1 <= len(cut.nodes) <= 2 and cut.at_s < heal.at_s < wipe.at_s  # a majority stays


def test_the_partitioner_cuts_both_ways_and_removes_every_rule_it_added() -> None:
    calls: list[list[str]] = []
    nodes = [PartitionNode(n, 50_000 + i, (7000 + i, 8000 + i)) for i, n in enumerate(NAMES)]
    partitioner = LoopbackPartitioner(nodes, run_tag=0x1234, run=calls.append)
    partitioner.install()
    marks = [c for c in calls if "CONNMARK" in c]
    assert len(marks) == 5 * 4 * 2  # every dialer, every other node's two ports
    partitioner.cut(["node-2"])
    drops = [c for c in calls if c[-1] == "DROP"]
    # node-2 <-> each of 4 others, both dialing directions
    assert len(drops) == 8 and len({c[c.index("--mark") + 1] for c in drops}) == 8
    partitioner.heal()
    assert calls[-1] == ["-t", "filter", "-F", "BAASCHAOS4660"]
    del calls[:]
    assert partitioner.remove() == []
    added_jumps = {("mangle", "BAASCHAOS4660"), ("filter", "BAASCHAOS4660")}
    assert {(c[1], c[-1]) for c in calls if c[2] == "-D"} == added_jumps
    assert {(c[1], c[3]) for c in calls if c[2] == "-X"} == added_jumps
