"""The deposit watcher's core: which vault deposits to credit, when, exactly once (pure, sans-IO).

Theory of operation. The adapter (:mod:`node.chain.deposit_watch`) reads block headers and the
vault's ``Deposited`` logs and hands them, block by block in number order, to
:meth:`DepositTracker.observe`; it calls :meth:`DepositTracker.tick` on its timer. The
tracker answers with decisions (frozen dataclasses): :class:`CreditDeposit` (propose this
credit through the log), :class:`Alarm` (an operator must look) and :class:`Refused` (a log
that credits nothing, with a typed :class:`RefusalReason`). It has no clock, no I/O, no web3.

* **Window.** The tracker keeps the last ``reorg_depth_max + 1`` blocks it accepted (number,
  hash, parent hash, their deposits). A header whose parent hash is not the window's block
  below it means that block was reorganised away: the tracker drops it (and everything above
  it) and asks for that height again (:meth:`next_block` goes down), so the adapter walks
  back one block at a time until the parent matches. A header at a height the window already
  holds, with another hash, replaces that block and everything above it.
* **Confirmations.** A deposit in block ``b`` is confirmed once the window's tip is at least
  ``b + confirmations - 1`` (the inclusion block counts, as in anchoring). Then, unless the
  replicated state already holds it (:meth:`CreditedView.is_credited`) or this tracker already
  asked, the tracker emits one :class:`CreditDeposit` for it. Its key is
  ``(chain id, tx hash, log index)``; the record id derived from the key
  (:func:`deposit_record_id`) makes the ledger operation itself idempotent, so a credit
  proposed twice (a retry after ``credit_retry_ticks`` without commit) still credits once.
* **Reorganised away.** A deposit whose block is dropped before its confirmations credits
  nothing (counted in :attr:`DepositStats.orphaned_unconfirmed`). One whose block is dropped
  after its credit was asked for raises :class:`Alarm` ``credited_deposit_orphaned``; the
  tracker never reverses a credit (the runbook in docs/vault.md says what the operator does).
* **Deeper than the window.** A walk-back that would drop the window's oldest block means a
  reorganisation deeper than ``reorg_depth_max``: credits below it can no longer be checked,
  so the tracker raises :class:`Alarm` ``reorg_too_deep`` and halts (observes nothing more)
  until the operator restarts it from a cursor.
* **Resume.** :meth:`cursor` is the highest confirmed block (every deposit at or below it was
  asked to be credited). Persisted with the credits (by the node, through the log), it seeds a
  new tracker: the window starts at the cursor's block and the blocks above it are read
  again; deposits the replicated state already credited are skipped by ``is_credited``.
* **Refusals.** Logs of another chain id, another vault, a token the node has not registered,
  an amount the ledger cannot hold (zero or beyond u128), a zero wallet, or a log whose block
  is not the header it came with credit nothing: :class:`Refused` with the reason, listed for
  the operator. (The contract refuses unregistered tokens, zero amounts and zero wallets
  itself; the node checks again because its own token registry is what maps a token to a
  ledger, and a lying RPC node must not be able to mint.)
* **Bounds.** ``pending_deposits_max`` deposits in the window waiting for confirmations or for
  their credit to commit; a block that would exceed it raises :class:`~node.errors.Overloaded`
  and is not taken (the adapter retries after commits drain). ``block_logs_max`` logs per
  block.

Reorganised transactions that are mined again in another block keep their key (their log
index may change): a deposit credited, orphaned (alarm) and mined again is not credited a
second time, and one whose log index changed is a new key: the alarm is what tells the
operator to look at both.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from business.identity.ids import (
    TAG_DEPOSIT,
    Mode,
    derive,
    partner_account_id,
    transfer_id,
    wallet_account_id,
)
from business.identity.scope import PLATFORM
from node.errors import ConfigError, InvalidRequest, InvariantViolation, Overloaded

__all__ = [
    "TAG_DEPOSIT",
    "Alarm",
    "AlarmKind",
    "BlockHeader",
    "CreditDeposit",
    "CreditedView",
    "Cursor",
    "Decision",
    "DepositCredit",
    "DepositKey",
    "DepositLog",
    "DepositSettings",
    "DepositStats",
    "DepositTracker",
    "RefusalReason",
    "Refused",
    "deposit_credit",
    "deposit_record_id",
    "suspense_account",
    "vault_account",
]


AMOUNT_MAX = (1 << 128) - 2  # the ledger's u128 amounts; 2^128 - 1 means "all" on a post
HASH_BYTES = 32
ADDRESS_BYTES = 20
WALLET_BYTES = 16
VAULT_ROLE = "vault"  # the platform's account mirroring what the vault holds on chain
SUSPENSE_ROLE = "deposit-suspense"  # deposits to wallets the ledger does not know


@dataclass(frozen=True, slots=True)
class DepositSettings:
    """The deposit watcher's settings and bounds (validated at start, :meth:`validate`)."""

    chain_id: int
    vault: bytes  # 20-byte address of the vault this node watches
    mode: Mode  # the vault's mode: live uses the configured vault, test a dev-chain vault
    tokens: Mapping[bytes, int]  # registered token address -> the ledger it credits
    confirmations: int = 12  # blocks on top, the inclusion block counting
    reorg_depth_max: int = 64  # blocks kept to detect a reorganisation (>= confirmations)
    pending_deposits_max: int = 4096  # deposits in the window waiting to be credited
    block_logs_max: int = 1024  # Deposited logs accepted in one block
    log_range_blocks_max: int = 500  # blocks per eth_getLogs request (the adapter's bound)
    credit_retry_ticks: int = 50  # ask again for a credit not committed after this long

    def validate(self) -> None:
        if type(self.chain_id) is not int or self.chain_id <= 0:
            raise ConfigError("deposits.chain_id must be a positive integer")
        _bytes_of(self.vault, ADDRESS_BYTES, "deposits.vault", ConfigError)
        Mode(self.mode)
        if not self.tokens:
            raise ConfigError("deposits.tokens must register at least one token")
        for token, ledger in self.tokens.items():
            _bytes_of(token, ADDRESS_BYTES, "deposits.tokens address", ConfigError)
            if type(ledger) is not int or not 0 < ledger < 1 << 32 or ledger & 1 != self.mode:
                raise ConfigError("deposits.tokens ledger must be a u32 ledger of the mode")
        for name in (
            "confirmations",
            "reorg_depth_max",
            "pending_deposits_max",
            "block_logs_max",
            "log_range_blocks_max",
            "credit_retry_ticks",
        ):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise ConfigError(f"deposits.{name} must be a positive integer")
        if self.reorg_depth_max < self.confirmations:
            # A block must still be in the window when its deposits confirm, or a reorg
            # between confirmation and pruning would go unseen.
            raise ConfigError("deposits.reorg_depth_max must be >= deposits.confirmations")


