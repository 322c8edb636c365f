"""Partners' dashboard users: the file ``baas-partners dashboard-user`` writes and the gateway
reads at every partner sign-in.

A partner's people sign in to the dashboard with a user name, a password and a TOTP code, never
with the partner's API secret (an API secret stays in the partner's servers). Each user has a
role: ``admin`` acts for the partner (defines points, issues, funds the reserve, sets policies,
adds and retires API credentials); ``viewer`` reads only. The password is hashed with the same
scrypt parameters as operators' (:mod:`.operators`: 32 MiB per guess).

TOTP is required for every partner user, viewers too. Stripe lets an account require two-step
authentication for all its team members; we make it the only setting because a dashboard
admin has the authority of the partner's API secret (it can mint points and add API
credentials), and a viewer sees the partner's customers' activity: a password alone is a
weaker lock than the HMAC secret it would stand beside, and one sign-in path (the operators')
is simpler to keep right than two.

Format (JSON, mode 0600)::

    {"format": "baas.partner_users", "version": 1,
     "users": {"<partner>/<name>": {"partner": "<partner>", "name": "<name>",
                                   "role": "admin" | "viewer",
                                   "password": {... as operators ...},
                                   "totp_secret": "<base32>"}}}
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp

from gateway.dashboard.operators import (
    NAME_PATTERN,
    TOTP_ISSUER,
    PasswordHash,
    hash_password,
    password_from_dict,
    read_credentials_file,
    write_credentials_file,
)
from node.errors import InvalidRequest, UnsupportedFormat

__all__ = [
    "PARTNER_USERS_FORMAT",
    "ROLES",
    "PartnerUser",
    "load_partner_users",
    "new_partner_user",
    "save_partner_users",
    "user_key",
]

PARTNER_USERS_FORMAT = "baas.partner_users"
ROLE_ADMIN = "admin"
ROLE_VIEWER = "viewer"
ROLES = (ROLE_ADMIN, ROLE_VIEWER)
_FIELDS = {"partner", "name", "role", "password", "totp_secret"}


def user_key(partner: str, name: str) -> str:
    """A user's key in the file and its session's subject: names are unique per partner."""
    return f"{partner}/{name}"


@dataclass(frozen=True, slots=True)
class PartnerUser:
    partner: str
    name: str
    role: str
    password: PasswordHash
    totp_secret: str

    @property
    def key(self) -> str:
        return user_key(self.partner, self.name)

    @property
    def credential_id(self) -> str:
        """Names this credential (not its secrets): it changes when the credential rotates."""
        tag = b"baas.partner_user.v1\x00" + self.key.encode() + b"\x00"
        return hashlib.sha256(tag + self.password.salt).hexdigest()[:32]

    def provisioning_uri(self) -> str:
        return pyotp.TOTP(self.totp_secret).provisioning_uri(name=self.key, issuer_name=TOTP_ISSUER)


def new_partner_user(partner: str, name: str, role: str, password: str) -> PartnerUser:
    """A new credential: the password's hash and a fresh TOTP secret (160 bits, base32)."""
    if not NAME_PATTERN.match(name):
        raise InvalidRequest(
            "a user name is 1..64 of a-z 0-9 . _ - (starting with a letter or digit)",
            code="invalid_user_name",
        )
    if role not in ROLES:
        raise InvalidRequest(f"a role is one of {', '.join(ROLES)}", code="invalid_role")
    return PartnerUser(partner, name, role, hash_password(password), pyotp.random_base32())


def load_partner_users(path: Path | None) -> dict[str, PartnerUser]:
    """Every partner user of the file by :func:`user_key`; an absent file has none."""
    table = read_credentials_file(path, PARTNER_USERS_FORMAT, "users")
    return {key: _user(key, raw) for key, raw in table.items()}


def _user(key: str, raw: Any) -> PartnerUser:
    try:
        if not isinstance(raw, dict) or set(raw) != _FIELDS:
            raise ValueError("fields")
        user = PartnerUser(
            str(raw["partner"]),
            str(raw["name"]),
            str(raw["role"]),
            password_from_dict(raw["password"]),
            str(raw["totp_secret"]),
        )
        if user.role not in ROLES or user.key != key:
            raise ValueError("role or key")
        return user
    except (TypeError, ValueError, KeyError) as exc:
        raise UnsupportedFormat(f"partner user {key!r}: malformed entry ({exc})") from exc


def save_partner_users(path: Path, users: dict[str, PartnerUser]) -> None:
    entries = {
        key: {
            "partner": u.partner,
            "name": u.name,
            "role": u.role,
            "password": u.password.to_dict(),
            "totp_secret": u.totp_secret,
        }
        for key, u in sorted(users.items())
    }
    write_credentials_file(path, PARTNER_USERS_FORMAT, "users", entries)
