"""The partner keyring shared by all gateways, encrypted at rest under a master key.

It holds, per partner: API credentials (key id + HMAC secret, each with an optional end time so
two can overlap during a rotation), data keys that wrap record data keys (versioned by key id;
the active one encrypts new records, older ones stay to read old records), and the key that
fingerprints record bodies for idempotency checks. Nodes never see any of it.

On disk (JSON)::

    {"format": 1, "version": N, "nonce": base64, "ciphertext": base64}

``ciphertext`` is AES-256-GCM under the master key, with ``"baas.keyring.v1|<version>"`` as
associated data (a rolled-back or edited version number fails to open). The master key comes
from the ``BAAS_MASTER_KEY`` environment variable (64 hex characters) or a file (mode 0600).

Rotation (``baas-keys``, :mod:`tools.keys_cli`) is three pure operations on a :class:`Keyring`,
each returning a new keyring one version up: :func:`rotate_data_key` (a new data key becomes
active; old ones stay to read old records), :func:`add_api_credential` (a second, overlapping API
secret; at most ``API_CREDENTIALS_LIVE_MAX`` live per partner) and :func:`retire_api_credential`
(give a credential an end time; never the last live one). :func:`save_keyring` writes atomically
(temp file, fsync, rename, fsync of the directory), so a gateway reloading the file
(:mod:`gateway.keyring_reload`) sees the old keyring or the new one, never half of one.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.errors import (
    AuthenticationFailed,
    ConfigError,
    InvalidRequest,
    NotFound,
    UnsupportedFormat,
)

__all__ = [
    "API_CREDENTIALS_LIVE_MAX",
    "DATA_KEYS_PER_PARTNER_MAX",
    "ApiCredential",
    "Keyring",
    "PartnerKeys",
    "add_api_credential",
    "load_keyring",
    "load_master_key",
    "new_partner",
    "retire_api_credential",
    "rotate_data_key",
    "save_keyring",
]

KEYRING_FORMAT = 1
MASTER_KEY_ENV = "BAAS_MASTER_KEY"
# Live (not yet ended) API credentials per partner: the one in use and the one rolling in.
API_CREDENTIALS_LIVE_MAX = 2
# Old data keys are kept to read old records, so rotations are bounded to keep the keyring small.
DATA_KEYS_PER_PARTNER_MAX = 1024
KEY_BYTES = 32


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except ValueError as exc:
        raise UnsupportedFormat(f"keyring: {what} is not base64") from exc


@dataclass(frozen=True, slots=True)
class ApiCredential:
    api_key: str
    secret: bytes = field(repr=False)
    not_after_ms: int | None = None  # None: valid until rotated out

    def live(self, now_ms: int) -> bool:
        return self.not_after_ms is None or now_ms <= self.not_after_ms


@dataclass(frozen=True, slots=True)
class PartnerKeys:
    partner_id: str
    credentials: tuple[ApiCredential, ...]
    data_keys: dict[str, bytes] = field(repr=False)
    active_data_key_id: str
    fingerprint_key: bytes = field(repr=False)

    def data_key(self, key_id: str) -> bytes:
        try:
            return self.data_keys[key_id]
        except KeyError as exc:
            raise NotFound(f"partner {self.partner_id} has no data key {key_id!r}") from exc


@dataclass(frozen=True, slots=True)
class Keyring:
    version: int
    partners: dict[str, PartnerKeys]

    def partner(self, partner_id: str) -> PartnerKeys:
        try:
            return self.partners[partner_id]
        except KeyError as exc:
            raise NotFound(f"unknown partner {partner_id!r}") from exc

    def credential(self, api_key: str, now_ms: int) -> tuple[PartnerKeys, ApiCredential]:
        for partner in self.partners.values():
            for credential in partner.credentials:
                if credential.api_key == api_key:
                    if not credential.live(now_ms):
                        raise AuthenticationFailed("API key has expired", code="credential_expired")
                    return partner, credential
        raise AuthenticationFailed("unknown API key")

    def with_partner(self, partner: PartnerKeys) -> Keyring:
        return replace(
            self, version=self.version + 1, partners={**self.partners, partner.partner_id: partner}
        )


def new_partner(partner_id: str, api_key: str, random_bytes: Any = os.urandom) -> PartnerKeys:
    key_id = "k1"
    return PartnerKeys(
        partner_id=partner_id,
        credentials=(ApiCredential(api_key, random_bytes(32)),),
        data_keys={key_id: random_bytes(32)},
        active_data_key_id=key_id,
        fingerprint_key=random_bytes(32),
    )


def rotate_data_key(
    keyring: Keyring, partner_id: str, random_bytes: Callable[[int], bytes] = os.urandom
) -> tuple[Keyring, str]:
    """A new data key becomes the partner's active key; the old ones stay to read old records."""
    partner = keyring.partner(partner_id)
    if len(partner.data_keys) >= DATA_KEYS_PER_PARTNER_MAX:
        raise InvalidRequest(
            f"partner {partner_id} already has {DATA_KEYS_PER_PARTNER_MAX} data keys",
            code="data_key_limit_reached",
        )
    number = len(partner.data_keys) + 1
    while f"k{number}" in partner.data_keys:
        number += 1
    key_id = f"k{number}"
    rotated = replace(
        partner,
        data_keys={**partner.data_keys, key_id: random_bytes(KEY_BYTES)},
        active_data_key_id=key_id,
    )
    return keyring.with_partner(rotated), key_id


