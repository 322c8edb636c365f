"""Partner onboarding and the partner and audit objects: shared by the admin API and the
``baas-partners`` command.

Onboarding a partner is two steps, in this order:

1. ``partner.put`` on the log (actor: the operator), through any node and the leader
   (:mod:`node.api.identity_routes`): the partner's opaque id, status and role accounts in both
   modes, and an audit entry with the actor on every node. Idempotent: a retry answers
   ``exists``.
2. Its test and live API credentials and first data key into the keyring, under the keyring's
   file lock (:func:`gateway.keyring.change_keyring`). The secrets are returned to the caller
   once and stored nowhere else in clear.

Log first: if the keyring step fails, the operator runs the same onboarding again (step 1
answers ``exists``). A partner already in the keyring is refused (409 ``partner_exists``)
before the log is touched: its secrets were shown once and are never shown again.

The partner's name (``demo-shop``) lives only at the gateway; the log holds
``ids.partner_id(name)`` (its ``partner_ref``). Objects follow Stripe's conventions: an ``id``
and an ``object``, ``livemode`` on what belongs to one mode, lists as ``{"object": "list",
"data", "has_more", "url"}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from business.identity import (
    ONBOARDING_ROLES,
    Actor,
    ActorKind,
    AssetRef,
    Mode,
    PartnerPut,
    PartnerStatus,
    Role,
    RoleAccount,
)
from business.identity.ids import partner_id
from business.identity.model import PLATFORM_SCOPE
from gateway.keyring import (
    Keyring,
    PartnerKeys,
    Principal,
    PrincipalKind,
    change_keyring,
    mode_name,
    new_partner_in_modes,
)
from gateway.node_client import NodeClient
from node.consensus.state_machine import AppEntry
from node.errors import IdempotencyConflict, InvalidRequest, NotFound, OperationFailed

__all__ = [
    "actor_of",
    "audit_list",
    "dashboard_user_actor",
    "onboard",
    "operator_cli_actor",
    "partner_object",
    "set_status",
]

PUT_SUCCESS = frozenset({"ok", "exists"})
# A partner name becomes part of its API key ids (pk_test_<name>_...): keep it plain.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
AUDIT_ID_PREFIX = "aud_"
TAG_CREDENTIAL = b"baas/actor-credential/v1|"


def check_name(name: object, param: str = "id") -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidRequest(
            "a partner id is 1..64 of a-z, 0-9, '-' and '_', starting with a letter or digit",
            code="parameter_invalid",
            param=param,
        )
    return name


def _credential_ref(text: str) -> bytes:
    """The actor's credential as the log holds it: a hash of the key id, never a secret."""
    return hashlib.sha256(TAG_CREDENTIAL + text.encode()).digest()[:16]


def actor_of(principal: Principal) -> Actor:
    ref = _credential_ref(principal.credential.api_key)
    if principal.kind == PrincipalKind.OPERATOR:
        return Actor(ActorKind.OPERATOR, ref)
    return Actor(ActorKind.PARTNER, ref, partner_id(principal.name))


def operator_cli_actor(operator: str) -> Actor:
    """The operator command's actor: the operator's name (``--operator``, default the login)."""
    return Actor(ActorKind.OPERATOR, _credential_ref(f"cli:{operator}"))


def dashboard_user_actor(partner: str, subject: str) -> Actor:
    """A partner's dashboard user acting for it (``subject``: ``partner/name``): the audit
    trail names the user, as it names the API credential for the partner API."""
    return Actor(ActorKind.PARTNER, _credential_ref(f"dashboard:{subject}"), partner_id(partner))


async def _put(
    nodes: NodeClient, put: PartnerPut, deadline: float, request_id: str | None
) -> dict[str, Any]:
    outcome = await nodes.identity_propose(
        AppEntry("partner.put", put.to_body()), deadline=deadline, request_id=request_id
    )
    if outcome["code"] == "feature_not_enabled":  # the cluster has not enabled feature 7 yet
        raise OperationFailed(
            "the cluster does not apply identity entries yet (log feature 7)",
            code="feature_not_enabled",
        )
    if outcome["code"] not in PUT_SUCCESS:
        raise IdempotencyConflict(
            f"the log refused the partner change: {outcome['code']}", code=str(outcome["code"])
        )
    return outcome


async def onboard(
    nodes: NodeClient,
    keyring_file: Path,
    master_key: bytes,
    keyring: Keyring,
    name: str,
    actor: Actor,
    *,
    deadline: float,
    request_id: str | None,
) -> tuple[Keyring, PartnerKeys]:
    """Put the partner on the log, then its credentials into the keyring (module docstring)."""
    check_name(name)
    if name in keyring.partners:
        raise IdempotencyConflict(
            f"partner {name!r} is already onboarded (its secrets were shown once)",
            code="partner_exists",
            param="id",
        )
    put = PartnerPut(partner_id(name), PartnerStatus.ACTIVE, ONBOARDING_ROLES, actor)
    await _put(nodes, put, deadline, request_id)
    created: list[PartnerKeys] = []

    def add(current: Keyring) -> Keyring:
        if name in current.partners:  # onboarded meanwhile by someone else
            raise IdempotencyConflict(f"partner {name!r} exists", code="partner_exists")
        changed, partner = new_partner_in_modes(current, name)
        created.append(partner)
        return changed

    after = await asyncio.to_thread(change_keyring, keyring_file, master_key, add)
    return after, created[0]


