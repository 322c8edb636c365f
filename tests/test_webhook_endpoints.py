"""Webhook endpoints (gateway/webhook_endpoints.py): kept in the encrypted keyring (and a keyring
without them still loads), secret rotation with an overlap where both sign, the bounds, the
``[webhooks]`` config, ``baas-partners webhook ...`` on a real keyring file, and the partner
routes on the real gateway (secret shown once, mode-scoped, SSRF refusal, the delivery routes
answered only by the delivering gateway)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from inprocess_gateway import gateway_without_nodes
from openapi_check import CheckedPartnerClient

from business.identity.ids import Mode
from gateway.config import load_gateway_config
from gateway.keyring import Keyring, load_keyring, new_partner, save_keyring
from gateway.webhook_endpoints import (
    ENDPOINTS_PER_PARTNER_MAX,
    UrlPolicy,
    add_endpoint,
    endpoint_object,
    rotate_secret,
)
from node.errors import ConfigError, InvalidRequest
from tools import partners_cli

URL = "https://hooks.example.com/in"
KEY = bytes(range(32))


def test_endpoints_round_trip_through_the_encrypted_keyring(tmp_path: Path) -> None:
    keys = new_partner("shop", "pk_shop_1")
    endpoints, made = add_endpoint((), URL, Mode.LIVE, ["payment.captured"], UrlPolicy(), 5)
    path = tmp_path / "keyring.json"
    save_keyring(path, Keyring(1, {"shop": replace(keys, webhook_endpoints=endpoints)}), KEY)
    assert made.secrets[0].secret.hex() not in path.read_text()  # encrypted at rest
    back = load_keyring(path, KEY).partners["shop"].webhook_endpoints
    assert back == endpoints
    save_keyring(path, Keyring(2, {"shop": keys}), KEY)  # none: the field is absent, as before
    assert load_keyring(path, KEY).partners["shop"].webhook_endpoints == ()


def test_rotation_overlaps_then_the_old_secret_ends() -> None:
    endpoints, made = add_endpoint((), URL, Mode.TEST, ["*"], UrlPolicy(), 0)
    rotated, fresh = rotate_secret(endpoints, made.id, 60, now_ms=1_000)
    (e,) = rotated
    assert e.signing_secrets(1_000) == [made.secrets[0].secret, fresh.secret]  # both sign
    assert e.signing_secrets(61_001) == [fresh.secret]  # the overlap ended
    with pytest.raises(InvalidRequest, match="live secrets"):
        rotate_secret(rotated, made.id, 60, now_ms=2_000)  # a third live one
    (now,), _ = rotate_secret(rotated, made.id, 0, now_ms=2_000)  # overlap 0: at once
    assert len(now.signing_secrets(2_000)) == 1
    assert "secret" not in endpoint_object(now, 2_000)


def test_event_types_and_the_endpoint_bound_are_checked() -> None:
    for events in ([], ["payment.nope"], ["*", "reserve.low"]):
        with pytest.raises(InvalidRequest):
            add_endpoint((), URL, Mode.TEST, events, UrlPolicy(), 0)
    endpoints: tuple = ()
    for _ in range(ENDPOINTS_PER_PARTNER_MAX):
        endpoints, _ = add_endpoint(endpoints, URL, Mode.TEST, ["*"], UrlPolicy(), 0)
    with pytest.raises(InvalidRequest) as refused:
        add_endpoint(endpoints, URL, Mode.TEST, ["*"], UrlPolicy(), 0)
    assert refused.value.code == "webhook_endpoint_limit_reached"


def _config_with(tmp_path: Path, table: str) -> Path:
    from tools.cluster_init import init_cluster

    layout = init_cluster(tmp_path / "c", partners=("shop-a",), chain="none")
    path = Path(layout.gateway_config_path)
    path.write_text(path.read_text() + table)
    return path


def test_the_webhooks_table_is_validated(tmp_path: Path) -> None:
    config = load_gateway_config(
        _config_with(
            tmp_path,
            '\n[webhooks]\ndeliver = true\ndata_dir = "wh"\nallow_hosts = ["Receiver.Local"]\n'
            "deliveries_max = 50\nendpoint_pending_max = 5\nattempts_max = 30\n",
        )
    )
    w = config.webhooks
    assert w.deliver and w.data_dir is not None and w.data_dir.name == "wh"
    assert w.allow_hosts == ("receiver.local",) and w.limits.deliveries_max == 50
    assert w.schedule.attempts_max == 30
    for bad in (
        "deliver = true\n",  # no data_dir
        "events_page_max = 5000\n",
        "endpoint_pending_max = 200000\n",  # above deliveries_max
        "attempts_max = 3\n",  # spans under 3 days
        "nope = 1\n",
    ):
        with pytest.raises(ConfigError):
            load_gateway_config(_config_with(tmp_path / bad[:5], "\n[webhooks]\n" + bad))


def test_the_partners_cli_manages_endpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(_config_with(tmp_path, ""))

    def cli(*args: str) -> tuple[int, dict]:
        code = partners_cli.main(["--config", config, "webhook", *args])
        out = capsys.readouterr()
        return code, json.loads(out.out) if code == 0 else {"stderr": out.err}

    code, made = cli("add", "--partner", "shop-a", "--url", URL, "--events", "reserve.low")
    assert code == 0 and made["secret"].startswith("whsec_") and len(made["secret"]) == 70
    code, listed = cli("list", "--partner", "shop-a")
    assert [e["id"] for e in listed["data"]] == [made["id"]] and "secret" not in listed["data"][0]
    code, rotated = cli("rotate-secret", "--partner", "shop-a", "--id", made["id"])
    assert code == 0 and rotated["secret"] != made["secret"] and rotated["secrets_live"] == 2
    code, refused = cli("add", "--partner", "shop-a", "--url", "http://10.0.0.7/x")
    assert code == 1 and "webhook_url_forbidden" in refused["stderr"]
    code, off = cli("disable", "--partner", "shop-a", "--id", made["id"])
    assert code == 0 and off["status"] == "disabled" and off["disabled_reason"] == "partner"
    (listed,) = cli("list", "--partner", "shop-a")[1]["data"]
    assert listed["disabled_reason"] == "partner" and isinstance(listed["disabled_at"], int)
    on = cli("enable", "--partner", "shop-a", "--id", made["id"])[1]
    assert on["status"] == "enabled" and on["disabled_reason"] is None and on["disabled_at"] is None
    code, gone = cli("remove", "--partner", "shop-a", "--id", made["id"])
    assert code == 0 and gone["deleted"] is True
    assert cli("list", "--partner", "shop-a")[1]["data"] == []


async def test_the_partner_routes(tmp_path: Path) -> None:
    async with gateway_without_nodes(tmp_path) as layout:
        creds = layout.partners["shop-a"]
        async with CheckedPartnerClient(
            layout.gateway_url, creds["api_key"], bytes.fromhex(creds["secret_hex"])
        ) as c:
            made = await c.request(
                "POST", "/v1/webhook_endpoints", {"url": URL, "enabled_events": ["*"]}
            )
            assert made.status == 201, made
            assert made.body["secret"].startswith("whsec_") and made.body["livemode"] is False
            listed = await c.request("GET", "/v1/webhook_endpoints")
            assert [e["id"] for e in listed.body["data"]] == [made.body["id"]]
            assert "secret" not in listed.body["data"][0]
            loop = await c.request("POST", "/v1/webhook_endpoints", {"url": "http://127.0.0.1/"})
            assert loop.status == 400 and loop.body["code"] == "webhook_url_forbidden"
            path = f"/v1/webhook_endpoints/{made.body['id']}"
            off = await c.request("POST", path, {"disabled": True})
            assert off.status == 200 and off.body["status"] == "disabled"
            assert off.body["disabled_reason"] == "partner" and off.body["disabled_at"] > 0
            on = await c.request("POST", path, {"disabled": False})
            assert on.status == 200 and on.body["status"] == "enabled"
            assert on.body["disabled_reason"] is None and on.body["disabled_at"] is None
            for bad in ({}, {"disabled": "no"}, {"disabled": False, "url": URL}):
                refused = await c.request("POST", path, bad)
                assert refused.status == 400 and refused.body["param"] == "disabled", bad
            rotated = await c.request("POST", path + "/rotate_secret", {"overlap_s": 30})
            assert rotated.status == 200 and rotated.body["secrets_live"] == 2
            deliveries = await c.request("GET", path + "/deliveries")
            assert deliveries.status == 503
            assert deliveries.body["code"] == "webhooks_not_delivered_here"
            gone = await c.request("DELETE", path)
            assert gone.status == 200 and gone.body["deleted"] is True
            assert (await c.request("DELETE", path)).status == 404
        other = layout.partners["shop-b"]
        async with CheckedPartnerClient(
            layout.gateway_url, other["api_key"], bytes.fromhex(other["secret_hex"])
        ) as c:
            assert (await c.request("GET", "/v1/webhook_endpoints")).body["data"] == []
