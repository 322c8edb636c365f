"""What ``baas-verify`` checks: receipts, consistency documents and anchor chains, step by step.

Each check is a named :class:`Step` with an outcome and a human-readable detail; the names are
stable (scripts and the docs refer to them). Verification goes on past a failed step wherever
the next step still means something (a wrong record id does not stop the inclusion check), so a
user sees everything that is wrong at once; the verdict fails if any step fails, and the first
failed step is the one ``baas-verify`` names.

Receipt steps, in order: ``receipt format``, ``leaf data``, ``record id``, ``plaintext
commitment`` (only with the record and its salt), ``inclusion in anchored root``, ``anchor on
chain``, ``anchor transaction``, ``confirmations``, ``latest anchor on chain``, ``consistency
with latest anchor``. ``confirmations`` is the one step that may be *pending* rather than
failed: everything holds but the anchoring block has fewer confirmations than asked.

A v2 receipt (a ledger operation's) holds leaf data v2, and after ``plaintext commitment`` has
two more steps: ``outcome decodes`` (the outcome is a canonical
:class:`~business.ledger.outcome.OperationOutcome` and the receipt's ``outcome_summary`` is
exactly its summary; the step's lines show the executed operation, one event a line) and
``outcome digest in leaf`` (its digest is the leaf's, and its log time the leaf's commit
time). So once the inclusion and anchor steps hold, the chain vouches for what was executed.

The Merkle and commitment checks are pure. The chain is read through :class:`ChainReader`
(implemented over web3 by :class:`node.anchoring.registry.RegistryReader`, by fakes in tests);
a reader bound to one contract raises :class:`~node.errors.BaasError` subclasses only, and a
failed chain read fails its step without a stack trace. The user trusts the chain and, through
``contract``, the contract address; nothing our servers say.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol, TypeVar

import rfc8785

from business.ledger.outcome import (
    KIND_ACCOUNT,
    KIND_TRANSFER,
    EventOutcome,
    OperationOutcome,
)
from node.errors import BaasError, UnsupportedFormat
from node.merkle.leaf import SALT_BYTES, LeafData, plaintext_commitment
from node.merkle.receipt import AnchorChainDoc, AnchorRef, ConsistencyDoc, Receipt
from node.merkle.tree import leaf_hash, verify_consistency, verify_inclusion

__all__ = [
    "AnchoredEvent",
    "ChainReader",
    "MinedAnchorTx",
    "OnChainAnchor",
    "Outcome",
    "Step",
    "Verdict",
    "verify_anchor_chain",
    "verify_consistency_doc",
    "verify_receipt",
]

_Doc = TypeVar("_Doc", Receipt, ConsistencyDoc, AnchorChainDoc)


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    PENDING = "pending"  # holds, but not final yet (confirmations)
    SKIPPED = "skipped"  # not checked: nothing to check, or what it needs already failed


@dataclass(frozen=True)
class Step:
    name: str
    outcome: Outcome
    detail: str = ""
    lines: tuple[str, ...] = ()  # more to show under the step (an operation's events)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


@dataclass(frozen=True)
class Verdict:
    """Every step that ran, in order."""

    steps: tuple[Step, ...]

    @property
    def first_failure(self) -> Step | None:
        return next((s for s in self.steps if s.outcome is Outcome.FAILED), None)

    @property
    def pending(self) -> bool:
        return any(s.outcome is Outcome.PENDING for s in self.steps)

    @property
    def ok(self) -> bool:
        """Everything holds and is final."""
        return self.first_failure is None and not self.pending

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


# -- what the chain says ---------------------------------------------------------------------


@dataclass(frozen=True)
class OnChainAnchor:
    """``anchorOf(batchId)`` of the contract."""

    tree_size: int
    root: bytes
    block_number: int


@dataclass(frozen=True)
class AnchoredEvent:
    """One ``Anchored(batchId, root, treeSize)`` event the contract emitted."""

    batch_id: int
    root: bytes
    tree_size: int


@dataclass(frozen=True)
class MinedAnchorTx:
    """A mined transaction as its receipt tells: where it is, whether it succeeded, the
    contract's events in it.

    Not the node's :class:`node.anchoring.driver.TxInclusion`: that one is a receipt position
    the adapter has already checked to be canonical, and carries no events; this one is what a
    verifier read, unjudged, with the events it checks (``_transaction_problem`` checks the
    block hash against the canonical chain itself)."""

    block_number: int
    block_hash: bytes
    status: int
    events: tuple[AnchoredEvent, ...]


class ChainReader(Protocol):
    """Reads of one chain and one AnchorRegistry contract. Errors are BaasError subclasses."""

    @property
    def contract(self) -> str:
        """The checksummed address of the contract read."""
        ...

    def chain_id(self) -> int: ...

    def anchor_of(self, batch_id: int) -> OnChainAnchor | None:
        """The contract's anchor of ``batch_id``, None when it has none."""
        ...

    def next_batch_id(self) -> int: ...

    def tx_inclusion(self, tx_hash: bytes) -> MinedAnchorTx | None:
        """The mined transaction with its Anchored events (this contract's only), or None."""
        ...

    def head(self) -> int:
        """The number of the newest block."""
        ...

    def block_hash(self, number: int) -> bytes | None:
        """The hash of canonical block ``number``, None beyond the head."""
        ...