def _all_api_keys(keyring: Keyring) -> set[str]:
    return {c.api_key for p in keyring.partners.values() for c in p.credentials}


def add_api_credential(
    keyring: Keyring,
    partner_id: str,
    now_ms: int,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> tuple[Keyring, ApiCredential]:
    """A new API credential next to the existing ones, so partners can switch without downtime.

    Credentials whose end has passed can never authenticate again and are dropped here (a request
    with one is then refused as ``unauthenticated`` rather than ``credential_expired``).
    """
    partner = keyring.partner(partner_id)
    live = tuple(c for c in partner.credentials if c.live(now_ms))
    if len(live) >= API_CREDENTIALS_LIVE_MAX:
        raise InvalidRequest(
            f"partner {partner_id} already has {len(live)} live API credentials (at most "
            f"{API_CREDENTIALS_LIVE_MAX}); retire one first",
            code="credential_limit_reached",
        )
    taken = _all_api_keys(keyring)
    api_key = f"pk_{partner_id}_{secrets.token_hex(6)}"
    while api_key in taken:
        api_key = f"pk_{partner_id}_{secrets.token_hex(6)}"
    credential = ApiCredential(api_key, random_bytes(KEY_BYTES))
    return keyring.with_partner(replace(partner, credentials=(*live, credential))), credential


def retire_api_credential(
    keyring: Keyring, partner_id: str, api_key: str, not_after_ms: int, now_ms: int
) -> Keyring:
    """Give a credential an end time; another credential must stay live past that end."""
    partner = keyring.partner(partner_id)
    target = next((c for c in partner.credentials if c.api_key == api_key), None)
    if target is None:
        raise NotFound(f"partner {partner_id} has no API key {api_key!r}", code="unknown_api_key")
    if not target.live(now_ms):
        raise InvalidRequest(
            f"API key {api_key!r} already ended at {target.not_after_ms} ms",
            code="credential_already_retired",
        )
    successors = [
        c
        for c in partner.credentials
        if c.api_key != api_key and c.live(now_ms) and c.live(not_after_ms + 1)
    ]
    if not successors:
        raise InvalidRequest(
            f"API key {api_key!r} is the last live credential of partner {partner_id}; "
            "add another (add-api-secret) before retiring it",
            code="last_live_credential",
        )
    credentials = tuple(
        replace(c, not_after_ms=not_after_ms) if c.api_key == api_key else c
        for c in partner.credentials
    )
    return keyring.with_partner(replace(partner, credentials=credentials))


def _partner_to_json(p: PartnerKeys) -> dict[str, Any]:
    return {
        "partner_id": p.partner_id,
        "credentials": [
            {"api_key": c.api_key, "secret": _b64(c.secret), "not_after_ms": c.not_after_ms}
            for c in p.credentials
        ],
        "data_keys": {kid: _b64(key) for kid, key in sorted(p.data_keys.items())},
        "active_data_key_id": p.active_data_key_id,
        "fingerprint_key": _b64(p.fingerprint_key),
    }


def _partner_from_json(raw: dict[str, Any]) -> PartnerKeys:
    try:
        partner = PartnerKeys(
            partner_id=str(raw["partner_id"]),
            credentials=tuple(
                ApiCredential(
                    str(c["api_key"]), _unb64(c["secret"], "secret"), c.get("not_after_ms")
                )
                for c in raw["credentials"]
            ),
            data_keys={str(k): _unb64(v, "data key") for k, v in raw["data_keys"].items()},
            active_data_key_id=str(raw["active_data_key_id"]),
            fingerprint_key=_unb64(raw["fingerprint_key"], "fingerprint key"),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise UnsupportedFormat(f"keyring partner entry is malformed: {exc}") from exc
    for credential in partner.credentials:
        end = credential.not_after_ms
        if end is not None and (not isinstance(end, int) or isinstance(end, bool)):
            raise UnsupportedFormat(f"partner {partner.partner_id}: not_after_ms must be an int")
    if not partner.credentials:
        raise UnsupportedFormat(f"partner {partner.partner_id} has no API credential")
    if partner.active_data_key_id not in partner.data_keys:
        raise UnsupportedFormat(f"partner {partner.partner_id}: active data key is missing")
    if any(len(k) != KEY_BYTES for k in partner.data_keys.values()):
        raise UnsupportedFormat(f"partner {partner.partner_id}: data keys must be 32 bytes")
    return partner


def _aad(version: int) -> bytes:
    return f"baas.keyring.v{KEYRING_FORMAT}|{version}".encode()


def save_keyring(path: Path, keyring: Keyring, master_key: bytes) -> None:
    plaintext = json.dumps(
        {"partners": [_partner_to_json(p) for _, p in sorted(keyring.partners.items())]}
    ).encode()
    nonce = os.urandom(12)
    ciphertext = AESGCM(master_key).encrypt(nonce, plaintext, _aad(keyring.version))
    document = {
        "format": KEYRING_FORMAT,
        "version": keyring.version,
        "nonce": _b64(nonce),
        "ciphertext": _b64(ciphertext),
    }
    _write_atomically(path, json.dumps(document, indent=2).encode())


def _write_atomically(path: Path, data: bytes) -> None:
    """Temp file (0600) in the same directory, fsync, rename over ``path``, fsync the directory.

    A reader sees the old file or the new one, never a torn one; after a crash, one of the two.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o600)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_keyring(path: Path, master_key: bytes) -> Keyring:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read keyring {path}: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != KEYRING_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ConfigError(f"keyring {path}: unknown format {found!r}")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"keyring {path}: version must be a positive integer")
    try:
        plaintext = AESGCM(master_key).decrypt(
            _unb64(document.get("nonce"), "nonce"),
            _unb64(document.get("ciphertext"), "ciphertext"),
            _aad(version),
        )
    except (InvalidTag, ValueError, UnsupportedFormat) as exc:
        raise ConfigError(
            f"keyring {path}: cannot decrypt (wrong master key or tampered file)"
        ) from exc
    try:
        partners = [_partner_from_json(p) for p in json.loads(plaintext)["partners"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"keyring {path}: malformed contents") from exc
    except UnsupportedFormat as exc:
        raise ConfigError(f"keyring {path}: {exc.detail}") from exc
    keyring = Keyring(version=version, partners={p.partner_id: p for p in partners})
    credential_count = sum(len(p.credentials) for p in partners)
    if len(keyring.partners) != len(partners) or len(_all_api_keys(keyring)) != credential_count:
        raise ConfigError(f"keyring {path}: a partner id or API key appears twice")
    return keyring


def _parse_master_key(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise ConfigError(f"master key from {where} is not hex") from exc
    if len(key) != 32:
        raise ConfigError(f"master key from {where} must be 32 bytes (64 hex characters)")
    return key


def load_master_key(path: Path | None) -> bytes:
    """The master key from ``BAAS_MASTER_KEY`` or, failing that, from a 0600 file."""
    env = os.environ.get(MASTER_KEY_ENV)
    if env:
        return _parse_master_key(env, MASTER_KEY_ENV)
    if path is None:
        raise ConfigError(f"no master key: set {MASTER_KEY_ENV} or gateway.master_key_file")
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read master key file {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"master key file {path} must not be readable by group or others (chmod 600)"
        )
    return _parse_master_key(text, str(path))
