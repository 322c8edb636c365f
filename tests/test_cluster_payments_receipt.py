"""A payment's receipt verified on chain: the real gateway in front of 3 real nodes anchoring
on a real chain (the embedded eth-tester chain over JSON-RPC).

A merchant (shop-v) issues a static QR; its linked user pays it with an entered amount (their
EIP-712 approval over the previewed digest) and shop-v captures it. Once an anchor covers the
authorisation, ``GET /v1/records/{operation}/receipt`` answers a v2 receipt, and
``baas-verify receipt`` (the real command, against the chain's JSON-RPC and the published
contract) checks every step and prints the executed transfer with the entered amount. The same
receipt with its outcome altered (another amount) fails verification: the check can fail.
Every answer is checked against the OpenAPI document (CheckedPartnerClient).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cluster_bridge_storm import _receipt
from test_cluster_payments_api import U, _client, _first, _pay, _user

from tools.cluster_init import init_cluster
from tools.ledger_client import UserWallet
from tools.local_cluster import LocalCluster
from tools.local_partners import onboard_partner

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(360)]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalCluster, dict[str, tuple[str, bytes]]]]:
    directory = tmp_path_factory.mktemp("paymentsreceipt")
    # 3 nodes (as the swap storm's chain test): fewer processes on a box that runs others too.
    layout = init_cluster(
        directory, nodes=3, k=2, n=3, write_quorum=2, partners=(), chain="embedded"
    )
    local = LocalCluster(layout, ready_timeout_s=120)
    local.start()
    try:
        made = {f"shop-v/{mode}": cred for mode, cred in onboard_partner(layout, "shop-v").items()}
        yield local, made
    finally:
        local.stop()


def _verify(local: LocalCluster, path: Path) -> subprocess.CompletedProcess[str]:
    assert local.chain_url is not None
    return subprocess.run(
        [Path(sys.executable).parent / "baas-verify", "receipt", str(path),
         "--rpc", local.chain_url, "--contract", str(local.chain_contract)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


async def test_a_static_qr_payments_receipt_verifies_on_chain(
    cluster: tuple[LocalCluster, dict[str, tuple[str, bytes]]], tmp_path: Path
) -> None:
    local, made = cluster
    v = _client(local, made, "shop-v/test")
    alice = UserWallet(bytes([21] * 32))
    try:
        float_account = await _first(v)
        await _user(v, "shop-v", float_account, alice, "alice", str(1000 * U))
        static = await v.call("POST", "/v1/qr/static", {"name": "Shop V", "city": "Bern"},
                              key="sqr-1")  # fmt: skip
        assert static.status == 201, static
        entered = 42 * U
        body = {"qr": static.body["payload"], "user": "alice", "amount": str(entered)}
        paid = await _pay(v, alice, body, "pay-1")
        assert paid.status == 201 and paid.body["amount"] == str(entered), paid
        cap = await v.call("POST", f"/v1/payments/{paid.body['id']}/capture",
                           {"amount": str(entered)}, key="cap-1")  # fmt: skip
        assert cap.status == 201 and cap.body["status"] == "captured", cap

        receipt: dict[str, Any] = await _receipt(v, paid.body["operation"])
        path = tmp_path / "receipt.json"
        path.write_text(json.dumps(receipt))
        run = await asyncio.to_thread(_verify, local, path)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "FAILED" not in run.stdout, run.stdout
        assert f"amount {entered}" in run.stdout, run.stdout  # the authorised transfer

        events = receipt["outcome_summary"]["events"]
        (held,) = [e for e in events if e["amount"] == str(entered)]
        held["amount"] = str(entered + 1)  # an altered outcome: not what the leaf commits to
        altered = tmp_path / "altered.json"
        altered.write_text(json.dumps(receipt))
        bad = await asyncio.to_thread(_verify, local, altered)
        assert bad.returncode == 1 and "FAILED" in bad.stdout, bad.stdout + bad.stderr
    finally:
        await v.http.close()
