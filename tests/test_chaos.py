"""CI's short seeded ``baas-chaos`` run: a real 5-node cluster and gateway under paced writes while
nodes are killed -9 and restarted, a minority is partitioned (iptables) and healed, a disk is
wiped (the node rejoins as a new incarnation) and a shard's bytes are flipped on disk; then every
check of the report must hold: each acknowledged write reads back identical, every sampled
record has its n shards healthy, the repair backlog is 0, every replica has one state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

SEED = 3
CHECKS = {
    "acknowledged_writes_read_back_identical",
    "repair_backlog_zero",
    "records_back_to_n_healthy_shards",
    "replicas_identical",
    "ledgers_conserved",
    "ledger_history_conserved",
    "faults_injected_and_nodes_back",
}


def test_a_short_seeded_chaos_run_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    command = [
        sys.executable, "-m", "tools.chaos", "--seed", str(SEED), "--duration-s", "60",
        "--rate", "15", "--before-s", "3", "--after-s", "3", "--heal-timeout-s", "240",
        "--kill-every-s", "6,10", "--ledger-rate", "2",
        "--dir", str(tmp_path / "cluster"), "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=580)
    print(done.stdout[-3000:], done.stderr[-3000:])
    report = json.loads(out.read_text())
    print(json.dumps({k: report.get(k) for k in ("faults", "writes", "latency_by_phase")}))
    assert {c["check"] for c in report["checks"]} == CHECKS
    failed = [c for c in report["checks"] if not c["ok"]]
    assert failed == [], failed
    assert done.returncode == 0 and report["ok"]
    kinds = [f["kind"] for f in report["faults"]]
    assert {"kill", "partition", "heal", "wipe", "corrupt"} <= set(kinds)
    assert report["writes"]["acked"]["chaos"] > 0 and report["writes"]["acked"]["after"] > 0
    assert report["healing"]["healing_s"] is not None
    assert report["ledger"]["transfers_after_resolving"]["applied"] > 0
    assert report["partition_cleanup_errors"] == []
    for table in ("filter", "mangle"):
        listed = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True)
        assert report["partition_chain"] not in listed.stdout  # every rule removed
