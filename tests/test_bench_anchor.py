"""baas-bench-anchor: the lag and transaction arithmetic, and a short real run on anvil whose
JSON has every field, whose counts add up, and whose checks catch a bad receipt and an anchor
the chain does not hold."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, cast

import pytest

import tools.bench_anchor as bench_anchor
from node.anchoring.registry import RegistryReader
from node.errors import ConfigError
from node.merkle.receipt import Receipt
from node.merkle.verify import OnChainAnchor
from tools.bench_anchor import (
    lag_summary_ms,
    lag_target_ms,
    leaf_lags_ms,
    main,
    parse_overrides,
    transaction_check,
)

RECORDS = 300
RECEIPTS = 40


# ---------------------------------------------------------------- arithmetic


def test_each_leaf_takes_the_time_of_the_first_batch_covering_it() -> None:
    committed = [100, 110, 120, 130, 140]
    # batch 1 covers leaves 0..1, batch 2 leaves 2..4
    assert leaf_lags_ms(committed, [2, 5], [1000, 2000]) == [900, 890, 1880, 1870, 1860]
    # a batch may cover exactly one leaf; leaves past the last needed batch are fine too
    assert leaf_lags_ms(committed[:1], [1, 3], [500, None]) == [400]


def test_a_leaf_without_a_timed_covering_batch_is_an_error() -> None:
    with pytest.raises(ValueError, match="covers"):
        leaf_lags_ms([1, 2, 3], [2], [10])  # leaf 2 is not covered
    with pytest.raises(ValueError, match="no time"):
        leaf_lags_ms([1, 2, 3], [1, 3], [10, None])  # batch 2 never became final
    with pytest.raises(ValueError, match="grow"):
        leaf_lags_ms([1, 2, 3], [2, 2, 3], [10, 20, 30])


def test_lag_summary_uses_observed_values() -> None:
    summary = lag_summary_ms(list(range(1, 101)))
    assert (summary["p50"], summary["p99"], summary["max"], summary["count"]) == (50, 99, 100, 100)
    assert lag_summary_ms([])["p99"] is None


def test_the_lag_target_of_a_development_cluster_is_5_s() -> None:
    assert lag_target_ms(2.0, 2, 1.0) == 5000.0


def test_transactions_equal_triggers_and_reanchors_and_nothing_else() -> None:
    counters = {"size_triggered": 90, "interval_triggered": 8, "reanchors": 2, "replacements": 0}
    assert transaction_check(100, counters, 0)["equal"] is True
    extra = transaction_check(101, {**counters, "replacements": 1}, 0)
    assert (extra["equal"], extra["transactions_mismatch"], extra["replacements"]) == (False, 1, 1)
    assert transaction_check(99, counters, 0)["transactions_mismatch"] == 1
    assert transaction_check(100, counters, 1)["equal"] is False  # someone else sent one


def test_node_overrides_are_toml_values_per_table() -> None:
    found = parse_overrides(["anchoring.poll_interval_s=0.2", "raft.snapshot_entries = 200000"])
    assert found == {"anchoring": {"poll_interval_s": 0.2}, "raft": {"snapshot_entries": 200000}}
    for bad in ("poll_interval_s=0.2", "anchoring.poll_interval_s", "anchoring.x=not toml"):
        with pytest.raises(ConfigError):
            parse_overrides([bad])


# ---------------------------------------------------------------- a real run


REQUIRED: dict[str, tuple[str, ...]] = {
    "": (
        "format", "tool", "started_at", "machine", "load_average_start", "load_average_end",
        "parameters", "write", "log", "anchor_lag_source", "anchor_lag_ms",
        "anchor_lag_target_ms", "polling", "settle_s", "batches", "chain", "receipts",
        "duration_s", "checks", "checks_passed", "targets",
    ),
    "write": ("records_acknowledged", "records_per_s", "duration_s", "errors", "send_lag_ms"),
    "log": ("size_on_disk", "size_per_node", "records_written"),
    "chain": (
        "key_holders", "head_start", "head_end", "blocks_scanned", "counters",
        "sent_by_key_holders", "expected", "replacements", "transactions_mismatch",
        "unexpected_in_blocks", "equal", "transactions_per_1e5_records", "anchors",
    ),
    "receipts": ("sampled", "verified", "failures"),
    "polling": ("interval_s", "polls", "errors", "round_trip_ms"),
}  # fmt: skip
CHECKS = (
    "every_record_written_once",
    "log_size_equals_records",
    "chain_transactions_equal_counters",
    "no_transaction_left_pending",
    "anchors_match_log",
    "receipts_verified",
    "every_batch_observed_final",
)


class _LyingReader:
    """The real reader, except that the chain "holds" another tree size for batch 1."""

    def __init__(self, real: RegistryReader) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @property
    def contract(self) -> str:
        return self._real.contract

    def anchor_of(self, batch_id: int) -> OnChainAnchor | None:
        found = self._real.anchor_of(batch_id)
        if batch_id == 1 and found is not None:
            return dataclasses.replace(found, tree_size=found.tree_size + 1)
        return found


def _tampered(text: str) -> str:
    receipt = Receipt.from_json(text)
    leaf = bytearray(receipt.leaf_data)
    leaf[-1] ^= 1  # the plaintext commitment: the leaf hash no longer fits the path
    return dataclasses.replace(receipt, leaf_data=bytes(leaf)).to_json()


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_a_short_run_on_anvil_writes_every_field_and_its_counts_add_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    real_verify, real_check = bench_anchor.verify_receipts, bench_anchor.check_anchors

    def verify_receipts(
        reader: RegistryReader, receipts: dict[str, str | None], confirmations: int
    ) -> dict[str, Any]:
        # While the chain is up: the same check on one tampered receipt must fail.
        record_id, text = next((r, t) for r, t in receipts.items() if t is not None)
        seen["bad_receipt"] = real_verify(reader, {record_id: _tampered(text)}, confirmations)
        return real_verify(reader, receipts, confirmations)

    def check_anchors(reader: RegistryReader, pages: list[str], log_batches: int) -> Any:
        lying = cast(RegistryReader, _LyingReader(reader))
        seen["lying_chain"] = real_check(lying, pages, log_batches)
        seen["one_batch_missing"] = real_check(reader, pages, log_batches + 1)
        return real_check(reader, pages, log_batches)

    monkeypatch.setattr(bench_anchor, "verify_receipts", verify_receipts)
    monkeypatch.setattr(bench_anchor, "check_anchors", check_anchors)
    out = tmp_path / "result.json"
    args = ["--records", str(RECORDS), "--rate", "600", "--batch-size", "50"]
    code = main([*args, "--receipts", str(RECEIPTS), "--chain", "anvil", "--out", str(out)])
    document: dict[str, Any] = json.loads(out.read_text())

    for section, names in REQUIRED.items():
        part = document[section] if section else document
        missing = [name for name in names if name not in part]
        assert not missing, f"{section or 'top level'} lacks {missing}"
    assert (code, document["tool"], document["checks_passed"]) == (0, "baas-bench-anchor", True)
    assert set(document["checks"]) == set(CHECKS) and all(document["checks"].values())

    # Every record once, one leaf each, on every node.
    assert document["write"]["records_acknowledged"] == RECORDS
    assert document["log"]["size_on_disk"] == RECORDS
    assert set(document["log"]["size_per_node"].values()) == {RECORDS}

    # The key holders' nonces moved by exactly the transactions the counters allow for, every
    # one of them in a block mined during the run, each one an anchor the contract holds.
    chain = document["chain"]
    counters = chain["counters"]
    nonce_moves = sum(h["nonce_end"] - h["nonce_start"] for h in chain["key_holders"].values())
    expected = counters["size_triggered"] + counters["interval_triggered"] + counters["reanchors"]
    assert nonce_moves == chain["sent_by_key_holders"] == expected >= 1
    assert chain["blocks_scanned"]["from_key_holders"] == expected
    assert chain["blocks_scanned"]["to_registry"] == expected
    assert chain["blocks_scanned"]["from_other_accounts"] == {}
    anchors = chain["anchors"]
    batches = document["batches"]["count"]
    assert anchors["anchors_on_contract"] == anchors["anchors_in_log"] == batches
    assert counters["reanchors"] == counters["replacements"] == 0  # no reorg, no fault here
    assert batches == expected
    assert chain["transactions_per_1e5_records"] == round(expected * 100_000 / RECORDS, 2)

    # Receipts verified against the chain; and the bench's checks are not blind.
    assert document["receipts"] == {"sampled": RECEIPTS, "verified": RECEIPTS, "failures": []}
    bad = seen["bad_receipt"]
    assert bad["verified"] == 0 and "inclusion in anchored root" in bad["failures"][0]
    assert seen["lying_chain"]["match"] is False and seen["lying_chain"]["mismatches"]
    assert seen["one_batch_missing"]["match"] is False

    # Every record's lag was measured; the observed one (a poll after the final entry) is never
    # below the state's, and each part is non-negative.
    lag = document["anchor_lag_ms"]
    assert lag["observed"]["count"] == lag["state"]["count"] == RECORDS
    for q in ("p50", "p99", "max"):
        assert lag["observed"][q] >= lag["state"][q] > 0
    for part in lag["parts"].values():
        assert part["count"] == RECORDS and part["min"] >= 0
    target = {row["name"]: row for row in document["targets"]}
    assert target["anchor_lag_p99"]["threshold"] == document["anchor_lag_target_ms"] == 5000.0
    assert target["chain_transactions"]["pass"] is True
    assert target["anchor_lag_p99"]["conclusive"] is False  # 300 records, not 10^5
