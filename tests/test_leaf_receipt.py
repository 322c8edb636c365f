"""Leaf data v1, the plaintext commitment, and the receipt / consistency / anchor-chain JSON:
exact layouts, strict decoding (every malformation named), canonical re-encoding, and the
committed v1 fixtures (still read, re-encoded byte-identically, still verifying offline)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from test_merkle import DictStore

from node.errors import InvalidRequest, InvariantViolation, OperationFailed, UnsupportedFormat
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
from node.merkle.tree import MerkleTree, leaf_hash
from node.merkle.verify import (
    AnchoredEvent,
    MinedAnchorTx,
    OnChainAnchor,
    Outcome,
    verify_anchor_chain,
    verify_consistency_doc,
    verify_receipt,
)

FIXTURES = Path(__file__).parent / "fixtures" / "receipts" / "v1"
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def sample_leaf(n: int = 3, owner: str = "shop-a", k: int = 2) -> LeafData:
    return LeafData(
        record_id=h("rid"),
        owner=owner,
        committed_at_ms=1_700_000_000_123,
        content_hash=h("content"),
        k=k,
        n=n,
        shard_hashes=tuple(h(f"shard{i}") for i in range(n)),
        plaintext_commitment=h("pc"),
    )


# -- leaf data ---------------------------------------------------------------------------------


def test_leaf_layout_is_the_documented_one() -> None:
    leaf = sample_leaf()
    raw = leaf.encode()
    expected = (
        b"\x01"
        + h("rid")
        + b"\x06shop-a"
        + (1_700_000_000_123).to_bytes(8, "big")
        + h("content")
        + b"\x02\x03"
        + h("shard0")
        + h("shard1")
        + h("shard2")
        + h("pc")
    )
    assert raw == expected
    assert LeafData.decode(raw) == leaf
    assert leaf.leaf_hash() == hashlib.sha256(b"\x00" + raw).digest() == leaf_hash(raw)


def test_leaf_limits_round_trip() -> None:
    for leaf in (
        sample_leaf(n=1, k=1),
        sample_leaf(n=255, k=255),
        sample_leaf(owner="x" * 128),
        sample_leaf(owner="é" * 64),  # 128 UTF-8 bytes
    ):
        assert LeafData.decode(leaf.encode()) == leaf


@pytest.mark.parametrize(
    "change",
    [
        {"owner": ""},
        {"owner": "x" * 129},
        {"owner": "é" * 65},
        {"owner": "\udc80"},  # a lone surrogate is not UTF-8
        {"k": 0},
        {"k": 4},
        {"n": 2},  # three shard hashes
        {"committed_at_ms": -1},
        {"committed_at_ms": 1 << 64},
        {"record_id": b"short"},
        {"content_hash": h("x") + b"\x00"},
        {"plaintext_commitment": "not bytes"},
        {"shard_hashes": [h("a"), h("b"), h("c")]},
        {"shard_hashes": (h("a"), h("b"), b"short")},
        {"k": True},
    ],
)
def test_bad_leaf_fields_are_refused(change: dict[str, Any]) -> None:
    fields = {**sample_leaf().__dict__, **change}
    with pytest.raises(InvalidRequest):
        LeafData(**fields)


def test_decode_refuses_every_truncation_and_any_trailing_byte() -> None:
    raw = sample_leaf().encode()
    for cut in range(len(raw)):
        with pytest.raises(UnsupportedFormat):
            LeafData.decode(raw[:cut])
    with pytest.raises(UnsupportedFormat, match="bytes"):
        LeafData.decode(raw + b"\x00")


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (0, 2, "version 2"),
        (0, 0, "version 0"),
        (33, 0, "owner length 0"),
        (33, 129, "owner length 129"),
        (33, 5, "owner length 5"),  # shorter owner: the length no longer adds up
        (1 + 32 + 1 + 6 + 8 + 32, 4, "k=4"),  # k > n
        (1 + 32 + 1 + 6 + 8 + 32, 0, "k=0"),
        (1 + 32 + 1 + 6 + 8 + 32 + 1, 2, "n=2"),
    ],
)
def test_decode_refuses_bad_header_bytes(offset: int, value: int, match: str) -> None:
    raw = bytearray(sample_leaf().encode())
    raw[offset] = value
    with pytest.raises(UnsupportedFormat, match=match):
        LeafData.decode(bytes(raw))


def test_decode_refuses_an_owner_that_is_not_utf8() -> None:
    raw = bytearray(sample_leaf().encode())
    raw[34] = 0xFF
    with pytest.raises(UnsupportedFormat, match="UTF-8"):
        LeafData.decode(bytes(raw))


def test_plaintext_commitment_is_domain_separated_sha256() -> None:
    salt = bytes(range(32))
    assert (
        plaintext_commitment(salt, b'{"a":1}')
        == hashlib.sha256(b"baas.plaintext.v1\x00" + salt + b'{"a":1}').digest()
    )
    for bad in (salt[:31], salt + b"\x00"):
        with pytest.raises(InvalidRequest):
            plaintext_commitment(bad, b"{}")


# -- receipts and documents --------------------------------------------------------------------


def anchor_ref(batch: int, size: int, root: bytes) -> AnchorRef:
    return AnchorRef(
        batch_id=batch,
        tree_size=size,
        root=root,
        chain_id=31337,
        contract=CONTRACT,
        tx_hash=h(f"tx{batch}"),
        block_number=100 + batch,
        block_hash=h(f"block{batch}"),
    )


def small_log() -> tuple[MerkleTree, list[bytes], list[AnchorRef]]:
    store = DictStore()
    tree = MerkleTree(store, 0)
    leaves = [
        LeafData(
            record_id=h(f"rid{i}"),
            owner="shop-a",
            committed_at_ms=i,
            content_hash=h(f"c{i}"),
            k=1,
            n=1,
            shard_hashes=(h(f"s{i}"),),
            plaintext_commitment=h(f"p{i}"),
        ).encode()
        for i in range(12)
    ]
    tree.extend((leaf_hash(raw) for raw in leaves), store)
    anchors = [anchor_ref(b, size, tree.root(size)) for b, size in ((1, 4), (2, 9), (3, 12))]
    return tree, leaves, anchors


def sample_receipt() -> Receipt:
    tree, leaves, anchors = small_log()
    return make_receipt(tree, 5, leaves[5], anchors[1], anchors[2])


def test_receipt_json_round_trips_canonically() -> None:
    receipt = sample_receipt()
    text = receipt.to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    document = json.loads(text)
    assert document["format"] == "baas.receipt" and document["version"] == 1
    assert document["anchor"]["tx_hash"].startswith("0x")
    assert document["anchor"]["contract"] == CONTRACT
    assert len(document["anchor"]["root"]) == 64
    assert Receipt.from_json(text) == receipt
    assert Receipt.from_json(text.encode()).to_json() == text


def mutated(text: str, edit: Any) -> str:
    document = json.loads(text)
    edit(document)
    return json.dumps(document)


def _set(path: str, value: Any) -> Any:
    def edit(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        key: Any = int(last) if isinstance(target, list) else last
        if value is _DELETE:
            del target[key]
        else:
            target[key] = value

    return edit


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("format", "baas.consistency", "format"),
        ("version", 3, "version"),
        ("version", 2, "baas.receipt v2 lacks field 'outcome'"),  # v2 is an operation's
        ("version", "1", "version"),
        ("version", True, "version"),
        ("version", 1.0, "version"),
        ("extra", 1, "extra"),
        ("anchor.extra", 1, "anchor has unknown field 'extra'"),
        ("record_id", _DELETE, "record_id"),
        ("anchor.root", _DELETE, "anchor lacks field 'root'"),
        ("leaf_index", "5", "leaf_index"),
        ("leaf_index", True, "leaf_index"),
        ("leaf_index", -1, "leaf_index"),
        ("leaf_index", 1 << 64, "leaf_index"),
        ("leaf_index", 5.0, "leaf_index"),
        ("record_id", "ab" * 31, "record_id"),
        ("record_id", "AB" * 32, "record_id"),
        ("record_id", "0x" + "ab" * 31, "record_id"),
        ("leaf_data", "abc", "leaf_data"),
        ("leaf_data", "", "leaf_data"),
        ("leaf_data", 17, "leaf_data"),
        ("inclusion_path", "ab" * 32, "inclusion_path"),
        ("inclusion_path.0", "zz" * 32, "inclusion_path[0]"),
        ("inclusion_path.1", "ab" * 33, "inclusion_path[1]"),
        ("consistency_path", ["ab" * 32] * 129, "consistency_path"),
        ("anchor", [], "anchor must be an object"),
        ("anchor.root", "0x" + "ab" * 31, "anchor.root"),
        ("anchor.tx_hash", "ab" * 32, "anchor.tx_hash"),
        ("anchor.tx_hash", "0x" + "AB" * 32, "anchor.tx_hash"),
        ("latest_anchor.block_hash", "0x" + "ab" * 31, "latest_anchor.block_hash"),
        ("anchor.contract", CONTRACT.lower(), "anchor.contract"),
        ("anchor.contract", CONTRACT[:-1], "anchor.contract"),
        ("anchor.batch_id", 0, "anchor: batch_id"),
        ("anchor.tree_size", 0, "anchor: tree_size"),
        ("latest_anchor.chain_id", "31337", "latest_anchor.chain_id"),
        ("latest_anchor.block_number", None, "latest_anchor.block_number"),
    ],
)
def test_receipt_decoding_is_strict_and_names_the_field(path: str, value: Any, named: str) -> None:
    text = mutated(sample_receipt().to_json(), _set(path, value))
    with pytest.raises(UnsupportedFormat) as caught:
        Receipt.from_json(text)
    assert named in caught.value.detail


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '"baas.receipt"',
        "{",
        b"\xff\xfe",
        '{"format": "baas.receipt", "format": "baas.receipt"}',
        '{"format": "baas.receipt", "version": NaN}',
    ],
)
def test_non_documents_are_unsupported_format(text: str | bytes) -> None:
    with pytest.raises(UnsupportedFormat):
        Receipt.from_json(text)


def test_a_duplicate_key_is_refused() -> None:
    text = sample_receipt().to_json()
    doubled = text.replace('"leaf_index": 5,', '"leaf_index": 5,\n  "leaf_index": 4,')
    assert doubled != text
    with pytest.raises(UnsupportedFormat, match="leaf_index"):
        Receipt.from_json(doubled)


def test_documents_round_trip_and_are_strict() -> None:
    tree, _, anchors = small_log()
    consistency = make_consistency_doc(tree, anchors[0], anchors[2])
    chain = make_anchor_chain_doc(tree, anchors)
    for doc, cls in ((consistency, ConsistencyDoc), (chain, AnchorChainDoc)):
        text = doc.to_json()
        assert cls.from_json(text) == doc
        assert cls.from_json(text).to_json() == text
        with pytest.raises(UnsupportedFormat, match="format"):
            Receipt.from_json(text)
    assert json.loads(consistency.to_json())["from"]["batch_id"] == 1
    with pytest.raises(UnsupportedFormat, match="to"):
        ConsistencyDoc.from_json(mutated(consistency.to_json(), _set("to", _DELETE)))
    with pytest.raises(UnsupportedFormat, match="consistency_paths"):
        AnchorChainDoc.from_json(mutated(chain.to_json(), _set("consistency_paths.1", _DELETE)))
    one_fewer = mutated(chain.to_json(), lambda d: d["consistency_paths"].pop())
    with pytest.raises(UnsupportedFormat, match="consistency_paths must hold 2"):
        AnchorChainDoc.from_json(one_fewer)
    empty = mutated(chain.to_json(), lambda d: d.update(anchors=[], consistency_paths=[]))
    with pytest.raises(UnsupportedFormat, match="anchors"):
        AnchorChainDoc.from_json(empty)
    with pytest.raises(UnsupportedFormat, match=r"anchors\[2\].root"):
        AnchorChainDoc.from_json(mutated(chain.to_json(), _set("anchors.2.root", "00")))


def test_builders_refuse_anchors_that_are_not_this_tree() -> None:
    tree, leaves, anchors = small_log()
    forged = anchor_ref(2, 9, h("not the root"))
    with pytest.raises(InvariantViolation):
        make_receipt(tree, 5, leaves[5], forged, anchors[2])
    with pytest.raises(InvariantViolation):
        make_receipt(tree, 5, leaves[6], anchors[1], anchors[2])  # not leaf 5's data
    with pytest.raises(InvariantViolation):
        make_consistency_doc(tree, anchors[0], forged)
    with pytest.raises(InvalidRequest):
        make_consistency_doc(tree, anchors[2], anchors[0])  # backwards


# -- the committed v1 fixtures -----------------------------------------------------------------


class OfflineReader:
    """No chain at all: every read fails, so only the offline steps can pass."""

    contract = CONTRACT

    def _fail(self, *_: object) -> Any:
        raise OperationFailed("offline", code="chain_unavailable")

    chain_id = next_batch_id = head = _fail

    def anchor_of(self, batch_id: int) -> OnChainAnchor | None:
        return self._fail()  # type: ignore[no-any-return]

    def tx_inclusion(self, tx_hash: bytes) -> MinedAnchorTx | None:
        return self._fail()  # type: ignore[no-any-return]

    def block_hash(self, number: int) -> bytes | None:
        return self._fail()  # type: ignore[no-any-return]


OFFLINE_RECEIPT_STEPS = (
    "receipt format",
    "leaf data",
    "record id",
    "plaintext commitment",
    "inclusion in anchored root",
    "consistency with latest anchor",
)
FIXTURE_FILES = sorted(p.name for p in FIXTURES.glob("*.json") if not p.name.startswith("record"))


def test_the_fixture_set_is_complete() -> None:
    assert FIXTURE_FILES == [
        "anchors.json",
        "consistency-1-3.json",
        "receipt-1.json",
        "receipt-2.json",
        "receipt-3.json",
    ]


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_v1_fixtures_decode_and_re_encode_byte_identically(name: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    cls = {"anchors": AnchorChainDoc, "consistency": ConsistencyDoc, "receipt": Receipt}[
        name.split("-")[0].removesuffix(".json")
    ]
    assert cls.from_json(raw).to_json().encode() == raw  # type: ignore[attr-defined]


@pytest.mark.parametrize("number", [1, 2, 3])
def test_v1_receipts_pass_every_offline_step(number: int) -> None:
    raw = (FIXTURES / f"receipt-{number}.json").read_bytes()
    record = (FIXTURES / f"record-{number}.json").read_bytes()
    salt = bytes.fromhex((FIXTURES / f"salt-{number}.hex").read_text().strip())
    verdict = verify_receipt(raw, OfflineReader(), record_json=record, salt=salt)
    for name in OFFLINE_RECEIPT_STEPS:
        assert verdict.step(name).ok, verdict.step(name)
    assert verdict.step("anchor on chain").outcome is Outcome.FAILED  # offline, as it should
    assert verdict.step("latest anchor on chain").outcome is Outcome.SKIPPED
    other_record = (FIXTURES / f"record-{number % 3 + 1}.json").read_bytes()
    wrong = verify_receipt(raw, OfflineReader(), record_json=other_record, salt=salt)
    assert wrong.first_failure is not None
    assert wrong.first_failure.name == "plaintext commitment"


def test_v1_consistency_and_anchor_chain_fixtures_verify_offline() -> None:
    consistency = verify_consistency_doc(
        (FIXTURES / "consistency-1-3.json").read_bytes(), OfflineReader()
    )
    assert consistency.step("consistency format").ok
    assert consistency.step("consistency").ok
    chain = verify_anchor_chain((FIXTURES / "anchors.json").read_bytes(), OfflineReader())
    for name in ("anchors format", "batch sequence", "consistency paths"):
        assert chain.step(name).ok, chain.step(name)


def test_offline_reader_really_is_offline() -> None:
    # The fixture tests rely on chain steps failing; make sure the fake cannot pass them.
    reader = OfflineReader()
    with pytest.raises(OperationFailed):
        reader.anchor_of(1)
    assert AnchoredEvent(1, h("r"), 3) != AnchoredEvent(1, h("r"), 4)
