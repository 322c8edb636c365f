"""Leaf data v2 and receipt v2 (a ledger operation's), offline: the exact leaf layout, strict
decoding that never reads one version as the other, the Merkle log's leaves for ``ledger.ops``
entries (only from log feature version 6, v2 for operations, v1 for plain records, in entry
order), the receipt JSON, the builders' refusals, the node's receipt assembler with an outcome
lookup, and the committed v2 fixtures (still read, re-encoded byte-identically, verifying
offline beside the v1 ones)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from test_leaf_receipt import (
    _DELETE,
    OFFLINE_RECEIPT_STEPS,
    OfflineReader,
    _set,
    anchor_ref,
    h,
    mutated,
    sample_leaf,
)
from test_merkle import DictStore
from test_merkle_log import DictView, feature, naive_root

from business.ledger.ops_entry import LEDGER_FEATURE_VERSION, LEDGER_OPS
from business.ledger.outcome import (
    KIND_ACCOUNT,
    KIND_ASSET,
    KIND_TRANSFER,
    EventOutcome,
    OperationOutcome,
)
from node.anchoring.receipts import receipt_for
from node.anchoring.state import (
    INCLUDED,
    NEXT_KEY,
    SIZE,
    Batch,
    Inclusion,
    Progress,
    batch_key,
)
from node.api.log_routes import LOG_PATH, add_log_routes
from node.consensus.record_index import BatchOutcome, IndexProposal, RecordIndex
from node.consensus.state_machine import (
    AppEntry,
    Applied,
    ApplyOutcome,
    Dispatcher,
    LogPosition,
    StateView,
    encode_app_entry,
)
from node.errors import InvalidRequest, InvariantViolation, UnsupportedFormat
from node.merkle.leaf import LeafData
from node.merkle.log import MerkleLog, MerkleReader
from node.merkle.receipt import Receipt, make_receipt
from node.merkle.tree import MerkleTree, leaf_hash
from node.merkle.verify import Outcome, verify_receipt

FIXTURES = Path(__file__).parent / "fixtures" / "receipts" / "v2"
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
T0 = 1_700_000_000_000
NODES = ("n1", "n2", "n3", "n4", "n5")
OUTCOME_PREFIX = b"zz/o/"  # where the fake ledger keeps outcomes (the real one chooses its own)
V2_RECEIPT_STEPS = (
    "receipt format",
    "leaf data",
    "record id",
    "plaintext commitment",
    "outcome decodes",
    "outcome digest in leaf",
    "inclusion in anchored root",
    "anchor on chain",
    "anchor transaction",
    "confirmations",
    "latest anchor on chain",
    "consistency with latest anchor",
)


def sample_outcome(i: int, log_time_ms: int) -> OperationOutcome:
    """An operation: an asset, an account, a transfer of more than 2**64 units."""
    stamp = log_time_ms * 1_000_000
    return OperationOutcome(
        log_time_ms,
        (
            EventOutcome(KIND_ASSET, 1, 1, 0, 0, 0, "exists", stamp + 1),
            EventOutcome(KIND_ACCOUNT, 500 + i, 1, 0, 0, 0, "ok", stamp + 2),
            EventOutcome(KIND_TRANSFER, 100 + i, 1, 7, 500 + i, 2**70 + i, "ok", stamp + 3),
        ),
    )


def v2_leaf(outcome: OperationOutcome | None = None) -> LeafData:
    base = sample_leaf()
    digest = (outcome or sample_outcome(0, base.committed_at_ms)).digest()
    return replace(base, outcome_digest=digest)


# -- leaf data v2 ------------------------------------------------------------------------------


def test_leaf_v2_layout_is_v1_with_version_2_and_the_outcome_digest_appended() -> None:
    v1 = sample_leaf()
    outcome = sample_outcome(0, v1.committed_at_ms)
    leaf = v2_leaf(outcome)
    raw = leaf.encode()
    assert (v1.version, leaf.version) == (1, 2)
    assert raw == b"\x02" + v1.encode()[1:] + outcome.digest()
    assert LeafData.decode(raw) == leaf
    assert leaf.leaf_hash() == hashlib.sha256(b"\x00" + raw).digest() == leaf_hash(raw)
    assert leaf.leaf_hash() != v1.leaf_hash()


def test_one_version_never_decodes_as_the_other() -> None:
    v1, v2 = sample_leaf().encode(), v2_leaf().encode()
    for raw, other in ((v1, 2), (v2, 1)):
        relabelled = bytes([other]) + raw[1:]
        with pytest.raises(UnsupportedFormat, match=f"version {other}"):
            LeafData.decode(relabelled)
    # Nor does a v1 leaf with 32 bytes appended, or a v2 leaf cut by 32, under either label.
    for bad in (v1 + h("x"), v2[:-32], b"\x02" + v2[1:-32], b"\x01" + v1[1:] + h("x")):
        with pytest.raises(UnsupportedFormat):
            LeafData.decode(bad)


def test_leaf_v2_decode_refuses_every_truncation_and_any_trailing_byte() -> None:
    raw = v2_leaf().encode()
    for cut in range(len(raw)):
        with pytest.raises(UnsupportedFormat):
            LeafData.decode(raw[:cut])
    with pytest.raises(UnsupportedFormat, match="bytes"):
        LeafData.decode(raw + b"\x00")
    for version in (0, 3, 255):
        with pytest.raises(UnsupportedFormat, match=f"version {version}"):
            LeafData.decode(bytes([version]) + raw[1:])


@pytest.mark.parametrize("digest", [b"", b"short", h("x") + b"\x00", "not bytes"])
def test_a_bad_outcome_digest_is_refused(digest: Any) -> None:
    with pytest.raises(InvalidRequest, match="outcome_digest"):
        replace(sample_leaf(), outcome_digest=digest)


# -- the Merkle log: leaves for ledger.ops entries ---------------------------------------------


def proposal(rid: int, *, leaf_fields: bool = True) -> IndexProposal:
    return IndexProposal(
        record_id=h(f"op{rid}"),
        content_hash=h(f"content{rid}"),
        k=3,
        n=5,
        shard_nodes=NODES,
        membership_epoch=1,
        owner="shop-a",
        body_fingerprint=h(f"fp{rid}"),
        expiry_term=2,
        expiry_max_index=10**9,
        shard_hashes=tuple(h(f"s{rid}/{i}") for i in range(5)) if leaf_fields else (),
        plaintext_commitment=h(f"pc{rid}") if leaf_fields else None,
    )


class FakeLedgerOps:
    """Stands in for the ledger machine: applies a ``ledger.ops`` entry as the interface says.

    Its body lists operations, each an index put and the outcome the test wants it to have
    (None: a plain record); every record is created, and the outcome is stored for receipts.
    """

    prefix = b"zz/"
    entry_types: Mapping[str, int] = {LEDGER_OPS: LEDGER_FEATURE_VERSION}

    def apply(self, entry: AppEntry, position: LogPosition, view: StateView) -> ApplyOutcome:
        ops = entry.body.get("ops")
        if not isinstance(ops, list) or not ops:
            return ApplyOutcome("malformed", {"reason": "ops must be a non-empty list"})
        created = tuple(IndexProposal.from_body(op["put"]) for op in ops)
        outcomes = tuple(
            None if op["outcome"] is None else OperationOutcome.decode(op["outcome"]) for op in ops
        )
        writes = tuple(
            (OUTCOME_PREFIX + p.record_id, o.encode())
            for p, o in zip(created, outcomes, strict=True)
            if o is not None
        )
        detail = {
            "results": tuple(BatchOutcome("created", {}) for _ in created),
            "created": created,
            "outcomes": outcomes,
        }
        return ApplyOutcome("applied", detail, writes)


def ops_entry(ops: Sequence[tuple[IndexProposal, OperationOutcome | None]]) -> bytes:
    body = [
        {"put": dict(p.to_entry().body), "outcome": None if o is None else o.encode()}
        for p, o in ops
    ]
    return encode_app_entry(AppEntry(LEDGER_OPS, {"ops": body}))


def at(index: int) -> LogPosition:
    return LogPosition(index, 2, T0 + index)


def ledger_dispatcher() -> Dispatcher:
    return Dispatcher(
        [RecordIndex(), FakeLedgerOps()],
        feature_version_max=LEDGER_FEATURE_VERSION,
        followers=[MerkleLog()],
    )


def test_ops_entries_make_leaves_only_from_feature_6_v2_for_operations_in_entry_order() -> None:
    d, view = ledger_dispatcher(), DictView()

    def apply(index: int, payload: bytes) -> Applied:
        (applied,), writes = d.apply_batch([(at(index), payload)], view)
        view.commit(writes)
        return applied

    early = ops_entry([(proposal(0), sample_outcome(0, at(2).leader_time_ms))])
    assert apply(1, feature(5)).outcome.code == "created"
    refused = apply(2, early)  # the Merkle log (feature 3) is on; the entry type is not yet
    assert refused.outcome.code == "feature_not_enabled"
    assert MerkleReader(view).size == 0
    assert apply(3, feature(LEDGER_FEATURE_VERSION)).outcome.code == "created"
    first, third = (sample_outcome(i, at(4).leader_time_ms) for i in (1, 3))
    ops = [
        (proposal(1), first),
        (proposal(2), None),  # a plain record carried in the same entry: leaf v1
        (proposal(3), third),
        (proposal(4, leaf_fields=False), sample_outcome(4, at(4).leader_time_ms)),  # no leaf
    ]
    assert apply(4, ops_entry(ops)).outcome.code == "applied"
    reader = MerkleReader(view)
    assert reader.size == 3
    leaves = [LeafData.decode(reader.leaf_of(h(f"op{i}")).data) for i in (1, 2, 3)]
    assert [reader.leaf_of(h(f"op{i}")).index for i in (1, 2, 3)] == [0, 1, 2]
    assert [leaf.version for leaf in leaves] == [2, 1, 2]
    assert leaves[0].outcome_digest == first.digest()
    assert leaves[2].outcome_digest == third.digest()
    assert {leaf.committed_at_ms for leaf in leaves} == {at(4).leader_time_ms}
    assert leaves[1] == replace(leaves[1], outcome_digest=None)
    assert reader.root() == naive_root([leaf.encode() for leaf in leaves])
    # Stripped of the digest, an operation's leaf is the leaf the same record had as v1.
    assert replace(leaves[0], outcome_digest=None).encode()[1:] == leaves[0].encode()[1:-32]


def test_an_ops_entry_that_is_not_applied_adds_no_leaf() -> None:
    d, view = ledger_dispatcher(), DictView()
    enable = [(at(1), feature(LEDGER_FEATURE_VERSION))]
    bad = encode_app_entry(AppEntry(LEDGER_OPS, {"ops": []}))
    applied, writes = d.apply_batch([*enable, (at(2), bad)], view)
    assert applied[1].outcome.code == "malformed"
    view.commit(writes)
    assert MerkleReader(view).size == 0


def follow(created: Sequence[IndexProposal], outcomes: Sequence[Any]) -> None:
    position = at(7)
    detail = {"results": (), "created": tuple(created), "outcomes": tuple(outcomes)}
    applied = Applied(position, LEDGER_OPS, ApplyOutcome("applied", detail))
    MerkleLog().follow(AppEntry(LEDGER_OPS, {}), applied, DictView())


def test_an_ops_outcome_that_breaks_the_interface_is_an_invariant_violation() -> None:
    follow([proposal(1)], [sample_outcome(1, at(7).leader_time_ms)])  # the shape that works
    with pytest.raises(InvariantViolation, match="1 created records and 0 outcomes"):
        follow([proposal(1)], [])
    with pytest.raises(InvariantViolation, match="log time"):
        follow([proposal(1)], [sample_outcome(1, at(7).leader_time_ms + 1)])


# -- receipt v2 --------------------------------------------------------------------------------


def mixed_log(
    size: int = 12,
) -> tuple[MerkleTree, list[bytes], dict[int, OperationOutcome], list[Any]]:
    """Leaves 0..size-1, every odd one an operation's (v2); anchors at 4, 9 and ``size``."""
    store = DictStore()
    tree = MerkleTree(store, 0)
    outcomes = {i: sample_outcome(i, T0 + i) for i in range(1, size, 2)}
    leaves = [
        LeafData(
            record_id=h(f"op{i}"),
            owner="shop-a",
            committed_at_ms=T0 + i,
            content_hash=h(f"c{i}"),
            k=1,
            n=1,
            shard_hashes=(h(f"s{i}"),),
            plaintext_commitment=h(f"p{i}"),
            outcome_digest=outcomes[i].digest() if i in outcomes else None,
        ).encode()
        for i in range(size)
    ]
    tree.extend((leaf_hash(raw) for raw in leaves), store)
    anchors = [anchor_ref(b, s, tree.root(s)) for b, s in ((1, 4), (2, 9), (3, size))]
    return tree, leaves, outcomes, anchors


