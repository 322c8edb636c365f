"""Receipts, consistency documents and anchor chains verified against a real (in-process) chain.

One module-wide run: a 1,000-leaf log over synthetic records, the AnchorRegistry deployed on
eth-tester, six anchors (consecutive batches, growing trees, one a power of two) and extra
blocks mined for confirmations; a receipt for every leaf. Then: every receipt verifies (and
fast); every single-byte change of a receipt, its leaf data, the record or the salt fails, at
the step that names the damage; another contract's anchors do not count; too few
confirmations is "not final" (exit 3); consistency between every pair of anchors; anchor
chains with gaps or reordering fail; ``baas-verify`` in-process for its exit codes and usage
errors, and as a process against an unreachable RPC and against a real anvil, where a
reorganization that drops an anchor is caught.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from chains import running_anvil
from eth_tester.exceptions import TransactionFailed
from test_leaf_receipt import h
from test_merkle import DictStore
from web3 import EthereumTesterProvider, Web3

from node.anchoring.registry import RegistryReader, load_artifact
from node.errors import InvalidRequest, NotFound, OperationFailed, UnsupportedFormat
from node.merkle.leaf import LeafData, plaintext_commitment
from node.merkle.receipt import (
    AnchorChainDoc,
    AnchorRef,
    ConsistencyDoc,
    Receipt,
    make_anchor_chain_doc,
    make_consistency_doc,
    make_receipt,
)
from node.merkle.tree import MerkleTree
from node.merkle.verify import Outcome, Verdict, verify_anchor_chain, verify_consistency_doc
from node.merkle.verify import verify_receipt as verify
from tools.verify_cli import main

LEAVES = 1000
ANCHOR_SIZES = (3, 100, 257, 512, 800, 1000)
EXTRA_BLOCKS = 5
ROOT = Path(__file__).resolve().parent.parent
NOBODY = Web3.to_checksum_address("0x" + "12" * 20)  # no contract there


def record_json(i: int) -> bytes:
    """The record as a user keeps it: pretty-printed, keys unsorted (not the canonical form)."""
    record = {"ref": f"order-{i}", "amount_minor": 100 * i + 7, "tags": ["a", f"t{i % 5}"]}
    return json.dumps(record, indent=1).encode()


def salt(i: int) -> bytes:
    return h(f"salt{i}")


def leaf_data(i: int) -> bytes:
    canonical = rfc8785.dumps(json.loads(record_json(i)))
    return LeafData(
        record_id=h(f"rid{i}"),
        owner=f"partner-{i % 7}",
        committed_at_ms=1_700_000_000_000 + i,
        content_hash=h(f"content{i}"),
        k=3,
        n=5,
        shard_hashes=tuple(h(f"shard{i}/{s}") for s in range(5)),
        plaintext_commitment=plaintext_commitment(salt(i), canonical),
    ).encode()


def grow(tree: MerkleTree, store: DictStore, leaves: list[bytes], size: int) -> None:
    """Append ``leaves[tree.size:size]``."""
    tree.extend((LeafData.decode(raw).leaf_hash() for raw in leaves[tree.size : size]), store)


def deploy(w3: Web3) -> Any:
    artifact = load_artifact()
    account = w3.eth.accounts[0]
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    tx = factory.constructor([account]).transact({"from": account})
    address = w3.eth.wait_for_transaction_receipt(tx, timeout=10)["contractAddress"]
    return w3.eth.contract(address=address, abi=artifact["abi"])


def anchor(w3: Web3, contract: Any, batch: int, size: int, root: bytes) -> AnchorRef:
    tx = contract.functions.anchor(batch, size, root).transact({"from": w3.eth.accounts[0]})
    mined = w3.eth.wait_for_transaction_receipt(
        tx, timeout=10
    )  # anvil: mined, maybe not yet indexed
    assert mined["status"] == 1
    return AnchorRef(
        batch_id=batch,
        tree_size=size,
        root=root,
        chain_id=w3.eth.chain_id,
        contract=contract.address,
        tx_hash=bytes(tx),
        block_number=mined["blockNumber"],
        block_hash=bytes(mined["blockHash"]),
    )


@dataclass
class Run:
    w3: Web3
    contract: Any
    tree: MerkleTree
    leaves: list[bytes]
    anchors: list[AnchorRef]
    receipts: list[Receipt]

    def reader(self, address: str | None = None) -> RegistryReader:
        return RegistryReader(self.w3, address or self.contract.address)


@pytest.fixture(scope="module")
def run() -> Run:
    w3 = Web3(EthereumTesterProvider())
    contract = deploy(w3)
    store = DictStore()
    tree = MerkleTree(store, 0)
    leaves = [leaf_data(i) for i in range(LEAVES)]
    anchors: list[AnchorRef] = []
    for batch, size in enumerate(ANCHOR_SIZES, start=1):
        grow(tree, store, leaves, size)
        anchors.append(anchor(w3, contract, batch, size, tree.root()))
    w3.provider.ethereum_tester.mine_blocks(EXTRA_BLOCKS)  # type: ignore[attr-defined]
    receipts = [
        make_receipt(tree, i, leaves[i], next(a for a in anchors if a.tree_size > i), anchors[-1])
        for i in range(LEAVES)
    ]
    return Run(w3, contract, tree, leaves, anchors, receipts)


def check(
    run: Run, receipt: Receipt | str | bytes, i: int, reader: RegistryReader | None = None
) -> Verdict:
    return verify(receipt, reader or run.reader(), record_json=record_json(i), salt=salt(i))


def first_failure(verdict: Verdict) -> str | None:
    failure = verdict.first_failure
    return None if failure is None else failure.name


# (a) ------------------------------------------------------------------------------------------


def test_every_receipt_of_a_thousand_leaves_verifies(run: Run) -> None:
    reader = run.reader()  # one reader: anchors and transactions are read once per batch
    texts = [r.to_json() for r in run.receipts]
    assert {r.anchor.batch_id for r in run.receipts} == set(range(1, len(ANCHOR_SIZES) + 1))
    started = time.perf_counter()
    verdicts = [check(run, text, i, reader) for i, text in enumerate(texts)]
    elapsed = time.perf_counter() - started
    for i, verdict in enumerate(verdicts):
        assert verdict.ok, (i, verdict.first_failure)
        assert [s.name for s in verdict.steps] == [
            "receipt format",
            "leaf data",
            "record id",
            "plaintext commitment",
            "inclusion in anchored root",
            "anchor on chain",
            "anchor transaction",
            "confirmations",
            "latest anchor on chain",
            "consistency with latest anchor",
        ]
    # Speed is a benchmark's claim (baas-bench-log), not a timed test's: a loaded box took 18 s.
    print(f"verified {LEAVES} receipts in {elapsed:.2f} s ({LEAVES / elapsed:.0f}/s)")


def test_without_the_record_the_commitment_is_skipped_not_failed(run: Run) -> None:
    verdict = verify(run.receipts[42], run.reader())
    assert verdict.ok
    assert verdict.step("plaintext commitment").outcome is Outcome.SKIPPED


def test_the_receipt_of_the_latest_anchor_has_an_empty_consistency_path(run: Run) -> None:
    last = run.receipts[-1]
    assert last.anchor == last.latest_anchor and last.consistency_path == ()
    assert check(run, last, LEAVES - 1).ok
    padded = replace(last, consistency_path=(h("x"),))
    assert first_failure(check(run, padded, LEAVES - 1)) == "consistency with latest anchor"


# (b) ------------------------------------------------------------------------------------------

SAMPLE = 300  # anchored in batch 4 (512 leaves), latest batch 6: a real consistency path


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def flip_every_byte(text: bytes, verdict_of: Callable[[bytes], Verdict]) -> dict[str, int]:
    """Flip each byte of a receipt file in turn: each flip must fail a step, and one that
    breaks the decoding must fail the format step. Returns how often each step caught one."""
    assert verdict_of(text).ok
    seen: dict[str, int] = {}
    for at in range(len(text)):
        flipped = flip(text, at)
        verdict = verdict_of(flipped)
        failed = first_failure(verdict)
        assert failed is not None, (at, flipped[max(0, at - 20) : at + 20])
        try:
            Receipt.from_json(flipped)
        except UnsupportedFormat:  # a decoding failure must be the format step
            assert failed == "receipt format", (at, verdict.first_failure)
        seen[failed] = seen.get(failed, 0) + 1
    print(seen)
    return seen


def test_every_byte_flip_of_a_receipt_file_fails(run: Run) -> None:
    reader = run.reader()
    text = run.receipts[SAMPLE].to_json().encode()
    seen = flip_every_byte(text, lambda flipped: check(run, flipped, SAMPLE, reader))
    assert set(seen) >= {"receipt format", "inclusion in anchored root", "anchor on chain"}


HEX_FIELDS = [
    ("record_id", "record id"),
    ("inclusion_path", "inclusion in anchored root"),
    ("anchor.root", "inclusion in anchored root"),
    ("anchor.tx_hash", "anchor transaction"),
    ("anchor.block_hash", "anchor transaction"),
    ("latest_anchor.root", "latest anchor on chain"),
    ("latest_anchor.tx_hash", "latest anchor on chain"),
    ("latest_anchor.block_hash", "latest anchor on chain"),
    ("consistency_path", "consistency with latest anchor"),
]


def _with(receipt: Receipt, field: str, value: Any) -> Receipt:
    if "." in field:
        outer, inner = field.split(".")
        return replace(receipt, **{outer: replace(getattr(receipt, outer), **{inner: value})})
    return replace(receipt, **{field: value})


def _get(receipt: Receipt, field: str) -> Any:
    value: Any = receipt
    for part in field.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize(("field", "step"), HEX_FIELDS)
def test_flipping_any_byte_of_a_hex_field_fails_at_its_step(
    run: Run, field: str, step: str
) -> None:
    reader = run.reader()
    receipt = run.receipts[SAMPLE]
    value = _get(receipt, field)
    variants: list[Any]
    if isinstance(value, tuple):  # a path: flip every byte of every hash in it
        assert value
        variants = [
            tuple(flip(p, at) if j == k else p for k, p in enumerate(value))
            for j in range(len(value))
            for at in range(32)
        ]
    else:
        variants = [flip(value, at) for at in range(len(value))]
    for variant in variants:
        verdict = check(run, _with(receipt, field, variant), SAMPLE, reader)
        assert first_failure(verdict) == step, (field, verdict.first_failure)


@pytest.mark.parametrize(
    ("field", "delta", "step"),
    [
        ("leaf_index", 1, "inclusion in anchored root"),
        ("leaf_index", -1, "inclusion in anchored root"),
        ("anchor.tree_size", 1, "inclusion in anchored root"),
        ("anchor.batch_id", 1, "anchor on chain"),  # another batch's anchor
        ("anchor.batch_id", -1, "anchor on chain"),
        ("anchor.chain_id", 1, "anchor on chain"),
        ("anchor.block_number", 1, "anchor on chain"),
        ("latest_anchor.batch_id", -1, "latest anchor on chain"),
        ("latest_anchor.tree_size", -1, "latest anchor on chain"),
        ("latest_anchor.block_number", -1, "latest anchor on chain"),
    ],
)
def test_changing_a_number_fails_at_its_step(run: Run, field: str, delta: int, step: str) -> None:
    receipt = run.receipts[SAMPLE]
    changed = _with(receipt, field, _get(receipt, field) + delta)
    assert first_failure(check(run, changed, SAMPLE)) == step


LEAF_RECORD_ID = range(1, 33)


def _leaf_flip_step(raw: bytes, at: int) -> str:
    """Where a flipped leaf byte must be caught, from the documented layout."""
    try:
        LeafData.decode(flip(raw, at))
    except UnsupportedFormat:
        return "leaf data"
    if at in LEAF_RECORD_ID:
        return "record id"
    if at >= len(raw) - 32:
        return "plaintext commitment"
    return "inclusion in anchored root"  # owner, time, content, k, shard hashes


def flip_leaf_bytes(
    receipt: Receipt,
    expected_step: Callable[[bytes, int], str],
    verdict_of: Callable[[Receipt], Verdict],
) -> set[str]:
    """Flip each byte of the receipt's leaf data in turn: each must fail first at the step
    ``expected_step(raw, at)`` names, and break the inclusion. Returns the steps named."""
    raw = receipt.leaf_data
    seen = set()
    for at in range(len(raw)):
        expected = expected_step(raw, at)
        seen.add(expected)
        verdict = verdict_of(replace(receipt, leaf_data=flip(raw, at)))
        assert first_failure(verdict) == expected, (at, verdict.first_failure)
        assert not verdict.step("inclusion in anchored root").ok  # every flip breaks the leaf
    return seen


def test_flipping_any_byte_of_the_leaf_data_fails_at_the_right_step(run: Run) -> None:
    reader = run.reader()
    seen = flip_leaf_bytes(
        run.receipts[SAMPLE], _leaf_flip_step, lambda r: check(run, r, SAMPLE, reader)
    )
    assert seen == {"leaf data", "record id", "plaintext commitment", "inclusion in anchored root"}


def test_flipping_any_byte_of_the_record_or_the_salt_fails_the_commitment(run: Run) -> None:
    reader = run.reader()
    receipt = run.receipts[SAMPLE]
    record, good_salt = record_json(SAMPLE), salt(SAMPLE)
    for at in range(len(record)):
        verdict = verify(receipt, reader, record_json=flip(record, at), salt=good_salt)
        assert first_failure(verdict) == "plaintext commitment", (at, verdict.first_failure)
    for at in range(len(good_salt)):
        verdict = verify(receipt, reader, record_json=record, salt=flip(good_salt, at))
        assert first_failure(verdict) == "plaintext commitment", at
    for bad_salt in (good_salt[:31], good_salt + b"\x00"):
        verdict = verify(receipt, reader, record_json=record, salt=bad_salt)
        assert first_failure(verdict) == "plaintext commitment"
    # The same record in another layout is the same record.
    canonical = rfc8785.dumps(json.loads(record))
    assert verify(receipt, reader, record_json=canonical, salt=good_salt).ok
    only_record = verify(receipt, reader, record_json=record, salt=None)
    assert first_failure(only_record) == "plaintext commitment"


@pytest.fixture(scope="module")
def rival(run: Run) -> Any:
    """A second registry on the same chain with the same batch ids and sizes, other roots."""
    contract = deploy(run.w3)
    for batch, size in enumerate(ANCHOR_SIZES, start=1):
        anchor(run.w3, contract, batch, size, h(f"rival root {batch}"))
    return contract


def test_another_contracts_anchor_does_not_count(run: Run, rival: Any) -> None:
    receipt = run.receipts[SAMPLE]
    # The receipt as it is, read against the rival (e.g. baas-verify --contract RIVAL).
    assert first_failure(check(run, receipt, SAMPLE, run.reader(rival.address))) == (
        "anchor on chain"
    )
    # The receipt rewritten to name the rival: its batch there has another root.
    renamed = replace(
        receipt,
        anchor=replace(receipt.anchor, contract=rival.address),
        latest_anchor=replace(receipt.latest_anchor, contract=rival.address),
    )
    verdict = check(run, renamed, SAMPLE, run.reader(rival.address))
    assert first_failure(verdict) == "anchor on chain"
    assert "rival" not in verdict.first_failure.detail  # type: ignore[union-attr]
    assert "is root" in verdict.first_failure.detail  # type: ignore[union-attr]


def test_only_the_read_contracts_events_count(run: Run, rival: Any) -> None:
    tx = run.anchors[2].tx_hash
    ours = run.reader().tx_inclusion(tx)
    assert ours is not None and len(ours.events) == 1
    theirs = run.reader(rival.address).tx_inclusion(tx)
    assert theirs is not None and theirs.events == ()


def test_a_transaction_of_another_batch_fails_the_transaction_step(run: Run) -> None:
    receipt = run.receipts[SAMPLE]
    other = run.anchors[1]
    swapped = _with(
        _with(
            _with(receipt, "anchor.tx_hash", other.tx_hash),
            "anchor.block_hash",
            other.block_hash,
        ),
        "anchor.block_number",
        other.block_number,
    )
    verdict = check(run, swapped, SAMPLE)
    assert first_failure(verdict) == "anchor on chain"  # the contract recorded another block
    transaction = verdict.step("anchor transaction")
    assert transaction.outcome is Outcome.FAILED  # and the transaction anchored another batch
    assert "emitted no Anchored" in transaction.detail


def test_a_contract_that_is_not_there(run: Run) -> None:
    nobody = NOBODY
    receipt = run.receipts[SAMPLE]
    renamed = replace(
        receipt,
        anchor=replace(receipt.anchor, contract=nobody),
        latest_anchor=replace(receipt.latest_anchor, contract=nobody),
    )
    verdict = check(run, renamed, SAMPLE, run.reader(nobody))
    assert first_failure(verdict) == "anchor on chain"
    assert "no contract" in verdict.step("anchor on chain").detail
    assert verdict.step("anchor transaction").outcome is Outcome.SKIPPED
    with pytest.raises(NotFound):
        run.reader(nobody).anchor_of(1)
    with pytest.raises(InvalidRequest):
        RegistryReader(run.w3, "0x1234")


# (c) ------------------------------------------------------------------------------------------


def test_fewer_confirmations_than_asked_is_not_final(run: Run) -> None:
    receipt = run.receipts[SAMPLE]
    have = run.w3.eth.block_number - receipt.anchor.block_number + 1
    reader = run.reader()
    exact = verify(receipt, reader, confirmations=have)
    assert exact.ok and "not final" not in exact.step("confirmations").detail
    short = verify(receipt, reader, confirmations=have + 1)
    assert short.first_failure is None and short.pending and not short.ok
    assert short.step("confirmations").outcome is Outcome.PENDING
    assert f"{have} confirmations, {have + 1} asked" in short.step("confirmations").detail


def test_a_reverted_anchor_cannot_be_smuggled_in(run: Run) -> None:
    with pytest.raises(TransactionFailed):  # eth-tester raises on a reverting transact
        run.contract.functions.anchor(1, 5, h("late")).transact({"from": run.w3.eth.accounts[0]})


# (d) ------------------------------------------------------------------------------------------


def test_consistency_between_every_pair_of_anchors(run: Run) -> None:
    reader = run.reader()
    pairs = 0
    for i, old in enumerate(run.anchors):
        for new in run.anchors[i:]:
            doc = make_consistency_doc(run.tree, old, new)
            verdict = verify_consistency_doc(doc.to_json(), reader)
            assert verdict.ok, (old.batch_id, new.batch_id, verdict.first_failure)
            pairs += 1
    assert pairs == len(ANCHOR_SIZES) * (len(ANCHOR_SIZES) + 1) // 2


def test_a_tampered_consistency_doc_fails(run: Run) -> None:
    reader = run.reader()
    old, new = run.anchors[1], run.anchors[4]
    doc = make_consistency_doc(run.tree, old, new)
    assert doc.consistency_path
    for j, node in enumerate(doc.consistency_path):
        path = list(doc.consistency_path)
        path[j] = flip(node, j)
        verdict = verify_consistency_doc(replace(doc, consistency_path=tuple(path)), reader)
        assert first_failure(verdict) == "consistency"
    forged_from = replace(doc, from_anchor=replace(old, root=flip(old.root, 0)))
    verdict = verify_consistency_doc(forged_from, reader)
    assert first_failure(verdict) == "from anchor on chain"
    assert not verdict.step("consistency").ok
    forged_to = replace(doc, to_anchor=replace(new, tx_hash=run.anchors[3].tx_hash))
    assert first_failure(verify_consistency_doc(forged_to, reader)) == "to anchor on chain"
    backwards = ConsistencyDoc(new, old, doc.consistency_path)
    assert first_failure(verify_consistency_doc(backwards, reader)) == "consistency"
    text = doc.to_json().replace('"baas.consistency"', '"baas.receipt"')
    assert first_failure(verify_consistency_doc(text, reader)) == "consistency format"


# (e) ------------------------------------------------------------------------------------------


def test_the_anchor_chain_verifies_and_reports_later_anchors(run: Run) -> None:
    reader = run.reader()
    full = verify_anchor_chain(make_anchor_chain_doc(run.tree, run.anchors).to_json(), reader)
    assert full.ok, full.first_failure
    assert full.step("later anchors").detail == "none"
    middle = verify_anchor_chain(make_anchor_chain_doc(run.tree, run.anchors[1:4]), reader)
    assert middle.ok
    assert "2 later anchors (batches 5..6)" in middle.step("later anchors").detail


def test_a_gap_or_a_reordering_in_the_anchor_chain_fails(run: Run) -> None:
    reader = run.reader()
    a = run.anchors
    gap = make_anchor_chain_doc(run.tree, [a[0], a[1], a[3], a[4]])  # proofs are fine
    verdict = verify_anchor_chain(gap, reader)
    assert first_failure(verdict) == "batch sequence"
    assert "batch 4 follows batch 2" in verdict.step("batch sequence").detail
    good = make_anchor_chain_doc(run.tree, a[:4])
    swapped = AnchorChainDoc(
        (a[0], a[2], a[1], a[3]),
        good.consistency_paths,
    )
    assert first_failure(verify_anchor_chain(swapped, reader)) == "batch sequence"
    assert not verify_anchor_chain(swapped, reader).step("consistency paths").ok
    paths = list(good.consistency_paths)
    paths[1] = (flip(paths[1][0], 3), *paths[1][1:])
    tampered = replace(good, consistency_paths=tuple(paths))
    verdict = verify_anchor_chain(tampered, reader)
    assert first_failure(verdict) == "consistency paths"
    assert "batch 2" in verdict.step("consistency paths").detail
    forged = replace(good, anchors=(a[0], a[1], replace(a[2], tx_hash=a[3].tx_hash), a[3]))
    assert first_failure(verify_anchor_chain(forged, reader)) == "anchors on chain"


# (g) baas-verify ------------------------------------------------------------------------------


@pytest.fixture
def files(run: Run, tmp_path: Path) -> Path:
    (tmp_path / "receipt.json").write_text(run.receipts[SAMPLE].to_json())
    (tmp_path / "record.json").write_bytes(record_json(SAMPLE))
    (tmp_path / "consistency.json").write_text(
        make_consistency_doc(run.tree, run.anchors[0], run.anchors[-1]).to_json()
    )
    (tmp_path / "anchors.json").write_text(make_anchor_chain_doc(run.tree, run.anchors).to_json())
    return tmp_path


def cli(run: Run, *argv: str) -> int:
    return main(list(argv), reader_factory=lambda rpc, contract: RegistryReader(run.w3, contract))


def test_cli_exit_codes(run: Run, files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    receipt = str(files / "receipt.json")
    rpc = ("--rpc", "http://in-process")
    record = ("--record", str(files / "record.json"), "--salt", salt(SAMPLE).hex())
    assert cli(run, "receipt", receipt, *rpc, *record) == 0
    out = capsys.readouterr().out
    assert "plaintext commitment: ok" in out and out.rstrip().endswith("result: verified")
    assert "as the document names it" in out
    have = run.w3.eth.block_number - run.receipts[SAMPLE].anchor.block_number + 1
    assert cli(run, "receipt", receipt, *rpc, "--confirmations", str(have + 1)) == 3
    assert "confirmations: NOT FINAL" in capsys.readouterr().out
    assert cli(run, "receipt", receipt, *rpc, "--confirmations", str(have)) == 0
    assert cli(run, "consistency", str(files / "consistency.json"), *rpc) == 0
    assert cli(run, "anchors", str(files / "anchors.json"), *rpc) == 0
    capsys.readouterr()

    wrong_salt = ("--record", str(files / "record.json"), "--salt", salt(1).hex())
    assert cli(run, "receipt", receipt, *rpc, *wrong_salt) == 1
    out = capsys.readouterr().out
    assert "plaintext commitment: FAILED: " in out
    assert "result: FAILED at step 'plaintext commitment'" in out

    broken = files / "broken.json"
    broken.write_text(run.receipts[SAMPLE].to_json()[:-3])
    assert cli(run, "receipt", str(broken), *rpc) == 1
    out = capsys.readouterr().out
    assert out.startswith("receipt format: FAILED: not JSON")
    assert cli(run, "anchors", receipt, *rpc) == 1  # a receipt is not an anchor chain
    assert "anchors format: FAILED: format 'baas.receipt'" in capsys.readouterr().out

    def no_reader(rpc: str, contract: str) -> RegistryReader:
        raise OperationFailed("cannot reach the chain", code="chain_unavailable")

    assert main(["receipt", receipt, *rpc], reader_factory=no_reader) == 1
    assert "cannot reach the chain [chain_unavailable]" in capsys.readouterr().err
    assert cli(run, "receipt", receipt, *rpc, "--contract", NOBODY) == 1
    assert "names contract" in capsys.readouterr().out


RECEIPT_ARGS = ["receipt", "{files}/receipt.json", "--rpc", "http://x"]
RECORD_ARGS = ["--record", "{files}/record.json"]


@pytest.mark.parametrize(
    "argv",
    [
        [*RECEIPT_ARGS, *RECORD_ARGS],
        [*RECEIPT_ARGS, "--salt", "00" * 32],
        [*RECEIPT_ARGS, "--confirmations", "0"],
        [*RECEIPT_ARGS, "--confirmations", "many"],
        [*RECEIPT_ARGS, *RECORD_ARGS, "--salt", "not hex"],
        [*RECEIPT_ARGS, *RECORD_ARGS, "--salt", "00" * 31],
        [*RECEIPT_ARGS, "--record", "{files}/missing.json", "--salt", "00" * 32],
        [*RECEIPT_ARGS, "--contract", "0x12"],
        ["receipt", "{files}/missing.json", "--rpc", "http://x"],
        ["receipt", "{files}", "--rpc", "http://x"],  # a directory
        ["receipt", "{files}/receipt.json"],
        ["receipt", "{files}/receipt.json", "--rpc", "ftp://x"],
        ["proof", "{files}/receipt.json", "--rpc", "http://x"],
        [],
    ],
)
def test_cli_usage_errors_exit_2(run: Run, files: Path, argv: list[str]) -> None:
    args = [a.replace("{files}", str(files)) for a in argv]
    try:
        code = cli(run, *args)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code  # type: ignore[assignment]
    assert code == 2


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: nothing listens there


def test_cli_with_an_unreachable_chain_fails_clearly_without_a_trace(files: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    for command, name in (
        ("receipt", "receipt.json"),
        ("consistency", "consistency.json"),
        ("anchors", "anchors.json"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "tools.verify_cli", command, str(files / name), "--rpc", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, done
        assert "Traceback" not in done.stdout + done.stderr
        assert "chain unavailable (eth_chainId): cannot connect to the RPC endpoint" in done.stdout
        assert "skipped (not checked: the chain could not be read)" in done.stdout
        if command == "receipt":
            assert "inclusion in anchored root: ok" in done.stdout  # offline steps still ran


def test_reader_translates_connection_errors() -> None:
    w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{closed_port()}"))
    reader = RegistryReader(w3, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
    for call in (reader.chain_id, reader.head, lambda: reader.anchor_of(1)):
        with pytest.raises(OperationFailed) as caught:
            call()
        assert caught.value.code == "chain_unavailable"


# baas-verify as a process against a real node (anvil) --------------------------------------


def test_baas_verify_process_against_anvil(tmp_path: Path) -> None:
    with running_anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url))
        contract = deploy(w3)
        store = DictStore()
        tree = MerkleTree(store, 0)
        leaves = [leaf_data(i) for i in range(20)]
        anchors = []
        for batch, size in enumerate((5, 12, 20), start=1):
            grow(tree, store, leaves, size)
            anchors.append(anchor(w3, contract, batch, size, tree.root()))
        receipt = make_receipt(tree, 7, leaves[7], anchors[1], anchors[2])
        (tmp_path / "receipt.json").write_text(receipt.to_json())
        tampered = replace(receipt, inclusion_path=(flip(receipt.inclusion_path[0], 5),))
        (tmp_path / "tampered.json").write_text(tampered.to_json())
        (tmp_path / "record.json").write_bytes(record_json(7))
        (tmp_path / "anchors.json").write_text(make_anchor_chain_doc(tree, anchors).to_json())

        def baas_verify(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "tools.verify_cli", *argv, "--rpc", node.url],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )

        receipt_file = str(tmp_path / "receipt.json")
        record = ("--record", str(tmp_path / "record.json"), "--salt", salt(7).hex())
        done = baas_verify("receipt", receipt_file, *record, "--contract", contract.address)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "plaintext commitment: ok" in done.stdout
        assert done.stdout.rstrip().endswith("result: verified")
        done = baas_verify("receipt", receipt_file, "--confirmations", "50")
        assert done.returncode == 3, done.stdout + done.stderr
        done = baas_verify("receipt", str(tmp_path / "tampered.json"))
        assert done.returncode == 1
        assert "result: FAILED at step 'inclusion in anchored root'" in done.stdout
        done = baas_verify("anchors", str(tmp_path / "anchors.json"))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr


def test_a_reorganized_anchor_no_longer_verifies_on_anvil() -> None:
    with running_anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url))
        contract = deploy(w3)
        store = DictStore()
        tree = MerkleTree(store, 0)
        leaves = [leaf_data(i) for i in range(9)]
        grow(tree, store, leaves, 4)
        first = anchor(w3, contract, 1, 4, tree.root())
        snapshot = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
        grow(tree, store, leaves, 9)
        second = anchor(w3, contract, 2, 9, tree.root())
        receipt = make_receipt(tree, 2, leaves[2], first, second)
        assert verify(receipt, RegistryReader(w3, contract.address)).ok
        w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        verdict = verify(receipt, RegistryReader(w3, contract.address))
        assert first_failure(verdict) == "latest anchor on chain"
        assert "no batch 2" in verdict.step("latest anchor on chain").detail
        assert verdict.step("anchor on chain").ok  # batch 1 survived the reorganization
