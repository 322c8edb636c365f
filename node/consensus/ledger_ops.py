"""Ledger operations on the log: one record's index entry plus its ledger events, as one unit.

Log feature version 6 adds two entry types, owned by :class:`LedgerOps` (prefix ``lg/``):

``ledger.ops`` -- ``{"ops": [<operation>, ...]}``, 1..:data:`OPS_ENTRY_OPERATIONS_MAX`
operations, each the exact ``index.put`` body (:class:`~node.consensus.record_index.
IndexProposal`) plus two optional fields:

* ``ev`` -- the operation's ledger events in their wire form (:mod:`business.ledger.wire`),
  1..:data:`OPERATION_EVENTS_MAX` events in at most :data:`OPERATION_EVENT_BYTES_MAX` bytes;
* ``ap`` -- the users' approvals (at most :data:`APPROVALS_BYTES_MAX` bytes; the blob of
  :func:`business.identity.approvals.encode_approvals`: EIP-712 ``Approve`` signatures over
  :func:`~business.identity.approvals.operation_digest` of (record id, ``ev`` bytes), or
  one-time codes), stored as proposed under ``lg/ap/<record id>``;

and, set by the gateway from the authenticated credential -- never taken from a client:

* ``pt`` -- the proposer: the 16-byte :func:`business.identity.ids.partner_id` of the
  partner, or :data:`~business.identity.scope.PLATFORM` (16 zero bytes) for the platform's
  own operations (the test-mode faucet);
* ``md`` -- the proposer's :class:`business.identity.ids.Mode` (0 test, 1 live); ``pt`` and
  ``md`` come together or not at all;
* ``ur`` -- optional, 1..:data:`OPERATION_USER_REFS_MAX` 32-byte user references
  (:func:`business.identity.ids.user_ref` of the partner's own user ids) whose linked wallets
  the operation may credit (and whose accounts it opens on first use).

From log feature 8 (:data:`~node.consensus.bridge_ops.BRIDGE_FEATURE_VERSION`) an operation
may carry, instead of ``ev``, one Bridge request:

* ``br`` -- :func:`business.bridge.wire.encode_request` of a request whose ``op`` is the
  operation's record id (its transfer ids derive from it); ``ev`` and ``br`` never together.
  Before feature 8 an operation with ``br`` is ``malformed``. Its created operations run the
  Bridge step (:mod:`node.consensus.bridge_ops`: who may send it, ``Bridge.prepare``, owner
  and approval checks, the chain through ``Ledger.apply``, ``Bridge.settle``) in entry order,
  after the ledger events of the operations before it; its outcome carries the request's
  result code. At feature 8 every ``ledger.ops`` and ``ledger.tick`` entry first runs the
  Bridge's point-expiry sweep at its log time (:meth:`BridgeStep.expire
  <node.consensus.bridge_ops.BridgeStep.expire>`).

From log feature 9 (:data:`~node.consensus.payments_ops.PAYMENTS_FEATURE_VERSION`) an
operation may carry, instead of ``ev`` or ``br``, one payments or Market request:

* ``pm`` -- :func:`business.payments.wire.encode_request` of a request whose ``op`` is the
  operation's record id; never with ``ev`` or ``br``, ``malformed`` before feature 9. Its
  created operations run the payments step (:mod:`node.consensus.payments_ops`) exactly where
  a Bridge operation would. At feature 9 every ``ledger.ops`` and ``ledger.tick`` entry also
  runs the payments expiry sweep (after the Bridge's), a raw ``ev`` operation making or
  resolving a payments transfer (codes 201-203) is refused ``transfer_code_reserved``, and a
  Bridge operation's low-reserve notice is appended to the webhook outbox (``reserve.low``).

From log feature 10 (:data:`~node.consensus.deposit_ops.DEPOSIT_FEATURE_VERSION`) an operation
may carry, instead of ``ev``, ``br`` or ``pm``, one vault deposit credit:

* ``dp`` -- :meth:`~node.consensus.deposit_ops.DepositCreditBody.encode`, proposed by the
  platform (a node's deposit watcher); its record id must be the deposit key's
  (:func:`node.chain.deposits.deposit_record_id`). Before feature 10 an operation with ``dp``
  is ``malformed``. Its created operations run the deposit step
  (:mod:`node.consensus.deposit_ops`: credit the named wallet from the platform's vault
  account, or the suspense account) in entry order, after the ledger events of the
  operations before it, like a Bridge request.

From log feature 13 (:data:`~business.ledger.index.INDEX_FEATURE_VERSION`), two rules, each a
step of its own beside the apply loop:

* every ``ledger.ops`` and ``ledger.tick`` entry also writes the ledger's index by scope tag
  of the accounts and transfers it created (:func:`business.ledger.index.tag_index_writes`,
  over the entry's final writes: whoever created them), and its first such entry the index's
  mark; the list reads use it (node/api/ledger_routes.py);
* every operation that reaches its index put (created, a retry, a conflicting reuse of its
  key, expired) spends every one-time code its ``ap`` presents, right after its own checks
  and run, whatever their outcome (:func:`business.identity.approvals.consume_presented`,
  marked used by the operation's digest of ``ev``/``br``/``pm``): a refused debit never leaves
  a valid code on the log. Malformed operations (nothing of them applies) consume nothing.

:meth:`Operation.to_body` / :meth:`Operation.from_body` are the one codec of these fields;
build one with ``Operation(proposal, events, approvals, partner=, mode=, user_refs=)``.

Checked operations (log feature 7, :data:`CHECKED_FEATURE_VERSION`: the identity state the
checks read exists only from then on; a log at feature 6 applies operations unchecked, as the
v6 fixture records). For each *created* operation with events, before any event runs:
``pt``/``md`` must be present (``proposer_missing``), the proposer may touch every account
and asset of its events (:func:`business.identity.scope.check_scope`: own accounts, wallets
of the mode, credits only to linked wallets; cross-partner and cross-mode answered
``account_not_found``), and every debit of a wallet carries that wallet's approval
(:func:`business.identity.approvals.check_debits` at the entry's log time; a one-time code
is consumed in the same write batch). Exempt by rule: posts and voids (approved when the
pending transfer was created), the expiry sweep and ``ledger.tick`` (no proposer at all);
rule claims (a partner reversing its issuance) wait for the Bridge
(:class:`~business.identity.approvals.NoDebitRules` caps them at 0). A refused operation
keeps its record, index entry and leaf; none of its events run, nothing of the checks is
written, and its stored first outcome carries the refusal code on every event
(:func:`business.ledger.outcome.refused_outcome`), sticky like any outcome. Accounts and the
BAAS asset the scope check opens on first use run just before the operation's own events
and are listed after them in its outcome.

An operation without ``ev`` is a plain record: once the log enables feature 6 the leader's
gatherer sends every record in this one entry type. Apply, in one pass over one overlay, in
entry order:

1. the operation is checked on its own: a body that does not decode, events that do not
   decode or break a bound, or approvals that are not bytes is ``malformed``; events whose
   last one still carries the ``linked`` flag are ``linked_event_chain_open`` (a chain may
   never run into the next operation's events). Either way nothing of it is applied, not even
   its index put, so the same bytes always get the same answer and a fixed request may be
   proposed again;
2. the record's index put rules (:meth:`RecordIndex.apply_put`: ``created`` / ``existing`` /
   ``conflict`` / ``expired``);
3. the ledger events of every ``created`` operation run through :meth:`Ledger.apply` at the
   entry's log time (the leader's stamp), as few calls as the ledger's batch bound allows
   (one for any entry under it), split only between operations. Results do not depend on the
   split: no chain crosses an operation, and the expiry sweep runs once per log time;
4. each created operation's :class:`~business.ledger.outcome.OperationOutcome` is stored
   under ``lg/o/<record id>``; an ``existing`` put (a retry) is answered with that first
   outcome, forever. A ``conflict`` or ``expired`` put runs nothing.

Everything goes into the entry's writes, which the node commits in one LevelDB batch with the
applied index. The entry's outcome is ``applied`` with ``results`` (one
:class:`~node.consensus.record_index.BatchOutcome` per operation, its
:class:`~business.ledger.outcome.OperationOutcome` in the detail under ``outcome``: the
proposer answers with its summary; followers, which answer no one, never build it),
``created`` (the proposals that created a record, in entry order: the Merkle log's leaves)
and ``outcomes`` (aligned with ``created``; None for a plain record). A body that is not
such a list is ``malformed`` as a whole.

``ledger.tick`` -- an empty body: the ledger's expiry sweep at the entry's log time
(``Ledger.apply`` with no events), so pending transfers expire in an idle cluster. The leader
proposes it when nothing else committed for a while.

The replicated ledger state holds only opaque ids and integer amounts: who, what and why of an
operation are its encrypted record in the data core. The ledger's bounds
(:class:`~business.ledger.model.LedgerConfig`) are part of the log format here, not node
configuration: every replica must sweep and refuse exactly alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

from business.bridge import Bridge
from business.bridge.model import Request as BridgeRequest
from business.bridge.wire import REQUEST_BYTES_MAX, decode_request
from business.identity.approvals import (
    NO_APPROVALS_DIGEST,
    DebitRules,
    NoDebitRules,
    check_debits,
    consume_presented,
    debits_of,
    operation_digest,
)
from business.identity.approvals import Operation as ApprovalOperation
from business.identity.ids import Mode
from business.identity.model import (
    IDENTITY_FEATURE_VERSION,
    ApprovalResult,
    IdentityConfig,
    ScopeResult,
)
from business.identity.scope import Proposer, Scope, Unapplied, check_scope
from business.ledger.core import Ledger
from business.ledger.index import INDEX_FEATURE_VERSION, tag_index_writes
from business.ledger.model import (
    AccountFlags,
    CreateAccount,
    CreateTransfer,
    Event,
    LedgerConfig,
    TransferFlags,
    approvals_key,
    outcome_key,
)
from business.ledger.ops_entry import LEDGER_FEATURE_VERSION, LEDGER_OPS, LEDGER_TICK
from business.ledger.outcome import OperationOutcome, outcome_of, refused_outcome
from business.ledger.wire import decode_events
from business.payments.model import Request as PaymentsRequest
from business.payments.wire import REQUEST_BYTES_MAX as PAYMENTS_REQUEST_BYTES_MAX
from business.payments.wire import decode_request as decode_payments_request
from node.consensus.bridge_ops import BRIDGE_FEATURE_VERSION, BridgeRun, BridgeStep
from node.consensus.deposit_ops import (
    DEPOSIT_BYTES_MAX,
    DEPOSIT_FEATURE_VERSION,
    DepositCreditBody,
    DepositStep,
    check_deposit,
)
from node.consensus.payments_ops import (
    PAYMENTS_FEATURE_VERSION,
    PaymentsRun,
    PaymentsStep,
    reserve_low,
    reserved_transfer,
)
from node.consensus.record_index import (
    BatchOutcome,
    IndexProposal,
    RecordIndex,
)
from node.consensus.state_machine import (
    ENTRY_BYTES_MAX_BY_TYPE,
    AppEntry,
    ApplyOutcome,
    Dispatcher,
    LogPosition,
    Overlay,
    StateView,
    Write,
)
from node.errors import InvalidRequest, UnsupportedFormat

__all__ = [
    "APPROVALS_BYTES_MAX",
    "CHECKED_FEATURE_VERSION",
    "LEDGER_FEATURE_VERSION",
    "LEDGER_OPS",
    "LEDGER_TICK",
    "OPERATION_EVENTS_MAX",
    "OPERATION_EVENT_BYTES_MAX",
    "OPERATION_USER_REFS_MAX",
    "OPS_ENTRY_BYTES_MAX",
    "OPS_ENTRY_OPERATIONS_MAX",
    "LedgerOps",
    "Operation",
    "chain_open",
    "check_proposer",
    "operation_events",
    "outcome_reader",
    "stored_outcome",
]

# The format's bounds (the configured ones are at most these).
OPS_ENTRY_OPERATIONS_MAX = 1024
OPS_ENTRY_BYTES_MAX = ENTRY_BYTES_MAX_BY_TYPE[LEDGER_OPS]
OPERATION_EVENTS_MAX = 64  # a transfer, a linked chain, a swap: a handful; 64 leaves room
OPERATION_EVENT_BYTES_MAX = 8 * 1024  # 64 transfers are ~6.5 KB on the wire
APPROVALS_BYTES_MAX = 2 * 1024  # a few signatures or one-time codes
OPERATION_USER_REFS_MAX = 8  # linked users one operation may credit (a split payout)
PARTNER_ID_BYTES, USER_REF_BYTES = 16, 32
# From this log feature version on, operations with events are checked (scope, approvals):
# the identity state they read exists only once the identity machine is enabled.
CHECKED_FEATURE_VERSION = IDENTITY_FEATURE_VERSION
CHAIN_OPEN = "linked_event_chain_open"
# The ledger's bounds are part of the log format: every replica must apply alike.
LEDGER_CONFIG = LedgerConfig()


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation: a record's index put, optionally its ledger events and approvals, and
    who proposes it (set by the gateway: ``partner`` and ``mode`` together; ``user_refs``
    only with them)."""

    proposal: IndexProposal
    events: bytes | None = None  # the wire form, business/ledger/wire.py
    approvals: bytes | None = None
    partner: bytes | None = None  # 16: ids.partner_id, or scope.PLATFORM
    mode: int | None = None  # ids.Mode
    user_refs: tuple[bytes, ...] = ()  # 32 each: ids.user_ref of linked users to credit
    # The request kinds by name only: a positional slot here once shifted under a merge.
    _: KW_ONLY
    bridge: bytes | None = None  # feature 8: a Bridge request, business/bridge/wire.py
    payments: bytes | None = None  # feature 9: a payments request, business/payments/wire.py
    deposit: bytes | None = None  # feature 10: a vault deposit credit, deposit_ops.py

    def __post_init__(self) -> None:
        if self.deposit is not None and (
            self.events is not None
            or self.bridge is not None
            or self.payments is not None
            or not 0 < len(self.deposit) <= DEPOSIT_BYTES_MAX
        ):
            raise InvalidRequest(
                f"an operation's deposit credit is 1..{DEPOSIT_BYTES_MAX} B, alone"
            )
        if self.events is not None and not 0 < len(self.events) <= OPERATION_EVENT_BYTES_MAX:
            raise InvalidRequest(f"an operation's events are 1..{OPERATION_EVENT_BYTES_MAX} B")
        if self.bridge is not None and (
            self.events is not None or not 0 < len(self.bridge) <= REQUEST_BYTES_MAX
        ):
            raise InvalidRequest(
                f"an operation's Bridge request is 1..{REQUEST_BYTES_MAX} B, without events"
            )
        if self.payments is not None and (
            self.events is not None
            or self.bridge is not None
            or not 0 < len(self.payments) <= PAYMENTS_REQUEST_BYTES_MAX
        ):
            raise InvalidRequest(
                f"an operation's payments request is 1..{PAYMENTS_REQUEST_BYTES_MAX} B, "
                "without events or a Bridge request"
            )
        if self.approvals is not None and len(self.approvals) > APPROVALS_BYTES_MAX:
            raise InvalidRequest(f"an operation's approvals are at most {APPROVALS_BYTES_MAX} B")
        check_proposer(self.partner, self.mode, self.user_refs)

    @property
    def record_id(self) -> bytes:
        return self.proposal.record_id

    def to_body(self) -> dict[str, Any]:
        body = dict(self.proposal.to_entry().body)
        if self.events is not None:
            body["ev"] = self.events
        if self.approvals is not None:
            body["ap"] = self.approvals
        if self.partner is not None:
            body["pt"] = self.partner
            body["md"] = self.mode
        if self.user_refs:
            body["ur"] = list(self.user_refs)
        if self.bridge is not None:
            body["br"] = self.bridge
        if self.payments is not None:
            body["pm"] = self.payments
        if self.deposit is not None:
            body["dp"] = self.deposit
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Operation:
        """Raises :class:`UnsupportedFormat` for anything malformed (bounds included)."""
        proposal = IndexProposal.from_body(body)
        events, approvals = body.get("ev"), body.get("ap")
        partner, mode, refs = body.get("pt"), body.get("md"), body.get("ur", [])
        bridge, payments, deposit = body.get("br"), body.get("pm"), body.get("dp")
        if bridge is not None and type(bridge) is not bytes:
            raise UnsupportedFormat("br must be bytes")
        if payments is not None and type(payments) is not bytes:
            raise UnsupportedFormat("pm must be bytes")
        if deposit is not None and type(deposit) is not bytes:
            raise UnsupportedFormat("dp must be bytes")
        if events is not None and type(events) is not bytes:
            raise UnsupportedFormat("ev must be bytes")
        if approvals is not None and type(approvals) is not bytes:
            raise UnsupportedFormat("ap must be bytes")
        if partner is not None and type(partner) is not bytes:
            raise UnsupportedFormat("pt must be bytes")
        if mode is not None and type(mode) is not int:
            raise UnsupportedFormat("md must be an integer")
        if type(refs) is not list or (not refs and "ur" in body):
            raise UnsupportedFormat("ur must be a non-empty list")
        if any(type(r) is not bytes for r in refs):
            raise UnsupportedFormat("ur holds bytes")
        try:
            return cls(
                proposal,
                events,
                approvals,
                partner,
                mode,
                tuple(refs),
                bridge=bridge,
                payments=payments,
                deposit=deposit,
            )
        except InvalidRequest as exc:
            raise UnsupportedFormat(exc.detail) from exc

    def decoded_events(self) -> list[Event]:
        """The events, checked as the apply checks them (UnsupportedFormat otherwise)."""
        return operation_events(self.events)

    def decoded_bridge(self) -> BridgeRequest | None:
        """The Bridge request, checked as the apply checks it (UnsupportedFormat otherwise)."""
        if self.bridge is None:
            return None
        request = decode_request(self.bridge)
        if request.op != self.record_id:
            raise UnsupportedFormat("a Bridge request's op id is its operation's record id")
        return request

    def decoded_payments(self) -> PaymentsRequest | None:
        """The payments request, checked as the apply checks it (UnsupportedFormat otherwise)."""
        if self.payments is None:
            return None
        request = decode_payments_request(self.payments)
        if request.op != self.record_id:
            raise UnsupportedFormat("a payments request's op id is its operation's record id")
        return request

    def decoded_deposit(self) -> DepositCreditBody | None:
        """The deposit credit, checked as the apply checks it (UnsupportedFormat otherwise)."""
        if self.deposit is None:
            return None
        body = DepositCreditBody.decode(self.deposit)
        check_deposit(self.record_id, body, self.mode)
        return body

    def encoded_bytes_max(self) -> int:
        """An upper bound on this operation's share of an encoded entry (no encoding)."""
        blobs = (self.events, self.approvals, self.bridge, self.payments, self.deposit)
        extra = sum(len(b) + 8 for b in blobs if b is not None)
        if self.partner is not None:  # keys, the id, the mode, the references
            extra += 3 * 8 + PARTNER_ID_BYTES + len(self.user_refs) * (USER_REF_BYTES + 4)
        return self.proposal.encoded_bytes_max() + extra

    @staticmethod
    def batch_entry(operations: Sequence[Operation]) -> AppEntry:
        """One ``ledger.ops`` entry carrying ``operations`` in order."""
        if not 0 < len(operations) <= OPS_ENTRY_OPERATIONS_MAX:
            raise InvalidRequest(f"an operations entry holds 1..{OPS_ENTRY_OPERATIONS_MAX}")
        return AppEntry(LEDGER_OPS, {"ops": [op.to_body() for op in operations]})


