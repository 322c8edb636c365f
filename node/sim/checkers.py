"""The simulator's checkers: what must hold at every step of a run and at its end.

* **Election safety** -- at most one leader per term (every Ready names its role and term).
* **Log agreement** -- every entry any node applies (or installs in a snapshot) is the same at
  that index on every node; at the end every live node's committed log, in memory and on disk,
  matches it, so committed logs are prefixes of one another.
* **Leader completeness** -- a node that becomes leader holds every entry already applied
  anywhere (caught at once, before it can overwrite anything).
* **Acknowledgements** -- a client only hears "done" for an entry that is committed at the
  position named; an id acknowledged twice names one position; acknowledgements keep real-time
  order (an entry submitted after another was acknowledged lands after it); at the end every
  acknowledged id is in the converged log at its position: nothing acknowledged is lost.
* **Idempotency** -- every id appears once in each node's applied stream.
* **Records** -- the checker applies the agreed log to its own record index (the reference).
  A record client hears "done" only for a record the reference indexes at the position named,
  with the content it sent; every acknowledgement of one record names one position; at that
  moment at least ``write_quorum`` of its shards were durable (flushed) on their holders.
* **Move safety** -- a holder deletes a shard only once the reference no longer names it there:
  neither as the current location nor as the previous one within the grace.
* **Decodable** -- at the end every acknowledged record rebuilds, from ``k`` intact shards read
  where the converged index says (current location, else the previous one within the grace),
  to a blob with its content hash; every member's record index equals the reference.
* **Log time** -- stamps never run backwards along the agreed log, and a leader moves log
  time forward only to at most ``clock_offset_max_ms`` past the quorum-th highest real clock
  of its voters at that moment (a fast leader cannot push log time ahead of a majority).
* **Ledger** -- an operation's acknowledgement carries the outcome the reference stored for it
  (the first one: a retry is answered with it, never with another); at the end, on the
  reference, every ledger is balanced (debits equal credits, posted and pending, and equal the
  sums over its accounts), no flagged account is over its limit, and every member's ledger
  state digest equals the reference's.
* **Bridge** (the Bridge workload, on every member after the faults heal, before the digests
  are compared): every ledger balanced as above (so each asset's total is conserved, issuance,
  liquidity, breakage, reserve and faucet accounts included), no partner's reserve below zero,
  every user's point lots summing to their account's balance, no lot held past its expiry day
  (the sweep of the last ``ledger.ops``/``ledger.tick`` entry has run), and every member's
  Bridge state (``br/``) digest equal to the reference's.
* **Swap index** (the Bridge workload, feature 11, on every member): every swap the workload
  sent and the log created is listed exactly once in its partner's index (``br/sw/``), with
  its stored result, and nothing else is listed; a listed ``ok`` swap's transfers are in the
  ledger as its outcome names them, debiting the user the listed ``amount_in`` and crediting
  ``amount_out``; a failed one's are in none.
* **Payments** (the payments workload, on every member): every ledger balanced as above;
  every payment's captured amount at most its authorised, its refunds at most its capture,
  its state the one its pending transfer shows (authorised: pending or expired; captured or
  refunded: posted; voided: voided); each merchant's settlement account holding exactly its
  payments' captures less refunds and fees and reserving exactly its live authorisations, the
  platform's fees account exactly the fees; every order in the state that goes with its
  payment's; each listing's stock never negative, and its units conserved (in stock, or held
  by an order not cancelled or expired); the webhook outbox numbered without a gap, naming
  only payments and orders that exist, ``payment.expired`` only for expired payments and at
  most once, and, while nothing was trimmed, one event per change. On every member (any
  workload): the same outbox and the same payments (``pm/``) digest as the reference.
* **Deposits** (the payments workload): every vault deposit sent credited exactly once, a
  duplicate crediting nothing: each user's BAAS account credited the sum of the distinct
  deposits to their wallet, the suspense account the sum of those to wallets nobody linked,
  the platform's vault account debited the total.
* **Liveness** -- after the faults stop, the cluster converges (checked by the world).

A broken invariant raises :class:`SimFailure`; the runner prints it with the seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from business.bridge import Direction, bridge_state_digest, reserve_level
from business.bridge.model import (
    DAY_MS,
    LOTS_PREFIX,
    SWAP_INDEX_PREFIX,
    SwapEntry,
    decode_lots,
    decode_swap_entry,
)
from business.identity.ids import ASSET_INDEX_BAAS, Mode, ledger_number, wallet_account_id
from business.ledger.model import AccountFlags, PendingStatus
from business.ledger.outcome import OperationOutcome
from business.ledger.views import (
    MemoryView,
    all_totals,
    get_account,
    get_pending_status,
    get_transfer,
    iter_accounts,
    state_digest,
)
from business.payments.core import platform_fees_account
from business.payments.model import (
    ORDER_PREFIX,
    PAYMENT_PREFIX,
    OrderRecord,
    OrderState,
    PaymentRecord,
    PaymentState,
    decode_listing,
    decode_order,
    decode_payment,
    listing_key,
)
from business.payments.outbox import EVENT_PREFIX, EventType, decode_event, read_head
from business.payments.views import payments_state_digest
from node.chain.deposits import vault_account
from node.consensus.ledger_ops import stored_outcome
from node.consensus.raft import RawNode, Ready
from node.consensus.record_index import IndexEntry, RecordIndex
from node.consensus.types import Entry, EntryKind, NodeId, Role
from node.dataplane.shard_move import read_order
from node.errors import BaasError
from node.sim.disk import SimDisk
from node.sim.machine import Command, DedupMachine, RequestId, StreamRecord, decode_state
from node.sim.shards import ShardKey, SimShardStore
from node.storage.erasure import decode_blob

__all__ = [
    "Checker",
    "SimFailure",
    "check_bridge",
    "check_deposits",
    "check_ledgers",
    "check_outbox",
    "check_payments",
    "check_swap_index",
]

EVENT_KIND_TRANSFER = 3  # an outcome event's kind (business/ledger/outcome.py): a transfer


class SimFailure(Exception):
    """A checker found a broken invariant (``check`` names which)."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"[{check}] {detail}")
        self.check = check
        self.detail = detail


