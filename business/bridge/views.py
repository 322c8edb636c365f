"""Reading the Bridge's state: assets, policies and their history, lots, reserves, supply.

Point reads (``get`` only) over the Bridge's ``br/`` values and the ledger's accounts, for
the node's Bridge read routes (node/api/bridge_routes.py) and the tests, and the digest of
the Bridge's state that replicas compare (:func:`bridge_state_digest`, beside the ledger's
``lg/`` digest). The state machine itself (:mod:`business.bridge.core`)
uses :func:`reserve_level` for the low-reserve notice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from business.bridge.model import (
    DAY_MS,
    PREFIX,
    AssetRecord,
    Lot,
    PolicyRecord,
    ReserveLowRecord,
    SwapEntry,
    asset_key,
    decode_asset,
    decode_lots,
    decode_policy,
    decode_reserve_low,
    decode_swap_entry,
    lots_key,
    policy_audit_key,
    policy_key,
    reserve_low_key,
    swap_index_prefix,
    token_address_key,
    token_list_key,
    unpack,
)
from business.identity.ids import mode_of_ledger, partner_account_id
from business.ledger.model import META_KEY as LEDGER_META_KEY
from business.ledger.model import META_V1, STATE_LAYOUT_VERSION, AccountBalance
from business.ledger.views import RangeView, account_balances, get_account
from node.consensus.state_machine import StateView
from node.errors import UnsupportedFormat

__all__ = [
    "PolicyChange",
    "SwapFilter",
    "SwapPage",
    "bridge_state_digest",
    "get_asset",
    "get_policy",
    "last_log_time_ms",
    "points_supply",
    "policy_change",
    "reserve_history",
    "reserve_level",
    "reserve_low",
    "sorted_bridge_digest",
    "spendable_points",
    "swap_page",
    "swap_range",
    "token_by_address",
    "tokens_of",
    "user_lots",
]

PolicyChange = tuple[bytes, int, PolicyRecord]  # actor, log time (ms), the policy it set


def _role(partner: bytes, ledger: int, role: str) -> int:
    return partner_account_id(partner, mode_of_ledger(ledger), role, ledger)


def get_asset(view: StateView, ledger: int) -> AssetRecord | None:
    raw = view.get(asset_key(ledger))
    return None if raw is None else decode_asset(raw)


def tokens_of(view: StateView, partner: bytes, mode: int) -> list[tuple[int, AssetRecord]]:
    """A partner's tokens in ``mode`` (ledger, asset), in registration order (bounded by
    ``tokens_per_partner_max``)."""
    raw = view.get(token_list_key(partner, mode))
    ledgers: list[int] = [] if raw is None else unpack(raw, "token list", 1)[0]
    found = [(ledger, get_asset(view, ledger)) for ledger in ledgers]
    return [(ledger, asset) for ledger, asset in found if asset is not None]


def token_by_address(
    view: StateView, mode: int, chain_id: int, address: bytes
) -> tuple[int, bytes] | None:
    """The (ledger, partner) of the token registered in ``mode`` for the ERC-20 contract at
    ``address`` on ``chain_id``: what a chain deposit of that token will credit."""
    raw = view.get(token_address_key(mode, chain_id, address))
    if raw is None:
        return None
    ledger, partner = unpack(raw, "token address", 2)
    return int(ledger), bytes(partner)


def get_policy(view: StateView, ledger: int) -> PolicyRecord | None:
    raw = view.get(policy_key(ledger))
    return None if raw is None else decode_policy(raw)


def policy_change(view: StateView, ledger: int, version: int) -> PolicyChange | None:
    """The audit entry of the change that made ``version`` (versions count from 1)."""
    raw = view.get(policy_audit_key(ledger, version))
    if raw is None:
        return None
    actor, changed_ms, encoded = unpack(raw, "policy change", 3)
    return actor, changed_ms, decode_policy(encoded)


def user_lots(view: StateView, ledger: int, wallet_account: int) -> list[Lot]:
    """A user's lots of one point asset, oldest first (expired ones until swept)."""
    return decode_lots(view.get(lots_key(ledger, wallet_account)))


def spendable_points(view: StateView, ledger: int, wallet_account: int, now_ms: int) -> int:
    """What the user may spend now: their lots whose expiry day has not come."""
    today = now_ms // DAY_MS
    return sum(
        lot.amount for lot in user_lots(view, ledger, wallet_account) if lot.expiry_day > today
    )


def reserve_level(view: StateView, partner: bytes, baas_ledger: int) -> int:
    """What the partner's reserve can still pay: credits posted minus debits posted and
    pending (0 if it does not exist yet)."""
    account = get_account(view, _role(partner, baas_ledger, "reserve"))
    if account is None:
        return 0
    return account.credits_posted - account.debits_posted - account.debits_pending


def points_supply(view: StateView, partner: bytes, ledger: int) -> int:
    """The partner's liability in its points: what users hold (issued and not redeemed,
    reversed, expired or sitting in the partner's own liquidity)."""

    def net(role: str, debit: bool) -> int:
        account = get_account(view, _role(partner, ledger, role))
        if account is None:
            return 0
        d, c = account.debits_posted, account.credits_posted
        return d - c if debit else c - d

    return net("issuance", True) - net("breakage", False) - net("liquidity", False)


