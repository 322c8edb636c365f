"""Operator credentials of the dashboard: the file ``baas-dashboard operator`` writes and the
gateway reads at every sign-in.

An operator signs in with a password and a TOTP code (RFC 6238, by pyotp). The file keeps, per
operator, the password's scrypt hash (memory-hard: 32 MiB per guess) and the TOTP secret
(which must stay readable: the gateway computes the expected codes from it), so it is written
with mode 0600 like the other secrets. Format (JSON)::

    {"format": "baas.operators", "version": 1,
     "operators": {"<name>": {"role": "operator",
                              "password": {"kdf": "scrypt", "n": 32768, "r": 8, "p": 1,
                                           "salt": "<hex>", "hash": "<hex>"},
                              "totp_secret": "<base32>"}}}

Any other format, version or field is refused (:class:`~node.errors.UnsupportedFormat`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp

from node.errors import ConfigError, InvalidRequest, UnsupportedFormat
from node.fileio import write_atomically

__all__ = [
    "OPERATORS_FORMAT",
    "Operator",
    "PasswordHash",
    "hash_password",
    "load_operators",
    "new_operator",
    "password_from_dict",
    "provisioning_uri",
    "read_credentials_file",
    "save_operators",
    "totp_match",
    "write_credentials_file",
]

OPERATORS_FORMAT = "baas.operators"
VERSION = 1
ROLE_OPERATOR = "operator"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
PASSWORD_CHARS_MIN = 12
PASSWORD_CHARS_MAX = 1024
# scrypt cost: n=2**15, r=8 needs 32 MiB and ~0.1 s per guess on this hardware.
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
SALT_BYTES = 16
HASH_BYTES = 32
TOTP_ISSUER = "BaaS dashboard"
TOTP_DIGITS = 6
TOTP_STEP_S = 30
TOTP_WINDOW_STEPS = 1  # a code of the previous or next 30 s step is accepted too (clock skew)


@dataclass(frozen=True, slots=True)
class PasswordHash:
    salt: bytes
    digest: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def matches(self, password: str) -> bool:
        candidate = _scrypt(password, self.salt, self.n, self.r, self.p)
        return hmac.compare_digest(candidate, self.digest)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kdf": "scrypt",
            "n": self.n,
            "r": self.r,
            "p": self.p,
            "salt": self.salt.hex(),
            "hash": self.digest.hex(),
        }


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    password: PasswordHash
    totp_secret: str
    role: str = ROLE_OPERATOR

    @property
    def credential_id(self) -> str:
        """Names this credential (not its secrets): it changes when the credential rotates."""
        return hashlib.sha256(b"baas.operator.v1\x00" + self.password.salt).hexdigest()[:32]


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=HASH_BYTES
    )


def hash_password(password: str) -> PasswordHash:
    if not PASSWORD_CHARS_MIN <= len(password) <= PASSWORD_CHARS_MAX:
        raise InvalidRequest(
            f"a password has {PASSWORD_CHARS_MIN}..{PASSWORD_CHARS_MAX} characters",
            code="weak_password",
        )
    salt = secrets.token_bytes(SALT_BYTES)
    return PasswordHash(salt, _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))


def new_operator(name: str, password: str) -> Operator:
    """A new credential: the password's hash and a fresh TOTP secret (160 bits, base32)."""
    if not NAME_PATTERN.match(name):
        raise InvalidRequest(
            "an operator name is 1..64 of a-z 0-9 . _ - (starting with a letter or digit)",
            code="invalid_operator_name",
        )
    return Operator(name, hash_password(password), pyotp.random_base32())


def provisioning_uri(operator: Operator) -> str:
    """The ``otpauth://`` URI an authenticator app reads (shown once, as text)."""
    return pyotp.TOTP(operator.totp_secret).provisioning_uri(
        name=operator.name, issuer_name=TOTP_ISSUER
    )


def totp_match(secret: str, code: str, now_s: float) -> int | None:
    """The time step whose code ``code`` is (within the accepted window), or None.

    Returning the step lets the caller refuse a code that was already used (replay)."""
    if len(code) != TOTP_DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_S)
    step = int(now_s) // TOTP_STEP_S
    found = None
    for offset in range(-TOTP_WINDOW_STEPS, TOTP_WINDOW_STEPS + 1):
        # Compare every candidate (constant work whether or not an earlier one matched).
        if hmac.compare_digest(totp.generate_otp(step + offset), code):
            found = step + offset
    return found


def load_operators(path: Path | None) -> dict[str, Operator]:
    """Every operator of the file; an absent file (or none configured) has none."""
    table = read_credentials_file(path, OPERATORS_FORMAT, "operators")
    return {name: _operator(name, raw) for name, raw in table.items()}


def _operator(name: str, raw: Any) -> Operator:
    try:
        if set(raw) != {"role", "password", "totp_secret"}:
            raise ValueError("fields")
        password = password_from_dict(raw["password"])
        if raw["role"] != ROLE_OPERATOR or not isinstance(raw["totp_secret"], str):
            raise ValueError("role")
        return Operator(name, password, raw["totp_secret"], raw["role"])
    except (TypeError, ValueError, KeyError) as exc:
        raise UnsupportedFormat(f"operator {name!r}: malformed entry ({exc})") from exc


def password_from_dict(pw: Any) -> PasswordHash:
    """A stored password hash (:meth:`PasswordHash.to_dict`); ValueError if malformed."""
    if set(pw) != {"kdf", "n", "r", "p", "salt", "hash"} or pw["kdf"] != "scrypt":
        raise ValueError("password")
    return PasswordHash(
        bytes.fromhex(pw["salt"]), bytes.fromhex(pw["hash"]), int(pw["n"]), pw["r"], pw["p"]
    )


def read_credentials_file(path: Path | None, file_format: str, section: str) -> dict[str, Any]:
    """The ``section`` table of a ``file_format`` v1 JSON file; an absent file has none."""
    if path is None:
        return {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {file_format} file {path}: {exc}") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise UnsupportedFormat(f"{file_format} file {path} is not JSON") from exc
    if (
        not isinstance(document, dict)
        or set(document) != {"format", "version", section}
        or document["format"] != file_format
        or document["version"] != VERSION
        or not isinstance(document[section], dict)
    ):
        raise UnsupportedFormat(f"{path} is not a {file_format} v{VERSION} file")
    table: dict[str, Any] = document[section]
    return table


def write_credentials_file(
    path: Path, file_format: str, section: str, entries: dict[str, Any]
) -> None:
    document = {"format": file_format, "version": VERSION, section: entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, (json.dumps(document, indent=2) + "\n").encode(), mode=0o600)


def save_operators(path: Path, operators: dict[str, Operator]) -> None:
    entries = {
        name: {
            "role": op.role,
            "password": op.password.to_dict(),
            "totp_secret": op.totp_secret,
        }
        for name, op in sorted(operators.items())
    }
    write_credentials_file(path, OPERATORS_FORMAT, "operators", entries)