@dataclass(frozen=True, slots=True)
class LiveNode:
    """What the end-of-run checks read of one running member."""

    node_id: NodeId
    core: RawNode
    disk: SimDisk
    machine: DedupMachine


@dataclass
class Checker:
    write_quorum: int
    grace_entries: int
    leaders: dict[int, NodeId] = field(default_factory=dict)
    complete_terms: set[int] = field(default_factory=set)  # leader completeness checked
    committed: dict[int, Entry] = field(default_factory=dict)  # index -> first applied entry
    acked: dict[RequestId, int] = field(default_factory=dict)  # id -> acknowledged position
    ack_order: list[tuple[RequestId, int]] = field(default_factory=list)  # as clients saw them
    floors: dict[RequestId, int] = field(default_factory=dict)  # highest ack before submission
    acked_index_max: int = 0
    reference: DedupMachine = field(default_factory=DedupMachine)  # the agreed log, applied
    records: dict[bytes, bytes] = field(default_factory=dict)  # record id -> the blob sent
    records_acked: dict[bytes, int] = field(default_factory=dict)  # record id -> position
    durable: dict[tuple[bytes, bytes], set[int]] = field(default_factory=dict)  # flushed shards
    deletes: int = 0
    clock_ms: Callable[[NodeId], int] | None = None  # a node's real clock now (None: unchecked)
    clock_offset_max_ms: int = 0
    log_time_ahead_ms_max: int = 0  # the furthest a stamp ran ahead of the quorum's clocks
    outcomes_acked: dict[bytes, dict[str, Any]] = field(default_factory=dict)  # first acked

    # -- during the run

    def on_ready(self, node_id: NodeId, ready: Ready, core: RawNode) -> None:
        if ready.role is Role.LEADER:
            known = self.leaders.setdefault(ready.term, node_id)
            if known != node_id:
                raise SimFailure(
                    "election-safety", f"two leaders in term {ready.term}: {known} and {node_id}"
                )
            if ready.term not in self.complete_terms:
                self.complete_terms.add(ready.term)
                self._check_leader_complete(node_id, core)
            self._check_stamps(node_id, ready, core)
        if ready.snapshot is not None:
            self._check_snapshot(node_id, ready)
        for entry in ready.committed_entries:
            self._record(node_id, entry)

    def _check_stamps(self, node_id: NodeId, ready: Ready, core: RawNode) -> None:
        """A leader's new entries move log time at most the tolerance past a quorum's clocks
        (the real ones: what the nodes reported can only be lower)."""
        if self.clock_ms is None:
            return
        voters = ready.membership.voters
        clocks = sorted((self.clock_ms(v) for v in voters), reverse=True)
        quorum_ms = clocks[ready.membership.quorum - 1]
        for entry in ready.entries:
            before = core.time_at(entry.index - 1)
            if before is None or entry.leader_time_ms <= before:
                continue  # carried forward, not chosen now
            ahead = entry.leader_time_ms - quorum_ms
            self.log_time_ahead_ms_max = max(self.log_time_ahead_ms_max, ahead)
            if ahead > self.clock_offset_max_ms:
                raise SimFailure(
                    "log-time",
                    f"{node_id} stamped {_show(entry)} at {entry.leader_time_ms}, {ahead} ms "
                    f"ahead of its voters' quorum clock (tolerance {self.clock_offset_max_ms})",
                )

    def _check_monotonic(self, entry: Entry) -> None:
        before, after = self.committed.get(entry.index - 1), self.committed.get(entry.index + 1)
        if (before is not None and before.leader_time_ms > entry.leader_time_ms) or (
            after is not None and after.leader_time_ms < entry.leader_time_ms
        ):
            raise SimFailure("log-time", f"log time runs backwards around {_show(entry)}")

    def _record(self, node_id: NodeId, entry: Entry) -> None:
        known = self.committed.setdefault(entry.index, entry)
        if known is entry:
            self._check_monotonic(entry)
            self._advance_reference()
            return
        if (known.term, known.kind, known.payload) != (entry.term, entry.kind, entry.payload):
            raise SimFailure(
                "log-agreement",
                f"{node_id} applied {_show(entry)} where another node applied {_show(known)}",
            )

    def _advance_reference(self) -> None:
        """Apply the agreed log to the reference, in order, as far as it is known."""
        reference = self.reference
        while (entry := self.committed.get(reference.applied_index + 1)) is not None:
            reference.apply(entry)

    def _check_snapshot(self, node_id: NodeId, ready: Ready) -> None:
        assert ready.snapshot is not None
        meta = ready.snapshot.meta
        known = self.committed.get(meta.index)
        if known is not None and known.term != meta.term:
            raise SimFailure(
                "log-agreement", f"{node_id} installed a snapshot at {meta} over {_show(known)}"
            )
        for record in decode_state(ready.snapshot.data)[0]:
            self._check_record(node_id, record)

    def _check_record(self, node_id: NodeId, record: StreamRecord) -> None:
        known = self.committed.get(record[0])
        if known is None:
            return
        command = Command.decode(known.payload) if known.kind is EntryKind.NORMAL else None
        if command is None or (command.client, command.seq, command.value) != record[1:]:
            raise SimFailure(
                "log-agreement", f"{node_id} holds {record}, committed is {_show(known)}"
            )

    def _check_leader_complete(self, node_id: NodeId, core: RawNode) -> None:
        for index, entry in self.committed.items():
            if index > core.snapshot_index and core.term_at(index) != entry.term:
                raise SimFailure(
                    "leader-completeness",
                    f"{node_id} leads term {core.term} without committed {_show(entry)}",
                )

    def on_submit(self, request_id: RequestId) -> None:
        """A client sends an id for the first time."""
        self.floors.setdefault(request_id, self.acked_index_max)

    def on_ack(self, request_id: RequestId, index: int) -> None:
        entry = self.committed.get(index)
        if entry is None or entry.kind is not EntryKind.NORMAL:
            raise SimFailure("ack", f"{request_id} acknowledged at {index}, which is not committed")
        if Command.decode(entry.payload).request_id != request_id:
            raise SimFailure(
                "ack", f"{request_id} acknowledged at {index}, which holds {_show(entry)}"
            )
        first = self.acked.get(request_id)
        if first is not None:
            if first != index:
                raise SimFailure(
                    "idempotency", f"{request_id} acknowledged at {first} and at {index}"
                )
            return
        floor = self.floors.get(request_id, 0)
        if index <= floor:
            raise SimFailure(
                "ack-order",
                f"{request_id} acknowledged at {index}, "
                f"but {floor} was acknowledged before it was sent",
            )
        self.acked[request_id] = index
        self.ack_order.append((request_id, index))
        self.acked_index_max = max(self.acked_index_max, index)

    def on_record_submit(self, record_id: bytes, blob: bytes) -> None:
        self.records[record_id] = blob

    def on_shard_durable(self, node_id: NodeId, key: ShardKey, content_hash: bytes) -> None:
        self.durable.setdefault((key[0], content_hash), set()).add(key[1])

    def on_record_ack(
        self, record_id: bytes, index: int, outcome: Mapping[str, Any] | None = None
    ) -> None:
        blob = self.records[record_id]
        content_hash = hashlib.sha256(blob).digest()
        entry = RecordIndex.lookup(self.reference, record_id)
        if entry is None or entry.index != index or entry.content_hash != content_hash:
            raise SimFailure(
                "ack", f"record {record_id.hex()[:12]} acknowledged at {index}, index has {entry}"
            )
        first = self.records_acked.setdefault(record_id, index)
        if first != index:
            raise SimFailure(
                "idempotency", f"record {record_id.hex()[:12]} acknowledged at {first} and {index}"
            )
        self._check_outcome(record_id, outcome)
        stored = len(self.durable.get((record_id, content_hash), ()))
        if stored < self.write_quorum:
            raise SimFailure(
                "write-quorum",
                f"record {record_id.hex()[:12]} acknowledged with {stored} durable shards, "
                f"write_quorum is {self.write_quorum}",
            )

    def _check_outcome(self, record_id: bytes, outcome: Mapping[str, Any] | None) -> None:
        """The acknowledged outcome is the one stored with the operation, and never changes."""
        first = stored_outcome(self.reference, record_id)
        if (first.summary() if first is not None else None) != outcome:
            raise SimFailure(
                "ledger-outcome",
                f"operation {record_id.hex()[:12]} acknowledged with {outcome}, the log stored "
                f"{first}",
            )
        if outcome is not None:
            self.outcomes_acked.setdefault(record_id, dict(outcome))
            if self.outcomes_acked[record_id] != outcome:
                raise SimFailure(
                    "ledger-sticky", f"operation {record_id.hex()[:12]} got two outcomes"
                )

    def on_shard_delete(self, node_id: NodeId, key: ShardKey, content_hash: bytes) -> None:
        """A holder is about to delete its copy of ``key``: nothing may still point at it."""
        self.deletes += 1
        entry = RecordIndex.lookup(self.reference, key[0])
        if entry is None or entry.content_hash != content_hash:
            return  # an orphan: a copy the index never named
        applied = self.reference.applied_index
        if node_id in read_order(entry, key[1], applied, self.grace_entries):
            raise SimFailure(
                "move-safety",
                f"{node_id} deletes shard {key[1]} of record {key[0].hex()[:12]} while the "
                f"committed index (applied to {applied}) still names it: {entry.shard_nodes}, "
                f"previous {entry.previous}",
            )

    # -- at the end

    def check_converged(self, nodes: Iterable[LiveNode]) -> None:
        live = list(nodes)
        for node in live:
            self.check_committed_log(node)
            self._check_stream(node)
        streams = {node.node_id: node.machine.stream for node in live}
        reference = live[0]
        for node in live[1:]:
            if streams[node.node_id] != streams[reference.node_id]:
                raise SimFailure(
                    "log-agreement",
                    f"{node.node_id} and {reference.node_id} applied different streams",
                )
        reference_digest = state_digest(self.reference.kv.items())
        bridge_digest = bridge_state_digest(self.reference.kv.items())
        payments_digest = payments_state_digest(self.reference.kv.items())
        outbox = outbox_events(self.reference.kv)
        for node in live:
            if state_digest(node.machine.kv.items()) != reference_digest:
                raise SimFailure("ledger-digest", f"{node.node_id}'s ledger state differs")
            if bridge_state_digest(node.machine.kv.items()) != bridge_digest:
                raise SimFailure("bridge-digest", f"{node.node_id}'s Bridge state differs")
            if outbox_events(node.machine.kv) != outbox:
                raise SimFailure("payments-outbox", f"{node.node_id}'s webhook outbox differs")
            if payments_state_digest(node.machine.kv.items()) != payments_digest:
                raise SimFailure("payments-digest", f"{node.node_id}'s payments state differs")
            if node.machine.kv != self.reference.kv:
                raise SimFailure("log-agreement", f"{node.node_id}'s record index differs")
        check_ledgers(self.reference.kv)
        positions = reference.machine.positions
        for request_id, index in self.acked.items():
            if positions.get(request_id) != index:
                raise SimFailure(
                    "ack-lost",
                    f"{request_id} was acknowledged at {index}, the final log has it at "
                    f"{positions.get(request_id)}",
                )

    def check_bridge(
        self,
        node_id: NodeId,
        kv: Mapping[bytes, bytes],
        partners: Iterable[bytes],
        swaps: Iterable[bytes],
    ) -> None:
        """The Bridge's invariants on one member's state (module docstring), with the day
        the reference's last sweep ran at, and its swap index against the ``swaps`` sent."""
        day = self.reference.swept_ms // DAY_MS
        on_member(node_id, check_ledgers, kv)
        on_member(node_id, lambda: check_bridge(kv, partners, day))
        on_member(node_id, lambda: check_swap_index(kv, swaps))

    def check_payments(
        self,
        node_id: NodeId,
        kv: Mapping[bytes, bytes],
        listings: Mapping[bytes, int],
        deposited: Mapping[int, int],
    ) -> None:
        """Payments', the Market's and the deposits' invariants on one member's state (module
        docstring)."""
        on_member(node_id, check_ledgers, kv)
        on_member(node_id, lambda: check_payments(kv, listings))
        baas = ledger_number(Mode.TEST, ASSET_INDEX_BAAS)
        on_member(node_id, lambda: check_deposits(kv, deposited, baas))

    def check_records_decodable(self, stores: Callable[[NodeId], SimShardStore | None]) -> None:
        """Every acknowledged record rebuilds from shards where the index says they are;
        ``stores`` gives a reachable node's shard store (None: down or gone)."""
        applied = self.reference.applied_index
        for record_id in self.records_acked:
            entry = RecordIndex.lookup(self.reference, record_id)
            assert entry is not None  # checked at the acknowledgement; the index never forgets
            blob = _rebuild(entry, stores, applied, self.grace_entries)
            if blob is None or hashlib.sha256(blob).digest() != entry.content_hash:
                raise SimFailure(
                    "decodable",
                    f"acknowledged record {record_id.hex()[:12]} at {entry.index} cannot be "
                    f"rebuilt from {entry.shard_nodes} (previous {entry.previous})",
                )

    def check_committed_log(self, node: LiveNode) -> None:
        """The node's committed log (in memory and on disk) is a prefix of the agreed one."""
        core = node.core
        for index in range(core.snapshot_index + 1, core.commit_index + 1):
            known = self.committed.get(index)
            if known is None or core.term_at(index) != known.term:
                raise SimFailure(
                    "log-agreement",
                    f"{node.node_id} has term {core.term_at(index)} at committed {index}",
                )
        for stored in node.disk.entries:
            entry = stored.entry
            if entry.index > node.disk.hard_state.commit:
                break
            known = self.committed.get(entry.index)
            if known is None or (known.term, known.payload) != (entry.term, entry.payload):
                raise SimFailure(
                    "log-agreement", f"{node.node_id} stores {_show(entry)} as committed"
                )

    def _check_stream(self, node: LiveNode) -> None:
        seen: set[RequestId] = set()
        for record in node.machine.stream:
            request_id = (record[1], record[2])
            if request_id in seen:
                raise SimFailure("idempotency", f"{node.node_id} applied {request_id} twice")
            seen.add(request_id)