def sample_receipt_v2() -> Receipt:
    tree, leaves, outcomes, anchors = mixed_log()
    return make_receipt(tree, 5, leaves[5], anchors[1], anchors[2], outcomes[5].encode())


def test_receipt_v2_json_round_trips_canonically_and_carries_the_outcome() -> None:
    receipt = sample_receipt_v2()
    text = receipt.to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    document = json.loads(text)
    assert document["version"] == 2 and receipt.version == 2
    outcome = sample_outcome(5, T0 + 5)
    assert bytes.fromhex(document["outcome"]) == outcome.encode()
    assert document["outcome_summary"] == outcome.summary()
    assert document["outcome_summary"]["events"][2]["amount"] == str(2**70 + 5)
    assert Receipt.from_json(text) == receipt
    assert Receipt.from_json(text.encode()).to_json() == text
    tree, leaves, _, anchors = mixed_log()
    v1 = make_receipt(tree, 4, leaves[4], anchors[1], anchors[2])
    assert v1.version == 1 and "outcome" not in json.loads(v1.to_json())


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("outcome", _DELETE, "lacks field 'outcome'"),
        ("outcome_summary", _DELETE, "lacks field 'outcome_summary'"),
        ("outcome", "", "outcome must be non-empty"),
        ("outcome", "ABCD", "outcome must be lower-case hex"),
        ("outcome", "abc", "outcome must be lower-case hex"),
        ("outcome", 17, "outcome must be a hex string"),
        ("outcome_summary", [], "outcome_summary must be an object"),
        ("outcome_summary", "events", "outcome_summary must be an object"),
        ("version", 1, "baas.receipt v1 has unknown field 'outcome'"),
        ("version", 3, "version 3"),
    ],
)
def test_receipt_v2_decoding_is_strict(path: str, value: Any, named: str) -> None:
    edit = _set(path, value)
    with pytest.raises(UnsupportedFormat) as caught:
        Receipt.from_json(mutated(sample_receipt_v2().to_json(), edit))
    assert named in caught.value.detail