def _bytes_of(value: object, size: int, what: str, error: type[Exception]) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise error(f"{what} must be {size} bytes")
    return value


@dataclass(frozen=True, slots=True, order=True)
class DepositKey:
    """What makes a deposit unique: the chain, the transaction, the log's index in its block."""

    chain_id: int
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True, slots=True)
class BlockHeader:
    number: int
    hash: bytes
    parent_hash: bytes

    def __post_init__(self) -> None:
        if type(self.number) is not int or self.number < 0:
            raise InvalidRequest("block number must be a non-negative integer")
        _bytes_of(self.hash, HASH_BYTES, "block hash", InvalidRequest)
        _bytes_of(self.parent_hash, HASH_BYTES, "parent hash", InvalidRequest)


@dataclass(frozen=True, slots=True)
class DepositLog:
    """One ``Deposited(token, from, wallet, amount)`` log as the adapter decoded it."""

    chain_id: int
    vault: bytes  # the log's emitting address
    block_number: int
    block_hash: bytes
    tx_hash: bytes
    log_index: int
    token: bytes
    sender: bytes
    wallet: bytes
    amount: int

    @property
    def key(self) -> DepositKey:
        return DepositKey(self.chain_id, self.tx_hash, self.log_index)


@dataclass(frozen=True, slots=True)
class Cursor:
    """The highest confirmed block: where a restarted tracker resumes."""

    number: int
    hash: bytes


