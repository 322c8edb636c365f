"""The partner keyring shared by all gateways, encrypted at rest under a master key.

It holds, per partner: API credentials (key id + HMAC secret + mode, each with an optional
end time so two can overlap during a rotation), data keys that wrap record data keys (versioned
by key id; the active one encrypts new records, older ones stay to read old records), and the
key that fingerprints record bodies for idempotency checks. It also holds the operators' API
credentials (an ``operator`` role: they sign the admin and audit routes, never a partner's).
Nodes never see any of it.

Modes (Stripe's test and live): every partner credential is in one mode, and the gateway serves
each request in its credential's mode. New credentials say it in their key id
(``pk_test_<partner>_<hex>`` / ``pk_live_<partner>_<hex>``, :func:`new_partner_in_modes`,
:func:`add_api_credential`); the mode itself is the stored ``mode`` field, not the prefix.
Credentials written before modes existed (no ``mode`` field, e.g. ``demo-shop``'s
``pk_demo-shop_...``) are **test** credentials: the safe reading, since live mode will hold
real value and nothing written before modes was meant to.

On disk (JSON)::

    {"format": 1, "version": N, "nonce": base64, "ciphertext": base64}

``ciphertext`` is AES-256-GCM under the master key, with ``"baas.keyring.v1|<version>"`` as
associated data (a rolled-back or edited version number fails to open). The master key comes
from the ``BAAS_MASTER_KEY`` environment variable (64 hex characters) or a file (mode 0600).

Rotation (``baas-keys``, :mod:`tools.keys_cli`) is three pure operations on a :class:`Keyring`,
each returning a new keyring one version up: :func:`rotate_data_key` (a new data key becomes
active; old ones stay to read old records), :func:`add_api_credential` (a second, overlapping
API secret; at most ``API_CREDENTIALS_LIVE_MAX`` live per partner and mode) and
:func:`retire_api_credential`
(give a credential an end time; never the last live one). :func:`save_keyring` writes atomically
(temp file, fsync, rename, fsync of the directory), so a gateway reloading the file
(:mod:`gateway.keyring_reload`) sees the old keyring or the new one, never half of one;
:func:`change_keyring` does load -> operation -> save under an exclusive lock on
``<keyring>.lock``, so two writers (``baas-keys``, ``baas-partners``, a gateway onboarding a
partner) never lose each other's change.
"""

from __future__ import annotations

import base64
import enum
import fcntl
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from business.identity.ids import Mode
from gateway.webhook_endpoints import WebhookEndpoint, endpoints_from_json, endpoints_to_json
from node.errors import (
    AuthenticationFailed,
    ConfigError,
    IdempotencyConflict,
    InvalidRequest,
    InvariantViolation,
    NotFound,
    UnsupportedFormat,
)

__all__ = [
    "API_CREDENTIALS_LIVE_MAX",
    "DATA_KEYS_PER_PARTNER_MAX",
    "OPERATORS_MAX",
    "ApiCredential",
    "Keyring",
    "OperatorKeys",
    "PartnerKeys",
    "Principal",
    "PrincipalKind",
    "add_api_credential",
    "add_operator",
    "change_keyring",
    "load_keyring",
    "load_master_key",
    "mode_name",
    "new_partner",
    "new_partner_in_modes",
    "parse_mode",
    "retire_api_credential",
    "rotate_data_key",
    "save_keyring",
]

KEYRING_FORMAT = 1
MASTER_KEY_ENV = "BAAS_MASTER_KEY"
# Live (not yet ended) API credentials per partner and mode: the one in use and the one rolling in.
API_CREDENTIALS_LIVE_MAX = 2
# Operator identities in one keyring (each with its own credentials, so the audit trail names who).
OPERATORS_MAX = 64
MODE_NAMES = {Mode.TEST: "test", Mode.LIVE: "live"}
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


def mode_name(mode: Mode) -> str:
    return MODE_NAMES[Mode(mode)]


def parse_mode(text: object, param: str = "mode") -> Mode:
    for mode, name in MODE_NAMES.items():
        if text == name:
            return mode
    raise InvalidRequest('mode must be "test" or "live"', code="parameter_invalid", param=param)


@dataclass(frozen=True, slots=True)
class ApiCredential:
    api_key: str
    secret: bytes = field(repr=False)
    not_after_ms: int | None = None  # None: valid until rotated out
    mode: Mode = Mode.TEST  # a credential written before modes existed is a test credential

    def live(self, now_ms: int) -> bool:
        return self.not_after_ms is None or now_ms <= self.not_after_ms


