"""The ledger state machine: assets, accounts and transfers, applied a batch at a time.

Theory of operation
===================

This is a pure, deterministic double-entry ledger modelled on TigerBeetle's
``create_accounts`` / ``create_transfers`` (``src/state_machine.zig``). It never reads a clock
or does I/O: :meth:`Ledger.apply` takes a batch of events, the leader-stamped log time and a
``get``-only view of the state, and returns one :class:`~business.ledger.model.Result` per
event plus every change as writes ``[(key, value or None), ...]`` under the one prefix
``lg/``, which the node applies in one LevelDB write batch with its applied index. The same
log gives the same results and the same bytes on every node.

Data model
----------
* **Asset** ``(ledger u32, kind BAAS|POINT|TOKEN, scale 0..18, user_data_128)``: one asset per
  ledger number, created by a :class:`CreateAsset` event. BAAS is kept in its 18-decimal
  on-chain unit; points and tokens at the scale their issuer chose (more than 18 refused). The
  scale is fixed forever (a new scale is a new ledger). Accounts and transfers on an unknown
  ledger are refused (``ledger_not_found``).
* **Account** ``(id u128, ledger, code u16 = its type, flags, user_data_128, timestamp)`` plus
  four u128 balances ``debits_pending, debits_posted, credits_pending, credits_posted``.
  Immutable apart from the balances; never deleted. Flags: ``linked``,
  ``debits_must_not_exceed_credits``, ``credits_must_not_exceed_debits`` (mutually exclusive),
  ``history`` (keep the balances after every change) and ``closed`` (refuse every transfer
  except the void of a pending one).
* **Transfer** ``(id, debit_account_id, credit_account_id, amount, pending_id, user_data_128,
  timeout s, ledger, code u16 = its reason, flags, timestamp)``: immutable. Flags ``linked``,
  ``pending``, ``post_pending_transfer``, ``void_pending_transfer``, ``balancing_debit``,
  ``balancing_credit``.
* Left out of TigerBeetle for now, refused as ``reserved_flag`` where they are flags:
  ``imported`` (no imports of history), ``closing_debit``/``closing_credit`` (accounts are
  closed at creation only), ``user_data_64``/``user_data_32`` (the operation's details live
  in its encrypted record; ``user_data_128`` is the correlation id) and the query filters.
  Zero amounts are refused (``amount_must_not_be_zero``, a post of 0 too: AMOUNT_MAX posts the
  full amount) because bad input must never look like a movement of value; a balancing
  transfer may still clamp to 0 and then records that it moved 0.

The checks, in precedence
-------------------------
Each check has one result code; the member order of :class:`AccountResult`,
:class:`TransferResult` and :class:`AssetResult` is the order they are checked in, so an
event violating two checks always gets the earlier code. For a transfer: flags known, id not
0 / 2^128-1, then the id is looked up: an existing transfer with the same id is ``exists``
(success: the docs say treat it exactly as ``ok``) unless a field differs
(``exists_with_different_<field>`` in the order flags, pending_id, timeout, debit, credit,
amount, user_data_128, ledger, code); an id that failed before on a state-dependent
("transient") check is ``id_already_failed``. Then flag exclusivity, account ids, pending_id,
timeout only on pending, amount, ledger, code, the asset, the accounts (found, same ledger,
the transfer's ledger), for post/void the pending transfer (found, pending, same
accounts/ledger/code where given, amount, not resolved, not expired), closed accounts,
overflows and last the balance limits (``exceeds_credits`` / ``exceeds_debits``).

Linked chains
-------------
Consecutive events with the ``linked`` flag, up to and including the first without it, form a
chain (accounts and transfers may mix; an asset event has no flags and ends a chain). Events
run in order, each seeing the ones before; if one fails, every change of the chain is undone,
the failing event keeps its code and the others get ``linked_event_failed``. A batch that ends
with the flag still set gets ``linked_event_chain_open`` on its last event and fails as one.

Two-phase transfers and expiry
------------------------------
A ``pending`` transfer reserves at once (``debits_pending`` / ``credits_pending``, counted
against the limits). A ``post_pending_transfer`` moves all of it (amount AMOUNT_MAX or the
exact amount) or part (the rest is released); a ``void_pending_transfer`` (amount 0 or the
full amount) releases it. Post and void take accounts, ledger, code and user_data_128 from the
pending transfer where given as 0 and must match it otherwise. A pending transfer resolves
once: later attempts get ``pending_transfer_already_posted`` / ``_already_voided`` /
``_expired``. A pending transfer with ``timeout`` > 0 expires at ``timestamp + timeout``: a
post or void stamped at or after that is ``pending_transfer_expired`` whether or not the
sweep has released it yet, so correctness never depends on the sweep.

The sweep releases expired reservations. Each pending transfer with a timeout is appended to
the expiry bucket of the second ``ceil(expires_at / 1 s)``, kept as bounded pages of ids
(``expiry_page_ids_max``) under ``lg/xh/<second>`` (page count) and ``lg/xp/<second><page>``:
plain ``get`` reads, no range scan. A cursor (second, page, offset) in the meta value walks the
buckets in order up to the log time; every bucket before it is done and deleted. A new pending
transfer always lands after the cursor (its expiry is at least 1 s after the log time). The
sweep runs once per new log time, at the start of the first batch stamped with it, bounded by
``expiry_releases_max`` releases and ``expiry_seconds_scan_max`` buckets; what it leaves is
done at the next log time. Because it runs once per log time, the same events split into
other batches at the same log times give the same state. Posts and voids are not removed
from the buckets: the sweep skips ids whose status is no longer pending.

Time and timestamps
-------------------
Every event gets a timestamp in ns: the log time (ms, from the leader's stamp on the entry),
or one more than the previous timestamp when that is later, so timestamps are unique and
increasing and order everything (expiry releases get one too). Failed events consume theirs,
so the timestamps of later events do not depend on which earlier ones failed.

Idempotency
-----------
The id is the idempotency key. A retry of a created id answers ``exists`` with the stored
timestamp and amount (the stored flags include ``linked``; a post or void may give the
inherited fields as 0 again; a post may ask AMOUNT_MAX again, a void 0, a balancing transfer
any amount at least what it moved). A retry of an id that failed on a transient check (one
that depends on state that may change: unknown ledger, account or pending transfer, closed
account, overflow, limit) answers ``id_already_failed`` even when the balances would now allow
it, and the failure is stored under the id (``lg/t/<id>``) so one ``get`` answers both. Every
other failure depends only on the event itself, or on state that never changes back (a
pending transfer once resolved or expired), so a retry gets the same code. Inside a chain only
the failing event's own transient failure is recorded; ``linked_event_failed`` events never
ran and may be retried. Accounts and assets follow TigerBeetle: their only state-dependent
failure, ``ledger_not_found``, is not recorded (an account retried after its asset exists is
created), and ``exists_with_different_<field>`` compares the fields in the order listed.

Conservation
------------
Every balance change is made on both sides of a transfer and on the ledger's running totals
(``lg/lt/<ledger>``: sums of the four balances over all its accounts), so per ledger the sum
of debits equals the sum of credits, posted and pending. At the end of each batch the core
checks, for every ledger it touched, that the totals were balanced before and are after, that
the change of the totals equals the change of its accounts' balances, and that no flagged
account is over its limit; a failure raises :class:`~node.errors.InvariantViolation`.

On-disk layout (all under ``lg/``; values are versioned fixed-width structs)
--------------------------------------------------------------------------
``lg/m`` meta (layout version, last timestamp, last swept log time, sweep cursor);
``lg/as/<ledger>`` asset; ``lg/a/<id>`` account; ``lg/t/<id>`` transfer, or the sticky result
code of an id that failed (one ``get`` answers both questions); ``lg/ps/<id>`` pending status;
``lg/at/<account><timestamp>`` -> transfer id (an account's transfers in order, for paginated
lists); ``lg/ab/<account><timestamp>`` balances of a history account; ``lg/lt/<ledger>``
totals; ``lg/xh/`` and ``lg/xp/`` the expiry buckets. The node's operations entry
(``node/consensus/ledger_ops.py``, not this core) adds ``lg/o/<record id>``, an operation's
first outcome, and ``lg/ap/<record id>``, its approvals as proposed.

Performance: one batch reads each account, asset and totals value at most once and writes
each at most once; the batch keeps accounts as small mutable lists (balances as ints, the
stored immutable head reused when writing), never as objects. Event field widths are checked
when an event is built (``model._check_widths``), so ``apply`` only checks the event types.
``baas-bench-ledger`` measures it over LevelDB.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from business.ledger.model import (
    ACCOUNT_FLAGS_KNOWN,
    ACCOUNT_HEAD_V1,
    ACCOUNT_PREFIX,
    ACCOUNT_TRANSFERS_PREFIX,
    ACCOUNT_V1,
    AMOUNT_MAX,
    ASSET_V1,
    BAAS_SCALE,
    BALANCE_V1,
    BALANCES_PREFIX,
    EXPIRY_HEAD_V1,
    FAILED_VERSION,
    ID_MAX,
    META_KEY,
    META_V1,
    NS_PER_MS,
    NS_PER_S,
    PENDING_V1,
    SCALE_MAX,
    STATE_LAYOUT_VERSION,
    TOTALS_V1,
    TRANSFER_FLAGS_KNOWN,
    TRANSFER_PREFIX,
    TRANSFER_V1,
    TRANSIENT_TRANSFER_RESULTS,
    U64_MAX,
    VALUE_VERSION,
    AccountFlags,
    AccountResult,
    AssetKind,
    AssetResult,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    LedgerConfig,
    PendingStatus,
    Result,
    TransferFlags,
    TransferResult,
    asset_key,
    expiry_head_key,
    expiry_page_key,
    pending_key,
    totals_key,
)
from node.consensus.state_machine import StateView, Write
from node.errors import CorruptEntry, InvalidRequest, InvariantViolation, UnsupportedFormat

__all__ = ["Ledger"]

# Account lists: the mutable in-batch form of an account (no object per account): ledger,
# code, flags, the stored immutable head (version .. timestamp, reused when writing), the
# four balances, the id's 16 bytes, and the balances as loaded (None: created in this batch).
_LEDGER, _CODE, _FLAGS, _HEAD, _DP, _DPO, _CP, _CPO, _KEY, _ORIGINAL = range(10)
# Transfer tuples: (debit, credit, amount, pending_id, user_data_128, timeout, ledger, code,
# flags, timestamp).
_T_DR, _T_CR, _T_AMOUNT, _T_PID, _T_UD, _T_TIMEOUT, _T_LEDGER, _T_CODE, _T_FLAGS, _T_TS = range(10)
# Totals lists: debits_posted, credits_posted, debits_pending, credits_pending.

_LINKED = int(TransferFlags.LINKED)  # the same bit for accounts
_PENDING = int(TransferFlags.PENDING)
_POST = int(TransferFlags.POST_PENDING_TRANSFER)
_VOID = int(TransferFlags.VOID_PENDING_TRANSFER)
_BAL_DR = int(TransferFlags.BALANCING_DEBIT)
_BAL_CR = int(TransferFlags.BALANCING_CREDIT)
_DMNEC = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CMNED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
_HISTORY = int(AccountFlags.HISTORY)
_CLOSED = int(AccountFlags.CLOSED)
_P_PENDING = int(PendingStatus.PENDING)
_P_POSTED = int(PendingStatus.POSTED)
_P_VOIDED = int(PendingStatus.VOIDED)
_P_EXPIRED = int(PendingStatus.EXPIRED)

_ACCOUNT_SIZE = ACCOUNT_V1.size
# ledger, code, flags and the four u128 balances as eight u64 halves: one unpack per read
# (four int.from_bytes of slices cost ~1.8x as much).
_ACCOUNT_READ = struct.Struct(">xIHH24x8Q")
assert _ACCOUNT_READ.size == _ACCOUNT_SIZE
_EVENT_TYPES = frozenset({CreateAsset, CreateAccount, CreateTransfer})
# One Result per event: a frozen dataclass's __init__ sets each field through
# object.__setattr__ and costs ~2x what setting its slots directly does. ``_result`` builds the
# same frozen value (all three fields set, compared and hashed alike) on the hot path.
_new_result = Result.__new__
_set_code = Result.__dict__["code"].__set__  # the slots' member descriptors
_set_timestamp = Result.__dict__["timestamp"].__set__
_set_amount = Result.__dict__["amount"].__set__


def _result(code: TransferResult, timestamp: int, amount: int) -> Result:
    r = _new_result(Result)
    _set_code(r, code)
    _set_timestamp(r, timestamp)
    _set_amount(r, amount)
    return r


_ZERO16 = bytes(16)
_ABSENT: Any = object()  # "no entry in this overlay dict" in the undo log
T = TransferResult
A = AccountResult


class Ledger:
    """The ledger core. Stateless between batches: all state is in the view."""

    prefix = b"lg/"

    def __init__(self, config: LedgerConfig) -> None:
        self.config = config

    def apply(
        self, events: Sequence[Event], now_ms: int, view: StateView
    ) -> tuple[list[Result], list[Write]]:
        """Apply one batch at log time ``now_ms``: one result per event, and all writes.

        A batch over ``events_per_batch_max`` or holding something other than the three event
        types is refused whole with :class:`~node.errors.InvalidRequest` before anything is
        applied. Field widths need no check here: an event cannot be built with a field out
        of range (see ``model._check_widths``), and the wire decoder builds them.
        """
        if len(events) > self.config.events_per_batch_max:
            raise InvalidRequest(
                f"a ledger batch holds at most {self.config.events_per_batch_max} events"
            )
        if type(now_ms) is not int or not 0 <= now_ms <= U64_MAX // NS_PER_MS:
            raise InvalidRequest("log time must be a u64 count of ms")
        for event in events:
            if type(event) not in _EVENT_TYPES:
                raise InvalidRequest(f"not a ledger event: {type(event).__name__}")
        batch = _Batch(self.config, view, now_ms)
        first = max(batch.last_ts, batch.now_ns)
        if first + len(events) + self.config.expiry_releases_max > U64_MAX:
            raise InvariantViolation("ledger timestamps would exhaust u64")
        batch.sweep()
        results = batch.run(events)
        return results, batch.finish()


def _i(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


class _Batch:
    """The state of one apply: overlays over the view, the undo log of an open chain."""

    def __init__(self, config: LedgerConfig, view: StateView, now_ms: int) -> None:
        self.config = config
        self.view = view
        self.now_ms = now_ms
        self.now_ns = now_ms * NS_PER_MS
        self.assets: dict[int, tuple[int, int, int] | None] = {}  # kind, scale, user_data
        self.accounts: dict[int, list[Any] | None] = {}
        # Every transfer id looked up or created: its row, its sticky failure, or None.
        self.transfers: dict[int, tuple[int, ...] | TransferResult | None] = {}
        # Transfers created in this batch: the row, and the 16-byte ids of the transfer and of
        # its accounts (encoded once, for its index entries and its stored value).
        self.created: dict[int, tuple[tuple[int, ...], bytes, bytes, bytes]] = {}
        self.failed: dict[int, TransferResult] = {}  # sticky failures recorded in this batch
        self.status: dict[int, int | None] = {}
        self.status_dirty: dict[int, int] = {}
        self.totals: dict[int, list[int]] = {}
        self.totals_before: dict[int, tuple[int, int, int, int]] = {}
        self.new_assets: dict[int, tuple[int, int, int, int]] = {}
        self.writes: dict[bytes, bytes | None] = {}
        self.undo: list[tuple[dict[Any, Any], Any, Any]] | None = None
        raw = view.get(META_KEY)
        if raw is None:
            # A fresh ledger: no bucket before the current second can hold anything.
            self.last_ts = 0
            self.swept_ms = 0
            self.cursor = (self.now_ns // NS_PER_S, 0, 0)
        else:
            if len(raw) != META_V1.size or raw[0] != STATE_LAYOUT_VERSION:
                raise UnsupportedFormat("unknown ledger state layout version")
            _, self.last_ts, self.swept_ms, second, page, offset = META_V1.unpack(raw)
            self.cursor = (second, page, offset)
        self.meta_raw = raw

    # --- time ---------------------------------------------------------------------------

    def next_ts(self) -> int:
        ts = self.last_ts + 1
        if ts < self.now_ns:
            ts = self.now_ns
        self.last_ts = ts
        return ts

    # --- reads through the overlays -----------------------------------------------------

    def get_raw(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        return self.view.get(key)

    def asset(self, ledger: int) -> tuple[int, int, int] | None:
        try:
            return self.assets[ledger]
        except KeyError:
            pass
        raw = self.view.get(asset_key(ledger))
        value = None
        if raw is not None:
            if len(raw) != ASSET_V1.size or raw[0] != VALUE_VERSION:
                raise CorruptEntry("stored asset value is not version 1")
            _, kind, scale, ud, _ts = ASSET_V1.unpack(raw)
            value = (kind, scale, _i(ud))
        self.assets[ledger] = value
        return value

    def account(self, account_id: int) -> list[Any] | None:
        acc = self.accounts.get(account_id, _ABSENT)
        if acc is not _ABSENT:
            return acc  # type: ignore[no-any-return]
        key = ACCOUNT_PREFIX + account_id.to_bytes(16, "big")
        raw = self.view.get(key)
        if raw is None:
            self.accounts[account_id] = None
            return None
        if len(raw) != _ACCOUNT_SIZE or raw[0] != VALUE_VERSION:
            raise CorruptEntry("stored account value is not version 1")
        ledger, code, flags, dp1, dp0, dpo1, dpo0, cp1, cp0, cpo1, cpo0 = _ACCOUNT_READ.unpack(raw)
        balances = (dp1 << 64 | dp0, dpo1 << 64 | dpo0, cp1 << 64 | cp0, cpo1 << 64 | cpo0)
        acc = [ledger, code, flags, raw[:33], *balances, key[5:], balances]
        self.accounts[account_id] = acc
        return acc

    def transfer(self, transfer_id: int) -> tuple[int, ...] | TransferResult | None:
        value = self.transfers.get(transfer_id, _ABSENT)
        if value is not _ABSENT:
            return value  # type: ignore[no-any-return]
        raw = self.view.get(TRANSFER_PREFIX + transfer_id.to_bytes(16, "big"))
        value = None
        if raw is not None:
            if raw[0] == FAILED_VERSION:
                try:
                    value = TransferResult(raw[1:].decode("ascii"))
                except (UnicodeDecodeError, ValueError) as exc:
                    raise CorruptEntry("stored failure has an unknown result code") from exc
            else:
                if len(raw) != TRANSFER_V1.size or raw[0] != VALUE_VERSION:
                    raise CorruptEntry("stored transfer value is not version 1")
                _, dr, cr, amount, pid, ud, timeout, ledger, code, flags, ts = TRANSFER_V1.unpack(
                    raw
                )
                value = (_i(dr), _i(cr), _i(amount), _i(pid), _i(ud), timeout, ledger, code)
                value += (flags, ts)
        self.transfers[transfer_id] = value
        return value  # type: ignore[no-any-return]

    def pending_status(self, transfer_id: int) -> int | None:
        try:
            return self.status[transfer_id]
        except KeyError:
            pass
        raw = self.view.get(pending_key(transfer_id))
        value = None
        if raw is not None:
            if len(raw) != PENDING_V1.size or raw[0] != VALUE_VERSION:
                raise CorruptEntry("stored pending status is not version 1")
            value = raw[1]
        self.status[transfer_id] = value
        return value

    def ledger_totals(self, ledger: int) -> list[int]:
        try:
            return self.totals[ledger]
        except KeyError:
            pass
        raw = self.view.get(totals_key(ledger))
        if raw is None:
            sums = [0, 0, 0, 0]
        else:
            if len(raw) != TOTALS_V1.size or raw[0] != VALUE_VERSION:
                raise CorruptEntry("stored ledger totals are not version 1")
            sums = [_i(x) for x in TOTALS_V1.unpack(raw)[1:]]
        self.totals_before[ledger] = (sums[0], sums[1], sums[2], sums[3])
        self.totals[ledger] = sums
        return sums

    # --- the undo log of a linked chain -------------------------------------------------

    def save(self, table: dict[Any, Any], key: Any) -> None:
        """Remember ``table[key]`` before a chain changes it (lists are copied)."""
        assert self.undo is not None
        old = table.get(key, _ABSENT)
        if type(old) is list:
            old = old.copy()
        self.undo.append((table, key, old))

    def rollback(self, undo: list[tuple[dict[Any, Any], Any, Any]]) -> None:
        for table, key, old in reversed(undo):
            if old is _ABSENT:
                table.pop(key, None)
            else:
                table[key] = old

    # --- the batch ----------------------------------------------------------------------

    def run(self, events: Sequence[Event]) -> list[Result]:
        results: list[Result] = []
        n = len(events)
        i = 0
        append = results.append
        create_transfer = self.create_transfer
        transient = TRANSIENT_TRANSFER_RESULTS
        while i < n:
            e = events[i]
            if type(e) is CreateTransfer and not e.flags & _LINKED:
                # The hot path (one unlinked transfer), inlined: next_ts() and one().
                ts = self.last_ts + 1
                if ts < self.now_ns:
                    ts = self.now_ns
                self.last_ts = ts
                code, amount, stamp = create_transfer(e, ts)
                if code in transient:
                    self.failed[e.id] = code
                    self.transfers[e.id] = code
                append(_result(code, stamp, amount))
                i += 1
                continue
            if not _linked(e):
                append(self.one(e, self.next_ts()))
                i += 1
                continue
            end = i
            while end < n and _linked(events[end]):
                end += 1
            if end == n:  # the batch ends inside the chain: it fails as one
                for k in range(i, n):
                    linked = _linked_code(events[k], open_chain=k == n - 1)
                    append(Result(linked, self.next_ts()))
                break
            results.extend(self.chain(events[i : end + 1]))
            i = end + 1
        return results

    def chain(self, events: Sequence[Event]) -> list[Result]:
        self.undo = []
        done: list[Result] = []
        failed_at = -1
        for k, e in enumerate(events):
            result = self.one(e, self.next_ts(), record_failure=False)
            done.append(result)
            if not result.succeeded:
                failed_at = k
                break
        undo, self.undo = self.undo, None
        if failed_at < 0:
            return done
        self.rollback(undo)
        failure = done[failed_at]
        failing = events[failed_at]
        if isinstance(failing, CreateTransfer) and failure.code in TRANSIENT_TRANSFER_RESULTS:
            assert isinstance(failure.code, TransferResult)
            self.failed[failing.id] = failure.code
            self.transfers[failing.id] = failure.code
        out = [
            Result(_linked_code(e, open_chain=False), r.timestamp)
            for e, r in zip(events[: len(done)], done, strict=True)
        ]
        out[failed_at] = failure
        for e in events[failed_at + 1 :]:  # never run, but stamped like the others
            out.append(Result(_linked_code(e, open_chain=False), self.next_ts()))
        return out

    def one(self, e: Event, ts: int, record_failure: bool = True) -> Result:
        if type(e) is CreateTransfer:
            code, amount, stamp = self.create_transfer(e, ts)
            if record_failure and code in TRANSIENT_TRANSFER_RESULTS:
                self.failed[e.id] = code
                self.transfers[e.id] = code
            return Result(code, stamp, amount)
        if type(e) is CreateAccount:
            return Result(self.create_account(e, ts), ts)
        assert type(e) is CreateAsset
        return Result(self.create_asset(e, ts), ts)

    # --- assets and accounts ------------------------------------------------------------

    def create_asset(self, e: CreateAsset, ts: int) -> AssetResult:
        if e.ledger == 0:
            return AssetResult.LEDGER_MUST_NOT_BE_ZERO
        if e.kind not in AssetKind._value2member_map_:
            return AssetResult.KIND_INVALID
        if e.scale > SCALE_MAX:
            return AssetResult.SCALE_EXCEEDS_MAX
        if e.kind == AssetKind.BAAS and e.scale != BAAS_SCALE:
            return AssetResult.SCALE_MUST_BE_18_FOR_BAAS
        found = self.asset(e.ledger)
        if found is not None:
            if found[0] != e.kind:
                return AssetResult.EXISTS_WITH_DIFFERENT_KIND
            if found[1] != e.scale:
                return AssetResult.EXISTS_WITH_DIFFERENT_SCALE
            if found[2] != e.user_data_128:
                return AssetResult.EXISTS_WITH_DIFFERENT_USER_DATA_128
            return AssetResult.EXISTS
        if self.undo is not None:
            self.save(self.assets, e.ledger)
            self.save(self.new_assets, e.ledger)
        self.assets[e.ledger] = (e.kind, e.scale, e.user_data_128)
        self.new_assets[e.ledger] = (e.kind, e.scale, e.user_data_128, ts)
        # Every registered ledger has a totals value (zero), so the digest covers it.
        self.put(totals_key(e.ledger), TOTALS_V1.pack(VALUE_VERSION, *(bytes(32),) * 4))
        return AssetResult.OK

    def create_account(self, e: CreateAccount, ts: int) -> AccountResult:
        flags = e.flags
        if flags & ~ACCOUNT_FLAGS_KNOWN:
            return A.RESERVED_FLAG
        if e.id == 0:
            return A.ID_MUST_NOT_BE_ZERO
        if e.id == ID_MAX:
            return A.ID_MUST_NOT_BE_INT_MAX
        if flags & _DMNEC and flags & _CMNED:
            return A.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if e.ledger == 0:
            return A.LEDGER_MUST_NOT_BE_ZERO
        if e.code == 0:
            return A.CODE_MUST_NOT_BE_ZERO
        found = self.account(e.id)
        if found is not None:
            if found[_FLAGS] != flags:
                return A.EXISTS_WITH_DIFFERENT_FLAGS
            if _i(found[_HEAD][9:25]) != e.user_data_128:
                return A.EXISTS_WITH_DIFFERENT_USER_DATA_128
            if found[_LEDGER] != e.ledger:
                return A.EXISTS_WITH_DIFFERENT_LEDGER
            if found[_CODE] != e.code:
                return A.EXISTS_WITH_DIFFERENT_CODE
            return A.EXISTS
        if self.asset(e.ledger) is None:
            return A.LEDGER_NOT_FOUND
        if self.undo is not None:
            self.save(self.accounts, e.id)
        ud = e.user_data_128.to_bytes(16, "big")
        head = ACCOUNT_HEAD_V1.pack(VALUE_VERSION, e.ledger, e.code, flags, ud, ts)
        self.accounts[e.id] = [e.ledger, e.code, flags, head, 0, 0, 0, 0, _b16(e.id), None]
        return A.OK

    # --- transfers ----------------------------------------------------------------------

    def create_transfer(self, e: CreateTransfer, ts: int) -> tuple[TransferResult, int, int]:
        """(result, amount moved, timestamp) of one transfer event."""
        flags = e.flags
        if flags & ~TRANSFER_FLAGS_KNOWN:
            return T.RESERVED_FLAG, 0, ts
        tid = e.id
        if tid == 0:
            return T.ID_MUST_NOT_BE_ZERO, 0, ts
        if tid == ID_MAX:
            return T.ID_MUST_NOT_BE_INT_MAX, 0, ts
        found = self.transfers.get(tid, _ABSENT)
        if found is _ABSENT:
            found = self.transfer(tid)
        if found is not None:
            if type(found) is tuple:
                return _exists(e, found), found[_T_AMOUNT], found[_T_TS]
            return T.ID_ALREADY_FAILED, 0, ts
        if flags & (_POST | _VOID):
            code, amount = self.post_or_void(e, ts)
            return code, amount, ts
        dr_id = e.debit_account_id
        cr_id = e.credit_account_id
        pending = flags & _PENDING
        amount = e.amount
        ledger = e.ledger
        # The common case passes each group of checks with one test; the first failing
        # check of a group is then found in precedence order.
        if not (0 < dr_id < ID_MAX and 0 < cr_id < ID_MAX and dr_id != cr_id):
            return _account_id_code(dr_id, cr_id), 0, ts
        if e.pending_id:
            return T.PENDING_ID_MUST_BE_ZERO, 0, ts
        if e.timeout and not pending:
            return T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER, 0, ts
        if amount == 0:
            return T.AMOUNT_MUST_NOT_BE_ZERO, 0, ts
        if ledger == 0:
            return T.LEDGER_MUST_NOT_BE_ZERO, 0, ts
        if e.code == 0:
            return T.CODE_MUST_NOT_BE_ZERO, 0, ts
        asset = self.assets.get(ledger, _ABSENT)
        if asset is _ABSENT:
            asset = self.asset(ledger)
        if asset is None:
            return T.LEDGER_NOT_FOUND, 0, ts
        accounts = self.accounts
        dr = accounts.get(dr_id, _ABSENT)
        if dr is _ABSENT:
            dr = self.account(dr_id)
        if dr is None:
            return T.DEBIT_ACCOUNT_NOT_FOUND, 0, ts
        cr = accounts.get(cr_id, _ABSENT)
        if cr is _ABSENT:
            cr = self.account(cr_id)
        if cr is None:
            return T.CREDIT_ACCOUNT_NOT_FOUND, 0, ts
        if dr[_LEDGER] != cr[_LEDGER]:
            return T.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER, 0, ts
        if ledger != dr[_LEDGER]:
            return T.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS, 0, ts
        dr_flags = dr[_FLAGS]
        cr_flags = cr[_FLAGS]
        if (dr_flags | cr_flags) & _CLOSED:
            if dr_flags & _CLOSED:
                return T.DEBIT_ACCOUNT_ALREADY_CLOSED, 0, ts
            return T.CREDIT_ACCOUNT_ALREADY_CLOSED, 0, ts
        if flags & (_BAL_DR | _BAL_CR):
            if flags & _BAL_DR:
                amount = max(0, min(amount, dr[_CPO] - dr[_DPO] - dr[_DP]))
            if flags & _BAL_CR:
                amount = max(0, min(amount, cr[_DPO] - cr[_CPO] - cr[_CP]))
        dr_sum = dr[_DP] + dr[_DPO] + amount
        cr_sum = cr[_CP] + cr[_CPO] + amount
        if dr_sum > AMOUNT_MAX or cr_sum > AMOUNT_MAX:
            return _overflow(dr, cr, amount, pending), 0, ts
        expires_ns = 0
        if pending and e.timeout:
            expires_ns = ts + e.timeout * NS_PER_S
            if expires_ns > U64_MAX:
                return T.OVERFLOWS_TIMEOUT, 0, ts
        if dr_flags & _DMNEC and dr_sum > dr[_CPO]:
            return T.EXCEEDS_CREDITS, 0, ts
        if cr_flags & _CMNED and cr_sum > cr[_DPO]:
            return T.EXCEEDS_DEBITS, 0, ts
        # All checks passed: move the value (both sides and the ledger's totals).
        totals = self.totals.get(ledger) or self.ledger_totals(ledger)
        if self.undo is not None:
            self.save(self.accounts, dr_id)
            self.save(self.accounts, cr_id)
            self.save(self.totals, ledger)
        if pending:
            dr[_DP] += amount
            cr[_CP] += amount
            totals[2] += amount
            totals[3] += amount
            self.set_status(tid, _P_PENDING)
            if expires_ns:
                self.add_expiry(tid, expires_ns)
        else:
            dr[_DPO] += amount
            cr[_CPO] += amount
            totals[0] += amount
            totals[1] += amount
        self.record(
            tid,
            (dr_id, cr_id, amount, 0, e.user_data_128, e.timeout, ledger, e.code, flags, ts),
            dr,
            cr,
        )
        return T.OK, amount, ts

    def post_or_void(self, e: CreateTransfer, ts: int) -> tuple[TransferResult, int]:
        flags = e.flags
        post = flags & _POST
        if (post and flags & _VOID) or flags & (_PENDING | _BAL_DR | _BAL_CR):
            return T.FLAGS_ARE_MUTUALLY_EXCLUSIVE, 0
        if e.debit_account_id == ID_MAX:
            return T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX, 0
        if e.credit_account_id == ID_MAX:
            return T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX, 0
        pid = e.pending_id
        if pid == 0:
            return T.PENDING_ID_MUST_NOT_BE_ZERO, 0
        if pid == ID_MAX:
            return T.PENDING_ID_MUST_NOT_BE_INT_MAX, 0
        if pid == e.id:
            return T.PENDING_ID_MUST_BE_DIFFERENT, 0
        if e.timeout:
            return T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER, 0
        if post and e.amount == 0:
            return T.AMOUNT_MUST_NOT_BE_ZERO, 0
        p = self.transfer(pid)
        if type(p) is not tuple:
            return T.PENDING_TRANSFER_NOT_FOUND, 0
        if not p[_T_FLAGS] & _PENDING:
            return T.PENDING_TRANSFER_NOT_PENDING, 0
        if e.debit_account_id and e.debit_account_id != p[_T_DR]:
            return T.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID, 0
        if e.credit_account_id and e.credit_account_id != p[_T_CR]:
            return T.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID, 0
        if e.ledger and e.ledger != p[_T_LEDGER]:
            return T.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER, 0
        if e.code and e.code != p[_T_CODE]:
            return T.PENDING_TRANSFER_HAS_DIFFERENT_CODE, 0
        reserved = p[_T_AMOUNT]
        if post:
            amount = reserved if e.amount == AMOUNT_MAX else e.amount
            if amount > reserved:
                return T.EXCEEDS_PENDING_TRANSFER_AMOUNT, 0
        else:
            if e.amount not in (0, reserved):
                return T.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT, 0
            amount = reserved
        status = self.pending_status(pid)
        if status == _P_POSTED:
            return T.PENDING_TRANSFER_ALREADY_POSTED, 0
        if status == _P_VOIDED:
            return T.PENDING_TRANSFER_ALREADY_VOIDED, 0
        if status == _P_EXPIRED:
            return T.PENDING_TRANSFER_EXPIRED, 0
        if status != _P_PENDING:
            raise InvariantViolation("a pending transfer has no pending status")
        if p[_T_TIMEOUT] and ts >= p[_T_TS] + p[_T_TIMEOUT] * NS_PER_S:
            return T.PENDING_TRANSFER_EXPIRED, 0  # even if the sweep has not released it
        dr = self.account(p[_T_DR])
        cr = self.account(p[_T_CR])
        if dr is None or cr is None:
            raise InvariantViolation("a pending transfer names an account that does not exist")
        if post and dr[_FLAGS] & _CLOSED:
            return T.DEBIT_ACCOUNT_ALREADY_CLOSED, 0
        if post and cr[_FLAGS] & _CLOSED:
            return T.CREDIT_ACCOUNT_ALREADY_CLOSED, 0
        # The reservation already counted against limits and overflow (dp + dpo <= max, and
        # amount <= reserved), so neither can fail here.
        ledger = p[_T_LEDGER]
        totals = self.ledger_totals(ledger)
        if self.undo is not None:
            self.save(self.accounts, p[_T_DR])
            self.save(self.accounts, p[_T_CR])
            self.save(self.totals, ledger)
        dr[_DP] -= reserved
        cr[_CP] -= reserved
        totals[2] -= reserved
        totals[3] -= reserved
        if post:
            dr[_DPO] += amount
            cr[_CPO] += amount
            totals[0] += amount
            totals[1] += amount
        self.set_status(pid, _P_POSTED if post else _P_VOIDED)
        user_data = e.user_data_128 or p[_T_UD]
        self.record(
            e.id,
            (p[_T_DR], p[_T_CR], amount, pid, user_data, 0, ledger, p[_T_CODE], flags, ts),
            dr,
            cr,
        )
        return T.OK, amount

    def set_status(self, transfer_id: int, status: int) -> None:
        if self.undo is not None:
            self.save(self.status, transfer_id)
            self.save(self.status_dirty, transfer_id)
        self.status[transfer_id] = status
        self.status_dirty[transfer_id] = status

    def put(self, key: bytes, value: bytes | None) -> None:
        if self.undo is not None:
            self.save(self.writes, key)
        self.writes[key] = value

    def record(self, tid: int, row: tuple[int, ...], dr: list[Any], cr: list[Any]) -> None:
        """Store a created transfer, index it under both accounts, keep history balances."""
        ts_key = row[_T_TS].to_bytes(8, "big")
        tid_bytes = tid.to_bytes(16, "big")
        index = b"\x01" + tid_bytes  # INDEX_V1
        dr_id, cr_id = dr[_KEY], cr[_KEY]
        dr_key = ACCOUNT_TRANSFERS_PREFIX + dr_id + ts_key
        cr_key = ACCOUNT_TRANSFERS_PREFIX + cr_id + ts_key
        if self.undo is not None:
            self.save(self.created, tid)
            self.save(self.transfers, tid)
            self.save(self.writes, dr_key)
            self.save(self.writes, cr_key)
        self.created[tid] = (row, tid_bytes, dr_id, cr_id)
        self.transfers[tid] = row
        w = self.writes
        w[dr_key] = index
        w[cr_key] = index
        if (dr[_FLAGS] | cr[_FLAGS]) & _HISTORY:
            if dr[_FLAGS] & _HISTORY:
                self.put(BALANCES_PREFIX + dr[_KEY] + ts_key, _balance_value(dr))
            if cr[_FLAGS] & _HISTORY:
                self.put(BALANCES_PREFIX + cr[_KEY] + ts_key, _balance_value(cr))

    # --- expiry -------------------------------------------------------------------------

    def add_expiry(self, tid: int, expires_ns: int) -> None:
        second = -(-expires_ns // NS_PER_S)  # the first second at which it has expired
        head_key = expiry_head_key(second)
        raw = self.get_raw(head_key)
        pages = 0 if raw is None else EXPIRY_HEAD_V1.unpack(raw)[1]
        page_raw = self.get_raw(expiry_page_key(second, pages - 1)) if pages else None
        page_bytes_max = 1 + 16 * self.config.expiry_page_ids_max
        if page_raw is None or len(page_raw) >= page_bytes_max:
            pages += 1
            self.put(head_key, EXPIRY_HEAD_V1.pack(VALUE_VERSION, pages))
            page_raw = bytes([VALUE_VERSION])
        self.put(expiry_page_key(second, pages - 1), page_raw + tid.to_bytes(16, "big"))

    def sweep(self) -> None:
        """Release expired reservations, once per new log time, within the bounds."""
        if self.now_ms <= self.swept_ms and self.meta_raw is not None:
            return
        self.swept_ms = max(self.swept_ms, self.now_ms)
        second, page, offset = self.cursor
        last_second = self.now_ns // NS_PER_S
        released = 0
        scanned = 0
        releases_max = self.config.expiry_releases_max
        while second <= last_second and scanned < self.config.expiry_seconds_scan_max:
            head = self.view.get(expiry_head_key(second))
            pages = 0 if head is None else EXPIRY_HEAD_V1.unpack(head)[1]
            while page < pages and released < releases_max:
                raw = self.view.get(expiry_page_key(second, page)) or b"\x01"
                ids = [_i(raw[k : k + 16]) for k in range(1, len(raw), 16)]
                while offset < len(ids) and released < releases_max:
                    if self.expire(ids[offset]):
                        released += 1
                    offset += 1
                if offset < len(ids):
                    break
                page, offset = page + 1, 0
            if page < pages:
                break  # the release bound cut this bucket: resume here at the next log time
            for k in range(pages):
                self.writes[expiry_page_key(second, k)] = None
            if head is not None:
                self.writes[expiry_head_key(second)] = None
            second, page, offset = second + 1, 0, 0
            scanned += 1
        self.cursor = (second, page, offset)

    def expire(self, tid: int) -> bool:
        if self.pending_status(tid) != _P_PENDING:
            return False  # posted or voided before it expired
        p = self.transfer(tid)
        if type(p) is not tuple:
            raise InvariantViolation("an expiry bucket names a transfer that does not exist")
        dr = self.account(p[_T_DR])
        cr = self.account(p[_T_CR])
        if dr is None or cr is None:
            raise InvariantViolation("a pending transfer names an account that does not exist")
        amount = p[_T_AMOUNT]
        totals = self.ledger_totals(p[_T_LEDGER])
        dr[_DP] -= amount
        cr[_CP] -= amount
        totals[2] -= amount
        totals[3] -= amount
        self.set_status(tid, _P_EXPIRED)
        ts_key = self.next_ts().to_bytes(8, "big")
        if dr[_FLAGS] & _HISTORY:
            self.put(BALANCES_PREFIX + dr[_KEY] + ts_key, _balance_value(dr))
        if cr[_FLAGS] & _HISTORY:
            self.put(BALANCES_PREFIX + cr[_KEY] + ts_key, _balance_value(cr))
        return True

    # --- the end of the batch: writes and the paired invariants -------------------------

    def finish(self) -> list[Write]:
        w = self.writes
        for ledger, (kind, scale, ud, ts) in self.new_assets.items():
            w[asset_key(ledger)] = ASSET_V1.pack(VALUE_VERSION, kind, scale, _b16(ud), ts)
        delta: dict[int, list[int]] = {}
        for acc in self.accounts.values():
            if acc is None:
                continue
            ledger, _code, flags, head, dp, dpo, cp, cpo, key, before = acc
            if before is None:
                b_dp = b_dpo = b_cp = b_cpo = 0
            else:
                b_dp, b_dpo, b_cp, b_cpo = before
                if dp == b_dp and dpo == b_dpo and cp == b_cp and cpo == b_cpo:
                    continue  # read, never changed: nothing to write
            # The account invariants, before the value is written (the bitwise or of ints is
            # negative exactly when one of them is).
            if dp | dpo | cp | cpo < 0:
                raise InvariantViolation("an account balance went negative")
            if dp + dpo > AMOUNT_MAX or cp + cpo > AMOUNT_MAX:
                raise InvariantViolation("an account balance overflowed u128")
            if flags & _DMNEC and dp + dpo > cpo:
                raise InvariantViolation("an account's debits exceed its credits")
            if flags & _CMNED and cp + cpo > dpo:
                raise InvariantViolation("an account's credits exceed its debits")
            d = delta.get(ledger)
            if d is None:
                d = delta[ledger] = [0, 0, 0, 0]
            d[0] += dpo - b_dpo
            d[1] += cpo - b_cpo
            d[2] += dp - b_dp
            d[3] += cp - b_cp
            w[ACCOUNT_PREFIX + key] = (
                head
                + dp.to_bytes(16, "big")
                + dpo.to_bytes(16, "big")
                + cp.to_bytes(16, "big")
                + cpo.to_bytes(16, "big")
            )
        for ledger, d in delta.items():
            if d != [0, 0, 0, 0] and ledger not in self.totals:
                raise InvariantViolation(f"ledger {ledger}: accounts moved without its totals")
        for ledger, sums in self.totals.items():
            before_sums = self.totals_before[ledger]
            changed = [a - b for a, b in zip(sums, before_sums, strict=True)]
            if changed != delta.get(ledger, [0, 0, 0, 0]):
                raise InvariantViolation(f"ledger {ledger}: totals moved apart from accounts")
            if before_sums[0] != before_sums[1] or before_sums[2] != before_sums[3]:
                raise InvariantViolation(f"ledger {ledger}: debits != credits before the batch")
            if sums[0] != sums[1] or sums[2] != sums[3] or min(sums) < 0:
                raise InvariantViolation(f"ledger {ledger}: debits != credits after the batch")
            if changed != [0, 0, 0, 0]:
                w[totals_key(ledger)] = TOTALS_V1.pack(
                    VALUE_VERSION, *(s.to_bytes(32, "big") for s in sums)
                )
        pack = TRANSFER_V1.pack
        for row, tid_bytes, dr_id, cr_id in self.created.values():
            _, _, amount, pid, ud, timeout, ledger, code, flags, ts = row
            w[TRANSFER_PREFIX + tid_bytes] = pack(
                VALUE_VERSION, dr_id, cr_id, amount.to_bytes(16, "big"),
                pid.to_bytes(16, "big") if pid else _ZERO16,
                ud.to_bytes(16, "big") if ud else _ZERO16,
                timeout, ledger, code, flags, ts,
            )  # fmt: skip
        for tid, failure in self.failed.items():
            w[TRANSFER_PREFIX + tid.to_bytes(16, "big")] = bytes([FAILED_VERSION]) + (
                failure.value.encode("ascii")
            )
        for tid, status in self.status_dirty.items():
            w[pending_key(tid)] = PENDING_V1.pack(VALUE_VERSION, status)
        second, page, offset = self.cursor
        w[META_KEY] = META_V1.pack(
            STATE_LAYOUT_VERSION, self.last_ts, self.swept_ms, second, page, offset
        )
        return list(w.items())


def _b16(value: int) -> bytes:
    return value.to_bytes(16, "big")


def _balance_value(acc: list[Any]) -> bytes:
    return BALANCE_V1.pack(
        VALUE_VERSION, _b16(acc[_DP]), _b16(acc[_DPO]), _b16(acc[_CP]), _b16(acc[_CPO])
    )


def _linked(e: Event) -> bool:
    """Whether an event continues a chain (an asset event has no flags: it ends one)."""
    return not isinstance(e, CreateAsset) and bool(e.flags & _LINKED)


def _linked_code(e: Event, *, open_chain: bool) -> AccountResult | TransferResult:
    if type(e) is CreateAccount:
        return A.LINKED_EVENT_CHAIN_OPEN if open_chain else A.LINKED_EVENT_FAILED
    return T.LINKED_EVENT_CHAIN_OPEN if open_chain else T.LINKED_EVENT_FAILED


def _account_id_code(dr_id: int, cr_id: int) -> TransferResult:
    if dr_id == 0:
        return T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if dr_id == ID_MAX:
        return T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
    if cr_id == 0:
        return T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if cr_id == ID_MAX:
        return T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
    return T.ACCOUNTS_MUST_BE_DIFFERENT


def _overflow(dr: list[Any], cr: list[Any], amount: int, pending: int) -> TransferResult:
    if pending:
        if dr[_DP] + amount > AMOUNT_MAX:
            return T.OVERFLOWS_DEBITS_PENDING
        if cr[_CP] + amount > AMOUNT_MAX:
            return T.OVERFLOWS_CREDITS_PENDING
    else:
        if dr[_DPO] + amount > AMOUNT_MAX:
            return T.OVERFLOWS_DEBITS_POSTED
        if cr[_CPO] + amount > AMOUNT_MAX:
            return T.OVERFLOWS_CREDITS_POSTED
    if dr[_DP] + dr[_DPO] + amount > AMOUNT_MAX:
        return T.OVERFLOWS_DEBITS
    return T.OVERFLOWS_CREDITS


def _exists(e: CreateTransfer, found: tuple[int, ...]) -> TransferResult:
    """Compare a retried transfer with the stored one, field by field in TB's order."""
    flags = e.flags
    if flags != found[_T_FLAGS]:
        return T.EXISTS_WITH_DIFFERENT_FLAGS
    if e.pending_id != found[_T_PID]:
        return T.EXISTS_WITH_DIFFERENT_PENDING_ID
    if e.timeout != found[_T_TIMEOUT]:
        return T.EXISTS_WITH_DIFFERENT_TIMEOUT
    resolving = flags & (_POST | _VOID)
    if e.debit_account_id != found[_T_DR] and not (resolving and e.debit_account_id == 0):
        return T.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
    if e.credit_account_id != found[_T_CR] and not (resolving and e.credit_account_id == 0):
        return T.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
    amount = found[_T_AMOUNT]
    if flags & (_BAL_DR | _BAL_CR):
        same_amount = e.amount >= amount  # it moved at most what was asked
    elif flags & _POST:
        same_amount = e.amount in (amount, AMOUNT_MAX)
    elif flags & _VOID:
        same_amount = e.amount in (amount, 0)
    else:
        same_amount = e.amount == amount
    if not same_amount:
        return T.EXISTS_WITH_DIFFERENT_AMOUNT
    if e.user_data_128 != found[_T_UD] and not (resolving and e.user_data_128 == 0):
        return T.EXISTS_WITH_DIFFERENT_USER_DATA_128
    if e.ledger != found[_T_LEDGER] and not (resolving and e.ledger == 0):
        return T.EXISTS_WITH_DIFFERENT_LEDGER
    if e.code != found[_T_CODE] and not (resolving and e.code == 0):
        return T.EXISTS_WITH_DIFFERENT_CODE
    return T.EXISTS