def on_member(node_id: NodeId, check: Callable[..., None], *args: Any) -> None:
    """Run ``check(*args)``; a failure names the member whose state broke it."""
    try:
        check(*args)
    except SimFailure as failure:
        raise SimFailure(failure.check, f"{node_id}: {failure.detail}") from None


def check_ledgers(kv: Mapping[bytes, bytes]) -> None:
    """Per ledger the totals balance and equal the sums over its accounts; no flagged account
    is over its limit (the invariants of business/ledger/core.py, on a whole state)."""
    view = MemoryView()
    view.apply((k, v) for k, v in kv.items() if k.startswith(b"lg/"))
    sums: dict[int, list[int]] = {}
    for a in iter_accounts(view):
        s = sums.setdefault(a.ledger, [0, 0, 0, 0])
        for i, value in enumerate(
            (a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending)
        ):
            s[i] += value
        if a.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS and (
            a.debits_pending + a.debits_posted > a.credits_posted
        ):
            raise SimFailure("ledger-overdraft", f"account {a.id} is overdrawn: {a}")
        if a.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS and (
            a.credits_pending + a.credits_posted > a.debits_posted
        ):
            raise SimFailure("ledger-overdraft", f"account {a.id} is over its limit: {a}")
    for t in all_totals(view):
        stored = [t.debits_posted, t.credits_posted, t.debits_pending, t.credits_pending]
        if not t.balanced or stored != sums.get(t.ledger, [0, 0, 0, 0]):
            raise SimFailure(
                "ledger-conservation", f"ledger {t.ledger}: totals {t}, accounts sum to {sums}"
            )