def test_receipt_construction_wants_outcome_and_summary_together() -> None:
    receipt = sample_receipt_v2()
    with pytest.raises(InvalidRequest, match="together"):
        replace(receipt, outcome_summary=None)
    with pytest.raises(InvalidRequest, match="together"):
        replace(receipt, outcome=None)
    with pytest.raises(InvalidRequest, match="non-empty"):
        replace(receipt, outcome=b"")


def test_make_receipt_refuses_an_outcome_that_is_not_the_leafs() -> None:
    tree, leaves, outcomes, anchors = mixed_log()

    def build(i: int, outcome: bytes | None) -> Receipt:
        return make_receipt(tree, i, leaves[i], anchors[1], anchors[2], outcome)

    with pytest.raises(InvariantViolation, match="its outcome is needed"):
        build(5, None)
    with pytest.raises(InvariantViolation, match="not the one its leaf holds"):
        build(5, outcomes[7].encode())
    with pytest.raises(InvariantViolation, match="stored outcome is bad"):
        build(5, b"\x93garbage")
    with pytest.raises(InvariantViolation, match="v1 leaf"):
        build(4, outcomes[5].encode())
    # The outcome's log time must be the leaf's commit time (the digest alone would not say).
    shifted = sample_outcome(5, T0 + 6)
    leaf = replace(LeafData.decode(leaves[5]), outcome_digest=shifted.digest()).encode()
    store = DictStore()
    tree2 = MerkleTree(store, 0)
    tree2.extend([leaf_hash(leaf)], store)
    only = anchor_ref(1, 1, tree2.root(1))
    with pytest.raises(InvariantViolation, match="log time"):
        make_receipt(tree2, 0, leaf, only, only, shifted.encode())