class CreditedView(Protocol):
    """What the tracker reads of the replicated state: whether a deposit's credit committed."""

    def is_credited(self, key: DepositKey) -> bool: ...


class RefusalReason(enum.Enum):
    """Why a log credits nothing, in the order checked (the first that applies is reported)."""

    LOG_NOT_IN_BLOCK = "log_not_in_block"  # block number/hash differ from its header's
    WRONG_CHAIN = "wrong_chain"
    WRONG_VAULT = "wrong_vault"
    TOKEN_NOT_REGISTERED = "token_not_registered"
    ZERO_WALLET = "zero_wallet"
    AMOUNT_OUT_OF_RANGE = "amount_out_of_range"  # zero, or beyond the ledger's u128
    DUPLICATE_LOG = "duplicate_log"  # the same key twice in one block


class AlarmKind(enum.Enum):
    CREDITED_DEPOSIT_ORPHANED = "credited_deposit_orphaned"
    REORG_TOO_DEEP = "reorg_too_deep"


@dataclass(frozen=True, slots=True)
class CreditDeposit:
    """Propose the credit of this confirmed deposit (idempotent by its record id)."""

    deposit: DepositLog


@dataclass(frozen=True, slots=True)
class Alarm:
    kind: AlarmKind
    block_number: int
    block_hash: bytes
    deposit: DepositLog | None = None  # the credited deposit, for credited_deposit_orphaned


@dataclass(frozen=True, slots=True)
class Refused:
    reason: RefusalReason
    deposit: DepositLog


Decision = CreditDeposit | Alarm | Refused


@dataclass(slots=True)
class DepositStats:
    """Counters for metrics and status."""

    seen: int = 0
    credits_asked: int = 0
    credit_retries: int = 0
    orphaned_unconfirmed: int = 0
    alarms: int = 0
    refused: int = 0
    blocks_orphaned: int = 0  # blocks dropped from the window by reorganisations


@dataclass(slots=True)
class _Block:
    header: BlockHeader
    deposits: tuple[DepositLog, ...]
    asked: dict[DepositKey, int] = field(default_factory=dict)  # key -> tick of the last ask