@dataclass(frozen=True, slots=True)
class PartnerKeys:
    partner_id: str
    credentials: tuple[ApiCredential, ...]
    data_keys: dict[str, bytes] = field(repr=False)
    active_data_key_id: str
    fingerprint_key: bytes = field(repr=False)
    # Webhook endpoints and their signing secrets (gateway/webhook_endpoints.py): gateways only.
    webhook_endpoints: tuple[WebhookEndpoint, ...] = field(default=(), repr=False)

    def data_key(self, key_id: str) -> bytes:
        try:
            return self.data_keys[key_id]
        except KeyError as exc:
            raise NotFound(f"partner {self.partner_id} has no data key {key_id!r}") from exc


@dataclass(frozen=True, slots=True)
class OperatorKeys:
    """An operator's API credentials: they sign the admin and audit routes (role ``operator``)."""

    operator_id: str
    credentials: tuple[ApiCredential, ...]


class PrincipalKind(enum.Enum):
    PARTNER = "partner"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who signed a request: a partner in one mode, or an operator (``partner`` is None)."""

    kind: PrincipalKind
    name: str  # the partner id or the operator id
    credential: ApiCredential
    partner: PartnerKeys | None

    @property
    def mode(self) -> Mode:
        return self.credential.mode


@dataclass(frozen=True, slots=True)
class Keyring:
    version: int
    partners: dict[str, PartnerKeys]
    operators: dict[str, OperatorKeys] = field(default_factory=dict)

    def partner(self, partner_id: str) -> PartnerKeys:
        try:
            return self.partners[partner_id]
        except KeyError as exc:
            raise NotFound(f"unknown partner {partner_id!r}") from exc

    def principal(self, api_key: str, now_ms: int) -> Principal:
        """The partner (in its credential's mode) or operator an API key belongs to."""
        for partner in self.partners.values():
            for credential in partner.credentials:
                if credential.api_key == api_key:
                    _check_live(credential, now_ms)
                    return Principal(PrincipalKind.PARTNER, partner.partner_id, credential, partner)
        for operator in self.operators.values():
            for credential in operator.credentials:
                if credential.api_key == api_key:
                    _check_live(credential, now_ms)
                    return Principal(PrincipalKind.OPERATOR, operator.operator_id, credential, None)
        raise AuthenticationFailed("unknown API key")

    def credential(self, api_key: str, now_ms: int) -> tuple[PartnerKeys, ApiCredential]:
        principal = self.principal(api_key, now_ms)
        if principal.partner is None:
            raise AuthenticationFailed("not a partner API key")
        return principal.partner, principal.credential

    def with_partner(self, partner: PartnerKeys) -> Keyring:
        return replace(
            self, version=self.version + 1, partners={**self.partners, partner.partner_id: partner}
        )

    def with_operator(self, operator: OperatorKeys) -> Keyring:
        return replace(
            self,
            version=self.version + 1,
            operators={**self.operators, operator.operator_id: operator},
        )


def _check_live(credential: ApiCredential, now_ms: int) -> None:
    if not credential.live(now_ms):
        raise AuthenticationFailed("API key has expired", code="credential_expired")


def new_partner(partner_id: str, api_key: str, random_bytes: Any = os.urandom) -> PartnerKeys:
    key_id = "k1"
    return PartnerKeys(
        partner_id=partner_id,
        credentials=(ApiCredential(api_key, random_bytes(32)),),
        data_keys={key_id: random_bytes(32)},
        active_data_key_id=key_id,
        fingerprint_key=random_bytes(32),
    )


def _new_api_key(keyring: Keyring, stem: str) -> str:
    taken = _all_api_keys(keyring)
    api_key = f"{stem}_{secrets.token_hex(6)}"
    while api_key in taken:
        api_key = f"{stem}_{secrets.token_hex(6)}"
    return api_key


def _partner_key_stem(partner_id: str, mode: Mode) -> str:
    return f"pk_{mode_name(mode)}_{partner_id}"


def new_partner_in_modes(
    keyring: Keyring, partner_id: str, random_bytes: Callable[[int], bytes] = os.urandom
) -> tuple[Keyring, PartnerKeys]:
    """A new partner with one test and one live credential and its first data key."""
    if partner_id in keyring.partners:
        raise IdempotencyConflict(
            f"partner {partner_id!r} is already in the keyring (its secrets were shown once)",
            code="partner_exists",
            param="id",
        )
    credentials = tuple(
        ApiCredential(
            _new_api_key(keyring, _partner_key_stem(partner_id, mode)),
            random_bytes(KEY_BYTES),
            mode=mode,
        )
        for mode in Mode
    )
    key_id = "k1"
    partner = PartnerKeys(
        partner_id=partner_id,
        credentials=credentials,
        data_keys={key_id: random_bytes(KEY_BYTES)},
        active_data_key_id=key_id,
        fingerprint_key=random_bytes(KEY_BYTES),
    )
    return keyring.with_partner(partner), partner


def add_operator(
    keyring: Keyring, operator_id: str, random_bytes: Callable[[int], bytes] = os.urandom
) -> tuple[Keyring, ApiCredential]:
    """A new operator identity with one API credential (``ok_<operator>_<hex>``)."""
    if not operator_id or not operator_id.isprintable() or len(operator_id) > 64:
        raise InvalidRequest("operator id must be 1..64 printable characters", param="operator")
    if operator_id in keyring.operators:
        raise InvalidRequest(f"operator {operator_id!r} exists", code="operator_exists")
    if len(keyring.operators) >= OPERATORS_MAX:
        raise InvalidRequest(f"at most {OPERATORS_MAX} operators", code="operator_limit_reached")
    credential = ApiCredential(_new_api_key(keyring, f"ok_{operator_id}"), random_bytes(KEY_BYTES))
    return keyring.with_operator(OperatorKeys(operator_id, (credential,))), credential


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
    return {c.api_key for c in _all_credentials(keyring)}


def _all_credentials(keyring: Keyring) -> list[ApiCredential]:
    return [c for p in keyring.partners.values() for c in p.credentials] + [
        c for o in keyring.operators.values() for c in o.credentials
    ]


def add_api_credential(
    keyring: Keyring,
    partner_id: str,
    now_ms: int,
    random_bytes: Callable[[int], bytes] = os.urandom,
    mode: Mode = Mode.TEST,
) -> tuple[Keyring, ApiCredential]:
    """A new API credential in ``mode`` next to the existing ones, so partners can switch
    without downtime.

    Credentials whose end has passed can never authenticate again and are dropped here (a request
    with one is then refused as ``unauthenticated`` rather than ``credential_expired``).
    """
    partner = keyring.partner(partner_id)
    live = tuple(c for c in partner.credentials if c.live(now_ms))
    in_mode = [c for c in live if c.mode == mode]
    if len(in_mode) >= API_CREDENTIALS_LIVE_MAX:
        raise InvalidRequest(
            f"partner {partner_id} already has {len(in_mode)} live {mode_name(mode)} API "
            f"credentials (at most {API_CREDENTIALS_LIVE_MAX}); retire one first",
            code="credential_limit_reached",
        )
    api_key = _new_api_key(keyring, _partner_key_stem(partner_id, mode))
    credential = ApiCredential(api_key, random_bytes(KEY_BYTES), mode=mode)
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
        if c.api_key != api_key
        and c.mode == target.mode
        and c.live(now_ms)
        and c.live(not_after_ms + 1)
    ]
    if not successors:
        raise InvalidRequest(
            f"API key {api_key!r} is the last live {mode_name(target.mode)} credential of "
            f"partner {partner_id}; "
            "add another (add-api-secret) before retiring it",
            code="last_live_credential",
        )
    credentials = tuple(
        replace(c, not_after_ms=not_after_ms) if c.api_key == api_key else c
        for c in partner.credentials
    )
    return keyring.with_partner(replace(partner, credentials=credentials))


