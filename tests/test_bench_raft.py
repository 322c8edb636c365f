"""baas-bench-raft: its verdicts, and short runs on real libp2p and LevelDB (in process and one
process per replica) that check the shape of the JSON and that entries really committed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tools.bench_raft import RAFT_TARGETS, main, raft_verdicts
from tools.bench_raft_load import leader_of

pytestmark = pytest.mark.timeout(120)


def _run(out: Path, *argv: str) -> dict[str, Any]:
    assert main([*argv, "--out", str(out)]) == 0
    (result_file,) = out.glob("bench-raft-*.json")
    document: dict[str, Any] = json.loads(result_file.read_text())
    assert document["format"] == 2 and document["tool"] == "baas-bench-raft"
    return document


def _check_committed(case: dict[str, Any]) -> None:
    assert case["entries"] > 0 and case["entries_per_s"] > 0, case
    assert case["entries"] % case["batch"] == 0
    assert case["latency_ms"]["p50"] is not None and case["latency_ms"]["p99"] > 0
    assert case["errors"] == {}, case["errors"]
    assert case["leader_term_end"] >= case["leader_term_start"] >= 1


def test_in_process_run_writes_results_with_committed_entries(tmp_path: Path) -> None:
    document = _run(tmp_path, "--voters", "3", "--batch", "10", "--rate", "0", "--seconds", "1")
    assert document["mode"] == "in-process"
    (case,) = document["results"]
    assert (case["voters"], case["kind"], case["batch"]) == (3, "closed", 10)
    _check_committed(case)


def test_one_process_per_replica_closed_and_paced(tmp_path: Path) -> None:
    document = _run(
        tmp_path,
        "--procs", "--voters", "3", "--batch", "20", "--rate", "200", "--seconds", "1",
    )  # fmt: skip
    assert document["mode"] == "procs"
    paced, closed = document["results"]  # paced first: a batch overload cannot spill into it
    assert (closed["kind"], closed["batch"], paced["kind"]) == ("closed", 20, "paced")
    for case in (closed, paced):
        _check_committed(case)
        assert len(case["replica_cores"]) == 3 and 0 <= case["leader_replica"] < 3
        assert case["replica_cores"][case["leader_replica"]] > 0  # the leader worked
    assert paced["rate_target_per_s"] == 200 and paced["entries"] == 200
    assert paced["send_lag_ms"]["p50"] is not None
    verdicts = {row["name"]: row for row in document["targets"]}
    assert set(verdicts) == {target.name for target in RAFT_TARGETS}
    assert verdicts["raft_batched_entries_rate"]["measured"] == closed["entries_per_s"]
    assert verdicts["raft_commit_p99_at_1000"]["measured"] == paced["latency_ms"]["p99"]
    assert verdicts["raft_commit_p99_at_1000"]["conclusive"] is False  # paced at 200/s
    for row in verdicts.values():
        assert isinstance(row["pass"], bool) and row["voters"] == 3 and row["issue"] == 4


def _case(voters: int, kind: str, batch: int, rate: float, p99: float, **extra: Any) -> Any:
    return {
        "voters": voters,
        "kind": kind,
        "batch": batch,
        "entries_per_s": rate,
        "rate_target_per_s": 1000.0 if kind == "paced" else None,
        "latency_ms": {"p99": p99},
        "errors": {},
        **extra,
    }


def test_verdicts_take_the_best_batched_case_per_voter_count() -> None:
    results = [
        _case(5, "closed", 1, 40_000, 5.0),  # unbatched: not the batching target
        _case(5, "closed", 100, 20_000, 50.0),
        _case(5, "closed", 1000, 31_000, 90.0),
        _case(5, "paced", 1, 998, 12.0),
        _case(3, "closed", 100, 10_000, 40.0, errors={"overloaded": 5}),
    ]
    rows = {(r["name"], r["voters"]): r for r in raft_verdicts(results, procs=True)}
    batched5 = rows["raft_batched_entries_rate", 5]
    assert (batched5["measured"], batched5["batch"], batched5["pass"]) == (31_000, 1000, True)
    assert batched5["conclusive"] is True
    assert rows["raft_commit_p99_at_1000", 5]["pass"] is True
    assert rows["raft_batched_entries_rate", 3]["note"] == "the case had errors"
    assert rows["raft_commit_p99_at_1000", 3]["measured"] is None  # no paced case
    assert rows["raft_commit_p99_at_1000", 3]["pass"] is False
    in_process = raft_verdicts(results[:2], procs=False)
    (batched_in_process,) = [row for row in in_process if row["measured"] is not None]
    assert "one GIL" in batched_in_process["note"] and not batched_in_process["conclusive"]


def test_leader_only_once_every_replica_reached_its_term() -> None:
    follower = {"role": "follower", "term": 2}
    assert leader_of([follower, {"role": "leader", "term": 2}, follower]) == 1
    assert leader_of([{"role": "follower", "term": 1}, {"role": "leader", "term": 2}]) is None
    assert leader_of([follower, {"role": "candidate", "term": 2}]) is None


def test_raft_bench_refuses_bad_arguments(tmp_path: Path) -> None:
    assert main(["--voters", "4", "--out", str(tmp_path)]) == 2
    assert main(["--rate", "-1", "--out", str(tmp_path)]) == 2