# -- the steps -------------------------------------------------------------------------------


_NOT_READ = "not checked: the chain could not be read"


class _Run:
    """Collects steps; after a chain read fails, later chain steps are skipped, not repeated."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.chain_failed = False

    def add(
        self, name: str, problem: str | None, detail: str = "", lines: tuple[str, ...] = ()
    ) -> bool:
        if problem is None:
            self.steps.append(Step(name, Outcome.OK, detail, lines))
            return True
        self.steps.append(Step(name, Outcome.FAILED, problem))
        return False

    def skip(self, name: str, why: str) -> None:
        self.steps.append(Step(name, Outcome.SKIPPED, why))

    def chain(self, name: str, check: Callable[[], tuple[str | None, str]]) -> bool:
        """A step that reads the chain: ``check`` returns (problem or None, detail if ok)."""
        if self.chain_failed:
            self.skip(name, _NOT_READ)
            return False
        try:
            problem, detail = check()
        except BaasError as exc:
            self.chain_failed = True
            problem, detail = exc.detail, ""
        return self.add(name, problem, detail)

    def verdict(self) -> Verdict:
        return Verdict(tuple(self.steps))


def _parse(
    run: _Run, name: str, parse: Callable[[str | bytes], _Doc], doc: _Doc | str | bytes
) -> _Doc | None:
    if not isinstance(doc, str | bytes):
        run.add(name, None)
        return doc
    try:
        parsed = parse(doc)
    except UnsupportedFormat as exc:
        run.add(name, exc.detail)
        return None
    run.add(name, None)
    return parsed


def verify_receipt(
    receipt: Receipt | str | bytes,
    chain: ChainReader,
    *,
    record_json: bytes | None = None,
    salt: bytes | None = None,
    confirmations: int = 1,
) -> Verdict:
    """Check a receipt (parsed, or its JSON text) against the chain; see the module docstring.

    With ``record_json`` (the record as the user has it, any JSON layout) and its ``salt``, the
    leaf's plaintext commitment is checked too.
    """
    run = _Run()
    parsed = _parse(run, "receipt format", Receipt.from_json, receipt)
    if parsed is None:
        return run.verdict()
    leaf = _leaf_step(run, parsed)
    if leaf is None:
        run.skip("record id", "not checked: no leaf data")
    else:
        run.add("record id", _record_id_problem(parsed, leaf), parsed.record_id.hex())
    _plaintext_step(run, leaf, record_json, salt)
    if parsed.outcome is not None:
        _outcome_steps(run, parsed, leaf)
    anchor, latest = parsed.anchor, parsed.latest_anchor
    run.add(
        "inclusion in anchored root",
        _inclusion_problem(parsed),
        f"leaf {parsed.leaf_index} of {anchor.tree_size}",
    )
    run.chain(
        "anchor on chain",
        lambda: (
            _anchor_problem(anchor, chain),
            f"batch {anchor.batch_id} in contract {anchor.contract} on chain {anchor.chain_id}",
        ),
    )
    run.chain(
        "anchor transaction",
        lambda: (
            _transaction_problem(anchor, chain),
            f"{_hex0x(anchor.tx_hash)} in block {anchor.block_number}",
        ),
    )
    _confirmations_step(run, anchor, chain, confirmations)
    run.chain("latest anchor on chain", lambda: _latest_check(latest, chain))
    _link_step(run, "consistency with latest anchor", anchor, latest, parsed.consistency_path)
    return run.verdict()


def verify_consistency_doc(doc: ConsistencyDoc | str | bytes, chain: ChainReader) -> Verdict:
    """Check a ``baas.consistency`` document: both anchors on chain, the path between them."""
    run = _Run()
    parsed = _parse(run, "consistency format", ConsistencyDoc.from_json, doc)
    if parsed is None:
        return run.verdict()
    old, new = parsed.from_anchor, parsed.to_anchor
    run.chain("from anchor on chain", lambda: _on_chain_check(old, chain))
    run.chain("to anchor on chain", lambda: _on_chain_check(new, chain))
    _link_step(run, "consistency", old, new, parsed.consistency_path)
    return run.verdict()


def verify_anchor_chain(doc: AnchorChainDoc | str | bytes, chain: ChainReader) -> Verdict:
    """Check a ``baas.anchors`` document: consecutive batches, growing trees, every anchor on
    chain with its transaction and event, every link's consistency path; and say whether the
    contract holds anchors after the document's last."""
    run = _Run()
    parsed = _parse(run, "anchors format", AnchorChainDoc.from_json, doc)
    if parsed is None:
        return run.verdict()
    anchors = parsed.anchors
    first, last = anchors[0], anchors[-1]
    run.add(
        "batch sequence",
        _sequence_problem(anchors),
        f"batches {first.batch_id}..{last.batch_id}, trees of {first.tree_size}.."
        f"{last.tree_size} leaves",
    )
    run.chain(
        "anchors on chain",
        lambda: (
            _first(lambda a: _on_chain_check(a, chain)[0], anchors),
            f"{len(anchors)} anchors with their transactions",
        ),
    )
    run.add(
        "consistency paths",
        _first_link_problem(anchors, parsed.consistency_paths),
        f"{len(anchors) - 1} links",
    )
    run.chain("later anchors", lambda: (None, _later_anchors(last, chain) or "none"))
    return run.verdict()