def check_bridge(kv: Mapping[bytes, bytes], partners: Iterable[bytes], swept_day: int) -> None:
    """No reserve below zero; every user's lots sum to their balance, and none is held past
    its expiry day once the sweep of ``swept_day`` ran."""
    view = MemoryView()
    view.apply((k, v) for k, v in kv.items() if k.startswith((b"lg/", b"br/")))
    baas = ledger_number(Mode.TEST, ASSET_INDEX_BAAS)
    for partner in partners:
        level = reserve_level(view, partner, baas)
        if level < 0:
            raise SimFailure("bridge-reserve", f"partner {partner.hex()}'s reserve is {level}")
    for key, raw in kv.items():
        if not key.startswith(LOTS_PREFIX):
            continue
        account_id = int.from_bytes(key[len(LOTS_PREFIX) + 4 :], "big")
        lots = decode_lots(raw)
        account = get_account(view, account_id)
        held = 0 if account is None else account.credits_posted - account.debits_posted
        if sum(lot.amount for lot in lots) != held:
            raise SimFailure("bridge-lots", f"account {account_id} holds {held}, lots {lots}")
        expired = [lot for lot in lots if lot.expiry_day <= swept_day]
        if expired:
            raise SimFailure(
                "bridge-expiry",
                f"account {account_id} holds lots past their expiry day (swept {swept_day}): "
                f"{expired}",
            )


