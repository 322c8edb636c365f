"""Keyring at rest and partner request signatures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.auth import ReplayCache, SignedRequest, authenticate, sign_request
from gateway.keyring import Keyring, load_keyring, load_master_key, new_partner, save_keyring
from node.errors import AuthenticationFailed, ConfigError

MASTER = os.urandom(32)


def _keyring() -> Keyring:
    return Keyring(1, {}).with_partner(new_partner("shop", "pk_shop"))


def test_keyring_round_trip_is_encrypted(tmp_path: Path) -> None:
    keyring = _keyring()
    path = tmp_path / "keyring.json"
    save_keyring(path, keyring, MASTER)
    text = path.read_text()
    assert keyring.partner("shop").credentials[0].secret.hex() not in text
    assert "pk_shop" not in text  # even API key ids stay encrypted
    assert load_keyring(path, MASTER) == keyring
    assert oct(path.stat().st_mode)[-3:] == "600"


def test_wrong_master_key_or_tampered_version_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    save_keyring(path, _keyring(), MASTER)
    with pytest.raises(ConfigError):
        load_keyring(path, os.urandom(32))
    path.write_text(path.read_text().replace('"version": 2', '"version": 3'))
    with pytest.raises(ConfigError):
        load_keyring(path, MASTER)


def test_master_key_file_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BAAS_MASTER_KEY", raising=False)
    path = tmp_path / "master.key"
    path.write_text(MASTER.hex())
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_master_key(path)
    path.chmod(0o600)
    assert load_master_key(path) == MASTER
    monkeypatch.setenv("BAAS_MASTER_KEY", "zz")
    with pytest.raises(ConfigError):
        load_master_key(path)


def _signed(
    secret: bytes, ts: int, body: bytes = b'{"record":{"a":1}}', key: str = "pk_shop"
) -> SignedRequest:
    signature = sign_request(secret, "POST", "/v1/records", str(ts), "", body)
    return SignedRequest(
        "POST",
        "/v1/records",
        {"X-Baas-Key": key, "X-Baas-Timestamp": str(ts), "X-Baas-Signature": signature},
        body,
    )


def test_signature_checks() -> None:
    keyring = _keyring()
    secret = keyring.partner("shop").credentials[0].secret
    replay = ReplayCache(100)
    now = 1_800_000_000
    assert authenticate(_signed(secret, now), keyring, replay, now, 300).partner_id == "shop"
    cases = {
        "replayed_request": _signed(secret, now),
        "stale_request": _signed(secret, now - 301),
        "bad_signature": _signed(os.urandom(32), now + 1),
        "unauthenticated": _signed(secret, now + 2, key="pk_other"),
    }
    for code, request in cases.items():
        with pytest.raises(AuthenticationFailed) as caught:
            authenticate(request, keyring, replay, now, 300)
        assert caught.value.code == code
    tampered = _signed(secret, now + 3)
    tampered = SignedRequest(
        tampered.method, tampered.path_qs, tampered.headers, b'{"record":{"a":2}}'
    )
    with pytest.raises(AuthenticationFailed):
        authenticate(tampered, keyring, replay, now, 300)


def test_replay_cache_is_bounded() -> None:
    cache = ReplayCache(10)
    for i in range(100):
        cache.check_and_add(f"sig-{i}", 1000, 1000, 300)
    assert len(cache._seen) <= 10
