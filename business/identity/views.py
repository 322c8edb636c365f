"""Reading the identity state: partners, links, owners, wallets and the paginated audit trail.

Every read here is a point ``get`` (the node's ``StateView``), no scans: the audit trail is a
counter plus numbered entries per scope, so a page of ``limit`` entries costs ``limit + 1``
reads whatever the trail's length, like the ledger's expiry buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from business.identity.core import PartnerRecord, decode_partner
from business.identity.ids import Mode
from business.identity.model import (
    PARTNER_PREFIX,
    VALUE_VERSION,
    ActorKind,
    Owner,
    audit_entry_key,
    audit_head_key,
    decode_owner,
    link_key,
    owner_key,
    wallet_key,
)
from node.consensus.state_machine import StateView
from node.errors import CorruptEntry, InvalidRequest, UnsupportedFormat

__all__ = [
    "AuditEntry",
    "get_owner",
    "get_partner",
    "linked_wallet",
    "list_audit",
    "wallet_exists",
]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int  # the entry's number in its scope and mode (0 = the first change)
    mode: Mode
    actor_kind: ActorKind
    actor_credential: bytes
    actor_partner: bytes
    log_time_ms: int
    kind: str  # the entry type: partner.put, wallet.link, wallet.unlink
    partner: bytes  # the partner the change was about
    summary: bytes  # SHA-256 over the entry body: opaque, comparable with the proposer's copy


def get_partner(view: StateView, partner: bytes) -> PartnerRecord | None:
    raw = view.get(PARTNER_PREFIX + partner)
    return None if raw is None else decode_partner(raw)


def linked_wallet(view: StateView, partner: bytes, mode: Mode, user_ref: bytes) -> bytes | None:
    """The wallet address a partner's user reference is linked to (what a credit pays into)."""
    raw = view.get(link_key(partner, mode, user_ref))
    return None if raw is None else raw[:20]


def get_owner(view: StateView, account: int) -> Owner | None:
    raw = view.get(owner_key(account))
    return None if raw is None else decode_owner(raw)


def wallet_exists(view: StateView, mode: Mode, wallet: bytes) -> bool:
    return view.get(wallet_key(mode, wallet)) is not None


def list_audit(
    view: StateView,
    scope: bytes,
    mode: Mode,
    *,
    limit: int,
    limit_max: int,
    starting_after: int | None = None,
) -> tuple[list[AuditEntry], bool]:
    """One page of a scope's audit trail in ``mode``, newest first (Stripe's order), and
    ``has_more``.

    ``scope`` is a partner id, or ``PLATFORM_SCOPE`` for every change; ``starting_after`` is
    the ``seq`` of the last entry of the previous page.
    """
    if not 1 <= limit <= limit_max:
        raise InvalidRequest(f"limit must be 1..{limit_max}", code="parameter_invalid")
    head = view.get(audit_head_key(scope, mode))
    count = 0 if head is None else int.from_bytes(head, "big")
    start = count - 1 if starting_after is None else min(starting_after, count) - 1
    if starting_after is not None and starting_after < 0:
        raise InvalidRequest("starting_after must be an audit entry", code="parameter_invalid")
    out: list[AuditEntry] = []
    seq = start
    while seq >= 0 and len(out) < limit:
        raw = view.get(audit_entry_key(scope, mode, seq))
        if raw is None:
            raise CorruptEntry("audit entry missing below the scope's count")
        out.append(_decode_audit(seq, mode, raw))
        seq -= 1
    return out, seq >= 0


def _decode_audit(seq: int, mode: Mode, raw: bytes) -> AuditEntry:
    try:
        version, kind, credential, partner_of_actor, ms, entry_type, partner, summary = (
            msgpack.unpackb(raw)
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptEntry("stored audit entry does not decode") from exc
    if version != VALUE_VERSION:
        raise UnsupportedFormat("unknown audit entry version")
    return AuditEntry(
        seq, mode, ActorKind(kind), credential, partner_of_actor, ms, entry_type, partner, summary
    )
