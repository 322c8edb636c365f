"""Key rotation on the keyring: the operations, their bounds and errors, the atomic file write,
the ``baas-keys`` command, and the gateway's reloader refusing bad files."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.auth import ReplayCache, SignedRequest, authenticate, sign_request
from gateway.config import GatewayConfig, GatewayTimeouts, NodeEndpoint
from gateway.keyring import (
    API_CREDENTIALS_LIVE_MAX,
    Keyring,
    add_api_credential,
    load_keyring,
    new_partner,
    retire_api_credential,
    rotate_data_key,
    save_keyring,
)
from gateway.keyring_reload import KeyringReloader
from gateway.main import run_gateway
from gateway.record_codec import open_record, seal_record
from node.errors import AuthenticationFailed, ConfigError, InvalidRequest, NotFound
from node.records import record_id_for
from node.storage.envelope import read_header
from tools import keys_cli
from tools.client import PartnerClient

MASTER = os.urandom(32)
NOW_MS = 1_800_000_000_000


def _keyring() -> Keyring:
    return (
        Keyring(1, {})
        .with_partner(new_partner("shop", "pk_shop"))
        .with_partner(new_partner("idle", "pk_idle"))
    )


# ------------------------------------------------------------------ operations


def test_rotate_keeps_old_records_readable_and_seals_new_ones_under_the_new_key() -> None:
    before = _keyring()
    old_id = record_id_for("shop", "order-1")
    old_blob = seal_record(before.partner("shop"), old_id, b'{"a":1}').blob
    after, key_id = rotate_data_key(before, "shop")
    assert key_id == "k2" and after.version == before.version + 1
    shop = after.partner("shop")
    assert shop.active_data_key_id == "k2" and set(shop.data_keys) == {"k1", "k2"}
    assert shop.data_keys["k1"] == before.partner("shop").data_keys["k1"]
    new_id = record_id_for("shop", "order-2")
    new_blob = seal_record(shop, new_id, b'{"a":2}').blob
    assert read_header(old_blob).key_id == "k1" and read_header(new_blob).key_id == "k2"
    old, new = open_record(after, old_id, old_blob), open_record(after, new_id, new_blob)
    assert (old.owner, old.record) == ("shop", {"a": 1})
    assert (new.owner, new.record) == ("shop", {"a": 2})
    assert old.plaintext_salt is not None and old.plaintext_salt != new.plaintext_salt
    assert after.partner("idle") == before.partner("idle")  # other partners untouched
    again, third = rotate_data_key(after, "idle")  # a partner with no records rotates too
    assert third == "k2" and again.version == after.version + 1


def test_unknown_partner_is_refused_by_every_operation() -> None:
    keyring = _keyring()
    with pytest.raises(NotFound):
        rotate_data_key(keyring, "nope")
    with pytest.raises(NotFound):
        add_api_credential(keyring, "nope", NOW_MS)
    with pytest.raises(NotFound):
        retire_api_credential(keyring, "nope", "pk_shop", NOW_MS, NOW_MS)


def _auth(keyring: Keyring, api_key: str, secret: bytes, now_s: int) -> str:
    body = b'{"record":{"a":1}}'
    nonce = os.urandom(8).hex()
    signature = sign_request(secret, "POST", "/v1/records", str(now_s), "", body, nonce)
    request = SignedRequest(
        "POST",
        "/v1/records",
        {
            "X-Baas-Key": api_key,
            "X-Baas-Timestamp": str(now_s),
            "X-Baas-Nonce": nonce,
            "X-Baas-Signature": signature,
        },
        body,
    )
    return authenticate(request, keyring, ReplayCache(10), now_s, 300).partner_id


def test_overlapping_credentials_then_retirement() -> None:
    keyring = _keyring()
    old = keyring.partner("shop").credentials[0]
    with pytest.raises(InvalidRequest) as last:
        retire_api_credential(keyring, "shop", old.api_key, NOW_MS + 2000, NOW_MS)
    assert last.value.code == "last_live_credential"
    keyring, new = add_api_credential(keyring, "shop", NOW_MS)
    assert new.api_key != old.api_key and len(new.secret) == 32
    assert new.api_key.startswith("pk_test_shop_")
    now_s = NOW_MS // 1000
    assert _auth(keyring, old.api_key, old.secret, now_s) == "shop"
    assert _auth(keyring, new.api_key, new.secret, now_s) == "shop"
    with pytest.raises(InvalidRequest) as bound:
        add_api_credential(keyring, "shop", NOW_MS)
    assert bound.value.code == "credential_limit_reached" and API_CREDENTIALS_LIVE_MAX == 2
    version = keyring.version
    keyring = retire_api_credential(keyring, "shop", old.api_key, NOW_MS + 2000, NOW_MS)
    assert keyring.version == version + 1
    assert _auth(keyring, old.api_key, old.secret, now_s + 2) == "shop"  # up to its end
    with pytest.raises(AuthenticationFailed) as expired:
        _auth(keyring, old.api_key, old.secret, now_s + 3)
    assert expired.value.code == "credential_expired"
    assert _auth(keyring, new.api_key, new.secret, now_s + 3) == "shop"
    with pytest.raises(InvalidRequest) as only:  # now the new one is the last live one
        retire_api_credential(keyring, "shop", new.api_key, NOW_MS + 9000, NOW_MS + 3000)
    assert only.value.code == "last_live_credential"
    with pytest.raises(InvalidRequest) as done:
        retire_api_credential(keyring, "shop", old.api_key, NOW_MS + 9000, NOW_MS + 3000)
    assert done.value.code == "credential_already_retired"
    with pytest.raises(NotFound):
        retire_api_credential(keyring, "shop", "pk_idle", NOW_MS + 9000, NOW_MS)  # not shop's
    # Once the old one has ended, a new one may be added; the ended one is dropped.
    keyring, third = add_api_credential(keyring, "shop", NOW_MS + 3000)
    assert [c.api_key for c in keyring.partner("shop").credentials] == [new.api_key, third.api_key]


def test_retiring_needs_a_successor_live_past_the_end() -> None:
    keyring, new = add_api_credential(_keyring(), "shop", NOW_MS)
    old = keyring.partner("shop").credentials[0]
    keyring = retire_api_credential(keyring, "shop", new.api_key, NOW_MS + 1000, NOW_MS)
    with pytest.raises(InvalidRequest) as refused:  # the new one ends before the old one would
        retire_api_credential(keyring, "shop", old.api_key, NOW_MS + 5000, NOW_MS)
    assert refused.value.code == "last_live_credential"


# ------------------------------------------------------------------ the file


def test_saved_keyring_round_trips_with_mode_0600_and_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring, _ = add_api_credential(_keyring(), "shop", NOW_MS)
    keyring, _ = rotate_data_key(keyring, "shop")
    save_keyring(path, keyring, MASTER)
    assert load_keyring(path, MASTER) == keyring
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyring.json"]


def test_readers_never_see_a_torn_keyring_while_it_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring = _keyring()
    save_keyring(path, keyring, MASTER)
    stop = threading.Event()
    errors: list[Exception] = []
    loads = [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                load_keyring(path, MASTER)
                loads[0] += 1
            except ConfigError as exc:
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(150):
            keyring, _ = rotate_data_key(keyring, "shop")
            save_keyring(path, keyring, MASTER)
    finally:
        stop.set()
        thread.join()
    assert errors == [] and loads[0] > 0
    assert load_keyring(path, MASTER).version == keyring.version


@pytest.mark.parametrize(
    "tamper",
    [
        lambda doc: {**doc, "ciphertext": doc["ciphertext"][:-4] + "AAAA"},
        lambda doc: {**doc, "version": doc["version"] + 1},
        lambda doc: {**doc, "format": 2},
        lambda doc: {**doc, "nonce": "%%%"},
        lambda doc: [doc],
    ],
    ids=["ciphertext", "version", "format", "nonce", "not-an-object"],
)
def test_tampered_keyring_is_refused(tmp_path: Path, tamper: object) -> None:
    path = tmp_path / "keyring.json"
    save_keyring(path, _keyring(), MASTER)
    assert callable(tamper)
    path.write_text(json.dumps(tamper(json.loads(path.read_text()))))
    with pytest.raises(ConfigError):
        load_keyring(path, MASTER)


def test_duplicate_api_key_across_partners_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    twice = Keyring(1, {}).with_partner(new_partner("a", "pk_same"))
    save_keyring(path, twice.with_partner(new_partner("b", "pk_same")), MASTER)
    with pytest.raises(ConfigError, match="appears twice"):
        load_keyring(path, MASTER)


# ------------------------------------------------------------------ baas-keys


@pytest.fixture
def keyring_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BAAS_MASTER_KEY", MASTER.hex())
    path = tmp_path / "keyring.json"
    save_keyring(path, _keyring(), MASTER)
    return path


def _cli(capsys: pytest.CaptureFixture[str], path: Path, *args: str) -> tuple[int, str, str]:
    code = keys_cli.main(["--keyring", str(path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_rotate_add_retire_list(keyring_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, keyring_file, "rotate-data-key", "--partner", "shop")
    assert code == 0 and json.loads(out) == {
        "partner_id": "shop",
        "active_data_key_id": "k2",
        "keyring_version": 4,
    }
    code, out, _ = _cli(capsys, keyring_file, "add-api-secret", "--partner", "shop")
    added = json.loads(out)
    assert code == 0 and added["keyring_version"] == 5 and len(added["secret_hex"]) == 64
    keyring = load_keyring(keyring_file, MASTER)
    assert keyring.credential(added["api_key"], NOW_MS)[1].secret.hex() == added["secret_hex"]
    code, out, _ = _cli(
        capsys,
        keyring_file,
        "retire-api-secret",
        "--partner",
        "shop",
        "--api-key",
        "pk_shop",
        "--after",
        "2",
    )
    retired = json.loads(out)
    assert code == 0 and retired["keyring_version"] == 6
    code, out, _ = _cli(capsys, keyring_file, "list", "--partner", "shop")
    listed = json.loads(out)
    assert added["secret_hex"] not in out and "secret" not in out
    assert listed["data_keys"] == [
        {"key_id": "k1", "active": False},
        {"key_id": "k2", "active": True},
    ]
    ends = {c["api_key"]: c["not_after_ms"] for c in listed["credentials"]}
    assert ends == {"pk_shop": retired["not_after_ms"], added["api_key"]: None}
    code, out, _ = _cli(capsys, keyring_file, "list")
    assert code == 0 and [p["partner_id"] for p in json.loads(out)["partners"]] == ["idle", "shop"]


def test_cli_add_secret_to_a_private_file(
    keyring_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = keyring_file.parent / "new-secret.json"
    code, out, _ = _cli(
        capsys, keyring_file, "add-api-secret", "--partner", "shop", "--out", str(out_file)
    )
    written = json.loads(out_file.read_text())
    assert code == 0 and written["secret_hex"] not in out and "secret_hex" not in json.loads(out)
    assert oct(out_file.stat().st_mode & 0o777) == "0o600"
    version = load_keyring(keyring_file, MASTER).version
    code, _, err = _cli(
        capsys, keyring_file, "add-api-secret", "--partner", "idle", "--out", str(out_file)
    )
    assert code == 1 and "refusing to overwrite" in err
    assert load_keyring(keyring_file, MASTER).version == version  # nothing changed
    assert json.loads(out_file.read_text()) == written


@pytest.mark.parametrize(
    ("args", "code_text"),
    [
        (("rotate-data-key", "--partner", "nope"), "[not_found]"),
        (("add-api-secret", "--partner", "nope"), "[not_found]"),
        (("list", "--partner", "nope"), "[not_found]"),
        (
            ("retire-api-secret", "--partner", "shop", "--api-key", "pk_shop", "--after", "5"),
            "[last_live_credential]",
        ),
        (
            ("retire-api-secret", "--partner", "shop", "--api-key", "pk_x", "--after", "5"),
            "[unknown_api_key]",
        ),
        (
            ("retire-api-secret", "--partner", "shop", "--api-key", "pk_shop", "--at", "1"),
            "in the past",
        ),
        (
            (
                "retire-api-secret",
                "--partner",
                "shop",
                "--api-key",
                "pk_shop",
                "--at",
                "2999-01-01T00:00:00",
            ),
            "no UTC offset",
        ),
    ],
)
def test_cli_refusals_exit_1_with_one_line_and_change_nothing(
    keyring_file: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], code_text: str
) -> None:
    before = keyring_file.read_bytes()
    code, out, err = _cli(capsys, keyring_file, *args)
    assert code == 1 and out == "" and code_text in err and err.count("\n") == 1
    assert keyring_file.read_bytes() == before


def test_cli_bound_on_live_credentials(
    keyring_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(capsys, keyring_file, "add-api-secret", "--partner", "shop")[0] == 0
    code, _, err = _cli(capsys, keyring_file, "add-api-secret", "--partner", "shop")
    assert code == 1 and "[credential_limit_reached]" in err


def test_cli_refuses_a_tampered_keyring_without_a_traceback(
    keyring_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = json.loads(keyring_file.read_text())
    document["ciphertext"] = document["ciphertext"][:-4] + "AAAA"
    keyring_file.write_text(json.dumps(document))
    before = keyring_file.read_bytes()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "tools.keys_cli", "--keyring", str(keyring_file)),
            *("rotate-data-key", "--partner", "shop"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BAAS_MASTER_KEY": MASTER.hex()},
        check=False,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert "tampered" in result.stderr and "Traceback" not in result.stderr
    assert keyring_file.read_bytes() == before


def test_concurrent_cli_changes_are_serialised_by_the_lock(
    keyring_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = load_keyring(keyring_file, MASTER).version
    codes: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: codes.append(
                keys_cli.main(
                    ["--keyring", str(keyring_file), "rotate-data-key", "--partner", "shop"]
                )
            )
        )
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    capsys.readouterr()
    keyring = load_keyring(keyring_file, MASTER)
    assert codes == [0] * 8 and keyring.version == start + 8  # no change lost
    assert len(keyring.partner("shop").data_keys) == 9


# ------------------------------------------------------------------ gateway reload


def _reloader(path: Path, current: Keyring, applied: list[Keyring]) -> KeyringReloader:
    return KeyringReloader(path, MASTER, current, applied.append, interval_s=0.05)


def test_reloader_applies_newer_and_refuses_bad_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="baas.gateway.keyring")
    path = tmp_path / "keyring.json"
    first = _keyring()
    save_keyring(path, first, MASTER)
    applied: list[Keyring] = []
    reloader = _reloader(path, first, applied)
    assert reloader.check() is False  # unchanged file
    second, credential = add_api_credential(first, "shop", NOW_MS)
    save_keyring(path, second, MASTER)
    assert reloader.check() is True and applied == [second]
    for bad in (b"{not json", b"", json.dumps({"format": 1, "version": 99}).encode()):
        path.write_bytes(bad)
        assert reloader.check() is False
    save_keyring(path, first, MASTER)  # a rollback to an older, valid file
    assert reloader.check() is False
    wrong = tmp_path / "other.json"
    save_keyring(wrong, rotate_data_key(second, "shop")[0], os.urandom(32))
    os.replace(wrong, path)  # newer version, wrong master key
    assert reloader.check() is False
    path.unlink()  # the file is gone altogether
    assert reloader.check() is False and reloader.check() is False
    assert applied == [second] and reloader.version == second.version
    assert reloader.counters.refused == 6 and reloader.counters.applied == 1
    third, _ = rotate_data_key(second, "shop")
    save_keyring(path, third, MASTER)
    assert reloader.check() is True and applied == [second, third]
    assert credential.secret.hex() not in caplog.text
    assert "refused, keeping version 4" in caplog.text


def test_reloader_reports_a_bad_file_once_and_sighup_forces_a_check(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    first = _keyring()
    save_keyring(path, first, MASTER)
    applied: list[Keyring] = []
    reloader = _reloader(path, first, applied)
    path.write_bytes(b"garbage")
    assert reloader.check() is False and reloader.check() is False
    assert reloader.counters.refused == 1
    reloader.request_reload()
    assert reloader.check() is False and reloader.counters.refused == 2


async def test_reloader_loop_picks_up_a_change_within_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    first = _keyring()
    save_keyring(path, first, MASTER)
    applied: list[Keyring] = []
    reloader = _reloader(path, first, applied)
    task = asyncio.create_task(reloader.run())
    try:
        second, _ = rotate_data_key(first, "shop")
        save_keyring(path, second, MASTER)
        for _ in range(100):
            if applied:
                break
            await asyncio.sleep(0.02)
        assert applied == [second]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_gateway_reloads_on_sighup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_gateway wires SIGHUP to a reload: with an hour-long interval, only the signal can
    make the gateway accept a credential added after it started."""
    monkeypatch.setenv("BAAS_MASTER_KEY", MASTER.hex())
    keyring = _keyring()
    save_keyring(tmp_path / "keyring.json", keyring, MASTER)
    (tmp_path / "token").write_text("t" * 32)
    port = _free_port()
    config = GatewayConfig(
        http_listen=f"127.0.0.1:{port}",
        keyring_file=tmp_path / "keyring.json",
        master_key_file=None,
        node_api_token_file=tmp_path / "token",
        nodes=(NodeEndpoint("node-1", f"127.0.0.1:{_free_port()}"),),  # nobody listens there
        timeouts=GatewayTimeouts(keyring_reload_interval_s=3600.0),
    )
    stop = asyncio.Event()
    server = asyncio.create_task(run_gateway(config, stop))
    keyring, credential = add_api_credential(keyring, "shop", int(time.time() * 1000))
    try:
        async with PartnerClient(
            f"http://127.0.0.1:{port}", credential.api_key, credential.secret
        ) as client:
            path = f"/v1/records/{'00' * 32}"
            await _wait_until_serving(client, path)
            save_keyring(tmp_path / "keyring.json", keyring, MASTER)
            await asyncio.sleep(0.3)
            assert (await client.request("GET", path)).body["code"] == "unauthenticated"
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(100):
                reply = await client.request("GET", path)
                if reply.status != 401:
                    break
                await asyncio.sleep(0.02)
            assert reply.status == 503  # authenticated; no node can answer
    finally:
        stop.set()
        await server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_until_serving(client: PartnerClient, path: str) -> None:
    for _ in range(200):
        try:
            await client.request("GET", path)
            return
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.02)
    raise AssertionError("gateway did not start")