def test_offline_steps_of_a_v2_receipt_and_what_they_catch() -> None:
    receipt = sample_receipt_v2()
    verdict = verify_receipt(receipt.to_json(), OfflineReader())
    assert [s.name for s in verdict.steps] == list(V2_RECEIPT_STEPS)
    for name in ("receipt format", "leaf data", "record id", "outcome decodes"):
        assert verdict.step(name).ok, verdict.step(name)
    for name in ("outcome digest in leaf", "inclusion in anchored root"):
        assert verdict.step(name).ok, verdict.step(name)
    lines = verdict.step("outcome decodes").lines
    assert lines == (
        f"asset: ledger 1: exists (log time {T0 + 5} ms)",
        f"account 505: ledger 1: ok (log time {T0 + 5} ms)",
        f"transfer 105: debit account 7 -> credit account 505, ledger 1, amount {2**70 + 5}: "
        f"ok (log time {T0 + 5} ms)",
    )
    # A summary that says something the outcome does not is caught, not shown.
    lying = json.loads(receipt.to_json())
    lying["outcome_summary"]["events"][2]["amount"] = str(2**70 + 6)
    verdict = verify_receipt(json.dumps(lying), OfflineReader())
    assert verdict.first_failure is not None
    assert verdict.first_failure.name == "outcome decodes"
    assert "outcome_summary" in verdict.first_failure.detail
    assert verdict.step("outcome digest in leaf").ok  # the outcome itself is the leaf's
    # A v2 receipt around a v1 leaf, and a v1 receipt around a v2 leaf, fail at the leaf.
    tree, leaves, _, anchors = mixed_log()
    v1 = make_receipt(tree, 4, leaves[4], anchors[1], anchors[2])
    dressed = replace(v1, outcome=receipt.outcome, outcome_summary=receipt.outcome_summary)
    stripped = replace(receipt, outcome=None, outcome_summary=None)
    for wrong, message in ((dressed, "v2 receipt holds leaf data v1"), (stripped, "v1 receipt")):
        verdict = verify_receipt(wrong, OfflineReader())
        assert verdict.first_failure is not None and verdict.first_failure.name == "leaf data"
        assert message in verdict.first_failure.detail
    undecodable = replace(receipt, outcome=b"\xc1")
    verdict = verify_receipt(undecodable, OfflineReader())
    assert verdict.first_failure is not None
    assert verdict.first_failure.name == "outcome decodes"
    assert verdict.step("outcome digest in leaf").outcome is Outcome.SKIPPED