def _credentials_to_json(credentials: tuple[ApiCredential, ...]) -> list[dict[str, Any]]:
    return [
        {
            "api_key": c.api_key,
            "secret": _b64(c.secret),
            "not_after_ms": c.not_after_ms,
            "mode": mode_name(c.mode),
        }
        for c in credentials
    ]


def _credentials_from_json(raw: Any) -> tuple[ApiCredential, ...]:
    credentials = tuple(
        ApiCredential(
            str(c["api_key"]),
            _unb64(c["secret"], "secret"),
            c.get("not_after_ms"),
            # No mode: written before modes existed, a test credential (module docstring).
            Mode.TEST if c.get("mode") is None else _stored_mode(c["mode"]),
        )
        for c in raw
    )
    for credential in credentials:
        end = credential.not_after_ms
        if end is not None and (not isinstance(end, int) or isinstance(end, bool)):
            raise UnsupportedFormat(f"credential {credential.api_key}: not_after_ms must be an int")
    return credentials


def _stored_mode(text: Any) -> Mode:
    try:
        return parse_mode(text)
    except InvalidRequest as exc:
        raise UnsupportedFormat(f"keyring: unknown credential mode {text!r}") from exc


def _partner_to_json(p: PartnerKeys) -> dict[str, Any]:
    return {
        "partner_id": p.partner_id,
        "credentials": _credentials_to_json(p.credentials),
        "data_keys": {kid: _b64(key) for kid, key in sorted(p.data_keys.items())},
        "active_data_key_id": p.active_data_key_id,
        "fingerprint_key": _b64(p.fingerprint_key),
        **(
            {"webhook_endpoints": endpoints_to_json(p.webhook_endpoints)}
            if p.webhook_endpoints
            else {}
        ),
    }


