"""baas-bench-identity runs and reports every cost it promises (numbers are not judged here)."""

from __future__ import annotations

import json
from pathlib import Path

from tools.bench_identity import main


def test_bench_identity_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "identity.json"
    assert main(["--n", "3", "--rounds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in (
        "eth_account_us",
        "core_recover_us",
        "native_backend_us",
        "link_apply_us",
        "approval_check_us",
    ):
        assert result[key]["wall"] > 0 and result[key]["cpu"] >= 0
    assert result["eth_keys_backend"] and len(result["loadavg"]) == 3