def _rebuild(
    entry: IndexEntry,
    stores: Callable[[NodeId], SimShardStore | None],
    applied: int,
    grace_entries: int,
) -> bytes | None:
    found: dict[int, bytes] = {}
    blob_bytes = 0
    for shard in range(entry.n):
        for node_id in read_order(entry, shard, applied, grace_entries):
            store = stores(node_id)
            held = store.get((entry.record_id, shard)) if store is not None else None
            if held is not None and held.content_hash == entry.content_hash:
                found[shard], blob_bytes = held.data, held.blob_bytes
                break
    try:
        return decode_blob(found, entry.k, entry.n, blob_bytes)
    except BaasError:
        return None


def _show(entry: Entry) -> str:
    return f"entry {entry.index} (term {entry.term}, {entry.kind.name}, {entry.payload[:40]!r})"


_EXPECTED_PENDING = {
    PaymentState.AUTHORISED: (PendingStatus.PENDING, PendingStatus.EXPIRED),
    PaymentState.CAPTURED: (PendingStatus.POSTED,),
    PaymentState.REFUNDED: (PendingStatus.POSTED,),
    PaymentState.VOIDED: (PendingStatus.VOIDED,),
}
# An order's stored state and the stored state of its payment that go with it.
_ORDER_PAYMENT = {
    OrderState.AUTHORISED: PaymentState.AUTHORISED,
    OrderState.FULFILLED: PaymentState.CAPTURED,
    OrderState.REFUNDED: PaymentState.REFUNDED,
    OrderState.CANCELLED: PaymentState.VOIDED,
    OrderState.EXPIRED: PaymentState.AUTHORISED,  # its pending transfer expired
}
_HOLDING = (OrderState.AUTHORISED, OrderState.FULFILLED, OrderState.REFUNDED)  # stock not back