def _partner_from_json(raw: dict[str, Any]) -> PartnerKeys:
    try:
        partner = PartnerKeys(
            partner_id=str(raw["partner_id"]),
            credentials=_credentials_from_json(raw["credentials"]),
            data_keys={str(k): _unb64(v, "data key") for k, v in raw["data_keys"].items()},
            active_data_key_id=str(raw["active_data_key_id"]),
            fingerprint_key=_unb64(raw["fingerprint_key"], "fingerprint key"),
            webhook_endpoints=endpoints_from_json(raw.get("webhook_endpoints")),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise UnsupportedFormat(f"keyring partner entry is malformed: {exc}") from exc
    if not partner.credentials:
        raise UnsupportedFormat(f"partner {partner.partner_id} has no API credential")
    if partner.active_data_key_id not in partner.data_keys:
        raise UnsupportedFormat(f"partner {partner.partner_id}: active data key is missing")
    if any(len(k) != KEY_BYTES for k in partner.data_keys.values()):
        raise UnsupportedFormat(f"partner {partner.partner_id}: data keys must be 32 bytes")
    return partner


def _operator_from_json(raw: dict[str, Any]) -> OperatorKeys:
    try:
        operator = OperatorKeys(str(raw["operator_id"]), _credentials_from_json(raw["credentials"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise UnsupportedFormat(f"keyring operator entry is malformed: {exc}") from exc
    if not operator.credentials:
        raise UnsupportedFormat(f"operator {operator.operator_id} has no API credential")
    return operator


def _aad(version: int) -> bytes:
    return f"baas.keyring.v{KEYRING_FORMAT}|{version}".encode()


def save_keyring(path: Path, keyring: Keyring, master_key: bytes) -> None:
    contents: dict[str, Any] = {
        "partners": [_partner_to_json(p) for _, p in sorted(keyring.partners.items())]
    }
    if keyring.operators:  # absent when there are none: older gateways read the file as before
        contents["operators"] = [
            {"operator_id": o.operator_id, "credentials": _credentials_to_json(o.credentials)}
            for _, o in sorted(keyring.operators.items())
        ]
    plaintext = json.dumps(contents).encode()
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
        contents = json.loads(plaintext)
        partners = [_partner_from_json(p) for p in contents["partners"]]
        operators = [_operator_from_json(o) for o in contents.get("operators", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"keyring {path}: malformed contents") from exc
    except UnsupportedFormat as exc:
        raise ConfigError(f"keyring {path}: {exc.detail}") from exc
    keyring = Keyring(
        version=version,
        partners={p.partner_id: p for p in partners},
        operators={o.operator_id: o for o in operators},
    )
    credentials = _all_credentials(keyring)
    if (
        len(keyring.partners) != len(partners)
        or len(keyring.operators) != len(operators)
        or len(_all_api_keys(keyring)) != len(credentials)
        or len(credentials)
        != sum(len(p.credentials) for p in partners) + sum(len(o.credentials) for o in operators)
    ):
        raise ConfigError(f"keyring {path}: a partner id, operator id or API key appears twice")
    return keyring


@contextmanager
def _locked(keyring_file: Path) -> Iterator[None]:
    fd = os.open(f"{keyring_file}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def change_keyring(
    path: Path, master_key: bytes, operation: Callable[[Keyring], Keyring]
) -> Keyring:
    """Load, change and save the keyring under an exclusive lock on ``<path>.lock``.

    Blocking (file lock, fsync): an event loop calls it in a thread.
    """
    with _locked(path):
        before = load_keyring(path, master_key)
        after = operation(before)
        if after.version != before.version + 1:
            raise InvariantViolation("every keyring change bumps the version by one")
        save_keyring(path, after, master_key)
        return after


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
