"""Key rotation without downtime, on real processes (3 nodes + 1 gateway, one cluster start).

The scenario runs ``baas-keys`` as a subprocess against the running cluster's keyring while the
gateway serves, and shows: records written before a data key rotation stay readable, records
written after it are sealed under the new key id (read from the blob a node actually stores), a
partner with no records rotates too, two API secrets work side by side, and the retired one is
refused with ``credential_expired`` after its end while the new one keeps working.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import pytest

from node.storage.envelope import read_header
from tools.client import PartnerClient
from tools.cluster_init import init_cluster
from tools.local_cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

RELOAD_WAIT_S = 15.0


def _baas_keys(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    script = Path(sys.executable).parent / "baas-keys"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tools.keys_cli"]
    env = {k: v for k, v in os.environ.items() if k != "BAAS_MASTER_KEY"}  # the 0600 key file
    result = subprocess.run(
        [*command, "--config", cluster.layout.gateway_config_path, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _gateway_log(cluster: LocalCluster) -> str:
    return (Path(cluster.layout.directory) / "logs" / "gateway.log").read_text()


def _wait_for_keyring_version(cluster: LocalCluster, version: int) -> None:
    deadline = time.monotonic() + RELOAD_WAIT_S
    while time.monotonic() < deadline:
        if f"-> {version} (" in _gateway_log(cluster):
            return
        time.sleep(0.05)
    raise AssertionError(f"gateway did not reload keyring version {version}")


def _stored_key_id(cluster: LocalCluster, record_id: str) -> str:
    """The key id in the envelope of the blob the nodes hold (not what the gateway says)."""
    token = (Path(cluster.layout.directory) / "secrets" / "node-api.token").read_text().strip()
    node = cluster.layout.nodes[0]
    request = urllib.request.Request(
        f"http://{node.http_addr}/internal/v1/records/{record_id}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        reply = msgpack.unpackb(response.read(), raw=False)
    return read_header(bytes(reply["blob"])).key_id


async def _write(client: PartnerClient, seq: int) -> tuple[str, dict[str, Any]]:
    record = {"type": "payment", "seq": seq, "amount_minor": 100 + seq}
    response = await client.put_record(record)
    assert response.status == 201, response
    return str(response.body["record_id"]), record


async def _read_all(client: PartnerClient, records: dict[str, dict[str, Any]]) -> None:
    replies = await asyncio.gather(*(client.get_record(rid) for rid in records))
    for rid, reply in zip(records, replies, strict=True):
        assert reply.status == 200 and reply.body["record"] == records[rid], reply


def _client(cluster: LocalCluster, api_key: str, secret_hex: str) -> PartnerClient:
    return PartnerClient(cluster.layout.gateway_url, api_key, bytes.fromhex(secret_hex))


async def test_rotation_without_downtime(tmp_path: Path) -> None:
    layout = init_cluster(tmp_path / "cluster", nodes=3, k=2, n=3, partners=("shop-a", "shop-b"))
    cluster = LocalCluster(layout)
    cluster.start()
    try:
        await _scenario(cluster, tmp_path)
    finally:
        exit_codes = cluster.stop()
    assert set(exit_codes.values()) == {0}, exit_codes  # the reload task stops cleanly too


async def _scenario(cluster: LocalCluster, tmp_path: Path) -> None:
    old_creds = cluster.layout.partners["shop-a"]
    old = _client(cluster, old_creds["api_key"], old_creds["secret_hex"])
    shop_b_creds = cluster.layout.partners["shop-b"]
    shop_b = _client(cluster, shop_b_creds["api_key"], shop_b_creds["secret_hex"])
    try:
        before = dict(await asyncio.gather(*(_write(old, i) for i in range(4))))
        assert {_stored_key_id(cluster, rid) for rid in before} == {"k1"}

        # 1. data key rotation, picked up by the running gateway
        rotated = _baas_keys(cluster, "rotate-data-key", "--partner", "shop-a")
        assert rotated["active_data_key_id"] == "k2"
        idle = _baas_keys(cluster, "rotate-data-key", "--partner", "shop-b")  # no records yet
        assert idle["active_data_key_id"] == "k2"
        _wait_for_keyring_version(cluster, idle["keyring_version"])
        after = dict(await asyncio.gather(*(_write(old, i) for i in range(4, 8))))
        assert {_stored_key_id(cluster, rid) for rid in after} == {"k2"}
        await _read_all(old, {**before, **after})
        rid_b, record_b = await _write(shop_b, 100)
        assert _stored_key_id(cluster, rid_b) == "k2"
        await _read_all(shop_b, {rid_b: record_b})

        # 2. a second API secret; both work at the same time
        secret_file = tmp_path / "shop-a-new.json"
        added = _baas_keys(
            cluster, "add-api-secret", "--partner", "shop-a", "--out", str(secret_file)
        )
        assert "secret_hex" not in added and oct(secret_file.stat().st_mode & 0o777) == "0o600"
        new_creds = json.loads(secret_file.read_text())
        new = _client(cluster, new_creds["api_key"], new_creds["secret_hex"])
        try:
            _wait_for_keyring_version(cluster, added["keyring_version"])
            both = await asyncio.gather(
                *(_write(old, i) for i in range(8, 12)), *(_write(new, i) for i in range(12, 16))
            )
            records = {**before, **after, **dict(both)}
            await asyncio.gather(_read_all(old, records), _read_all(new, records))

            # 3. retire the old secret 3 s from now: it works until then, not after
            retired = _baas_keys(
                cluster,
                *("retire-api-secret", "--partner", "shop-a"),
                *("--api-key", old_creds["api_key"], "--after", "3"),
            )
            _wait_for_keyring_version(cluster, retired["keyring_version"])
            rid, record = await _write(old, 16)  # the gateway knows its end, which is not yet
            assert time.time() * 1000 < retired["not_after_ms"], "too slow to test before the end"
            records[rid] = record
            await asyncio.sleep(max(0.0, retired["not_after_ms"] / 1000 + 1.05 - time.time()))
            refused = await old.put_record({"type": "payment", "seq": 17, "amount_minor": 1})
            assert refused.status == 401 and refused.body["code"] == "credential_expired"
            refused_read = await old.get_record(next(iter(before)))
            assert refused_read.status == 401
            rid, record = await _write(new, 18)
            records[rid] = record
            await _read_all(new, records)
        finally:
            await new.close()
    finally:
        await old.close()
        await shop_b.close()
    log = _gateway_log(cluster)
    assert new_creds["secret_hex"] not in log and old_creds["secret_hex"] not in log
    assert "refused" not in log  # every keyring the CLI wrote was accepted
