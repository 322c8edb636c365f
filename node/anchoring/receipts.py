"""Receipts and anchor documents, assembled from a node's applied state.

Any node can answer: the Merkle log (:mod:`node.merkle.log`) and the anchoring state
(:mod:`node.anchoring.state`) are replicated state. Anchors are read before proofs; proofs are
built at the anchors' tree sizes, which later appends never change, so a receipt is consistent
even while the log grows underneath. Only anchors mined with status 1 (included or final) are
named; a receipt is not final until ``baas-verify`` has counted its confirmations on the chain.

A ledger operation's leaf is v2 and so is its receipt, which carries the operation's outcome.
The outcome is the ledger's state, not the Merkle log's: :func:`receipt_for` reads it through
an :data:`OutcomeLookup` (record id -> encoded outcome, or None) that the caller binds to the
same state view, so where the ledger keeps it is the ledger's business.
"""

from __future__ import annotations

from collections.abc import Callable

from eth_utils.address import to_checksum_address

from node.anchoring.state import Batch, batch, first_anchor_covering, latest_anchored
from node.consensus.state_machine import StateView
from node.errors import InvalidRequest, InvariantViolation, NotFound, OperationFailed
from node.merkle.leaf import LeafData
from node.merkle.log import MerkleReader
from node.merkle.receipt import (
    AnchorChainDoc,
    AnchorRef,
    ConsistencyDoc,
    Receipt,
    make_anchor_chain_doc,
    make_consistency_doc,
    make_receipt,
)

__all__ = [
    "OutcomeLookup",
    "ReceiptNotReady",
    "anchor_chain_doc",
    "anchor_ref",
    "consistency_doc",
    "receipt_for",
]

OutcomeLookup = Callable[[bytes], bytes | None]
"""``record id -> the encoded OperationOutcome of its operation``, None when it has none."""


class ReceiptNotReady(OperationFailed):
    """The record is in the log, but no anchor covering it is on the chain yet."""

    http_status = 409

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code="receipt_not_ready")


def anchor_ref(anchored: Batch) -> AnchorRef:
    inclusion = anchored.inclusion
    if inclusion is None or not anchored.anchored:
        raise ReceiptNotReady(f"batch {anchored.batch_id} is not on the chain")
    return AnchorRef(
        batch_id=anchored.batch_id,
        tree_size=anchored.tree_size,
        root=anchored.root,
        chain_id=inclusion.chain_id,
        contract=to_checksum_address(inclusion.contract),
        tx_hash=anchored.tx_hash,
        block_number=inclusion.block_number,
        block_hash=inclusion.block_hash,
    )


def receipt_for(
    view: StateView, record_id: bytes, outcomes: OutcomeLookup | None = None
) -> Receipt:
    """The receipt of ``record_id``: its leaf under the first anchor covering it, linked by a
    consistency proof to the latest anchor; v2, with the operation's outcome from
    ``outcomes``, when the leaf is an operation's (v2)."""
    reader = MerkleReader(view)
    leaf = reader.leaf_of(record_id)  # NotFound: not (yet) in the log on this node
    latest = latest_anchored(view)
    covering = first_anchor_covering(view, leaf.index)
    if latest is None or covering is None:
        raise ReceiptNotReady("the record is in the log; its anchor is not on the chain yet")
    outcome = None
    if LeafData.decode(leaf.data).outcome_digest is not None:
        # The ledger wrote the outcome in the same apply batch as the leaf: if this view has
        # the leaf, it has the outcome.
        outcome = outcomes(record_id) if outcomes is not None else None
        if outcome is None:
            raise InvariantViolation(f"record {record_id.hex()} is an operation without outcome")
    return make_receipt(
        reader.tree(), leaf.index, leaf.data, anchor_ref(covering), anchor_ref(latest), outcome
    )


def _anchored_batch(view: StateView, batch_id: int) -> Batch:
    found = batch(view, batch_id)
    if found is None:
        raise NotFound(f"no anchor batch {batch_id}", code="anchor_not_found")
    if not found.anchored:
        raise ReceiptNotReady(f"batch {batch_id} is not on the chain")
    return found


def consistency_doc(view: StateView, from_batch: int, to_batch: int) -> ConsistencyDoc:
    if from_batch > to_batch:
        raise InvalidRequest("from must not be after to", code="invalid_range")
    old, new = _anchored_batch(view, from_batch), _anchored_batch(view, to_batch)
    return make_consistency_doc(MerkleReader(view).tree(), anchor_ref(old), anchor_ref(new))


def anchor_chain_doc(view: StateView, from_batch: int, limit: int) -> AnchorChainDoc:
    """Anchored batches from ``from_batch`` on (at most ``limit``), each linked to the next;
    stops at the first batch not on the chain."""
    refs: list[AnchorRef] = []
    for batch_id in range(max(from_batch, 1), max(from_batch, 1) + limit):
        found = batch(view, batch_id)
        if found is None or not found.anchored:
            break
        refs.append(anchor_ref(found))
    if not refs:
        raise ReceiptNotReady(f"no anchor on the chain from batch {from_batch}")
    return make_anchor_chain_doc(MerkleReader(view).tree(), refs)
