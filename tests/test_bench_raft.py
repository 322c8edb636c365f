"""Smoke run of baas-bench-raft: 3 replicas in process, real libp2p and LevelDB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.bench_raft import main

pytestmark = pytest.mark.timeout(120)


def test_raft_bench_writes_results_with_committed_entries(tmp_path: Path) -> None:
    assert main(["--voters", "3", "--batch", "10", "--seconds", "1", "--out", str(tmp_path)]) == 0
    (result_file,) = tmp_path.glob("bench-raft-*.json")
    document = json.loads(result_file.read_text())
    assert document["format"] == 1
    (case,) = document["results"]
    assert (case["voters"], case["batch"]) == (3, 10)
    assert case["entries_per_s"] > 0 and case["entries"] % 10 == 0
    assert case["latency_ms"]["p50"] is not None


def test_raft_bench_refuses_bad_arguments(tmp_path: Path) -> None:
    assert main(["--voters", "4", "--out", str(tmp_path)]) == 2