class DepositTracker:
    """The pure deposit tracker (see the module docstring)."""

    def __init__(self, settings: DepositSettings, cursor: Cursor, credited: CreditedView) -> None:
        settings.validate()
        self.settings = settings
        self._credited = credited
        self._window: list[_Block] = [
            _Block(BlockHeader(cursor.number, cursor.hash, bytes(32)), ())
        ]
        self._now = 0
        self.halted = False
        self.stats = DepositStats()

    # -- reading ---------------------------------------------------------------------------

    @property
    def tip(self) -> BlockHeader:
        return self._window[-1].header

    def next_block(self) -> int:
        """The height the adapter should read next."""
        return self.tip.number + 1

    def known_hash(self, number: int) -> bytes | None:
        """The window's block hash at ``number`` (None outside the window)."""
        block = self._at(number)
        return None if block is None else block.header.hash

    def cursor(self) -> Cursor:
        """The highest block whose deposits are all confirmed (asked to be credited)."""
        confirmed = self.tip.number - self.settings.confirmations + 1
        base = self._window[0].header
        if confirmed <= base.number:
            return Cursor(base.number, base.hash)
        block = self._at(confirmed)
        assert block is not None, "a confirmed height above the base is in the window"
        return Cursor(block.header.number, block.header.hash)

    def safe_cursor(self) -> Cursor:
        """The highest confirmed block at or below which every deposit is credited in the
        replicated state: what a credit carries into the log, so a tracker resumed from the
        state's cursor never skips a deposit whose credit was still in flight (or lost)."""
        confirmed = self.tip.number - self.settings.confirmations + 1
        safe = self._window[0].header
        for block in self._window[1:]:
            if block.header.number > confirmed or any(
                not self._credited.is_credited(d.key) for d in block.deposits
            ):
                break
            safe = block.header
        return Cursor(safe.number, safe.hash)

    def pending(self) -> int:
        """Deposits in the window not yet known to be credited."""
        return self._waiting(self._window)

    def _waiting(self, blocks: list[_Block]) -> int:
        return sum(
            1 for block in blocks for d in block.deposits if not self._credited.is_credited(d.key)
        )

    @property
    def base_number(self) -> int:
        """The window's oldest block: a reorganisation below it is too deep to check."""
        return self._window[0].header.number

    # -- inputs ----------------------------------------------------------------------------

    def observe(self, header: BlockHeader, logs: Iterable[DepositLog]) -> list[Decision]:
        """Take one block (its header and every ``Deposited`` log the vault emitted in it)."""
        if self.halted:
            return []
        logs = tuple(logs)
        if len(logs) > self.settings.block_logs_max:
            raise Overloaded(
                f"block {header.number} has {len(logs)} deposit logs "
                f"(deposits.block_logs_max {self.settings.block_logs_max})"
            )
        if header.number > self.next_block():
            raise InvalidRequest(f"block {header.number} skips {self.next_block()}")
        base = self._window[0].header
        if header.number <= base.number:
            if header.number == base.number and header.hash != base.hash:
                return self._too_deep(header)
            return []  # below the window: nothing left to compare it with
        known = self._at(header.number)
        if known is not None and known.header.hash == header.hash:
            return []  # already taken
        decisions: list[Decision] = []
        below = self._at(header.number - 1)
        assert below is not None
        if header.parent_hash != below.header.hash:
            # The block below was reorganised away: drop it and ask for its height again.
            if below is self._window[0]:
                return self._too_deep(header)
            return self._drop_from(header.number - 1)
        accepted, refused = self._check(header, logs)
        # Bound first, change nothing before it: a refused block is simply read again later.
        kept = self._window if known is None else self._window[: header.number - self.base_number]
        waiting = self._waiting(kept) + len(accepted)
        if waiting > self.settings.pending_deposits_max:
            raise Overloaded(
                f"{waiting} deposits would wait for credit "
                f"(deposits.pending_deposits_max {self.settings.pending_deposits_max})"
            )
        if known is not None:
            decisions += self._drop_from(header.number)
        self.stats.refused += len(refused)
        decisions += refused
        self.stats.seen += len(accepted)
        self._window.append(_Block(header, accepted))
        decisions += self._confirm()
        self._prune()
        return decisions

    def tick(self) -> list[Decision]:
        """One timer tick: ask again for credits still not committed after the retry period."""
        self._now += 1
        if self.halted:
            return []
        retry = self.settings.credit_retry_ticks
        decisions: list[Decision] = []
        for block in self._window:
            for key, asked_at in sorted(block.asked.items()):
                if self._now - asked_at >= retry and not self._credited.is_credited(key):
                    block.asked[key] = self._now
                    self.stats.credit_retries += 1
                    deposit = next(d for d in block.deposits if d.key == key)
                    decisions.append(CreditDeposit(deposit))
        return decisions

    # -- rules -----------------------------------------------------------------------------

    def _at(self, number: int) -> _Block | None:
        index = number - self._window[0].header.number
        if 0 <= index < len(self._window):
            block = self._window[index]
            if block.header.number != number:
                raise InvariantViolation("the deposit window is not contiguous")
            return block
        return None

    def _check(
        self, header: BlockHeader, logs: tuple[DepositLog, ...]
    ) -> tuple[tuple[DepositLog, ...], list[Decision]]:
        accepted: list[DepositLog] = []
        refused: list[Decision] = []
        keys: set[DepositKey] = set()
        for log in logs:
            reason = self._refusal(header, log, keys)
            if reason is None:
                keys.add(log.key)
                accepted.append(log)
            else:
                refused.append(Refused(reason, log))
        return tuple(accepted), refused

    def _refusal(
        self, header: BlockHeader, log: DepositLog, keys: set[DepositKey]
    ) -> RefusalReason | None:
        s = self.settings
        if log.block_number != header.number or log.block_hash != header.hash:
            return RefusalReason.LOG_NOT_IN_BLOCK
        if log.chain_id != s.chain_id:
            return RefusalReason.WRONG_CHAIN
        if log.vault != s.vault:
            return RefusalReason.WRONG_VAULT
        if log.token not in s.tokens:
            return RefusalReason.TOKEN_NOT_REGISTERED
        if log.wallet == bytes(WALLET_BYTES) or len(log.wallet) != WALLET_BYTES:
            return RefusalReason.ZERO_WALLET
        if type(log.amount) is not int or not 0 < log.amount <= AMOUNT_MAX:
            return RefusalReason.AMOUNT_OUT_OF_RANGE
        if log.key in keys:
            return RefusalReason.DUPLICATE_LOG
        return None

    def _confirm(self) -> list[Decision]:
        confirmed = self.tip.number - self.settings.confirmations + 1
        decisions: list[Decision] = []
        for block in self._window:
            if block.header.number > confirmed:
                break
            for deposit in block.deposits:
                key = deposit.key
                if key in block.asked or self._credited.is_credited(key):
                    continue
                block.asked[key] = self._now
                self.stats.credits_asked += 1
                decisions.append(CreditDeposit(deposit))
        return decisions

    def _drop_from(self, number: int) -> list[Decision]:
        """Drop the window's blocks at ``number`` and above (reorganised away)."""
        index = number - self._window[0].header.number
        assert 0 < index < len(self._window)
        dropped, self._window = self._window[index:], self._window[:index]
        self.stats.blocks_orphaned += len(dropped)
        decisions: list[Decision] = []
        for block in dropped:
            for deposit in block.deposits:
                if deposit.key in block.asked or self._credited.is_credited(deposit.key):
                    self.stats.alarms += 1
                    decisions.append(
                        Alarm(
                            AlarmKind.CREDITED_DEPOSIT_ORPHANED,
                            block.header.number,
                            block.header.hash,
                            deposit,
                        )
                    )
                else:
                    self.stats.orphaned_unconfirmed += 1
        return decisions

    def _too_deep(self, header: BlockHeader) -> list[Decision]:
        self.halted = True
        self.stats.alarms += 1
        return [Alarm(AlarmKind.REORG_TOO_DEEP, header.number, header.hash)]

    def _prune(self) -> None:
        # Keep reorg_depth_max + 1 blocks: the oldest is the base new blocks chain onto.
        excess = len(self._window) - (self.settings.reorg_depth_max + 1)
        if excess > 0:
            confirmed = self.tip.number - self.settings.confirmations + 1
            for block in self._window[:excess]:
                if block.header.number > confirmed:
                    raise InvariantViolation("pruning a block whose deposits are unconfirmed")
            del self._window[:excess]