def reserve_history(
    view: RangeView,
    partner: bytes,
    baas_ledger: int,
    *,
    after_ts: int | None = None,
    limit: int = 10,
) -> list[AccountBalance]:
    """The reserve's balances after each change, newest first (a ``history`` account)."""
    account = _role(partner, baas_ledger, "reserve")
    return account_balances(view, account, after_ts=after_ts, limit=limit)


def last_log_time_ms(view: StateView) -> int:
    """The log time of the last ``ledger.ops`` / ``ledger.tick`` entry applied (the ledger's
    last sweep; 0 before any). Stamps never run backwards along the log, so any entry applied
    later carries a log time at or after it: what a quote is issued at, so that a swap never
    runs at a log time before its quote's issue (``quote_altered``), whichever leader stamps
    it and however far its log time lags the wall clock."""
    raw = view.get(LEDGER_META_KEY)
    if raw is None:
        return 0
    if len(raw) != META_V1.size or raw[0] != STATE_LAYOUT_VERSION:
        raise UnsupportedFormat("unknown ledger state layout version")
    swept_ms: int = META_V1.unpack(raw)[2]
    return swept_ms


def reserve_low(view: StateView, partner: bytes, baas_ledger: int) -> ReserveLowRecord | None:
    """The reserve's last ``reserve.low`` event and its count (feature 11), if it raised one."""
    raw = view.get(reserve_low_key(baas_ledger, partner))
    return None if raw is None else decode_reserve_low(raw)


@dataclass(frozen=True, slots=True)
class SwapFilter:
    """What a swaps list keeps: every field ``None`` keeps all. Log times in ms, ``[gte, lt)``;
    ``succeeded`` True keeps ``ok``/``exists``, False the failed ones."""

    wallet: bytes | None = None
    user_ref: bytes | None = None
    ledger: int | None = None
    succeeded: bool | None = None
    created_gte: int | None = None
    created_lt: int | None = None

    def keeps(self, entry: SwapEntry) -> bool:
        return (
            (self.wallet is None or entry.wallet == self.wallet)
            and (self.user_ref is None or entry.user_ref == self.user_ref)
            and (self.ledger is None or entry.ledger == self.ledger)
            and (self.succeeded is None or (entry.result in ("ok", "exists")) == self.succeeded)
        )


@dataclass(slots=True)
class SwapPage:
    """One page of a partner's swaps, newest first: (log ms, op, entry) each; ``scanned_to``
    the (log ms, op) the walk stopped at when it may go on (``has_more``)."""

    data: list[tuple[int, bytes, SwapEntry]] = field(default_factory=list)
    has_more: bool = False
    scanned_to: tuple[int, bytes] | None = None


def swap_range(
    partner: bytes, mode: int, filters: SwapFilter, after: tuple[int, bytes] | None
) -> tuple[bytes, bytes]:
    """The ``[start, stop)`` key range a newest-first page reads: the time filter and the
    cursor (a (log ms, op) already listed) bound it, so a page never walks what it skips."""
    prefix = swap_index_prefix(partner, mode)
    start = prefix + (filters.created_gte or 0).to_bytes(8, "big")
    stop = prefix + b"\xff" * 9  # past every (u64 log ms, op)
    if filters.created_lt is not None:
        stop = prefix + filters.created_lt.to_bytes(8, "big")
    if after is not None:
        stop = min(stop, prefix + after[0].to_bytes(8, "big") + after[1])
    return start, max(start, stop)


def swap_page(
    items: Iterator[tuple[bytes, bytes]],
    prefix_len: int,
    filters: SwapFilter,
    limit: int,
    scan_max: int,
) -> SwapPage:
    """Walk ``items`` (index keys newest first, from :func:`swap_range`) keeping what
    ``filters`` keeps: at most ``limit`` swaps, reading at most ``scan_max`` keys; past that
    the page says ``has_more`` and where the walk got, for the caller to go on from."""
    page = SwapPage()
    for scanned, (key, raw) in enumerate(items):
        log_ms = int.from_bytes(key[prefix_len : prefix_len + 8], "big")
        op = key[prefix_len + 8 :]
        if scanned == scan_max or len(page.data) == limit:
            page.has_more = True
            break
        entry = decode_swap_entry(raw)
        if filters.keeps(entry):
            page.data.append((log_ms, op, entry))
        page.scanned_to = (log_ms, op)
    if not page.has_more:
        page.scanned_to = None
    return page


def bridge_state_digest(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """SHA-256 over every ``br/`` item in key order (replica and replay checks); ``items``
    may hold other keys, and need not be sorted."""
    return sorted_bridge_digest(sorted((k, v) for k, v in items if k.startswith(PREFIX)))


def sorted_bridge_digest(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """:func:`bridge_state_digest` of items already in key order, all under ``br/``, read
    once (a node's LevelDB scan: nothing held in memory)."""
    digest = hashlib.sha256(b"baas-bridge-state-v1")
    for key, value in items:
        digest.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
    return digest.digest()