def _records(kv: Mapping[bytes, bytes], prefix: bytes) -> dict[bytes, bytes]:
    return {k[len(prefix) :]: v for k, v in kv.items() if k.startswith(prefix)}


def check_payments(kv: Mapping[bytes, bytes], listings: Mapping[bytes, int]) -> None:
    """Payments and the Market on one state (``listings``: each listing's id and the stock it
    was put with): every payment within its amounts (captured <= authorised, refunds <=
    captured, the fee <= captured) and in the state its pending transfer says; every
    merchant's settlement account holding exactly what its payments captured less refunds and
    fees (and reserving exactly its live authorisations), the platform's fees account exactly
    the fees; every order agreeing with its payment; every listing's stock never negative and
    its units conserved (in stock or held by an order that was not cancelled or expired); the
    outbox contiguous and, untrimmed, one event per change."""
    payments = {pid: decode_payment(v) for pid, v in _records(kv, PAYMENT_PREFIX).items()}
    balances: dict[int, int] = {}  # settlement or fees account -> its expected balance
    reserved: dict[int, int] = {}  # settlement account -> its expected credits_pending
    for pid, p in sorted(payments.items()):
        status = get_pending_status(kv, p.pending)
        if not (p.captured <= p.amount and p.refunded <= p.captured and p.fee <= p.captured):
            raise SimFailure("payments-amounts", f"payment {pid.hex()[:12]}: {p}")
        settled = p.state in (PaymentState.CAPTURED, PaymentState.REFUNDED)
        if (
            status not in _EXPECTED_PENDING[p.state]
            or settled != (p.captured > 0)
            or (p.state is PaymentState.REFUNDED) != (settled and p.refunded == p.captured)
        ):
            raise SimFailure(
                "payments-state", f"payment {pid.hex()[:12]} is {p}, its pending transfer {status}"
            )
        balances[p.settlement] = balances.get(p.settlement, 0) + p.captured - p.refunded - p.fee
        fees = platform_fees_account(p.ledger)
        balances[fees] = balances.get(fees, 0) + p.fee
        if status is PendingStatus.PENDING:
            reserved[p.settlement] = reserved.get(p.settlement, 0) + p.amount
    for account_id, expected in sorted(balances.items()):
        a = get_account(kv, account_id)
        held = (0, 0) if a is None else (a.credits_posted - a.debits_posted, a.credits_pending)
        if held != (expected, reserved.get(account_id, 0)):
            raise SimFailure(
                "payments-settlement",
                f"account {account_id} holds {held[0]} (reserving {held[1]}); its payments say "
                f"{expected} (reserving {reserved.get(account_id, 0)})",
            )
    orders = {oid: decode_order(v) for oid, v in _records(kv, ORDER_PREFIX).items()}
    units: dict[bytes, int] = {}
    for oid, o in sorted(orders.items()):
        paid = payments.get(oid)
        if paid is None or paid.state is not _ORDER_PAYMENT[o.state]:
            raise SimFailure("payments-order", f"order {oid.hex()[:12]} is {o}, its payment {paid}")
        if o.state is OrderState.EXPIRED and (
            get_pending_status(kv, paid.pending) is not PendingStatus.EXPIRED
        ):
            raise SimFailure("payments-order", f"order {oid.hex()[:12]} expired before its payment")
        if o.state in _HOLDING:
            units[o.listing] = units.get(o.listing, 0) + o.quantity
    for listing, put in sorted(listings.items()):
        raw = kv.get(listing_key(listing))
        stock = None if raw is None else decode_listing(raw).stock
        if stock is not None and (stock < 0 or stock + units.get(listing, 0) != put):
            raise SimFailure(
                "payments-stock",
                f"listing {listing.hex()}: {stock} in stock and {units.get(listing, 0)} in "
                f"orders, {put} were put",
            )
    check_outbox(kv, payments, orders)


