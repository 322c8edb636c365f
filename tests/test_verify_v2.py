"""Receipt v2 (a ledger operation's) verified against a real (in-process) chain.

One module-wide run: a 64-leaf log where every third leaf is a plain record (v1) and the rest
are operations (leaf data v2), the AnchorRegistry on eth-tester, three anchors. Then: every
receipt of both versions verifies with its version's steps; every single-byte change of a v2
receipt's outcome, its leaf data, the record, the salt and the receipt file fails, at the step
that names the damage; ``baas-verify`` prints the executed operation event by event, in process
and as a process against a real anvil, where a forged outcome fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import rfc8785
from chains import running_anvil
from test_leaf_receipt import h
from test_leaf_v2 import V2_RECEIPT_STEPS, sample_outcome
from test_merkle import DictStore
from test_verify import (
    ROOT,
    anchor,
    deploy,
    first_failure,
    flip,
    flip_every_byte,
    flip_leaf_bytes,
    record_json,
    salt,
)
from web3 import EthereumTesterProvider, Web3

from business.ledger.outcome import OperationOutcome
from node.anchoring.registry import RegistryReader
from node.errors import UnsupportedFormat
from node.merkle.leaf import LeafData, plaintext_commitment
from node.merkle.receipt import AnchorRef, Receipt, make_receipt
from node.merkle.tree import MerkleTree
from node.merkle.verify import Verdict
from node.merkle.verify import verify_receipt as verify
from tools.verify_cli import main

LEAVES = 64
ANCHOR_SIZES = (5, 40, 64)
T0 = 1_700_000_000_000
SAMPLE = 22  # an operation in batch 2 (40 leaves), latest batch 3: a real consistency path
PLAIN = 21  # a plain record of the same log


def is_operation(i: int) -> bool:
    return i % 3 != 0


def outcome(i: int) -> OperationOutcome:
    return sample_outcome(i, T0 + i)


def leaf_data(i: int) -> bytes:
    canonical = rfc8785.dumps(json.loads(record_json(i)))
    return LeafData(
        record_id=h(f"rid{i}"),
        owner=f"partner-{i % 7}",
        committed_at_ms=T0 + i,
        content_hash=h(f"content{i}"),
        k=3,
        n=5,
        shard_hashes=tuple(h(f"shard{i}/{s}") for s in range(5)),
        plaintext_commitment=plaintext_commitment(salt(i), canonical),
        outcome_digest=outcome(i).digest() if is_operation(i) else None,
    ).encode()


@dataclass
class Run:
    w3: Web3
    contract_address: str
    anchors: list[AnchorRef]
    receipts: list[Receipt]

    def reader(self) -> RegistryReader:
        return RegistryReader(self.w3, self.contract_address)


@pytest.fixture(scope="module")
def run() -> Run:
    w3 = Web3(EthereumTesterProvider())
    contract = deploy(w3)
    store = DictStore()
    tree = MerkleTree(store, 0)
    leaves = [leaf_data(i) for i in range(LEAVES)]
    anchors: list[AnchorRef] = []
    for batch, size in enumerate(ANCHOR_SIZES, start=1):
        tree.extend((LeafData.decode(raw).leaf_hash() for raw in leaves[tree.size : size]), store)
        anchors.append(anchor(w3, contract, batch, size, tree.root()))
    w3.provider.ethereum_tester.mine_blocks(3)  # type: ignore[attr-defined]
    receipts = [
        make_receipt(
            tree,
            i,
            leaves[i],
            next(a for a in anchors if a.tree_size > i),
            anchors[-1],
            outcome(i).encode() if is_operation(i) else None,
        )
        for i in range(LEAVES)
    ]
    return Run(w3, contract.address, anchors, receipts)


def check(run: Run, receipt: Receipt | bytes, i: int, reader: RegistryReader) -> Verdict:
    return verify(receipt, reader, record_json=record_json(i), salt=salt(i))


def test_every_receipt_of_a_mixed_log_verifies_with_its_versions_steps(run: Run) -> None:
    reader = run.reader()
    v1_steps = [s for s in V2_RECEIPT_STEPS if not s.startswith("outcome")]
    for i, receipt in enumerate(run.receipts):
        assert receipt.version == (2 if is_operation(i) else 1)
        verdict = check(run, receipt.to_json().encode(), i, reader)
        assert verdict.ok, (i, verdict.first_failure)
        expected = V2_RECEIPT_STEPS if is_operation(i) else v1_steps
        assert [s.name for s in verdict.steps] == list(expected)


def test_every_byte_flip_of_the_outcome_fails_at_an_outcome_step(run: Run) -> None:
    reader = run.reader()
    receipt = run.receipts[SAMPLE]
    assert receipt.outcome is not None
    seen: dict[str, int] = {}
    for at in range(len(receipt.outcome)):
        flipped = flip(receipt.outcome, at)
        # The summary travels with the outcome it claims to show: keep it, as a forger would.
        verdict = check(run, replace(receipt, outcome=flipped), SAMPLE, reader)
        failed = first_failure(verdict)
        try:
            OperationOutcome.decode(flipped)
        except UnsupportedFormat:
            assert failed == "outcome decodes", (at, verdict.first_failure)
        else:  # another valid outcome: its summary differs, and so does its digest
            assert failed == "outcome decodes", (at, verdict.first_failure)
            assert not verdict.step("outcome digest in leaf").ok
        assert verdict.step("inclusion in anchored root").ok  # the leaf itself is untouched
        seen[failed] = seen.get(failed, 0) + 1
    # A forger who also rewrites the summary is caught by the digest.
    for at in range(len(receipt.outcome)):
        flipped = flip(receipt.outcome, at)
        try:
            forged = OperationOutcome.decode(flipped)
        except UnsupportedFormat:
            continue
        consistent = replace(receipt, outcome=flipped, outcome_summary=forged.summary())
        verdict = check(run, consistent, SAMPLE, reader)
        assert first_failure(verdict) == "outcome digest in leaf", at
        seen["outcome digest in leaf"] = seen.get("outcome digest in leaf", 0) + 1
    print(seen)
    assert seen.get("outcome digest in leaf", 0) > 0


def _leaf_flip_step(raw: bytes, at: int) -> str:
    """Where a flipped byte of a v2 leaf must be caught, from the documented layout."""
    try:
        LeafData.decode(flip(raw, at))
    except UnsupportedFormat:
        return "leaf data"
    if at == 0:  # version 2 -> 3: not a leaf version at all
        return "leaf data"
    if at in range(1, 33):
        return "record id"
    time_at = 1 + 32 + 1 + raw[33]  # after the owner
    if at in range(time_at, time_at + 8):  # the commit time is the outcome's log time
        return "outcome digest in leaf"
    if at >= len(raw) - 32:
        return "outcome digest in leaf"
    if at >= len(raw) - 64:
        return "plaintext commitment"
    return "inclusion in anchored root"  # owner, content, k, shard hashes


def test_every_byte_flip_of_the_v2_leaf_data_fails_at_the_right_step(run: Run) -> None:
    reader = run.reader()
    seen = flip_leaf_bytes(
        run.receipts[SAMPLE], _leaf_flip_step, lambda r: check(run, r, SAMPLE, reader)
    )
    assert seen == {
        "leaf data",
        "record id",
        "plaintext commitment",
        "outcome digest in leaf",
        "inclusion in anchored root",
    }


def test_every_byte_flip_of_the_record_or_the_salt_fails_the_commitment(run: Run) -> None:
    reader = run.reader()
    receipt = run.receipts[SAMPLE]
    record, good_salt = record_json(SAMPLE), salt(SAMPLE)
    for at in range(len(record)):
        verdict = verify(receipt, reader, record_json=flip(record, at), salt=good_salt)
        assert first_failure(verdict) == "plaintext commitment", at
        assert verdict.step("outcome digest in leaf").ok  # the operation still is the leaf's
    for at in range(len(good_salt)):
        verdict = verify(receipt, reader, record_json=record, salt=flip(good_salt, at))
        assert first_failure(verdict) == "plaintext commitment", at


def test_every_byte_flip_of_a_v2_receipt_file_fails(run: Run) -> None:
    reader = run.reader()
    text = run.receipts[SAMPLE].to_json().encode()
    seen = flip_every_byte(text, lambda flipped: check(run, flipped, SAMPLE, reader))
    assert set(seen) >= {
        "receipt format",
        "outcome decodes",
        "outcome digest in leaf",
        "inclusion in anchored root",
        "anchor on chain",
    }


def test_the_v1_receipt_of_the_same_log_still_verifies(run: Run) -> None:
    receipt = run.receipts[PLAIN]
    assert receipt.version == 1
    assert check(run, receipt, PLAIN, run.reader()).ok
    # Dressed up as an operation's receipt (another leaf's outcome), it fails at its leaf.
    other = run.receipts[SAMPLE]
    dressed = replace(receipt, outcome=other.outcome, outcome_summary=other.outcome_summary)
    assert first_failure(check(run, dressed, PLAIN, run.reader())) == "leaf data"


def test_baas_verify_prints_the_executed_operation(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "receipt.json"
    path.write_text(run.receipts[SAMPLE].to_json())
    (tmp_path / "record.json").write_bytes(record_json(SAMPLE))

    def cli(*argv: str) -> int:
        return main(
            list(argv), reader_factory=lambda rpc, contract: RegistryReader(run.w3, contract)
        )

    record = ("--record", str(tmp_path / "record.json"), "--salt", salt(SAMPLE).hex())
    assert cli("receipt", str(path), "--rpc", "http://in-process", *record) == 0
    out = capsys.readouterr().out
    log_time = T0 + SAMPLE
    assert f"outcome decodes: ok (3 events at log time {log_time} ms)\n" in out
    assert f"    asset: ledger 1: exists (log time {log_time} ms)\n" in out
    assert f"    account {500 + SAMPLE}: ledger 1: ok (log time {log_time} ms)\n" in out
    assert (
        f"    transfer {100 + SAMPLE}: debit account 7 -> credit account {500 + SAMPLE}, "
        f"ledger 1, amount {2**70 + SAMPLE}: ok (log time {log_time} ms)\n"
    ) in out
    assert f"outcome digest in leaf: ok ({outcome(SAMPLE).digest().hex()})" in out
    assert out.rstrip().endswith("result: verified")
    lying = json.loads(path.read_text())
    lying["outcome_summary"]["events"][2]["result"] = "exceeds_credits"
    path.write_text(json.dumps(lying))
    assert cli("receipt", str(path), "--rpc", "http://in-process") == 1
    out = capsys.readouterr().out
    assert (
        "outcome decodes: FAILED: the receipt's outcome_summary is not what its outcome says"
    ) in out
    assert "result: FAILED at step 'outcome decodes'" in out
    assert "    transfer" not in out  # a lying receipt's operation is not shown


def test_baas_verify_process_checks_an_operations_receipt_on_anvil(tmp_path: Path) -> None:
    with running_anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url))
        contract = deploy(w3)
        store = DictStore()
        tree = MerkleTree(store, 0)
        leaves = [leaf_data(i) for i in range(12)]
        tree.extend((LeafData.decode(raw).leaf_hash() for raw in leaves), store)
        anchored = anchor(w3, contract, 1, 12, tree.root())
        receipt = make_receipt(tree, 5, leaves[5], anchored, anchored, outcome(5).encode())
        (tmp_path / "receipt.json").write_text(receipt.to_json())
        (tmp_path / "record.json").write_bytes(record_json(5))
        forged = outcome(5)
        forged = replace(forged, events=(*forged.events[:2], replace(forged.events[2], amount=1)))
        tampered = replace(receipt, outcome=forged.encode(), outcome_summary=forged.summary())
        (tmp_path / "tampered.json").write_text(tampered.to_json())

        def baas_verify(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    *(sys.executable, "-m", "tools.verify_cli", "receipt", str(tmp_path / name)),
                    *(*argv, "--rpc", node.url, "--contract", contract.address),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )

        record = ("--record", str(tmp_path / "record.json"), "--salt", salt(5).hex())
        done = baas_verify("receipt.json", *record)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "outcome digest in leaf: ok" in done.stdout
        assert "    transfer 105: debit account 7 -> credit account 505" in done.stdout
        assert done.stdout.rstrip().endswith("result: verified")
        done = baas_verify("tampered.json")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "result: FAILED at step 'outcome digest in leaf'" in done.stdout
        assert "amount 1:" in done.stdout  # shown as decoded, and refused: not the leaf's
        assert "Traceback" not in done.stdout + done.stderr