def check_proposer(partner: bytes | None, mode: int | None, user_refs: Sequence[bytes]) -> None:
    """The proposer fields' shape (:class:`InvalidRequest` otherwise): ``partner`` and
    ``mode`` together, user references only with them."""
    if (partner is None) != (mode is None):
        raise InvalidRequest("an operation's partner and mode come together")
    if partner is not None and (type(partner) is not bytes or len(partner) != PARTNER_ID_BYTES):
        raise InvalidRequest(f"an operation's partner is {PARTNER_ID_BYTES} bytes")
    if mode is not None and mode not in Mode._value2member_map_:
        raise InvalidRequest("an operation's mode is 0 (test) or 1 (live)")
    if user_refs and (
        partner is None
        or len(user_refs) > OPERATION_USER_REFS_MAX
        or any(type(r) is not bytes or len(r) != USER_REF_BYTES for r in user_refs)
    ):
        raise InvalidRequest(
            f"an operation names 1..{OPERATION_USER_REFS_MAX} user references of "
            f"{USER_REF_BYTES} bytes, and its partner"
        )


def operation_events(events: bytes | None) -> list[Event]:
    """An operation's events (none for a plain record), checked as the apply checks them.

    Raises :class:`UnsupportedFormat` for anything the apply would call ``malformed``.
    """
    if events is None:
        return []
    decoded = decode_events(
        events, events_max=OPERATION_EVENTS_MAX, bytes_max=OPERATION_EVENT_BYTES_MAX
    )
    if not decoded:
        raise UnsupportedFormat("an operation's events hold at least one event")
    return decoded


