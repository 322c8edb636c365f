"""Partners in test and live mode: per-mode credentials in the keyring, operators, the
principal a signature resolves to, the old credentials' mode, and the locked keyring change."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from business.identity import ActorKind, Mode
from business.identity.ids import partner_id
from gateway.auth import (
    ReplayCache,
    SignedRequest,
    authenticate,
    authenticate_principal,
    sign_request,
)
from gateway.keyring import (
    API_CREDENTIALS_LIVE_MAX,
    Keyring,
    OperatorKeys,
    PrincipalKind,
    add_api_credential,
    add_operator,
    change_keyring,
    load_keyring,
    new_partner,
    new_partner_in_modes,
    retire_api_credential,
    save_keyring,
)
from gateway.partners import actor_of, check_name, operator_cli_actor, parse_audit_cursor
from node.errors import (
    AuthenticationFailed,
    ConfigError,
    IdempotencyConflict,
    InvalidRequest,
    InvariantViolation,
)

MASTER = os.urandom(32)
NOW_MS = 1_800_000_000_000


def _signed(api_key: str, secret: bytes, path: str = "/v1/audit") -> SignedRequest:
    ts = str(NOW_MS // 1000)
    signature = sign_request(secret, "GET", path, ts, "", b"")
    return SignedRequest(
        "GET",
        path,
        {"X-Baas-Key": api_key, "X-Baas-Timestamp": ts, "X-Baas-Signature": signature},
        b"",
    )


def test_a_new_partner_gets_one_credential_per_mode_named_by_its_mode() -> None:
    keyring, partner = new_partner_in_modes(Keyring(1, {}), "shop-x")
    assert keyring.version == 2 and keyring.partners["shop-x"] == partner
    by_mode = {c.mode: c for c in partner.credentials}
    assert set(by_mode) == {Mode.TEST, Mode.LIVE}
    assert by_mode[Mode.TEST].api_key.startswith("pk_test_shop-x_")
    assert by_mode[Mode.LIVE].api_key.startswith("pk_live_shop-x_")
    assert by_mode[Mode.TEST].secret != by_mode[Mode.LIVE].secret
    for mode, credential in by_mode.items():
        principal = keyring.principal(credential.api_key, NOW_MS)
        assert principal.kind == PrincipalKind.PARTNER and principal.mode == mode
        assert principal.name == "shop-x" and principal.partner == partner
    with pytest.raises(IdempotencyConflict) as again:
        new_partner_in_modes(keyring, "shop-x")
    assert again.value.code == "partner_exists"


def test_the_mode_is_the_stored_field_not_the_key_prefix(tmp_path: Path) -> None:
    # A key id that *looks* live but is stored as test is a test credential.
    keyring = Keyring(1, {}).with_partner(new_partner("odd", "pk_live_odd_123"))
    assert keyring.principal("pk_live_odd_123", NOW_MS).mode == Mode.TEST
    path = tmp_path / "keyring.json"
    save_keyring(path, keyring, MASTER)
    assert load_keyring(path, MASTER).principal("pk_live_odd_123", NOW_MS).mode == Mode.TEST


def _write_raw(path: Path, version: int, contents: dict[str, object]) -> None:
    """A keyring file as an older gateway (or a hand edit) would have written it."""
    nonce = os.urandom(12)
    aad = f"baas.keyring.v1|{version}".encode()
    ciphertext = AESGCM(MASTER).encrypt(nonce, json.dumps(contents).encode(), aad)
    path.write_text(
        json.dumps(
            {
                "format": 1,
                "version": version,
                "nonce": base64.b64encode(nonce).decode(),
                "ciphertext": base64.b64encode(ciphertext).decode(),
            }
        )
    )


def _old_partner(key: str, mode: str | None = None) -> dict[str, object]:
    credential: dict[str, object] = {
        "api_key": key,
        "secret": base64.b64encode(b"s" * 32).decode(),
        "not_after_ms": None,
    }
    if mode is not None:
        credential["mode"] = mode
    return {
        "partner_id": "demo-shop",
        "credentials": [credential],
        "data_keys": {"k1": base64.b64encode(b"d" * 32).decode()},
        "active_data_key_id": "k1",
        "fingerprint_key": base64.b64encode(b"f" * 32).decode(),
    }


def test_a_keyring_from_before_modes_loads_its_credentials_as_test(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    _write_raw(path, 3, {"partners": [_old_partner("pk_demo-shop_abc")]})
    keyring = load_keyring(path, MASTER)
    assert keyring.principal("pk_demo-shop_abc", NOW_MS).mode == Mode.TEST
    assert keyring.operators == {}
    # Saved again it says so explicitly, and loads the same.
    save_keyring(path, keyring, MASTER)
    assert load_keyring(path, MASTER) == keyring
    _write_raw(path, 4, {"partners": [_old_partner("pk_demo-shop_abc", mode="sandbox")]})
    with pytest.raises(ConfigError, match="mode"):
        load_keyring(path, MASTER)


def test_operators_round_trip_and_sign_only_as_operators(tmp_path: Path) -> None:
    keyring, partner = new_partner_in_modes(Keyring(1, {}), "shop-x")
    keyring, op = add_operator(keyring, "alice")
    assert op.api_key.startswith("ok_alice_")
    with pytest.raises(InvalidRequest) as twice:
        add_operator(keyring, "alice")
    assert twice.value.code == "operator_exists"
    path = tmp_path / "keyring.json"
    save_keyring(path, keyring, MASTER)
    loaded = load_keyring(path, MASTER)
    assert loaded == keyring
    principal = authenticate_principal(
        _signed(op.api_key, op.secret), loaded, ReplayCache(10), NOW_MS // 1000, 300
    )
    assert principal.kind == PrincipalKind.OPERATOR and principal.partner is None
    assert actor_of(principal).kind == ActorKind.OPERATOR
    # The partner-only entry point refuses an operator's (valid) signature.
    with pytest.raises(AuthenticationFailed) as refused:
        authenticate(
            _signed(op.api_key, op.secret, "/v1/records"),
            loaded,
            ReplayCache(10),
            NOW_MS // 1000,
            300,
        )
    assert refused.value.code == "operator_credential"
    test_key = next(c for c in partner.credentials if c.mode == Mode.TEST)
    partner_actor = actor_of(loaded.principal(test_key.api_key, NOW_MS))
    assert partner_actor.kind == ActorKind.PARTNER and partner_actor.partner == partner_id("shop-x")
    # The log holds a hash of the key id, never the key id or the secret.
    assert partner_actor.credential not in (test_key.api_key.encode(), test_key.secret)


def test_an_api_key_shared_by_an_operator_and_a_partner_is_refused(tmp_path: Path) -> None:
    keyring, partner = new_partner_in_modes(Keyring(1, {}), "shop-x")
    keyring, _ = add_operator(keyring, "alice")
    clash = keyring.with_operator(OperatorKeys("bob", (partner.credentials[0],)))
    path = tmp_path / "keyring.json"
    save_keyring(path, clash, MASTER)
    with pytest.raises(ConfigError, match="twice"):
        load_keyring(path, MASTER)


def test_rotation_limits_and_the_last_live_credential_are_per_mode() -> None:
    keyring, partner = new_partner_in_modes(Keyring(1, {}), "shop-x")
    live = next(c for c in partner.credentials if c.mode == Mode.LIVE)
    # The test credential does not stand in for the live one: retiring it is refused.
    with pytest.raises(InvalidRequest) as last:
        retire_api_credential(keyring, "shop-x", live.api_key, NOW_MS + 1000, NOW_MS)
    assert last.value.code == "last_live_credential"
    keyring, second = add_api_credential(keyring, "shop-x", NOW_MS, mode=Mode.LIVE)
    assert second.mode == Mode.LIVE and second.api_key.startswith("pk_live_shop-x_")
    assert API_CREDENTIALS_LIVE_MAX == 2
    with pytest.raises(InvalidRequest) as full:
        add_api_credential(keyring, "shop-x", NOW_MS, mode=Mode.LIVE)
    assert full.value.code == "credential_limit_reached"
    keyring, test_two = add_api_credential(keyring, "shop-x", NOW_MS, mode=Mode.TEST)
    assert test_two.mode == Mode.TEST  # the other mode has its own room
    retired = retire_api_credential(keyring, "shop-x", live.api_key, NOW_MS + 1000, NOW_MS)
    assert retired.version == keyring.version + 1


def test_change_keyring_serialises_writers_and_bumps_one_version(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    save_keyring(path, Keyring(1, {}), MASTER)
    names = [f"shop-{i}" for i in range(8)]

    def onboard(name: str) -> None:
        change_keyring(path, MASTER, lambda k: new_partner_in_modes(k, name)[0])

    threads = [threading.Thread(target=onboard, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = load_keyring(path, MASTER)
    assert sorted(final.partners) == names and final.version == 1 + len(names)  # none lost
    with pytest.raises(InvariantViolation):
        change_keyring(path, MASTER, lambda k: k)  # a change that bumps nothing is a bug


def test_partner_names_and_audit_cursors_are_checked() -> None:
    assert check_name("demo-shop") == "demo-shop"
    for bad in ("", "Shop", "-x", "a" * 65, "a b", 7):
        with pytest.raises(InvalidRequest):
            check_name(bad)
    assert parse_audit_cursor("aud_12") == 12 and parse_audit_cursor(None) is None
    for bad in ("12", "aud_", "aud_x", "aud_-1"):
        with pytest.raises(InvalidRequest):
            parse_audit_cursor(bad)
    assert operator_cli_actor("a") != operator_cli_actor("b")


def test_baas_keys_adds_and_lists_credentials_per_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools import keys_cli

    monkeypatch.setenv("BAAS_MASTER_KEY", MASTER.hex())
    path = tmp_path / "keyring.json"
    save_keyring(path, new_partner_in_modes(Keyring(1, {}), "shop-x")[0], MASTER)

    def cli(*args: str) -> dict[str, object]:
        assert keys_cli.main(["--keyring", str(path), *args]) == 0
        result: dict[str, object] = json.loads(capsys.readouterr().out)
        return result

    added = cli("add-api-secret", "--partner", "shop-x", "--mode", "live")
    assert added["mode"] == "live" and str(added["api_key"]).startswith("pk_live_shop-x_")
    loaded = load_keyring(path, MASTER)
    assert loaded.principal(str(added["api_key"]), NOW_MS).mode == Mode.LIVE
    listed = cli("list", "--partner", "shop-x")
    modes = sorted(c["mode"] for c in listed["credentials"])  # type: ignore[attr-defined]
    assert modes == ["live", "live", "test"]
    assert (
        keys_cli.main(
            ["--keyring", str(path), "add-api-secret", "--partner", "shop-x", "--mode", "live"]
        )
        == 1
    )  # two live already: refused
    assert "credential_limit_reached" in capsys.readouterr().err