def check_outbox(
    kv: Mapping[bytes, bytes],
    payments: Mapping[bytes, PaymentRecord],
    orders: Mapping[bytes, OrderRecord],
) -> None:
    """The webhook outbox: events numbered without a gap from the head's first to its next,
    each naming a payment or order that exists; while nothing was trimmed or dropped, one
    ``payment.authorised`` per payment, one ``payment.captured`` per captured payment, one
    ``payment.voided`` per voided one, one ``payment.refunded`` per refund, one
    ``order.placed`` per order, and ``payment.expired`` only for payments the ledger expired,
    each at most once."""
    head = read_head(kv)
    events = [decode_event(k, v) for k, v in sorted(kv.items()) if k.startswith(EVENT_PREFIX)]
    if [e.seq for e in events] != list(range(head.first_seq, head.next_seq)):
        raise SimFailure("payments-outbox", f"events {[e.seq for e in events]} under head {head}")
    counts: dict[EventType, int] = {}
    for e in events:
        counts[e.type] = counts.get(e.type, 0) + 1
        if e.type is EventType.RESERVE_LOW:
            continue
        order_event = e.type.api_name.startswith("order.")
        if e.object not in (orders if order_event else payments):
            raise SimFailure("payments-outbox", f"event {e} names nothing")
        if e.type is EventType.PAYMENT_EXPIRED:
            p = payments[e.object]
            if get_pending_status(kv, p.pending) is not PendingStatus.EXPIRED:
                raise SimFailure("payments-outbox", f"event {e}: the payment did not expire")
    expired = [e.object for e in events if e.type is EventType.PAYMENT_EXPIRED]
    if len(expired) != len(set(expired)):
        raise SimFailure("payments-outbox", "a payment's expiry was announced twice")
    if head.first_seq != 1 or head.dropped:
        return  # trimmed: the per-change counts cannot be taken
    ps = payments.values()
    expected = {
        EventType.PAYMENT_AUTHORISED: len(payments),
        EventType.PAYMENT_CAPTURED: sum(1 for p in ps if p.captured),
        EventType.PAYMENT_VOIDED: sum(1 for p in ps if p.state is PaymentState.VOIDED),
        EventType.PAYMENT_REFUNDED: sum(p.refunds for p in ps),
        EventType.ORDER_PLACED: len(orders),
    }
    for kind, count in expected.items():
        if counts.get(kind, 0) != count:
            raise SimFailure(
                "payments-outbox", f"{counts.get(kind, 0)} {kind.api_name} events, {count} expected"
            )


