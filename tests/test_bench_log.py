"""baas-bench-log: a short run on a real LevelDB writes every field, its counts add up, the log
it leaves proves what it says (read back independently), and a wrong proof fails the run."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

import tools.bench_log as bench_log
from node.consensus.state_machine import StateView
from node.merkle.leaf import LeafData
from node.merkle.log import MerkleReader, NodeCache
from node.merkle.tree import leaf_hash, verify_consistency, verify_inclusion
from node.replication.durable import DurableRaftStorage
from tools.bench_log import LOG_TARGETS, log_verdicts, main, stream_root

pytestmark = pytest.mark.timeout(120)

SIZES = (500, 2000)
PHASES = (
    "inclusion_current",
    "inclusion_anchored",
    "inclusion_current_uncached",
    "consistency",
    "verify_inclusion",
    "verify_consistency",
)
SHORT = ("--proofs", "400", "--verifies", "1000", "--anchors", "16", "--batch", "300")


def _run(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "result.json"
    sizes = [str(s) for s in SIZES]
    code = main(
        ["--sizes", *sizes, *SHORT, "--dir", str(tmp_path / "db"), "--out", str(out), *extra]
    )
    document: dict[str, Any] = json.loads(out.read_text())
    return code, document


def test_a_short_run_writes_every_field_and_its_counts_add_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_log, "SAMPLES_MAX", 60)  # fewer samples than uncached proofs
    code, document = _run(tmp_path)
    assert code == 0
    assert (document["format"], document["tool"]) == (1, "baas-bench-log")
    assert document["machine"]["cpu_count"] >= 1 and document["machine"]["leveldb"]
    assert document["parameters"]["sizes"] == list(SIZES)
    assert len(document["load_average_start"]) == 3 and document["duration_s"] > 0
    previous = 0
    for result, size in zip(document["results"], SIZES, strict=True):
        assert result["size"] == size and result["checks_passed"] is True
        build = result["build"]
        appended = size - previous
        # every entry an index.put that creates its record, so one leaf each
        assert build["entries"] == build["created"] == build["leaves_appended"] == appended
        # per leaf: its node and the subtrees it completes, its data and record -> index; the
        # size once per apply batch (the batch's writes are a map: the last value wins)
        nodes = (2 * size - size.bit_count()) - (2 * previous - previous.bit_count())
        batches = -(-appended // 300)
        assert build["merkle_writes"] == nodes + 2 * appended + batches
        assert build["writes"] == build["merkle_writes"] + appended  # and one index entry each
        for key in ("entries_per_s", "merkle_appends_per_s", "merkle_share_of_apply"):
            assert build[key] > 0
        assert build["merkle_follow_s"] <= build["apply_s"]
        assert 0 < build["settle_s"] <= document["parameters"]["settle_s_max"] + 1
        for phase in PHASES:
            assert result[phase]["count"] > 0 and result[phase]["per_s"] > 0, phase
        assert result["inclusion_current"]["count"] == 400
        assert result["verify_inclusion"]["count"] == 1000
        checks = result["checks"]
        assert checks["tree_size"] == checks["leaves_streamed"] == size
        assert checks["root_recomputed_matches"] and checks["created_match_leaves"]
        assert checks["entries_applied"] == 1 + size  # the feature entry, then one per leaf
        assert checks["inclusion_failed"] == checks["consistency_failed"] == 0
        assert checks["tampered_accepted"] == 0 and checks["cache_mismatches"] == 0
        assert checks["proofs_verified"] == 3 * 60
        assert 0 < result["cache_nodes"] <= document["parameters"]["cache_nodes"]
        assert result["db_bytes"] > 0 and result["rss_bytes"] > 0
        previous = size
    verdicts = {row["name"]: row for row in document["targets"]}
    assert set(verdicts) == {t.name for t in LOG_TARGETS}
    for row in verdicts.values():
        assert row["size"] == SIZES[-1] and row["measured"] is not None
        assert row["conclusive"] is False  # 2,000 leaves, not 10^6
    last = document["results"][-1]
    assert verdicts["log_verify_inclusion_rate"]["measured"] == last["verify_inclusion"]["per_s"]
    _check_the_log_left_behind(tmp_path / "db", last)


def _check_the_log_left_behind(path: Path, last: dict[str, Any]) -> None:
    """Independently of the bench: its root from the stored leaves, and proofs that verify."""
    with DurableRaftStorage(path) as storage:
        reader = MerkleReader(_View(storage))
        size = reader.size
        assert size == last["size"] and reader.root().hex() == last["root"]
        leaves = (value for _, value in storage.state_items(b"ml/l/"))
        assert stream_root(leaves) == (size, reader.root())
        rng = random.Random(4)
        for _ in range(50):
            index, at = rng.randrange(size), rng.randrange(1, size + 1)
            data = reader.leaf_at(index)
            assert data is not None
            LeafData.decode(data)  # leaf data v1 with shard hashes and a commitment
            if index < at:
                proof = reader.inclusion_proof(index, at)
                assert verify_inclusion(leaf_hash(data), index, at, proof, reader.root(at))
            proof = reader.consistency_proof(at, size)
            assert verify_consistency(at, size, proof, reader.root(at), reader.root())


class _View:
    def __init__(self, storage: DurableRaftStorage) -> None:
        self._storage = storage

    def get(self, key: bytes) -> bytes | None:
        return self._storage.state_get(key)


def test_a_proof_that_does_not_verify_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = bench_log.verify_inclusion

    def off_by_one_root(leaf: bytes, index: int, size: int, proof: Any, root: bytes) -> bool:
        return real(leaf, index, size, proof, root) and size % 7 != 3

    monkeypatch.setattr(bench_log, "verify_inclusion", off_by_one_root)
    code, document = _run(tmp_path)
    assert code == 1
    assert any(not r["checks_passed"] for r in document["results"])
    assert any(r["checks"]["inclusion_failed"] > 0 for r in document["results"])


def test_a_cache_that_serves_wrong_hashes_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Corrupting(NodeCache):
        def read(self, base: StateView, level: int, index: int) -> bytes | None:
            found = super().read(base, level, index)
            held = self.held(level)
            if found is not None and held is not None and level >= 3:
                held[index] = bytes([found[0] ^ 1]) + found[1:]  # served from now on
            return found

    monkeypatch.setattr(bench_log, "NodeCache", Corrupting)
    code, document = _run(tmp_path)
    assert code == 1
    for result in document["results"]:
        assert result["checks"]["cache_mismatches"] > 0
        assert result["checks"]["root_recomputed_matches"] is False


def test_without_a_cache_the_proofs_are_the_same(tmp_path: Path) -> None:
    code, document = _run(tmp_path, "--cache-nodes", "0")
    assert code == 0 and all(r["cache_nodes"] is None for r in document["results"])


def test_verdicts_are_conclusive_only_at_a_million_leaves_with_the_node_settings() -> None:
    def result(size: int, passed: bool = True) -> dict[str, Any]:
        return {
            "size": size,
            "checks_passed": passed,
            "inclusion_current": {"per_s": 25_000.0},
            "inclusion_anchored": {"per_s": 19_000.0},
            "verify_inclusion": {"per_s": 90_000.0},
            "build": {"merkle_appends_per_s": 40_000.0},
        }

    rows = {r["name"]: r for r in log_verdicts([result(10_000), result(1_000_000)])}
    assert rows["log_inclusion_proof_rate_current"]["pass"] is True
    assert rows["log_inclusion_proof_rate_anchored"]["pass"] is False
    assert all(r["conclusive"] and r["size"] == 1_000_000 for r in rows.values())
    assert not any(r["conclusive"] for r in log_verdicts([result(100_000)]))
    assert not any(r["conclusive"] for r in log_verdicts([result(1_000_000, passed=False)]))
    assert not any(r["conclusive"] for r in log_verdicts([result(1_000_000)], open_files=999))
    assert all(r["measured"] is None and not r["pass"] for r in log_verdicts([]))


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "x").write_text("taken")
    assert main(["--sizes", "1"]) == 2
    assert main(["--batch", "0"]) == 2
    assert main(["--dir", str(tmp_path / "db")]) == 2