# -- the credit as a ledger operation ----------------------------------------------------------


def deposit_record_id(key: DepositKey) -> bytes:
    """The 32-byte record id of a deposit's credit: ``H(TAG_DEPOSIT, chain id, tx, log index)``
    (:func:`business.identity.ids.derive`), so no other operation can share it."""
    _bytes_of(key.tx_hash, HASH_BYTES, "transaction hash", InvalidRequest)
    if not 0 <= key.chain_id < 1 << 64 or not 0 <= key.log_index < 1 << 32:
        raise InvalidRequest("chain id or log index out of range")
    return derive(
        TAG_DEPOSIT,
        key.chain_id.to_bytes(8, "big"),
        key.tx_hash,
        key.log_index.to_bytes(4, "big"),
    )


def vault_account(mode: Mode, ledger: int) -> int:
    """The platform's account mirroring the vault on ``ledger``: it may go negative by what
    the vault holds on chain (its debits are the deposits credited)."""
    return partner_account_id(PLATFORM, mode, VAULT_ROLE, ledger)


def suspense_account(mode: Mode, ledger: int) -> int:
    """Where a deposit to a wallet the ledger does not know is held, listed for the operator."""
    return partner_account_id(PLATFORM, mode, SUSPENSE_ROLE, ledger)


@dataclass(frozen=True, slots=True)
class DepositCredit:
    """The platform operation the node proposes for one confirmed deposit: one transfer from
    the vault's account to the wallet's (or to suspense), record id from the deposit's key."""

    record_id: bytes
    key: DepositKey
    mode: Mode
    ledger: int
    transfer_id: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    wallet: bytes
    suspense: bool