async def set_status(
    nodes: NodeClient,
    name: str,
    status: PartnerStatus,
    actor: Actor,
    *,
    deadline: float,
    request_id: str | None,
) -> dict[str, Any]:
    """Change a partner's status on the log (its roles stay as they are)."""
    found = await nodes.identity_read(
        f"/internal/v1/identity/partners/{partner_id(name).hex()}",
        deadline=deadline,
        request_id=request_id,
    )
    roles = tuple(
        RoleAccount(Mode[a["mode"].upper()], Role[a["role"].upper()], AssetRef[a["asset"].upper()])
        for a in found["accounts"]
    )
    return await _put(
        nodes, PartnerPut(partner_id(name), status, roles, actor), deadline, request_id
    )


async def read_partner(
    nodes: NodeClient, name: str, *, deadline: float, request_id: str | None
) -> dict[str, Any] | None:
    """The partner as the nodes know it, or None if no node has it on the log."""
    try:
        return await nodes.identity_read(
            f"/internal/v1/identity/partners/{partner_id(name).hex()}",
            deadline=deadline,
            request_id=request_id,
        )
    except NotFound:
        return None


def partner_object(
    name: str,
    on_log: Mapping[str, Any] | None,
    keys: PartnerKeys | None,
    now_ms: int,
    secrets_once: PartnerKeys | None = None,
) -> dict[str, Any]:
    """The partner object: the log's status and accounts, the keyring's credentials (their
    secrets only in ``secrets_once``, the onboarding answer)."""
    credentials = []
    for c in keys.credentials if keys is not None else ():
        item: dict[str, Any] = {
            "object": "api_credential",
            "id": c.api_key,
            "livemode": c.mode == Mode.LIVE,
            "active": c.live(now_ms),
        }
        if secrets_once is not None:
            item["secret"] = c.secret.hex()
        credentials.append(item)
    return {
        "id": name,
        "object": "partner",
        "partner_ref": partner_id(name).hex(),
        # A partner from before onboarding existed (demo-shop) has keys but no log entry.
        "status": "keyring_only" if on_log is None else str(on_log["status"]),
        "asset_index": None if on_log is None else int(on_log["asset_index"]),
        "accounts": [
            {
                "object": "account",
                "id": a["account"],
                "livemode": a["mode"] == "live",
                "role": a["role"],
                "asset": a["asset"],
                "ledger": a["ledger"],
            }
            for a in (on_log["accounts"] if on_log is not None else ())
        ],
        "credentials": credentials,
    }


def parse_audit_cursor(raw: str | None) -> int | None:
    if raw is None:
        return None
    digits = raw.removeprefix(AUDIT_ID_PREFIX)
    if not raw.startswith(AUDIT_ID_PREFIX) or not digits.isdigit() or len(digits) > 19:
        raise InvalidRequest(
            "starting_after must be an audit entry id (aud_<n>)",
            code="parameter_invalid",
            param="starting_after",
        )
    return int(digits)


async def audit_list(
    nodes: NodeClient,
    keyring: Keyring,
    scope: str | None,
    mode: Mode,
    *,
    limit: int,
    starting_after: int | None,
    deadline: float,
    request_id: str | None,
) -> dict[str, Any]:
    """One page of an audit trail (``scope``: a partner name, None for every change), in
    Stripe's list shape, actors and partners by name where the keyring knows them."""
    ref = PLATFORM_SCOPE if scope is None else partner_id(scope)
    query = f"scope={ref.hex()}&mode={mode_name(mode)}&limit={limit}"
    if starting_after is not None:
        query += f"&starting_after={starting_after}"
    page = await nodes.identity_read(
        f"/internal/v1/identity/audit?{query}", deadline=deadline, request_id=request_id
    )
    names = {partner_id(n).hex(): n for n in keyring.partners}
    return {
        "object": "list",
        "url": "/v1/audit",
        "has_more": bool(page["has_more"]),
        "data": [
            {
                "id": f"{AUDIT_ID_PREFIX}{e['seq']}",
                "object": "audit_entry",
                "livemode": e["mode"] == "live",
                "created_ms": e["log_time_ms"],
                "type": e["kind"],
                "partner": names.get(e["partner"], e["partner"]),
                "actor": {
                    "type": e["actor_kind"],
                    "credential": e["actor_credential"],
                    "partner": None
                    if e["actor_partner"] == PLATFORM_SCOPE.hex()
                    else names.get(e["actor_partner"], e["actor_partner"]),
                },
                "summary": e["summary"],
            }
            for e in page["data"]
        ],
    }
