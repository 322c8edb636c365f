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
"""

from __future__ import annotations

import base64
import json
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.errors import AuthenticationFailed, ConfigError, NotFound, UnsupportedFormat

__all__ = [
    "ApiCredential",
    "Keyring",
    "PartnerKeys",
    "load_keyring",
    "load_master_key",
    "new_partner",
    "save_keyring",
]

KEYRING_FORMAT = 1
MASTER_KEY_ENV = "BAAS_MASTER_KEY"


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
                    if credential.not_after_ms is not None and now_ms > credential.not_after_ms:
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
    if partner.active_data_key_id not in partner.data_keys:
        raise UnsupportedFormat(f"partner {partner.partner_id}: active data key is missing")
    if any(len(k) != 32 for k in partner.data_keys.values()):
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
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load_keyring(path: Path, master_key: bytes) -> Keyring:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read keyring {path}: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != KEYRING_FORMAT:
        raise ConfigError(f"keyring {path}: unknown format {document.get('format')!r}")
    version = document.get("version")
    if not isinstance(version, int):
        raise ConfigError(f"keyring {path}: version must be an integer")
    try:
        plaintext = AESGCM(master_key).decrypt(
            _unb64(document["nonce"], "nonce"),
            _unb64(document["ciphertext"], "ciphertext"),
            _aad(version),
        )
    except (InvalidTag, KeyError) as exc:
        raise ConfigError(
            f"keyring {path}: cannot decrypt (wrong master key or tampered file)"
        ) from exc
    partners = [_partner_from_json(p) for p in json.loads(plaintext)["partners"]]
    return Keyring(version=version, partners={p.partner_id: p for p in partners})


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