def chain_open(events: Sequence[Event]) -> bool:
    """Whether the events end inside a linked chain (their last one is ``linked``)."""
    if not events:
        return False
    last = events[-1]
    if type(last) is CreateAccount:
        return bool(last.flags & AccountFlags.LINKED)
    return type(last) is CreateTransfer and bool(last.flags & TransferFlags.LINKED)


def outcome_reader(view: StateView) -> Callable[[bytes], bytes | None]:
    """Record id -> the encoded first outcome of its operation (None: a plain record), read
    from ``view``: what the receipt route puts in a v2 receipt beside the leaf of that view."""
    return lambda record_id: view.get(outcome_key(record_id))


def stored_outcome(view: StateView, record_id: bytes) -> OperationOutcome | None:
    """The first outcome of the operation that created ``record_id`` (None: a plain record)."""
    raw = view.get(outcome_key(record_id))
    return OperationOutcome.decode(raw) if raw is not None else None


@dataclass(slots=True)
class _Pending:
    """A created operation waiting for its ledger run (mutable only inside one apply)."""

    slot: int  # its position in the entry
    operation: Operation
    events: list[Event]
    prelude: tuple[Event, ...] = ()  # opened on first use, run just before ``events``

    @property
    def size(self) -> int:
        return len(self.prelude) + len(self.events)