# -- the node's receipt assembler --------------------------------------------------------------


def anchored_state(view: DictView, tree_sizes: Sequence[int]) -> None:
    """Anchoring state with batches 1.. included at ``tree_sizes`` (roots from the view)."""
    reader = MerkleReader(view)
    for batch_id, size in enumerate(tree_sizes, start=1):
        ref = anchor_ref(batch_id, size, reader.root(size))
        inclusion = Inclusion(
            chain_id=ref.chain_id,
            contract=bytes.fromhex(CONTRACT[2:]),
            block_number=ref.block_number,
            block_hash=ref.block_hash,
            status=1,
            result_index=10 + batch_id,
            included_ms=T0,
        )
        stored = Batch(
            batch_id=batch_id,
            tree_size=size,
            root=ref.root,
            trigger=SIZE,
            holder="n1",
            sender=b"\x01" * 20,
            nonce=batch_id,
            raw_tx=b"\x02" * 100,
            tx_hash=ref.tx_hash,
            intent_index=batch_id,
            intent_ms=T0,
            attempt=0,
            state=INCLUDED,
            inclusion=inclusion,
        )
        view.data[batch_key(batch_id)] = stored.encode()
    count = len(tree_sizes)
    view.data[NEXT_KEY] = Progress(count + 1, count, 0).encode()


def anchored_ops_state() -> tuple[DictView, OperationOutcome]:
    """An operation (record op1) and a plain record (op2) in one entry, both anchored."""
    d, view = ledger_dispatcher(), DictView()
    outcome = sample_outcome(1, at(2).leader_time_ms)
    entries = [
        (at(1), feature(LEDGER_FEATURE_VERSION)),
        (at(2), ops_entry([(proposal(1), outcome), (proposal(2), None)])),
    ]
    _, writes = d.apply_batch(entries, view)
    view.commit(writes)
    anchored_state(view, [2])
    return view, outcome


def test_receipt_for_reads_an_operations_outcome_through_the_lookup() -> None:
    view, outcome = anchored_ops_state()
    looked_up: list[bytes] = []

    def lookup(record_id: bytes) -> bytes | None:
        looked_up.append(record_id)
        return view.get(OUTCOME_PREFIX + record_id)

    receipt = receipt_for(view, h("op1"), lookup)
    assert receipt.version == 2 and receipt.outcome == outcome.encode()
    assert receipt.outcome_summary == outcome.summary()
    assert looked_up == [h("op1")]
    plain = receipt_for(view, h("op2"), lookup)
    assert plain.version == 1 and looked_up == [h("op1")]  # a v1 leaf needs no outcome
    for text in (receipt.to_json(), plain.to_json()):
        verdict = verify_receipt(text, OfflineReader())
        for name in OFFLINE_RECEIPT_STEPS:
            if name != "plaintext commitment":
                assert verdict.step(name).ok, verdict.step(name)
    with pytest.raises(InvariantViolation, match="without outcome"):
        receipt_for(view, h("op1"), lambda rid: None)
    with pytest.raises(InvariantViolation, match="without outcome"):
        receipt_for(view, h("op1"))
    other = sample_outcome(9, at(2).leader_time_ms).encode()
    with pytest.raises(InvariantViolation, match="not the one its leaf holds"):
        receipt_for(view, h("op1"), lambda rid: other)


