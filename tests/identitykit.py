"""The identity core on a MemoryView for the identity tests: real keys, real signatures.

Plain helpers (``from identitykit import World``). Users are eth-account key pairs from a
seed; every signature is made with eth-account's own ``encode_typed_data`` + ``sign_message``
(not with the core's fast hashing), so the tests also check the two agree. :class:`World`
applies entries through :meth:`IdentityMachine.apply` and checks after each that every write
is under ``id/``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount

from business.identity import (
    DEFAULT_ROLES,
    Actor,
    ActorKind,
    CodeIssueEntry,
    IdentityConfig,
    IdentityMachine,
    LinkEntry,
    Mode,
    PartnerPut,
    PartnerStatus,
    UnlinkEntry,
    eip712,
)
from business.identity.ids import partner_id, user_ref
from business.ledger import MemoryView
from node.consensus.state_machine import AppEntry, ApplyOutcome, LogPosition

CHAIN_ID = 31337
T0_MS = 1_800_000_000_000  # a log time in 2027
T0_S = T0_MS // 1000
OPERATOR = Actor(ActorKind.OPERATOR, b"\x0f" * 16)
SHOP = partner_id("demo-shop")
OTHER_SHOP = partner_id("other-shop")
ROLES = DEFAULT_ROLES  # what onboarding gives every partner


def user(seed: str) -> LocalAccount:
    return Account.from_key(hashlib.sha256(seed.encode()).digest())


def address(account: LocalAccount) -> bytes:
    return bytes.fromhex(account.address[2:])


def partner_actor(partner: bytes) -> Actor:
    return Actor(ActorKind.PARTNER, hashlib.sha256(partner).digest()[:16], partner)


def sign(account: LocalAccount, message: Any, chain_id: int = CHAIN_ID) -> bytes:
    signable = encode_typed_data(full_message=eip712.typed_data(message, chain_id))
    return bytes(account.sign_message(signable).signature)


def link_entry(
    account: LocalAccount,
    *,
    partner: bytes = SHOP,
    mode: Mode = Mode.TEST,
    ref: str = "user-1",
    deadline: int = T0_S + 600,
    nonce: bytes = b"\x01" * 32,
    chain_id: int = CHAIN_ID,
    signed: dict[str, Any] | None = None,
    unlink: bool = False,
) -> LinkEntry:
    """A link carrying ``account``'s signature; ``signed`` overrides fields of the signed copy
    only (a signature over other fields)."""
    fields: dict[str, Any] = {
        "partner": partner,
        "mode": mode,
        "user_ref": user_ref(partner, mode, ref),
        "wallet": address(account),
        "deadline": deadline,
        "nonce": nonce,
    }
    kind = eip712.Unlink if unlink else eip712.Link
    signature = sign(account, kind(**{**fields, **(signed or {})}), chain_id)
    return LinkEntry(**fields, signature=signature, actor=partner_actor(partner))


def code_entry(
    account: LocalAccount,
    code_hash: bytes,
    *,
    mode: Mode = Mode.TEST,
    ledger: int = 2,
    amount_limit: int = 1000,
    expiry: int = T0_S + 600,
) -> CodeIssueEntry:
    message = eip712.CodeIssue(mode, code_hash, ledger, amount_limit, expiry, address(account))
    return CodeIssueEntry(
        mode, address(account), code_hash, ledger, amount_limit, expiry, sign(account, message)
    )


class World:
    """A MemoryView with the identity machine; ``apply`` runs one entry at a log time."""

    def __init__(self, config: IdentityConfig | None = None) -> None:
        self.config = config or IdentityConfig(chain_id=CHAIN_ID)
        self.machine = IdentityMachine(self.config)
        self.view = MemoryView()
        self.index = 0

    def apply(self, entry_type: str, body: dict[str, Any], now_ms: int = T0_MS) -> ApplyOutcome:
        self.index += 1
        position = LogPosition(self.index, 1, now_ms)
        outcome = self.machine.apply(AppEntry(entry_type, body), position, self.view)
        assert all(key.startswith(b"id/") for key, _ in outcome.writes)
        self.view.apply(outcome.writes)
        return outcome

    def onboard(
        self, partner: bytes = SHOP, status: PartnerStatus = PartnerStatus.ACTIVE
    ) -> ApplyOutcome:
        return self.apply("partner.put", PartnerPut(partner, status, ROLES, OPERATOR).to_body())

    def link(self, entry: LinkEntry, now_ms: int = T0_MS) -> str:
        return self.apply("wallet.link", entry.to_body(), now_ms).code

    def unlink(self, entry: UnlinkEntry, now_ms: int = T0_MS) -> str:
        return self.apply("wallet.unlink", entry.to_body(), now_ms).code

    def issue(self, entry: CodeIssueEntry, now_ms: int = T0_MS) -> str:
        return self.apply("code.issue", entry.to_body(), now_ms).code
