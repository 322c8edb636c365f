"""Reading the Bridge's state: assets, policies and their history, lots, reserves, supply.

Point reads (``get`` only) over the Bridge's ``br/`` values and the ledger's accounts, for
the node's Bridge read routes (node/api/bridge_routes.py) and the tests, and the digest of
the Bridge's state that replicas compare (:func:`bridge_state_digest`, beside the ledger's
``lg/`` digest). The state machine itself (:mod:`business.bridge.core`)
uses :func:`reserve_level` for the low-reserve notice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from business.bridge.model import (
    DAY_MS,
    PREFIX,
    AssetRecord,
    Lot,
    PolicyRecord,
    asset_key,
    decode_asset,
    decode_lots,
    decode_policy,
    lots_key,
    policy_audit_key,
    policy_key,
    unpack,
)
from business.identity.ids import mode_of_ledger, partner_account_id
from business.ledger.model import AccountBalance
from business.ledger.views import RangeView, account_balances, get_account
from node.consensus.state_machine import StateView

__all__ = [
    "PolicyChange",
    "bridge_state_digest",
    "get_asset",
    "get_policy",
    "points_supply",
    "policy_change",
    "reserve_history",
    "reserve_level",
    "sorted_bridge_digest",
    "spendable_points",
    "user_lots",
]

PolicyChange = tuple[bytes, int, PolicyRecord]  # actor, log time (ms), the policy it set


def _role(partner: bytes, ledger: int, role: str) -> int:
    return partner_account_id(partner, mode_of_ledger(ledger), role, ledger)


def get_asset(view: StateView, ledger: int) -> AssetRecord | None:
    raw = view.get(asset_key(ledger))
    return None if raw is None else decode_asset(raw)


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
