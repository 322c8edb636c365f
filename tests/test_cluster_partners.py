"""Partners onboarded in real processes: 5 nodes + gateway, the ``baas-partners`` command and
the admin and audit routes; every node applies the identity entries (log feature 7) and holds
the audit entry with its actor."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nodeapi import node_get, partner_client, running_cluster
from openapi_check import CheckedPartnerClient

from business.identity import ONBOARDING_ROLES
from business.identity.ids import partner_id
from gateway.partners import _credential_ref, operator_cli_actor
from tools.local_cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("partners"), chain="none") as local:
        yield local


def partners_cmd(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """``baas-partners`` as an operator runs it: its own process, the gateway's config."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.partners_cli",
            "--config",
            cluster.layout.gateway_config_path,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def until(check: Any, what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_onboard_by_command_and_api_then_audit_on_every_node(cluster: LocalCluster) -> None:
    added = partners_cmd(cluster, "add-operator", "--name", "ops")
    assert added.returncode == 0, added.stderr
    ops_key = json.loads(added.stdout)

    async def onboarded() -> dict[str, Any] | None:
        # Until the members agree on feature 7 the command refuses (503-like, nothing written).
        run = await asyncio.to_thread(
            partners_cmd, cluster, "--operator", "tester", "onboard", "--partner", "shop-x"
        )
        if run.returncode != 0:
            assert "feature_not_enabled" in run.stderr or "not_leader" in run.stderr, run.stderr
            return None
        result: dict[str, Any] = json.loads(run.stdout)
        return result

    shop_x = await until(onboarded, "onboarding by the command", 60)
    assert shop_x["status"] == "active" and shop_x["partner_ref"] == partner_id("shop-x").hex()
    # One account per onboarding role account, both modes (incl. the Bridge's liquidity and
    # payments' settlement)
    assert len(shop_x["accounts"]) == len(ONBOARDING_ROLES) == 14
    secrets = {c["livemode"]: (c["id"], bytes.fromhex(c["secret"])) for c in shop_x["credentials"]}
    assert secrets[False][0].startswith("pk_test_shop-x_")
    assert secrets[True][0].startswith("pk_live_shop-x_")
    again = await asyncio.to_thread(partners_cmd, cluster, "onboard", "--partner", "shop-x")
    assert again.returncode == 1 and "partner_exists" in again.stderr  # secrets shown once

    url = cluster.layout.gateway_url
    ops = CheckedPartnerClient(url, ops_key["api_key"], bytes.fromhex(ops_key["secret_hex"]))
    x_test = CheckedPartnerClient(url, *secrets[False])
    x_live = CheckedPartnerClient(url, *secrets[True])
    try:
        # The gateway reloads the keyring the commands wrote.
        async def shown() -> Any:
            answer = await ops.request("GET", "/v1/admin/partners/shop-x")
            return answer if answer.status == 200 else None

        shown_x = (await until(shown, "the gateway to reload the keyring")).body
        assert shown_x["status"] == "active" and "secret" not in shown_x["credentials"][0]

        # Onboarding through the admin API: the new credentials work at once.
        created = await ops.request("POST", "/v1/admin/partners", {"id": "shop-y"})
        assert created.status == 201, created
        y_test_cred = next(c for c in created.body["credentials"] if not c["livemode"])
        async with CheckedPartnerClient(
            url, y_test_cred["id"], bytes.fromhex(y_test_cred["secret"])
        ) as y_test:
            # Read right after the onboarding: the gateway asks every node and keeps the
            # freshest answer (applied_index), so no node that lags can answer an empty page.
            own = await y_test.request("GET", "/v1/audit")
            assert own.status == 200 and [e["type"] for e in own.body["data"]] == ["partner.put"]
            assert own.body["data"][0]["actor"] == {
                "type": "operator",
                "credential": _credential_ref(ops_key["api_key"]).hex(),
                "partner": None,
            }
        conflict = await ops.request("POST", "/v1/admin/partners", {"id": "shop-y"})
        assert conflict.status == 409 and conflict.body["code"] == "partner_exists"

        listed = await ops.request("GET", "/v1/admin/partners?limit=2")
        assert [p["id"] for p in listed.body["data"]] == ["shop-a", "shop-x"]
        assert listed.body["has_more"] is True
        assert listed.body["data"][0]["status"] == "keyring_only"  # from before onboarding
        rest = await ops.request("GET", "/v1/admin/partners?limit=2&starting_after=shop-x")
        assert [p["id"] for p in rest.body["data"]] == ["shop-y"] and not rest.body["has_more"]

        # A partner sees its own trail in its own mode; the other partner's is not found.
        trail = await x_test.request("GET", "/v1/audit")
        assert trail.status == 200
        (entry,) = trail.body["data"]
        cli_actor = operator_cli_actor("tester")
        assert entry["livemode"] is False and entry["partner"] == "shop-x"
        assert entry["actor"]["type"] == "operator"
        assert entry["actor"]["credential"] == cli_actor.credential.hex()
        live_trail = await x_live.request("GET", "/v1/audit")
        assert [e["livemode"] for e in live_trail.body["data"]] == [True]
        other = await x_test.request("GET", "/v1/audit?partner=shop-y")
        assert other.status == 404
        cross = await x_test.request("GET", "/v1/audit?mode=live")
        assert cross.status == 404

        # The operator's view: every change.
        everything = await ops.request("GET", "/v1/audit?limit=10")
        assert [e["partner"] for e in everything.body["data"]] == ["shop-y", "shop-x"]

        # Suspended by the command: a second audit entry, the status on the partner.
        suspended = await asyncio.to_thread(
            partners_cmd,
            cluster,
            "--operator",
            "tester",
            "set-status",
            "--partner",
            "shop-x",
            "--status",
            "suspended",
        )
        assert suspended.returncode == 0, suspended.stderr
        assert json.loads(suspended.stdout)["result"] == "ok"

        async def is_suspended() -> bool:
            answer = await ops.request("GET", "/v1/admin/partners/shop-x")
            return bool(answer.body["status"] == "suspended")

        await until(is_suspended, "the suspension")
        audit = await asyncio.to_thread(
            partners_cmd, cluster, "audit", "--partner", "shop-x", "--mode", "live"
        )
        assert [e["type"] for e in json.loads(audit.stdout)["data"]] == ["partner.put"] * 2
    finally:
        for c in (ops, x_test, x_live):
            await c.close()

    # Every node applied both changes to shop-x, each with its operator actor.
    names = [n.name for n in cluster.layout.nodes]
    path = f"/internal/v1/identity/audit?scope={partner_id('shop-x').hex()}&mode=test"

    async def on_every_node() -> bool:
        pages = [await asyncio.to_thread(node_get, cluster, name, path) for name in names]
        return all(p is not None and len(p["data"]) == 2 for p in pages)

    await until(on_every_node, "the audit entries on every node")
    for name in names:
        page = node_get(cluster, name, path)
        assert {(e["actor_kind"], e["actor_credential"]) for e in page["data"]} == {
            ("operator", cli_actor.credential.hex())
        }, name

    # demo-shop-style credentials from before modes keep working (test mode).
    async with partner_client(cluster, "shop-a") as shop_a:
        written = await shop_a.put_record({"still": "works"})
        assert written.status == 201, written
        trail = await shop_a.request("GET", "/v1/audit")
        assert trail.status == 200 and trail.body["data"] == []


def test_the_command_is_installed_as_baas_partners() -> None:
    text = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert 'baas-partners = "tools.partners_cli:main"' in text