async def test_the_nodes_receipt_route_serves_v2_with_the_ledgers_lookup() -> None:
    view, outcome = anchored_ops_state()
    app = web.Application()
    add_log_routes(app, lambda: view, lambda v: lambda rid: v.get(OUTCOME_PREFIX + rid))
    async with TestClient(TestServer(app)) as client:
        answer = await client.get(f"{LOG_PATH}/receipts/{h('op1').hex()}")
        assert answer.status == 200
        receipt = Receipt.from_json(await answer.text())
        assert receipt.version == 2 and receipt.outcome == outcome.encode()
        answer = await client.get(f"{LOG_PATH}/receipts/{h('op2').hex()}")
        assert Receipt.from_json(await answer.text()).version == 1


# -- the committed v2 fixtures -----------------------------------------------------------------

FIXTURE_FILES = sorted(p.name for p in FIXTURES.glob("receipt-*.json"))


def test_the_v2_fixture_set_is_complete() -> None:
    assert FIXTURE_FILES == ["receipt-1.json", "receipt-2.json", "receipt-3.json"]
    versions = [json.loads((FIXTURES / n).read_text())["version"] for n in FIXTURE_FILES]
    assert versions == [2, 2, 1]  # two operations and a plain record of the same log


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_v2_fixtures_decode_and_re_encode_byte_identically(name: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    assert Receipt.from_json(raw).to_json().encode() == raw


@pytest.mark.parametrize("number", [1, 2, 3])
def test_v2_fixture_receipts_pass_every_offline_step(number: int) -> None:
    raw = (FIXTURES / f"receipt-{number}.json").read_bytes()
    record = (FIXTURES / f"record-{number}.json").read_bytes()
    salt = bytes.fromhex((FIXTURES / f"salt-{number}.hex").read_text().strip())
    verdict = verify_receipt(raw, OfflineReader(), record_json=record, salt=salt)
    operation = json.loads(raw)["version"] == 2
    names = [*OFFLINE_RECEIPT_STEPS, *(("outcome decodes", "outcome digest in leaf"))]
    for name in names if operation else OFFLINE_RECEIPT_STEPS:
        assert verdict.step(name).ok, verdict.step(name)
    if operation:
        assert len(verdict.step("outcome decodes").lines) == 3
    assert verdict.step("anchor on chain").outcome is Outcome.FAILED  # offline, as it should
    other_record = (FIXTURES / f"record-{number % 3 + 1}.json").read_bytes()
    wrong = verify_receipt(raw, OfflineReader(), record_json=other_record, salt=salt)
    assert wrong.first_failure is not None
    assert wrong.first_failure.name == "plaintext commitment"


def test_the_failed_operation_of_fixture_2_shows_its_result_codes() -> None:
    raw = (FIXTURES / "receipt-2.json").read_bytes()
    lines = verify_receipt(raw, OfflineReader()).step("outcome decodes").lines
    assert [line.split(": ")[-1].split(" (")[0] for line in lines] == [
        "ok",
        "linked_event_failed",
        "exceeds_credits",
    ]
    outcome = msgpack.unpackb(bytes.fromhex(json.loads(raw)["outcome"]))
    assert outcome[0] == 1 and len(outcome[2]) == 3  # OUTCOME_VERSION 1, three events


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_gateway_openapi_document_describes_receipts_of_both_versions(version: str) -> None:
    from openapi_check import check_answer  # builds the validator: only where it is used
    from openapi_core.validation.response.exceptions import InvalidData

    folder = FIXTURES.parent / version
    for path in sorted(folder.glob("receipt-*.json")):
        raw = path.read_bytes()
        route = f"/v1/records/{json.loads(raw)['record_id']}/receipt"
        check_answer("GET", route, 200, {"Content-Type": "application/json"}, raw)
    lying = json.loads((FIXTURES / "receipt-1.json").read_text())
    lying["outcome_summary"]["events"][0]["amount"] = 5  # a JSON number: not in the document
    route = f"/v1/records/{lying['record_id']}/receipt"
    with pytest.raises(InvalidData):
        check_answer(
            "GET", route, 200, {"Content-Type": "application/json"}, json.dumps(lying).encode()
        )
