"""The admin and audit routes' decisions the gateway makes alone (the real gateway in process,
no nodes: inprocess_gateway.py): who may call what, cross-partner and cross-mode reads
answered as not found, parameters checked with their ``param``. Every answer is checked
against the OpenAPI document (CheckedPartnerClient). The routes with nodes behind them are
proven in real processes (test_cluster_partners.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openapi_check
from inprocess_gateway import client_of, gateway_without_nodes
from openapi_check import CheckedPartnerClient

from gateway.keyring import (
    Keyring,
    add_operator,
    change_keyring,
    load_master_key,
    new_partner_in_modes,
)
from tools.cluster_init import ClusterLayout

Credentials = dict[str, tuple[str, bytes]]


def _prepare(made: Credentials) -> Callable[[ClusterLayout], None]:
    """Adds an operator and a partner with test and live credentials before the gateway starts."""

    def prepare(layout: ClusterLayout) -> None:
        directory = Path(layout.directory)
        master = load_master_key(directory / "secrets" / "master.key")

        def change(keyring: Keyring) -> Keyring:
            keyring, op = add_operator(keyring, "ops")
            made["ops"] = (op.api_key, op.secret)
            return keyring

        change_keyring(directory / "keyring.json", master, change)

        def onboard(keyring: Keyring) -> Keyring:
            keyring, partner = new_partner_in_modes(keyring, "shop-m")
            for c in partner.credentials:
                made[f"shop-m/{c.mode.name.lower()}"] = (c.api_key, c.secret)
            return keyring

        change_keyring(directory / "keyring.json", master, onboard)

    return prepare


def _client(layout: ClusterLayout, made: Credentials, who: str) -> CheckedPartnerClient:
    key, secret = made[who]
    return CheckedPartnerClient(layout.gateway_url, key, secret)


async def test_who_may_call_the_admin_and_audit_routes(tmp_path: Path) -> None:
    made: Credentials = {}
    checked_before = openapi_check.answers_checked
    async with gateway_without_nodes(tmp_path, prepare=_prepare(made)) as layout:
        ops = _client(layout, made, "ops")
        shop = client_of(layout, "shop-a")  # a credential from before modes: test mode
        test = _client(layout, made, "shop-m/test")
        live = _client(layout, made, "shop-m/live")
        try:
            # An operator credential signs the admin and audit routes only.
            record = await ops.put_record({"a": 1})
            assert record.status == 401 and record.body["code"] == "operator_credential"
            # A partner credential does not find the admin routes at all.
            for method, path, body in (
                ("GET", "/v1/admin/partners", None),
                ("GET", "/v1/admin/partners/shop-a", None),
                ("POST", "/v1/admin/partners", {"id": "shop-z"}),
            ):
                answer = await shop.request(method, path, body)
                assert answer.status == 404, (path, answer)
            # Cross-partner and cross-mode audit reads are answered as not found...
            other = await test.request("GET", "/v1/audit?partner=shop-a")
            assert other.status == 404 and other.body["code"] == "partner_not_found"
            assert other.body["param"] == "partner"
            cross = await test.request("GET", "/v1/audit?mode=live")
            assert cross.status == 404 and cross.body["param"] == "mode"
            cross = await live.request("GET", "/v1/audit?mode=test")
            assert cross.status == 404
            old = await shop.request("GET", "/v1/audit?mode=live")  # demo-shop-style: test
            assert old.status == 404
            # ...while the own trail in the own mode passes every check and reaches for the
            # nodes (there are none here: 503, retry).
            for client, query in ((test, "?mode=test"), (live, "?mode=live"), (shop, "")):
                own = await client.request("GET", f"/v1/audit{query}")
                assert own.status == 503, own
        finally:
            for c in (ops, shop, test, live):
                await c.close()
    assert openapi_check.answers_checked > checked_before


async def test_admin_parameters_and_conflicts_are_refused_before_any_node(tmp_path: Path) -> None:
    made: Credentials = {}
    async with gateway_without_nodes(tmp_path, prepare=_prepare(made)) as layout:
        ops = _client(layout, made, "ops")
        try:
            exists = await ops.request("POST", "/v1/admin/partners", {"id": "shop-a"})
            assert exists.status == 409 and exists.body["code"] == "partner_exists"
            for body in ({"id": "Shop A"}, {"id": 7}, {"name": "x"}, {"id": "x", "more": 1}):
                bad = await ops.request("POST", "/v1/admin/partners", body)
                assert bad.status == 400 and bad.body["param"] == "id", body
            missing = await ops.request("GET", "/v1/admin/partners/nobody")
            assert missing.status == 404 and missing.body["code"] == "partner_not_found"
            for query, param in (
                ("?limit=0", "limit"),
                ("?limit=101", "limit"),
                ("?limit=x", "limit"),
            ):
                bad = await ops.request("GET", f"/v1/admin/partners{query}")
                assert bad.status == 400 and bad.body["param"] == param
            after = await ops.request("GET", "/v1/admin/partners?starting_after=nobody")
            assert after.status == 404 and after.body["param"] == "starting_after"
            for query, status, param in (
                ("?mode=sandbox", 400, "mode"),
                ("?partner=nobody", 404, "partner"),
                ("?starting_after=12", 400, "starting_after"),
                ("?limit=1000", 400, "limit"),
            ):
                bad = await ops.request("GET", f"/v1/audit{query}")
                assert bad.status == status and bad.body["param"] == param, query
        finally:
            await ops.close()
