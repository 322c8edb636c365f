"""The deposit step of the ledger-ops apply: a vault deposit credited through the log (pure).

From log feature version :data:`DEPOSIT_FEATURE_VERSION` (10) an operation of a ``ledger.ops``
entry may carry, instead of ``ev`` or ``br``, one deposit credit:

* ``dp`` -- :meth:`DepositCreditBody.encode` of a confirmed ``Deposited`` log the node's
  deposit watcher saw (node/chain/deposit_watch.py): chain id, vault, transaction hash, log
  index, block, token, the token's ledger, the 16-byte wallet id named on chain, the amount,
  and optionally the 20-byte address the proposing node found for that wallet id in its
  state (a hint: checked here), plus the watcher's cursor (the block below which everything
  is credited). Before feature 10 an operation with ``dp`` is ``malformed``, as is one whose
  record id is not :func:`~node.chain.deposits.deposit_record_id` of the deposit's key
  (``H(TAG_DEPOSIT, chain id, tx hash, log index)``): so the same deposit proposed twice, by
  one node or after a leader change by another, is one record -- the second index put is
  ``existing`` and runs nothing. That is the whole exactly-once argument.

A created deposit operation, with the ledger events of the operations before it run first:

1. the proposer must be the platform (``pt`` = :data:`~business.identity.scope.PLATFORM`,
   ``md`` the deposit's mode = the parity of its ledger), else ``deposit_not_platform`` and
   nothing moves (partners never credit from the vault);
2. the target: the named wallet's account on the ledger when the hint's address hashes to the
   wallet id (:func:`~business.identity.ids.wallet_id`) and that wallet is registered in the
   mode (it was linked or used before); opened on first use. Otherwise -- an unknown or
   unlinked wallet -- the platform's suspense account of the ledger, and the record is listed
   under ``lg/ds/`` for the operator;
3. the events: the mode's BAAS asset if missing (a BAAS deposit), the platform's ``vault``
   account if missing -- it may go negative (no limit flag): it mirrors what the vault holds
   on chain, and is the one account that may mint *live* BAAS (the scope rules, which refuse
   that to everyone, do not run for a deposit: this step is the live-mode exception), the
   suspense or wallet account if missing, then one transfer vault -> target of the amount,
   id ``transfer_id(record id, 0)``;
4. writes: the outcome under ``lg/o/`` (result ``credited``, ``held_in_suspense``, or the
   ledger's refusal ``deposit_refused``), the credited deposit under ``lg/dp/<record id>``
   (the credited set: what the watcher reads to skip a deposit, in the state digest like every
   ``lg/`` key), ``lg/ds/<record id>`` when held in suspense, and the watcher's cursor per
   (chain, vault) under ``lg/dk/`` (the highest one wins, never lowered).

Nothing here knows which vault is *right*: that is the node's configuration, checked at start
(a live vault must be configured; test mode watches only a development chain's vault), and
the proposer is a node. The state machine guarantees the rest: once per key, only the
platform, never a reversal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from business.identity.core import open_wallet_account, platform_account
from business.identity.ids import (
    ASSET_INDEX_BAAS,
    Mode,
    ledger_number,
    mode_of_ledger,
    transfer_id,
    wallet_id,
)
from business.identity.model import wallet_key
from business.identity.scope import PLATFORM, WALLET_ACCOUNT_CODE
from business.ledger.core import Ledger
from business.ledger.model import (
    BAAS_SCALE,
    AccountFlags,
    AssetKind,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    account_key,
    asset_key,
    outcome_key,
)
from business.ledger.outcome import OperationOutcome, outcome_of
from node.chain.deposits import (
    AMOUNT_MAX,
    DepositKey,
    deposit_record_id,
    suspense_account,
    vault_account,
)
from node.consensus.state_machine import Overlay, StateView, Write
from node.errors import InvalidRequest, UnsupportedFormat

__all__ = [
    "CREDITED_PREFIX",
    "CURSOR_PREFIX",
    "DEPOSIT_BYTES_MAX",
    "DEPOSIT_FEATURE_VERSION",
    "SUSPENSE_PREFIX",
    "CreditedDeposit",
    "DepositCreditBody",
    "DepositStep",
    "credited_key",
    "cursor_key",
    "read_credited",
    "read_cursor",
]

DEPOSIT_FEATURE_VERSION = 10
DEPOSIT_BODY_VERSION = 1
DEPOSIT_BYTES_MAX = 512  # one credit is ~230 bytes encoded
CREDITED_PREFIX = b"lg/dp/"  # + record id -> CreditedDeposit
SUSPENSE_PREFIX = b"lg/ds/"  # + record id -> b"" (held in suspense, for the operator)
CURSOR_PREFIX = b"lg/dk/"  # + chain id u64 + vault20 -> block number u64 + block hash
VAULT_ACCOUNT_CODE = 0x201  # ledger account codes (types) of the platform's deposit accounts
SUSPENSE_ACCOUNT_CODE = 0x202
DEPOSIT_TRANSFER_CODE = 0x10  # the ledger transfer code (reason) of a deposit credit
CREDITED, HELD, REFUSED, NOT_PLATFORM = (
    "credited",
    "held_in_suspense",
    "deposit_refused",
    "deposit_not_platform",
)


def credited_key(record_id: bytes) -> bytes:
    return CREDITED_PREFIX + record_id


def cursor_key(chain_id: int, vault: bytes) -> bytes:
    return CURSOR_PREFIX + chain_id.to_bytes(8, "big") + vault


def _b(raw: Any, size: int, what: str) -> bytes:
    if type(raw) is not bytes or len(raw) != size:
        raise UnsupportedFormat(f"deposit {what} must be {size} bytes")
    return raw


def _u(raw: Any, bits: int, what: str) -> int:
    if type(raw) is not int or not 0 <= raw < 1 << bits:
        raise UnsupportedFormat(f"deposit {what} must be a u{bits}")
    return raw


@dataclass(frozen=True, slots=True)
class DepositCreditBody:
    """The ``dp`` field: one confirmed deposit as the proposing node saw it."""

    chain_id: int
    vault: bytes  # 20
    tx_hash: bytes  # 32
    log_index: int
    block_number: int
    block_hash: bytes  # 32
    token: bytes  # 20
    ledger: int
    wallet: bytes  # 16: the wallet id named on chain
    amount: int
    address: bytes | None  # 20: the node's hint of the wallet's address (checked on apply)
    cursor_number: int  # the watcher's cursor: every deposit at or below it is credited
    cursor_hash: bytes  # 32

    @property
    def key(self) -> DepositKey:
        return DepositKey(self.chain_id, self.tx_hash, self.log_index)

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb(
            [
                DEPOSIT_BODY_VERSION,
                self.chain_id,
                self.vault,
                self.tx_hash,
                self.log_index,
                self.block_number,
                self.block_hash,
                self.token,
                self.ledger,
                self.wallet,
                self.amount.to_bytes(16, "big"),
                self.address,
                self.cursor_number,
                self.cursor_hash,
            ],
            use_bin_type=True,
        )
        if len(packed) > DEPOSIT_BYTES_MAX:
            raise InvalidRequest(f"a deposit credit is at most {DEPOSIT_BYTES_MAX} B")
        return packed

    @classmethod
    def decode(cls, raw: bytes) -> DepositCreditBody:
        """Raises :class:`UnsupportedFormat` for anything the apply calls ``malformed``."""
        if type(raw) is not bytes or not 0 < len(raw) <= DEPOSIT_BYTES_MAX:
            raise UnsupportedFormat(f"dp must be 1..{DEPOSIT_BYTES_MAX} bytes")
        try:
            fields = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except (msgpack.UnpackException, ValueError) as exc:
            raise UnsupportedFormat("dp does not decode") from exc
        if type(fields) is not list or len(fields) != 14:
            raise UnsupportedFormat("dp is a list of 14 fields")
        if fields[0] != DEPOSIT_BODY_VERSION:
            raise UnsupportedFormat(f"unknown deposit credit version {fields[0]!r:.20}")
        amount = int.from_bytes(_b(fields[10], 16, "amount"), "big")
        if not 0 < amount <= AMOUNT_MAX:
            raise UnsupportedFormat("deposit amount out of range")
        ledger = _u(fields[8], 32, "ledger")
        if ledger == 0:
            raise UnsupportedFormat("deposit ledger must not be 0")
        wallet = _b(fields[9], 16, "wallet")
        if wallet == bytes(16):
            raise UnsupportedFormat("deposit wallet must not be zero")
        return cls(
            chain_id=_u(fields[1], 64, "chain id"),
            vault=_b(fields[2], 20, "vault"),
            tx_hash=_b(fields[3], 32, "tx hash"),
            log_index=_u(fields[4], 32, "log index"),
            block_number=_u(fields[5], 64, "block number"),
            block_hash=_b(fields[6], 32, "block hash"),
            token=_b(fields[7], 20, "token"),
            ledger=ledger,
            wallet=wallet,
            amount=amount,
            address=None if fields[11] is None else _b(fields[11], 20, "address"),
            cursor_number=_u(fields[12], 64, "cursor"),
            cursor_hash=_b(fields[13], 32, "cursor hash"),
        )


@dataclass(frozen=True, slots=True)
class CreditedDeposit:
    """What the state keeps of one credited deposit (``lg/dp/<record id>``): opaque ids and
    integers only (a wallet id, never an address)."""

    chain_id: int
    tx_hash: bytes
    log_index: int
    block_number: int
    token: bytes
    ledger: int
    wallet: bytes
    amount: int
    suspense: bool
    result: str
    log_time_ms: int

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb(
            [
                1,
                self.chain_id,
                self.tx_hash,
                self.log_index,
                self.block_number,
                self.token,
                self.ledger,
                self.wallet,
                self.amount.to_bytes(16, "big"),
                self.suspense,
                self.result,
                self.log_time_ms,
            ],
            use_bin_type=True,
        )
        return packed

    @classmethod
    def decode(cls, raw: bytes) -> CreditedDeposit:
        f = msgpack.unpackb(raw, raw=False)
        if type(f) is not list or len(f) != 12 or f[0] != 1:
            raise UnsupportedFormat("not a credited deposit of version 1")
        return cls(f[1], f[2], f[3], f[4], f[5], f[6], f[7], int.from_bytes(f[8], "big"), *f[9:])


def read_credited(view: StateView, record_id: bytes) -> CreditedDeposit | None:
    raw = view.get(credited_key(record_id))
    return None if raw is None else CreditedDeposit.decode(raw)


def read_cursor(view: StateView, chain_id: int, vault: bytes) -> tuple[int, bytes] | None:
    """The highest cursor committed for the vault: (block number, block hash)."""
    raw = view.get(cursor_key(chain_id, vault))
    return None if raw is None else (int.from_bytes(raw[:8], "big"), raw[8:])


def check_deposit(record_id: bytes, body: DepositCreditBody, mode: int | None) -> None:
    """What makes a deposit operation ``malformed`` (UnsupportedFormat), before its put: the
    record id must be the deposit key's, the mode its ledger's."""
    if deposit_record_id(body.key) != record_id:
        raise UnsupportedFormat("a deposit's record id is deposit_record_id of its key")
    if mode is not None and mode_of_ledger(body.ledger) != mode:
        raise UnsupportedFormat("a deposit's ledger is of its operation's mode")


class DepositStep:
    """The deposit step of the ledger-ops apply (pure: reads and writes one overlay)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def run(
        self,
        record_id: bytes,
        body: DepositCreditBody,
        partner: bytes | None,
        now_ms: int,
        layer: Overlay,
    ) -> OperationOutcome:
        """Apply one created deposit operation into ``layer`` (module docstring)."""
        if partner != PLATFORM:  # refused whole, sticky like any outcome
            refused = OperationOutcome(now_ms, (), NOT_PLATFORM)
            layer.writes[outcome_key(record_id)] = refused.encode()
            return refused
        mode = mode_of_ledger(body.ledger)
        prelude, target, suspense, owners = self._prelude(body, mode, now_ms, layer)
        transfer = CreateTransfer(
            id=transfer_id(record_id, 0),
            debit_account_id=vault_account(mode, body.ledger),
            credit_account_id=target,
            amount=body.amount,
            ledger=body.ledger,
            code=DEPOSIT_TRANSFER_CODE,
        )
        results, writes = self._ledger.apply([*prelude, transfer], now_ms, layer)
        layer.writes.update(writes)
        outcome = outcome_of([transfer, *prelude], [results[-1], *results[:-1]], now_ms)
        result = (HELD if suspense else CREDITED) if outcome.succeeded else REFUSED
        if outcome.succeeded:  # owners of accounts that exist (a refused credit opened none)
            layer.writes.update(owners)
        credited = CreditedDeposit(
            body.chain_id,
            body.tx_hash,
            body.log_index,
            body.block_number,
            body.token,
            body.ledger,
            body.wallet,
            body.amount,
            suspense,
            result,
            now_ms,
        )
        layer.writes[credited_key(record_id)] = credited.encode()
        if suspense and result == HELD:
            layer.writes[SUSPENSE_PREFIX + record_id] = b""
        known = read_cursor(layer, body.chain_id, body.vault)
        if known is None or body.cursor_number > known[0]:
            value = body.cursor_number.to_bytes(8, "big") + body.cursor_hash
            layer.writes[cursor_key(body.chain_id, body.vault)] = value
        done = OperationOutcome(outcome.log_time_ms, outcome.events, result)
        layer.writes[outcome_key(record_id)] = done.encode()
        return done

    def _prelude(
        self, body: DepositCreditBody, mode: Mode, now_ms: int, layer: Overlay
    ) -> tuple[list[Event], int, bool, list[Write]]:
        """The asset and accounts to open first, the credited account, whether suspense, and
        the owner writes of the opened accounts."""
        ledger = body.ledger
        prelude: list[Event] = []
        owners: list[Write] = []
        baas = ledger_number(mode, ASSET_INDEX_BAAS)
        if ledger == baas and layer.get(asset_key(ledger)) is None:
            prelude.append(CreateAsset(ledger, AssetKind.BAAS, BAAS_SCALE))
        vault = vault_account(mode, ledger)
        if layer.get(account_key(vault)) is None:
            # No limit flag: the vault's mirror goes negative by what the vault holds on chain.
            prelude.append(CreateAccount(vault, ledger, VAULT_ACCOUNT_CODE))
            owners.append(platform_account(mode, ledger, vault))
        address = body.address
        known = (
            address is not None
            and wallet_id(address, mode) == body.wallet
            and layer.get(wallet_key(mode, address)) is not None
        )
        if known:
            assert address is not None
            target, writes = open_wallet_account(layer, mode, address, ledger, now_ms)
            flags = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
            if layer.get(account_key(target)) is None:
                prelude.append(CreateAccount(target, ledger, WALLET_ACCOUNT_CODE, flags=flags))
            return prelude, target, False, [*owners, *writes]
        target = suspense_account(mode, ledger)
        if layer.get(account_key(target)) is None:
            flags = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
            prelude.append(CreateAccount(target, ledger, SUSPENSE_ACCOUNT_CODE, flags=flags))
            owners.append(platform_account(mode, ledger, target))
        return prelude, target, True, owners
