"""Receipts (v1, v2) and the consistency and anchor-chain documents: what a user keeps and verifies.

A receipt says "leaf ``leaf_index`` of the record log holds this leaf data, it is included in
the root anchored as batch ``anchor.batch_id``, and that root is a prefix of the root anchored
as ``latest_anchor``". Receipt v2 is the receipt of a ledger operation: the v1 fields plus the
operation's outcome (``outcome``, its canonical encoding, and ``outcome_summary``, the same
for humans), whose digest is in the leaf (leaf data v2); so it proves what the operation did,
not only that it was asked. The summary is checked against the encoding by the verifier, never
trusted on its own. ``baas.consistency`` proves one anchor a prefix of another;
``baas.anchors`` links a run of consecutive anchors. The JSON formats are fixed by
``docs/verifiable-log.md``; every document here is built and read only through these classes.

Reading is strict because the reader is a user's verifier and the document is untrusted: any
unknown or missing field, wrong JSON type, hex of the wrong length or case, a non-checksummed
contract address, a duplicate key, or another ``format`` or ``version`` is
:class:`~node.errors.UnsupportedFormat` with a message naming the field. Writing is canonical
(``json.dumps(sort_keys=True, indent=2)`` plus a newline), so a document read and written again
is byte-identical and fixtures stay stable.

The builders (:func:`make_receipt`, :func:`make_consistency_doc`, :func:`make_anchor_chain_doc`)
take the proofs from a :class:`~node.merkle.tree.MerkleTree` and check them before handing a
document out: a receipt that would not verify is a bug here, never the user's problem.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, TypeVar

from eth_utils.address import is_checksum_address

from business.ledger.outcome import EVENTS_MAX, OperationOutcome
from node.errors import InvalidRequest, InvariantViolation, UnsupportedFormat
from node.merkle.leaf import LeafData
from node.merkle.tree import MerkleTree, leaf_hash, verify_consistency, verify_inclusion

__all__ = [
    "ANCHORS_FORMAT",
    "ANCHORS_MAX",
    "CONSISTENCY_FORMAT",
    "DOCUMENT_BYTES_MAX",
    "OUTCOME_BYTES_MAX",
    "PATH_LENGTH_MAX",
    "RECEIPT_FORMAT",
    "RECEIPT_VERSION_OPERATION",
    "VERSION",
    "AnchorChainDoc",
    "AnchorRef",
    "ConsistencyDoc",
    "Receipt",
    "make_anchor_chain_doc",
    "make_consistency_doc",
    "make_receipt",
]

RECEIPT_FORMAT = "baas.receipt"
CONSISTENCY_FORMAT = "baas.consistency"
ANCHORS_FORMAT = "baas.anchors"
VERSION = 1
RECEIPT_VERSION_OPERATION = 2  # a ledger operation's receipt: v1 plus its outcome
HASH_BYTES = 32
# A tree of fewer than 2**64 leaves has inclusion paths of at most 64 hashes and consistency
# paths of at most 2 * 64; anything longer is not a proof.
PATH_LENGTH_MAX = 128
ANCHORS_MAX = 100_000
LEAF_DATA_BYTES_MAX = 1 + 32 + 1 + 128 + 8 + 32 + 2 + 32 * 255 + 32 + 32
# An encoded outcome event is at most ~130 bytes (four 16-byte fields, a result code of at most
# 64 characters, integers); the outcome's header is a few bytes.
OUTCOME_BYTES_MAX = 64 + 160 * EVENTS_MAX
DOCUMENT_BYTES_MAX = 64 * 1024 * 1024
_U64_MAX = (1 << 64) - 1
_HEX_DIGITS = frozenset("0123456789abcdef")

Path = tuple[bytes, ...]
_T = TypeVar("_T")


@dataclass(frozen=True)
class AnchorRef:
    """One anchor as a document names it: the commitment and where the chain recorded it."""

    batch_id: int
    tree_size: int
    root: bytes
    chain_id: int
    contract: str
    tx_hash: bytes
    block_number: int
    block_hash: bytes

    def __post_init__(self) -> None:
        _check_u64(self.batch_id, "batch_id", minimum=1)
        _check_u64(self.tree_size, "tree_size", minimum=1)
        _check_u64(self.chain_id, "chain_id", minimum=1)
        _check_u64(self.block_number, "block_number")
        for name in ("root", "tx_hash", "block_hash"):
            _check_hash(getattr(self, name), name)
        if not isinstance(self.contract, str) or not is_checksum_address(self.contract):
            raise InvalidRequest("contract must be a checksummed 0x address")

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "tree_size": self.tree_size,
            "root": self.root.hex(),
            "chain_id": self.chain_id,
            "contract": self.contract,
            "tx_hash": "0x" + self.tx_hash.hex(),
            "block_number": self.block_number,
            "block_hash": "0x" + self.block_hash.hex(),
        }

    @classmethod
    def from_dict(cls, value: object, where: str) -> AnchorRef:
        fields = _object(value, where, _ANCHOR_FIELDS)
        address = fields["contract"]
        if not isinstance(address, str) or not is_checksum_address(address):
            raise UnsupportedFormat(f"{where}.contract must be a checksummed 0x address")
        return _build(
            where,
            lambda: cls(
                batch_id=_u64(fields, "batch_id", where),
                tree_size=_u64(fields, "tree_size", where),
                root=_hex(fields["root"], f"{where}.root", HASH_BYTES),
                chain_id=_u64(fields, "chain_id", where),
                contract=address,
                tx_hash=_eth_hash(fields["tx_hash"], f"{where}.tx_hash"),
                block_number=_u64(fields, "block_number", where),
                block_hash=_eth_hash(fields["block_hash"], f"{where}.block_hash"),
            ),
        )


_ANCHOR_FIELDS = (
    "batch_id",
    "tree_size",
    "root",
    "chain_id",
    "contract",
    "tx_hash",
    "block_number",
    "block_hash",
)


@dataclass(frozen=True)
class Receipt:
    """A receipt (``baas.receipt``): one leaf, its inclusion and its anchors; v2 (a ledger
    operation's) also carries the operation's encoded ``outcome`` and its ``outcome_summary``.

    ``outcome_summary`` is the document's own claim: :func:`make_receipt` writes
    ``OperationOutcome.summary()``; a verifier checks it against ``outcome``.
    """

    record_id: bytes
    leaf_index: int
    leaf_data: bytes
    inclusion_path: Path
    anchor: AnchorRef
    latest_anchor: AnchorRef
    consistency_path: Path
    outcome: bytes | None = None
    outcome_summary: Mapping[str, Any] | None = None

    @property
    def version(self) -> int:
        return VERSION if self.outcome is None else RECEIPT_VERSION_OPERATION

    def __post_init__(self) -> None:
        _check_hash(self.record_id, "record_id")
        _check_u64(self.leaf_index, "leaf_index")
        if not isinstance(self.leaf_data, bytes) or not self.leaf_data:
            raise InvalidRequest("leaf_data must be non-empty bytes")
        if len(self.leaf_data) > LEAF_DATA_BYTES_MAX:
            raise InvalidRequest(f"leaf_data is longer than {LEAF_DATA_BYTES_MAX} bytes")
        _check_path(self.inclusion_path, "inclusion_path")
        _check_path(self.consistency_path, "consistency_path")
        for name in ("anchor", "latest_anchor"):
            if not isinstance(getattr(self, name), AnchorRef):
                raise InvalidRequest(f"{name} must be an AnchorRef")
        if (self.outcome is None) != (self.outcome_summary is None):
            raise InvalidRequest("outcome and outcome_summary go together (receipt v2)")
        if self.outcome is not None:
            if not isinstance(self.outcome, bytes) or not self.outcome:
                raise InvalidRequest("outcome must be non-empty bytes")
            if len(self.outcome) > OUTCOME_BYTES_MAX:
                raise InvalidRequest(f"outcome is longer than {OUTCOME_BYTES_MAX} bytes")
            if not isinstance(self.outcome_summary, Mapping):
                raise InvalidRequest("outcome_summary must be a mapping")

    def to_json(self) -> str:
        document = {
            "format": RECEIPT_FORMAT,
            "version": self.version,
            "record_id": self.record_id.hex(),
            "leaf_index": self.leaf_index,
            "leaf_data": self.leaf_data.hex(),
            "inclusion_path": [p.hex() for p in self.inclusion_path],
            "anchor": self.anchor.to_dict(),
            "latest_anchor": self.latest_anchor.to_dict(),
            "consistency_path": [p.hex() for p in self.consistency_path],
        }
        if self.outcome is not None:
            document["outcome"] = self.outcome.hex()
            document["outcome_summary"] = self.outcome_summary
        return _dump(document)

    @classmethod
    def from_json(cls, text: str | bytes) -> Receipt:
        fields = _document(text, RECEIPT_FORMAT, _RECEIPT_FIELDS)
        outcome = summary = None
        if fields["version"] == RECEIPT_VERSION_OPERATION:
            outcome = _hex(fields["outcome"], "outcome", None)
            summary = fields["outcome_summary"]
            if not isinstance(summary, dict):
                raise UnsupportedFormat("outcome_summary must be an object")
        return _build(
            "receipt",
            lambda: cls(
                record_id=_hex(fields["record_id"], "record_id", HASH_BYTES),
                leaf_index=_u64(fields, "leaf_index", None),
                leaf_data=_hex(fields["leaf_data"], "leaf_data", None),
                inclusion_path=_path(fields["inclusion_path"], "inclusion_path"),
                anchor=AnchorRef.from_dict(fields["anchor"], "anchor"),
                latest_anchor=AnchorRef.from_dict(fields["latest_anchor"], "latest_anchor"),
                consistency_path=_path(fields["consistency_path"], "consistency_path"),
                outcome=outcome,
                outcome_summary=summary,
            ),
        )


_RECEIPT_V1_FIELDS = (
    "format",
    "version",
    "record_id",
    "leaf_index",
    "leaf_data",
    "inclusion_path",
    "anchor",
    "latest_anchor",
    "consistency_path",
)
# The fields of each receipt version.
_RECEIPT_FIELDS = {
    VERSION: _RECEIPT_V1_FIELDS,
    RECEIPT_VERSION_OPERATION: (*_RECEIPT_V1_FIELDS, "outcome", "outcome_summary"),
}


@dataclass(frozen=True)
class ConsistencyDoc:
    """``baas.consistency`` v1: the tree at ``from_anchor`` is a prefix of ``to_anchor``'s."""

    from_anchor: AnchorRef
    to_anchor: AnchorRef
    consistency_path: Path

    def __post_init__(self) -> None:
        _check_path(self.consistency_path, "consistency_path")

    def to_json(self) -> str:
        return _dump(
            {
                "format": CONSISTENCY_FORMAT,
                "version": VERSION,
                "from": self.from_anchor.to_dict(),
                "to": self.to_anchor.to_dict(),
                "consistency_path": [p.hex() for p in self.consistency_path],
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ConsistencyDoc:
        fields = _document(text, CONSISTENCY_FORMAT, _CONSISTENCY_FIELDS)
        return _build(
            "consistency",
            lambda: cls(
                from_anchor=AnchorRef.from_dict(fields["from"], "from"),
                to_anchor=AnchorRef.from_dict(fields["to"], "to"),
                consistency_path=_path(fields["consistency_path"], "consistency_path"),
            ),
        )


_CONSISTENCY_FIELDS = {VERSION: ("format", "version", "from", "to", "consistency_path")}


@dataclass(frozen=True)
class AnchorChainDoc:
    """``baas.anchors`` v1: ``consistency_paths[i]`` links ``anchors[i]`` to ``anchors[i+1]``."""

    anchors: tuple[AnchorRef, ...]
    consistency_paths: tuple[Path, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.anchors, tuple) or not 1 <= len(self.anchors) <= ANCHORS_MAX:
            raise InvalidRequest(f"anchors must hold 1..{ANCHORS_MAX} anchors")
        if not isinstance(self.consistency_paths, tuple):
            raise InvalidRequest("consistency_paths must be a tuple")
        if len(self.consistency_paths) != len(self.anchors) - 1:
            raise InvalidRequest(
                f"consistency_paths must hold {len(self.anchors) - 1} paths (one per link), "
                f"not {len(self.consistency_paths)}"
            )
        for i, path in enumerate(self.consistency_paths):
            _check_path(path, f"consistency_paths[{i}]")

    def to_json(self) -> str:
        return _dump(
            {
                "format": ANCHORS_FORMAT,
                "version": VERSION,
                "anchors": [a.to_dict() for a in self.anchors],
                "consistency_paths": [[p.hex() for p in path] for path in self.consistency_paths],
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> AnchorChainDoc:
        fields = _document(text, ANCHORS_FORMAT, _ANCHORS_FIELDS)
        anchors = _list(fields["anchors"], "anchors", ANCHORS_MAX)
        paths = _list(fields["consistency_paths"], "consistency_paths", ANCHORS_MAX)
        return _build(
            "anchors",
            lambda: cls(
                anchors=tuple(
                    AnchorRef.from_dict(a, f"anchors[{i}]") for i, a in enumerate(anchors)
                ),
                consistency_paths=tuple(
                    _path(p, f"consistency_paths[{i}]") for i, p in enumerate(paths)
                ),
            ),
        )


_ANCHORS_FIELDS = {VERSION: ("format", "version", "anchors", "consistency_paths")}


def make_receipt(
    tree: MerkleTree,
    leaf_index: int,
    leaf_data: bytes,
    anchor: AnchorRef,
    latest: AnchorRef,
    outcome: bytes | None = None,
) -> Receipt:
    """The receipt of leaf ``leaf_index`` (``leaf_data``) under ``anchor``, linked to ``latest``.

    ``anchor`` should be the first anchor covering the leaf. Both roots and both proofs are
    checked against ``tree`` before the receipt is handed out. A v2 leaf (a ledger
    operation's) needs the operation's encoded ``outcome``, which must be the one whose digest
    and log time the leaf holds (the receipt is then v2); a v1 leaf takes none.
    """
    record = LeafData.decode(leaf_data)
    summary = _outcome_summary(record, outcome)
    _check_anchor_root(tree, anchor)
    _check_anchor_root(tree, latest)
    path = tuple(tree.inclusion_proof(leaf_index, anchor.tree_size))
    if not verify_inclusion(leaf_hash(leaf_data), leaf_index, anchor.tree_size, path, anchor.root):
        raise InvariantViolation(f"leaf {leaf_index} is not the given leaf data")
    return Receipt(
        record_id=record.record_id,
        leaf_index=leaf_index,
        leaf_data=leaf_data,
        inclusion_path=path,
        anchor=anchor,
        latest_anchor=latest,
        consistency_path=_consistency(tree, anchor, latest),
        outcome=outcome,
        outcome_summary=summary,
    )


def _outcome_summary(leaf: LeafData, outcome: bytes | None) -> dict[str, Any] | None:
    """The summary of ``outcome`` once it is checked to be the one ``leaf`` commits to."""
    name = leaf.record_id.hex()
    if leaf.outcome_digest is None:
        if outcome is not None:
            raise InvariantViolation(f"record {name} has a v1 leaf: its receipt has no outcome")
        return None
    if outcome is None:
        raise InvariantViolation(f"record {name} is an operation (leaf v2): its outcome is needed")
    try:
        decoded = OperationOutcome.decode(outcome)
    except UnsupportedFormat as exc:
        raise InvariantViolation(f"record {name}: its stored outcome is bad: {exc.detail}") from exc
    if decoded.digest() != leaf.outcome_digest:
        raise InvariantViolation(f"record {name}: the outcome is not the one its leaf holds")
    if decoded.log_time_ms != leaf.committed_at_ms:
        raise InvariantViolation(f"record {name}: the outcome's log time is not the leaf's")
    return decoded.summary()


def make_consistency_doc(tree: MerkleTree, old: AnchorRef, new: AnchorRef) -> ConsistencyDoc:
    """Proof that ``old``'s tree is a prefix of ``new``'s, checked against ``tree``."""
    _check_anchor_root(tree, old)
    _check_anchor_root(tree, new)
    return ConsistencyDoc(old, new, _consistency(tree, old, new))


def make_anchor_chain_doc(tree: MerkleTree, anchors: Sequence[AnchorRef]) -> AnchorChainDoc:
    """A run of anchors, each linked to the next by a consistency path from ``tree``."""
    for anchor in anchors:
        _check_anchor_root(tree, anchor)
    paths = tuple(_consistency(tree, a, b) for a, b in pairwise(anchors))
    return AnchorChainDoc(tuple(anchors), paths)


def _consistency(tree: MerkleTree, old: AnchorRef, new: AnchorRef) -> Path:
    if old.tree_size > new.tree_size:
        raise InvalidRequest(f"anchor {old.batch_id} is larger than anchor {new.batch_id}")
    path = tuple(tree.consistency_proof(old.tree_size, new.tree_size))
    if not verify_consistency(old.tree_size, new.tree_size, path, old.root, new.root):
        raise InvariantViolation(f"anchors {old.batch_id} and {new.batch_id} are not consistent")
    return path


def _check_anchor_root(tree: MerkleTree, anchor: AnchorRef) -> None:
    if tree.root(anchor.tree_size) != anchor.root:
        raise InvariantViolation(
            f"anchor {anchor.batch_id} does not carry this tree's root at {anchor.tree_size}"
        )


# -- strict JSON reading ---------------------------------------------------------------------


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, indent=2) + "\n"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise UnsupportedFormat(f"field {key!r} appears twice")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise UnsupportedFormat(f"{name} is not JSON")


def _document(
    text: str | bytes, expected: str, names: Mapping[int, tuple[str, ...]]
) -> dict[str, Any]:
    """The document's fields, checked against the field names of its version in ``names``."""
    if len(text) > DOCUMENT_BYTES_MAX:
        raise UnsupportedFormat(f"the document is larger than {DOCUMENT_BYTES_MAX} bytes")
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise UnsupportedFormat(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UnsupportedFormat("the document must be a JSON object")
    if value.get("format") != expected:
        raise UnsupportedFormat(f"format {value.get('format')!r} is not {expected!r}")
    version = value.get("version")
    if type(version) is not int or version not in names:
        raise UnsupportedFormat(f"version {version!r} of {expected} is not supported")
    return _object(value, f"{expected} v{version}", names[version])


def _object(value: object, where: str, names: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnsupportedFormat(f"{where} must be an object")
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise UnsupportedFormat(f"{where} has unknown field {unknown[0]!r}")
    missing = [n for n in names if n not in value]
    if missing:
        raise UnsupportedFormat(f"{where} lacks field {missing[0]!r}")
    return value


def _u64(fields: dict[str, Any], key: str, where: str | None) -> int:
    value = fields[key]
    name = key if where is None else f"{where}.{key}"
    if type(value) is not int or not 0 <= value <= _U64_MAX:
        raise UnsupportedFormat(f"{name} must be an unsigned 64-bit integer")
    return value


def _hex(value: object, name: str, nbytes: int | None) -> bytes:
    if not isinstance(value, str):
        raise UnsupportedFormat(f"{name} must be a hex string")
    if nbytes is not None and len(value) != 2 * nbytes:
        raise UnsupportedFormat(f"{name} must be {2 * nbytes} hex digits, not {len(value)}")
    if len(value) % 2 or not _HEX_DIGITS.issuperset(value):
        raise UnsupportedFormat(f"{name} must be lower-case hex without 0x")
    return bytes.fromhex(value)


def _eth_hash(value: object, name: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise UnsupportedFormat(f"{name} must be 0x and 64 lower-case hex digits")
    return _hex(value[2:], name, HASH_BYTES)


def _list(value: object, name: str, length_max: int) -> list[Any]:
    if not isinstance(value, list):
        raise UnsupportedFormat(f"{name} must be a list")
    if len(value) > length_max:
        raise UnsupportedFormat(f"{name} holds more than {length_max} entries")
    return value


def _path(value: object, name: str) -> Path:
    items = _list(value, name, PATH_LENGTH_MAX)
    return tuple(_hex(h, f"{name}[{i}]", HASH_BYTES) for i, h in enumerate(items))


def _build(where: str, construct: Callable[[], _T]) -> _T:
    """Run a constructor; its InvalidRequest (a value out of range) is the document's fault."""
    try:
        return construct()
    except InvalidRequest as exc:
        raise UnsupportedFormat(f"{where}: {exc.detail}") from exc


def _check_u64(value: object, name: str, minimum: int = 0) -> None:
    if type(value) is not int or not minimum <= value <= _U64_MAX:
        raise InvalidRequest(f"{name} must be an integer in {minimum}..2**64-1")


def _check_hash(value: object, name: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_BYTES:
        raise InvalidRequest(f"{name} must be {HASH_BYTES} bytes")


def _check_path(path: object, name: str) -> None:
    if not isinstance(path, tuple) or len(path) > PATH_LENGTH_MAX:
        raise InvalidRequest(f"{name} must be a tuple of at most {PATH_LENGTH_MAX} hashes")
    for i, item in enumerate(path):
        _check_hash(item, f"{name}[{i}]")