def _leaf_step(run: _Run, receipt: Receipt) -> LeafData | None:
    try:
        leaf = LeafData.decode(receipt.leaf_data)
    except UnsupportedFormat as exc:
        run.add("leaf data", exc.detail)
        return None
    if leaf.version != receipt.version:  # an operation's leaf is v2 and so is its receipt
        run.add("leaf data", f"a v{receipt.version} receipt holds leaf data v{leaf.version}")
        return None
    kind = ", an operation's (v2)" if leaf.outcome_digest is not None else ""
    run.add("leaf data", None, f"owner {leaf.owner!r}, k={leaf.k} of n={leaf.n} shards{kind}")
    return leaf


def _outcome_steps(run: _Run, receipt: Receipt, leaf: LeafData | None) -> None:
    """``outcome decodes`` and ``outcome digest in leaf`` of a v2 receipt."""
    assert receipt.outcome is not None
    try:
        outcome = OperationOutcome.decode(receipt.outcome)
    except UnsupportedFormat as exc:
        run.add("outcome decodes", exc.detail)
        run.skip("outcome digest in leaf", "not checked: no outcome")
        return
    if outcome.summary() != receipt.outcome_summary:
        problem = "the receipt's outcome_summary is not what its outcome says"
        run.add("outcome decodes", problem)
    else:
        detail = f"{len(outcome.events)} events at log time {outcome.log_time_ms} ms"
        run.add("outcome decodes", None, detail, _operation_lines(outcome))
    if leaf is None:
        run.skip("outcome digest in leaf", "not checked: no leaf data")
        return
    run.add("outcome digest in leaf", _outcome_problem(outcome, leaf), outcome.digest().hex())


def _outcome_problem(outcome: OperationOutcome, leaf: LeafData) -> str | None:
    if outcome.digest() != leaf.outcome_digest:
        return f"the outcome's digest {outcome.digest().hex()} is not the one in the leaf"
    if outcome.log_time_ms != leaf.committed_at_ms:
        return (
            f"the outcome's log time {outcome.log_time_ms} ms is not the leaf's commit time "
            f"{leaf.committed_at_ms} ms"
        )
    return None


def _operation_lines(outcome: OperationOutcome) -> tuple[str, ...]:
    """The executed operation, one event a line (ids and amounts in the ledger's integers)."""
    return tuple(_event_line(e, outcome.log_time_ms) for e in outcome.events)