def deposit_credit(
    settings: DepositSettings, deposit: DepositLog, wallet_known: bool
) -> DepositCredit:
    """The credit of ``deposit`` (a :class:`CreditDeposit`'s): to the wallet's account when the
    ledger knows the wallet, else to the suspense account of the token's ledger."""
    ledger = settings.tokens.get(deposit.token)
    if ledger is None:
        raise InvalidRequest("the deposit's token is not registered", code="token_not_registered")
    if not 0 < deposit.amount <= AMOUNT_MAX:
        raise InvalidRequest("deposit amount out of range", code="amount_out_of_range")
    record_id = deposit_record_id(deposit.key)
    mode = Mode(settings.mode)
    credit = (
        wallet_account_id(deposit.wallet, mode, ledger)
        if wallet_known
        else suspense_account(mode, ledger)
    )
    return DepositCredit(
        record_id=record_id,
        key=deposit.key,
        mode=mode,
        ledger=ledger,
        transfer_id=transfer_id(record_id, 0),
        debit_account_id=vault_account(mode, ledger),
        credit_account_id=credit,
        amount=deposit.amount,
        wallet=deposit.wallet,
        suspense=not wallet_known,
    )


# -- one polling round, over any reader ------------------------------------------------------


class DepositReader(Protocol):
    """The chain reads one polling round needs (web3 in :mod:`node.chain.deposit_watch`, a
    list of blocks in the tests)."""

    def head(self) -> int: ...

    def header(self, number: int) -> BlockHeader | None: ...

    def deposit_logs(self, first: int, last: int) -> list[DepositLog]: ...


def poll_round(tracker: DepositTracker, reader: DepositReader) -> tuple[list[Decision], bool]:
    """Read what is new (at most ``log_range_blocks_max`` blocks) and feed it to ``tracker``;
    returns the decisions and whether the tracker has caught up with the chain's head.

    Headers are read first, then the logs of the same range, then the last header again: if
    it changed, a reorganisation raced the reads and the round is thrown away (the hash chain
    means an unchanged last block vouches for every block below it). A log whose block hash
    is not the header's read means the same."""
    if tracker.halted:
        return [], True
    head = reader.head()
    first = tracker.next_block()
    if head < first:
        # Nothing new; make sure the tip still stands (a reorg to an equal or shorter chain).
        header = reader.header(head)
        known = tracker.known_hash(head)
        if header is None or known is None or known == header.hash:
            return [], True
        logs = reader.deposit_logs(head, head)
        if reader.header(head) != header:
            return [], False
        return tracker.observe(header, [x for x in logs if x.block_hash == header.hash]), False
    last = min(head, first + tracker.settings.log_range_blocks_max - 1)
    headers: list[BlockHeader] = []
    for number in range(first, last + 1):
        header = reader.header(number)
        if header is None:
            break
        headers.append(header)
    if not headers:
        return [], False
    last = headers[-1].number
    logs = reader.deposit_logs(first, last)
    if reader.header(last) != headers[-1]:
        return [], False
    hashes = {h.number: h.hash for h in headers}
    by_number: dict[int, list[DepositLog]] = {h.number: [] for h in headers}
    for log in logs:
        if hashes.get(log.block_number) != log.block_hash:
            return [], False
        by_number[log.block_number].append(log)
    decisions: list[Decision] = []
    for header in headers:
        decisions += tracker.observe(header, by_number[header.number])
        if tracker.halted or tracker.tip != header:
            return decisions, False  # a reorg: walk back from the tracker's new tip
    return decisions, tracker.next_block() > head