def outbox_events(kv: Mapping[bytes, bytes]) -> list[tuple[int, int, bytes, int]]:
    """The outbox as (seq, type, object, log time), for comparing replicas."""
    return [
        (e.seq, int(e.type), e.object, e.log_time_ms)
        for e in (decode_event(k, v) for k, v in sorted(kv.items()) if k.startswith(EVENT_PREFIX))
    ]


def check_swap_index(kv: Mapping[bytes, bytes], swaps: Iterable[bytes]) -> None:
    """The Bridge's swap index (feature 11) on one state: every created swap among ``swaps``
    (op ids) listed exactly once, with its stored result, and nothing else listed; a listed
    ``ok`` swap's transfers in the ledger as its outcome names them, debiting the user
    ``amount_in`` of one asset and crediting ``amount_out`` of the other; a failed one's in
    none."""
    listed: dict[bytes, list[tuple[bytes, SwapEntry]]] = {}
    start = len(SWAP_INDEX_PREFIX)
    for key, raw in kv.items():
        if key.startswith(SWAP_INDEX_PREFIX):
            entry = (key[start : start + 16], decode_swap_entry(raw))
            listed.setdefault(key[-32:], []).append(entry)
    for op in sorted(set(swaps)):
        outcome = stored_outcome(kv, op)
        if outcome is None:
            continue  # never created
        found = listed.pop(op, [])
        if len(found) != 1 or found[0][1].result != (outcome.result or "ok"):
            raise SimFailure(
                "bridge-swap-index",
                f"swap {op.hex()[:12]} ({outcome.result}) is listed as {found}",
            )
        _check_swap_transfers(kv, op, found[0][1], outcome)
    if listed:
        raise SimFailure("bridge-swap-index", f"listed, never created: {sorted(listed)[:3]}")


def _check_swap_transfers(
    kv: Mapping[bytes, bytes], op: bytes, entry: SwapEntry, outcome: OperationOutcome
) -> None:
    transfers = [e for e in outcome.events if e.kind == EVENT_KIND_TRANSFER]
    stored = [get_transfer(kv, e.id) for e in transfers]
    if entry.result != "ok":
        if any(t is not None for t in stored):
            raise SimFailure("bridge-swap-index", f"failed swap {op.hex()[:12]} moved value")
        return
    baas = ledger_number(Mode.TEST, ASSET_INDEX_BAAS)
    ledger_in, ledger_out = (
        (entry.ledger, baas) if entry.direction == Direction.IN else (baas, entry.ledger)
    )
    net = {ledger_in: 0, ledger_out: 0}  # what the user's account on each ledger received
    for e, t in zip(transfers, stored, strict=True):
        if t is None or (t.debit_account_id, t.credit_account_id, t.amount) != (
            e.debit_account_id,
            e.credit_account_id,
            e.amount,
        ):
            raise SimFailure("bridge-swap-index", f"swap {op.hex()[:12]}: {e} is {t} in the ledger")
        mine = wallet_account_id(entry.wallet, Mode.TEST, t.ledger)
        if t.ledger in net:
            net[t.ledger] += (t.credit_account_id == mine) * t.amount
            net[t.ledger] -= (t.debit_account_id == mine) * t.amount
    if (-net[ledger_in], net[ledger_out]) != (entry.amount_in, entry.amount_out):
        raise SimFailure(
            "bridge-swap-index",
            f"swap {op.hex()[:12]} listed {entry.amount_in} -> {entry.amount_out}, the ledger "
            f"moved {-net[ledger_in]} -> {net[ledger_out]}",
        )


def check_deposits(kv: Mapping[bytes, bytes], credited: Mapping[int, int], ledger: int) -> None:
    """Vault deposits credited exactly once (``credited``: what the distinct deposits sent
    credit, per user's account or the suspense account, on ``ledger``): each account credited
    that much and no more, the platform's vault account debited the total."""
    mode = Mode(ledger & 1)
    for account_id, expected in sorted(credited.items()):
        found = get_account(kv, account_id)
        got = 0 if found is None else found.credits_posted
        if got != expected:
            raise SimFailure(
                "deposits", f"account {account_id} was credited {got}, its deposits are {expected}"
            )
    found = get_account(kv, vault_account(mode, ledger))
    paid = 0 if found is None else found.debits_posted
    if paid != sum(credited.values()):
        raise SimFailure("deposits", f"the vault paid {paid}, deposits {sum(credited.values())}")