def _event_line(event: EventOutcome, log_time_ms: int) -> str:
    if event.kind == KIND_TRANSFER:
        what = (
            f"transfer {event.id}: debit account {event.debit_account_id} -> credit account "
            f"{event.credit_account_id}, ledger {event.ledger}, amount {event.amount}"
        )
    elif event.kind == KIND_ACCOUNT:
        what = f"account {event.id}: ledger {event.ledger}"
    else:  # an asset's id is its ledger number
        what = f"asset: ledger {event.ledger}"
    return f"{what}: {event.result} (log time {log_time_ms} ms)"


def _record_id_problem(receipt: Receipt, leaf: LeafData) -> str | None:
    if leaf.record_id != receipt.record_id:
        return f"the leaf is record {leaf.record_id.hex()}, not {receipt.record_id.hex()}"
    return None


def _plaintext_step(
    run: _Run, leaf: LeafData | None, record_json: bytes | None, salt: bytes | None
) -> None:
    name = "plaintext commitment"
    if record_json is None and salt is None:
        run.skip(name, "not checked: no record and salt given")
        return
    if record_json is None or salt is None:
        run.add(name, "the record and its salt are checked together; one of them is missing")
        return
    if len(salt) != SALT_BYTES:
        run.add(name, f"the salt is {len(salt)} bytes, not {SALT_BYTES}")
        return
    try:
        canonical = _canonical(record_json)
    except UnsupportedFormat as exc:
        run.add(name, exc.detail)
        return
    if leaf is None:
        run.skip(name, "not checked: no leaf data")
        return
    if plaintext_commitment(salt, canonical) != leaf.plaintext_commitment:
        run.add(name, "the record and salt do not match the leaf's commitment")
        return
    run.add(name, None, "the record and salt match the leaf")


def _canonical(record_json: bytes) -> bytes:
    """The RFC 8785 form of the record, as the gateway encrypts and commits it."""
    try:
        record = json.loads(
            record_json, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant
        )
    except (ValueError, RecursionError) as exc:
        raise UnsupportedFormat(f"the record is not JSON: {exc}") from exc
    try:
        return rfc8785.dumps(record)
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        raise UnsupportedFormat(f"the record cannot be canonicalized: {exc}") from exc


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise UnsupportedFormat("the record has a duplicate key")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise UnsupportedFormat(f"the record holds {name}, which is not JSON")


def _inclusion_problem(receipt: Receipt) -> str | None:
    anchor = receipt.anchor
    if not verify_inclusion(
        leaf_hash(receipt.leaf_data),
        receipt.leaf_index,
        anchor.tree_size,
        receipt.inclusion_path,
        anchor.root,
    ):
        return (
            f"the inclusion path does not lead from leaf {receipt.leaf_index} to root "
            f"{anchor.root.hex()} of {anchor.tree_size} leaves"
        )
    return None


def _anchor_problem(anchor: AnchorRef, chain: ChainReader) -> str | None:
    if anchor.contract != chain.contract:
        return f"batch {anchor.batch_id} names contract {anchor.contract}, not {chain.contract}"
    chain_id = chain.chain_id()
    if chain_id != anchor.chain_id:
        return f"batch {anchor.batch_id} names chain {anchor.chain_id}; the RPC is chain {chain_id}"
    found = chain.anchor_of(anchor.batch_id)
    if found is None:
        return f"the contract has no batch {anchor.batch_id}"
    if (found.tree_size, found.root) != (anchor.tree_size, anchor.root):
        return (
            f"the contract's batch {anchor.batch_id} is root {found.root.hex()} of "
            f"{found.tree_size} leaves, not root {anchor.root.hex()} of {anchor.tree_size}"
        )
    if found.block_number != anchor.block_number:
        return (
            f"the contract recorded batch {anchor.batch_id} in block {found.block_number}, "
            f"not {anchor.block_number}"
        )
    return None


def _transaction_problem(anchor: AnchorRef, chain: ChainReader) -> str | None:
    tx = _hex0x(anchor.tx_hash)
    found = chain.tx_inclusion(anchor.tx_hash)
    if found is None:
        return f"transaction {tx} is not on the chain"
    if found.status != 1:
        return f"transaction {tx} failed (status {found.status})"
    if (found.block_number, found.block_hash) != (anchor.block_number, anchor.block_hash):
        return (
            f"transaction {tx} is in block {found.block_number} {_hex0x(found.block_hash)}, "
            f"not {anchor.block_number} {_hex0x(anchor.block_hash)}"
        )
    if AnchoredEvent(anchor.batch_id, anchor.root, anchor.tree_size) not in found.events:
        return (
            f"transaction {tx} emitted no Anchored(batch {anchor.batch_id}, root "
            f"{anchor.root.hex()}, {anchor.tree_size} leaves) from {chain.contract}"
        )
    canonical = chain.block_hash(anchor.block_number)
    if canonical != anchor.block_hash:
        return f"block {anchor.block_number} is no longer {_hex0x(anchor.block_hash)}"
    return None