class LedgerOps:
    """The operations and tick entries (pure: reads a view, returns writes)."""

    prefix = b"lg/"
    entry_types: Mapping[str, int] = {
        LEDGER_OPS: LEDGER_FEATURE_VERSION,
        LEDGER_TICK: LEDGER_FEATURE_VERSION,
    }

    def __init__(
        self,
        identity: IdentityConfig | None = None,
        rules: DebitRules | None = None,
    ) -> None:
        # ``identity`` must be the identity machine's (its chain id is the EIP-712 domain).
        self._ledger = Ledger(LEDGER_CONFIG)
        self._identity = identity or IdentityConfig()
        self._rules = rules or NoDebitRules()
        self._bridge = BridgeStep(self._ledger, self._identity)
        self._payments = PaymentsStep(self._ledger, self._identity)
        self._deposits = DepositStep(self._ledger)

    @property
    def bridge(self) -> Bridge:
        """The Bridge core the feature-8 step runs (its quotes are reads over a state view)."""
        return self._bridge.bridge

    def apply(self, entry: AppEntry, position: LogPosition, view: StateView) -> ApplyOutcome:
        done = self._apply(entry, position, view)
        if done.code != "applied" or Dispatcher.feature_version(view) < INDEX_FEATURE_VERSION:
            return done
        # Feature 13: the index by scope tag of what the entry created (business/ledger/index.py).
        indexed = tag_index_writes(view, dict(done.writes))
        return ApplyOutcome(done.code, done.detail, (*done.writes, *indexed))

    def _apply(self, entry: AppEntry, position: LogPosition, view: StateView) -> ApplyOutcome:
        feature = Dispatcher.feature_version(view)
        bridged = feature >= BRIDGE_FEATURE_VERSION
        paying = feature >= PAYMENTS_FEATURE_VERSION
        if entry.type == LEDGER_TICK:
            _, writes = self._ledger.apply([], position.leader_time_ms, view)
            if not bridged:
                return ApplyOutcome("applied", {}, tuple(writes))
            swept = Overlay(view)
            swept.writes.update(writes)
            expired = self._bridge.expire(position.index, position.leader_time_ms, swept)
            tick: dict[str, Any] = {"expired": expired}
            if paying:
                tick["payments_expired"] = self._payments.expire(
                    position.index, position.leader_time_ms, swept
                )
            return ApplyOutcome("applied", tick, tuple(swept.writes.items()))
        bodies = entry.body.get("ops")
        if not isinstance(bodies, list) or not 0 < len(bodies) <= OPS_ENTRY_OPERATIONS_MAX:
            reason = f"ops must be a list of 1..{OPS_ENTRY_OPERATIONS_MAX} operations"
            return ApplyOutcome("malformed", {"reason": reason})
        layer = Overlay(view)
        if bridged:  # point expiry on log time, before the entry's operations
            self._bridge.expire(position.index, position.leader_time_ms, layer)
        if paying:  # and the payments' (module docstring of payments_ops)
            self._payments.expire(position.index, position.leader_time_ms, layer)
        checked = Dispatcher.feature_version(view) >= CHECKED_FEATURE_VERSION
        deposits = Dispatcher.feature_version(view) >= DEPOSIT_FEATURE_VERSION
        consuming = feature >= INDEX_FEATURE_VERSION
        earlier = Unapplied()  # what admitted operations of this entry create, not run yet
        refused: dict[int, OperationOutcome] = {}
        results: list[BatchOutcome] = []
        created: list[tuple[int, Operation]] = []
        runs: list[_Pending] = []
        outcomes: dict[int, OperationOutcome] = {}
        ran = 0  # runs[:ran] went through the ledger already (before a Bridge operation)
        kinds: dict[int, tuple[str, str]] = {}  # slot -> ("bridge" | "payments", request kind)
        retries: list[tuple[int, bytes, Mapping[str, Any]]] = []  # slot, record id, detail
        for slot, body in enumerate(bodies):
            try:
                if not isinstance(body, dict):
                    raise UnsupportedFormat("an operation must be a map")
                op = Operation.from_body(body)
                events = op.decoded_events()
                request = op.decoded_bridge()
                if request is not None and not bridged:
                    raise UnsupportedFormat(f"br needs log feature {BRIDGE_FEATURE_VERSION}")
                if op.deposit is not None and not deposits:
                    raise UnsupportedFormat(f"dp needs log feature {DEPOSIT_FEATURE_VERSION}")
                deposit = op.decoded_deposit()
                payment = op.decoded_payments()
                if payment is not None and not paying:
                    raise UnsupportedFormat(f"pm needs log feature {PAYMENTS_FEATURE_VERSION}")
            except UnsupportedFormat as exc:
                results.append(BatchOutcome("malformed", {"reason": exc.detail}))
                continue
            if chain_open(events):
                results.append(BatchOutcome(CHAIN_OPEN, {}))
                continue
            put = RecordIndex.apply_put(op.proposal, position, layer)
            layer.writes.update(put.writes)
            results.append(BatchOutcome(put.code, put.detail))
            if put.code == "created" and deposit is not None:
                created.append((slot, op))
                # The deposit step: after the ledger events of the operations before it.
                outcomes.update(self._run_ledger(runs[ran:], position.leader_time_ms, layer))
                ran = len(runs)
                refused[slot] = self._deposits.run(
                    op.record_id, deposit, op.partner, position.leader_time_ms, layer
                )
            elif put.code == "created" and (request is not None or payment is not None):
                created.append((slot, op))
                # The Bridge or payments step: after the ledger events of the operations
                # before it.
                outcomes.update(self._run_ledger(runs[ran:], position.leader_time_ms, layer))
                ran = len(runs)
                done_run = self._request_step(op, request, payment, position, layer, earlier)
                refused[slot] = done_run.outcome  # stored, sticky, like a refusal's
                kinds[slot] = ("bridge" if request is not None else "payments", done_run.kind)
                if op.approvals is not None:
                    layer.writes[approvals_key(op.record_id)] = op.approvals
            elif put.code == "created":
                created.append((slot, op))
                admitted = (
                    self._admit(op, events, position, layer, earlier, paying) if checked else None
                )
                if isinstance(admitted, OperationOutcome):
                    refused[slot] = admitted
                    layer.writes[outcome_key(op.record_id)] = admitted.encode()
                elif events:
                    runs.append(_Pending(slot, op, events, admitted or ()))
                if op.approvals is not None:
                    layer.writes[approvals_key(op.record_id)] = op.approvals
            elif put.code == "existing":
                retries.append((slot, op.record_id, put.detail))
            if consuming and op.approvals:  # feature 13: a presented code is spent, whatever
                layer.writes.update(self._consume(op, layer))
        outcomes.update(self._run_ledger(runs[ran:], position.leader_time_ms, layer))
        for pending in runs:
            outcome = outcomes[pending.slot]
            layer.writes[outcome_key(pending.operation.record_id)] = outcome.encode()
            done = results[pending.slot]
            results[pending.slot] = BatchOutcome(done.code, {**done.detail, "outcome": outcome})
        for slot, outcome in refused.items():
            done = results[slot]
            extra = dict((kinds[slot],)) if slot in kinds else {}
            results[slot] = BatchOutcome(done.code, {**done.detail, "outcome": outcome, **extra})
        outcomes.update(refused)
        for slot, record_id, detail in retries:  # after the run: a retry in the same entry too
            first = stored_outcome(layer, record_id)
            if first is not None:
                results[slot] = BatchOutcome("existing", {**detail, "outcome": first})
        detail = {
            "results": tuple(results),
            "created": tuple(op.proposal for _, op in created),
            "outcomes": tuple(outcomes.get(slot) for slot, _ in created),
        }
        return ApplyOutcome("applied", detail, tuple(layer.writes.items()))

    def _consume(self, op: Operation, layer: Overlay) -> tuple[Write, ...]:
        """Feature 13: every one-time code ``op`` presents, spent under its digest."""
        assert op.approvals is not None
        raw = op.events or op.bridge or op.payments or op.deposit or b""
        digest = operation_digest(op.record_id, raw)
        return consume_presented(layer, op.approvals, digest, self._identity.approvals_max)

    def _request_step(
        self,
        op: Operation,
        bridge: BridgeRequest | None,
        payment: PaymentsRequest | None,
        position: LogPosition,
        layer: Overlay,
        earlier: Unapplied,
    ) -> BridgeRun | PaymentsRun:
        """A created operation carrying a Bridge request (feature 8) or a payments request
        (feature 9): its whole run, its outcome stored (node/consensus/bridge_ops.py,
        node/consensus/payments_ops.py)."""
        proposer = None
        if op.partner is not None and op.mode is not None:
            proposer = Proposer(op.partner, Mode(op.mode), op.user_refs)
        now_ms, approvals = position.leader_time_ms, op.approvals or b""
        done: BridgeRun | PaymentsRun
        if bridge is not None:
            assert op.bridge is not None
            done = self._bridge.run(
                op.record_id, op.bridge, bridge, proposer, approvals, now_ms, layer, earlier
            )
            if Dispatcher.feature_version(layer) >= PAYMENTS_FEATURE_VERSION:
                for notice in done.notices:  # the webhook outbox's reserve.low (feature 9)
                    reserve_low(layer, notice, now_ms)
        else:
            assert op.payments is not None and payment is not None
            done = self._payments.run(
                op.record_id, op.payments, payment, proposer, approvals, now_ms, layer, earlier
            )
        layer.writes[outcome_key(op.record_id)] = done.outcome.encode()
        return done

    def _admit(
        self,
        op: Operation,
        events: list[Event],
        position: LogPosition,
        layer: Overlay,
        earlier: Unapplied,
        paying: bool = False,
    ) -> OperationOutcome | tuple[Event, ...] | None:
        """A created operation's checks (feature 7): its refused outcome, or what to open for
        it first (its scope and approval writes then go into ``layer``)."""
        if not events:
            return None  # a plain record moves nothing
        now_ms = position.leader_time_ms
        if op.partner is None or op.mode is None:
            return refused_outcome(events, ScopeResult.PROPOSER_MISSING.value, now_ms)
        if paying and reserved_transfer(layer, events):  # only payments moves payments
            return refused_outcome(events, ScopeResult.TRANSFER_CODE_RESERVED.value, now_ms)
        mode = Mode(op.mode)
        proposer = Proposer(op.partner, mode, op.user_refs)
        scope = check_scope(layer, proposer, op.record_id, events, now_ms, earlier)
        if not isinstance(scope, Scope):
            return refused_outcome(events, scope.value, now_ms)
        checks = Overlay(layer)
        checks.writes.update(scope.writes)
        assert op.events is not None
        # The digest is what approvals sign: an operation without any never needs it.
        digest = operation_digest(op.record_id, op.events) if op.approvals else NO_APPROVALS_DIGEST
        request = ApprovalOperation(digest, op.partner, mode, debits_of(events))
        code, writes = check_debits(
            checks, self._identity, request, op.approvals or b"", now_ms, self._rules
        )
        if code != ApprovalResult.OK:
            return refused_outcome(events, code.value, now_ms)
        layer.writes.update(scope.writes)
        layer.writes.update(writes)
        earlier.add([*scope.prelude, *events])
        return scope.prelude

    def _run_ledger(
        self, runs: Sequence[_Pending], now_ms: int, layer: Overlay
    ) -> dict[int, OperationOutcome]:
        """Every created operation's events in as few Ledger.apply calls as the bound allows."""
        outcomes: dict[int, OperationOutcome] = {}
        bound = LEDGER_CONFIG.events_per_batch_max
        start = 0
        while start < len(runs):
            end, count = start, 0
            while end < len(runs) and count + runs[end].size <= bound:
                count += runs[end].size
                end += 1
            group = runs[start:end]
            events = [e for p in group for e in (*p.prelude, *p.events)]
            results, writes = self._ledger.apply(events, now_ms, layer)
            layer.writes.update(writes)
            at = 0
            for p in group:
                opened = results[at : at + len(p.prelude)]
                mine = results[at + len(p.prelude) : at + p.size]
                at += p.size
                # Its own events first (aligned with the request), then what was opened for it.
                outcomes[p.slot] = outcome_of([*p.events, *p.prelude], [*mine, *opened], now_ms)
            start = end
        return outcomes