def _confirmations_step(run: _Run, anchor: AnchorRef, chain: ChainReader, wanted: int) -> None:
    name = "confirmations"
    if run.chain_failed:
        run.skip(name, _NOT_READ)
        return
    try:
        head = chain.head()
    except BaasError as exc:
        run.chain_failed = True
        run.add(name, exc.detail)
        return
    have = max(0, head - anchor.block_number + 1)
    detail = f"{have} confirmations, {wanted} asked"
    if have >= wanted:
        run.add(name, None, detail)
    else:
        run.steps.append(Step(name, Outcome.PENDING, f"not final yet: {detail}"))


def _on_chain_check(anchor: AnchorRef, chain: ChainReader) -> tuple[str | None, str]:
    """The anchor is the contract's, and its transaction mined it (event, block) canonically."""
    problem = _anchor_problem(anchor, chain) or _transaction_problem(anchor, chain)
    return problem, f"batch {anchor.batch_id}, {_hex0x(anchor.tx_hash)}"


def _latest_check(latest: AnchorRef, chain: ChainReader) -> tuple[str | None, str]:
    problem, detail = _on_chain_check(latest, chain)
    if problem is None:
        later = _later_anchors(latest, chain)
        detail = detail if later is None else f"{detail}; {later}"
    return problem, detail


def _later_anchors(last: AnchorRef, chain: ChainReader) -> str | None:
    """Informational: a newer anchor exists (a newer receipt or chain document can be had)."""
    next_id = chain.next_batch_id()
    if next_id > last.batch_id + 1:
        return (
            f"the contract holds {next_id - 1 - last.batch_id} later anchors "
            f"(batches {last.batch_id + 1}..{next_id - 1})"
        )
    return None


def _link_step(run: _Run, name: str, old: AnchorRef, new: AnchorRef, path: Sequence[bytes]) -> None:
    detail = f"tree of {old.tree_size} is a prefix of the tree of {new.tree_size}"
    run.add(name, _link_problem(old, new, path), detail)


def _link_problem(old: AnchorRef, new: AnchorRef, path: Sequence[bytes]) -> str | None:
    if old.batch_id > new.batch_id:
        return f"batch {new.batch_id} comes before batch {old.batch_id}"
    if old.batch_id == new.batch_id and old != new:
        return f"two different anchors carry batch {old.batch_id}"
    if (old.chain_id, old.contract) != (new.chain_id, new.contract):
        return f"batches {old.batch_id} and {new.batch_id} name different chains or contracts"
    if not verify_consistency(old.tree_size, new.tree_size, path, old.root, new.root):
        return (
            f"the consistency path does not prove the tree of {old.tree_size} "
            f"(batch {old.batch_id}) a prefix of the tree of {new.tree_size} "
            f"(batch {new.batch_id})"
        )
    return None


def _sequence_problem(anchors: Sequence[AnchorRef]) -> str | None:
    for a, b in pairwise(anchors):
        if b.batch_id != a.batch_id + 1:
            return f"batch {b.batch_id} follows batch {a.batch_id}; batches must be consecutive"
        if b.tree_size <= a.tree_size:
            return f"batch {b.batch_id} has {b.tree_size} leaves, not more than {a.tree_size}"
    return None


def _first_link_problem(
    anchors: Sequence[AnchorRef], paths: Sequence[Sequence[bytes]]
) -> str | None:
    for (a, b), path in zip(pairwise(anchors), paths, strict=True):
        problem = _link_problem(a, b, path)
        if problem is not None:
            return problem
    return None


def _first(check: Callable[[AnchorRef], str | None], anchors: Sequence[AnchorRef]) -> str | None:
    for anchor in anchors:
        problem = check(anchor)
        if problem is not None:
            return problem
    return None


def _hex0x(data: bytes) -> str:
    return "0x" + data.hex()
