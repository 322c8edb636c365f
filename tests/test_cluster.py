"""Real OS processes on loopback: 5 nodes + 1 gateway, started by the local cluster tool.

The tests in this module share one cluster and run in file order: API behaviour first, then
crashes, then corruption on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openapi_check
import plyvel
import pytest
from openapi_check import CheckedPartnerClient

from gateway.openapi import openapi_document
from node.storage.shard_store import PREFIX_SHARD
from tools.client import PartnerClient
from tools.cluster_init import ClusterLayout, init_cluster
from tools.local_cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

MARKER = f"PLAINTEXT-MARKER-{uuid.uuid4().hex}"
RECORDS: dict[str, dict[str, Any]] = {}  # record id -> record, written by the 1,000-record test


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    layout = init_cluster(tmp_path_factory.mktemp("cluster"), partners=("shop-a", "shop-b"))
    local = LocalCluster(layout)
    local.start()
    try:
        yield local
    finally:
        codes = local.stop()
        assert all(code in (0, -9) for code in codes.values()), codes


def _client(layout: ClusterLayout, partner: str = "shop-a") -> PartnerClient:
    credentials = layout.partners[partner]
    return CheckedPartnerClient(
        layout.gateway_url, credentials["api_key"], bytes.fromhex(credentials["secret_hex"])
    )


@pytest.fixture
async def shop_a(cluster: LocalCluster) -> AsyncIterator[PartnerClient]:
    async with _client(cluster.layout) as client:
        yield client


def _node_get(cluster: LocalCluster, name: str, path: str) -> Any:
    token = (Path(cluster.layout.directory) / "secrets" / "node-api.token").read_text().strip()
    node = cluster.node(name)
    request = urllib.request.Request(
        f"http://{node.http_addr}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _record(i: int) -> dict[str, Any]:
    return {"type": "payment", "seq": i, "amount_minor": 1000 + i, "memo": f"{MARKER} #{i}"}


# ------------------------------------------------------------------ API behaviour


async def test_write_read_and_idempotent_retry(shop_a: PartnerClient) -> None:
    key = f"order-{uuid.uuid4()}"
    created = await shop_a.put_record(_record(-1), idempotency_key=key)
    assert created.status == 201, created
    assert created.headers["Idempotency-Key"] == key and created.body["shards_durable"] >= 4
    retry = await shop_a.put_record(_record(-1), idempotency_key=key)
    assert retry.status == 200 and retry.body["replayed"] is True
    assert retry.body["content_hash"] == created.body["content_hash"]
    reused = await shop_a.put_record(_record(-2), idempotency_key=key)
    assert reused.status == 409 and reused.body["code"] == "idempotency_key_reused"
    fetched = await shop_a.get_record(created.body["record_id"])
    assert fetched.status == 200 and fetched.body["record"] == _record(-1)
    generated = await shop_a.put_record(_record(-3))
    assert generated.status == 201 and len(generated.body["idempotency_key"]) == 36


async def test_authentication_failures_are_401(
    cluster: LocalCluster, shop_a: PartnerClient
) -> None:
    body = json.dumps({"record": _record(0)}).encode()
    unsigned = await shop_a.send("POST", "/v1/records", body, {"Content-Type": "application/json"})
    assert unsigned.status == 401 and unsigned.body["code"] == "unauthenticated"
    headers = shop_a.signed_headers("POST", "/v1/records", body)
    headers["X-Baas-Signature"] = "00" * 32
    wrong = await shop_a.send("POST", "/v1/records", body, headers)
    assert wrong.status == 401 and wrong.body["code"] == "bad_signature"
    stale = shop_a.signed_headers("POST", "/v1/records", body, timestamp=int(time.time()) - 3600)
    assert (await shop_a.send("POST", "/v1/records", body, stale)).body["code"] == "stale_request"
    fresh = shop_a.signed_headers("POST", "/v1/records", body)
    assert (await shop_a.send("POST", "/v1/records", body, fresh)).status == 201
    replayed = await shop_a.send("POST", "/v1/records", body, fresh)
    assert replayed.status == 401 and replayed.body["code"] == "replayed_request"


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        # Deeper than the JSON parser's recursion limit: once a RecursionError and a 500.
        (b'{"record": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "invalid_json"),
        (b'{"record": []}', 400, "invalid_record"),
        (b'{"record": {"amount": 12.5}}', 400, "invalid_record"),
        (b'{"rec": {}}', 400, "invalid_request"),
        (b'{"record": {"blob": "' + b"x" * 300_000 + b'"}}', 413, "payload_too_large"),
        (b'{"record": {"blob": "' + b"x" * 9_000_000 + b'"}}', 413, "payload_too_large"),
    ],
)
async def test_bad_input_gets_a_problem_never_a_500(
    shop_a: PartnerClient, payload: bytes, status: int, code: str
) -> None:
    response = await shop_a.send(
        "POST", "/v1/records", payload, shop_a.signed_headers("POST", "/v1/records", payload)
    )
    assert response.status == status, response
    assert response.body["code"] == code and response.headers["Content-Type"].startswith(
        "application/problem+json"
    )


async def test_bad_record_ids_and_batches(shop_a: PartnerClient) -> None:
    assert (await shop_a.get_record("zz")).body["code"] == "invalid_record_id"
    missing = await shop_a.get_record("ab" * 32)
    assert missing.status == 404 and missing.body["code"] == "record_not_found"
    empty = await shop_a.request("POST", "/v1/records/batch", {"records": []})
    assert empty.status == 400
    too_many = await shop_a.put_records([{"record": {"i": i}} for i in range(501)])
    assert too_many.status == 413
    duplicate = await shop_a.put_records([{"idempotency_key": "x", "record": {"i": 1}}] * 2)
    assert duplicate.status == 400 and duplicate.body["code"] == "duplicate_in_batch"


async def test_batch_retry_replays_and_flags_conflicts(shop_a: PartnerClient) -> None:
    keys = [f"batch-{uuid.uuid4()}" for _ in range(5)]
    items = [{"idempotency_key": k, "record": _record(7000 + i)} for i, k in enumerate(keys)]
    first = await shop_a.put_records(items)
    assert [r["status"] for r in first.body["results"]] == [201] * 5
    items[4] = {"idempotency_key": keys[4], "record": _record(9999)}  # same key, other body
    again = await shop_a.put_records(items)
    assert [r["status"] for r in again.body["results"]] == [200, 200, 200, 200, 409]
    assert all(r["replayed"] for r in again.body["results"][:4])
    assert again.body["results"][4]["code"] == "idempotency_key_reused"
    hashes = [r["content_hash"] for r in first.body["results"][:4]]
    assert [r["content_hash"] for r in again.body["results"][:4]] == hashes


async def test_one_partner_cannot_read_anothers_records(
    cluster: LocalCluster, shop_a: PartnerClient
) -> None:
    created = await shop_a.put_record(_record(-4))
    async with _client(cluster.layout, "shop-b") as shop_b:
        other = await shop_b.get_record(created.body["record_id"])
        assert other.status == 404 and other.body["code"] == "record_not_found"
        # the same idempotency key under another partner is another record
        mine = await shop_b.put_record(_record(-4), idempotency_key=created.body["idempotency_key"])
        assert mine.status == 201 and mine.body["record_id"] != created.body["record_id"]


def test_node_api_requires_its_token(cluster: LocalCluster) -> None:
    node = cluster.layout.nodes[0]
    request = urllib.request.Request(f"http://{node.http_addr}/internal/v1/status")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 401
    assert json.loads(caught.value.read())["code"] == "unauthenticated"


# ------------------------------------------------------------------ crashes


async def test_thousand_records_survive_two_crashed_nodes(
    cluster: LocalCluster, shop_a: PartnerClient
) -> None:
    singles = await asyncio.gather(*(shop_a.put_record(_record(i)) for i in range(100)))
    for i, response in enumerate(singles):
        assert response.status == 201, response
        RECORDS[response.body["record_id"]] = _record(i)
    for start in range(100, 1000, 100):
        batch = await shop_a.put_records(
            [{"record": _record(i)} for i in range(start, start + 100)]
        )
        assert batch.status == 200, batch
        for i, result in zip(range(start, start + 100), batch.body["results"], strict=True):
            assert result["status"] == 201, result
            RECORDS[result["record_id"]] = _record(i)
    assert len(RECORDS) == 1000

    cluster.kill("node-1", signal.SIGKILL)
    cluster.kill("node-2", signal.SIGKILL)
    await _read_all_back(shop_a)

    # Restart them; then crash two others, so every read needs the restarted nodes' shards.
    cluster.start_node("node-1")
    cluster.start_node("node-2")
    cluster.kill("node-3", signal.SIGKILL)
    cluster.kill("node-4", signal.SIGKILL)
    await _read_all_back(shop_a)
    cluster.start_node("node-3")
    cluster.start_node("node-4")


async def _read_all_back(client: PartnerClient) -> None:
    semaphore = asyncio.Semaphore(32)

    async def read(record_id: str) -> None:
        async with semaphore:
            response = await client.get_record(record_id)
        assert response.status == 200, response
        assert json.dumps(response.body["record"], sort_keys=True) == json.dumps(
            RECORDS[record_id], sort_keys=True
        )

    await asyncio.gather(*(read(rid) for rid in RECORDS))


async def test_too_many_nodes_down_is_a_typed_error_and_loses_nothing(
    cluster: LocalCluster, shop_a: PartnerClient
) -> None:
    some = list(RECORDS)[:20]
    down = ["node-1", "node-2", "node-3"]  # n - k + 1 = 3
    for name in down[:2]:
        cluster.kill(name)
    refused = await shop_a.put_record(_record(5000), idempotency_key="written-during-outage")
    assert refused.status == 503 and refused.body["code"] == "write_quorum_not_reached"
    assert refused.headers.get("Retry-After") == "1"
    cluster.kill(down[2])
    for record_id in some:
        response = await shop_a.get_record(record_id)
        assert response.status == 503 and response.body["code"] == "record_unavailable", response
    for name in down:
        cluster.start_node(name)
    for record_id in some:
        response = await shop_a.get_record(record_id)
        assert response.status == 200 and response.body["record"] == RECORDS[record_id]
    # the client's retry with the same key now completes
    retry = await shop_a.put_record(_record(5000), idempotency_key="written-during-outage")
    assert retry.status in (200, 201), retry


async def test_shards_missed_by_a_down_node_are_handed_off_later(
    cluster: LocalCluster, shop_a: PartnerClient
) -> None:
    cluster.kill("node-5")
    created = await shop_a.put_record(_record(6000))
    assert created.status == 201 and created.body["shards_durable"] == 4
    cluster.start_node("node-5")
    deadline = time.monotonic() + 20
    local: dict[str, Any] = {"shards": []}
    while time.monotonic() < deadline and not local["shards"]:
        await asyncio.sleep(0.5)
        local = _node_get(
            cluster, "node-5", f"/internal/v1/records/{created.body['record_id']}/local"
        )
    assert [s["content_hash"] for s in local["shards"]] == [created.body["content_hash"]]


# ------------------------------------------------------------------ what lies on disk


def test_no_plaintext_on_any_node_disk(cluster: LocalCluster) -> None:
    needle = MARKER.encode()
    for node in cluster.layout.nodes:
        data_dir = Path(node.config_path).parent / "data"
        files = [p for p in data_dir.rglob("*") if p.is_file()]
        assert any(p.suffix in (".ldb", ".log") for p in files)
        for path in files:
            assert needle not in path.read_bytes(), f"plaintext marker found in {path}"


async def test_corrupted_shard_on_disk_is_detected_and_read_still_succeeds(
    cluster: LocalCluster, shop_a: PartnerClient
) -> None:
    record_id = next(iter(RECORDS))
    victim = "node-1"
    cluster.kill(victim, signal.SIGTERM)
    db = plyvel.DB(str(Path(cluster.node(victim).config_path).parent / "data" / "shards"))
    keys = [k for k, _ in db.iterator(prefix=PREFIX_SHARD + bytes.fromhex(record_id))]
    assert keys, "the victim held no shard of the record"
    for key in keys:
        value = bytearray(db.get(key))
        value[len(value) // 2] ^= 0xFF
        db.put(key, bytes(value), sync=True)
    db.close()
    cluster.start_node(victim)
    local = _node_get(cluster, victim, f"/internal/v1/records/{record_id}/local")
    assert (local["shards"], local["corrupt"]) == ([], len(keys))  # detected, never served
    response = await shop_a.get_record(record_id)
    assert response.status == 200 and response.body["record"] == RECORDS[record_id]
    assert _node_get(cluster, victim, "/internal/v1/status")["corrupt_entries_seen"] >= len(keys)
    os.sync()


def _raw_http(address: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes that no HTTP client library would, and read the whole answer."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("header", "status", "code"),
    [
        (b"X-Long: " + b"a" * 20_000, 431, "request_header_too_large"),
        (b"Bad Header Without Colon", 400, "malformed_http_request"),
    ],
)
def test_requests_the_http_parser_refuses_get_a_json_problem(
    cluster: LocalCluster, header: bytes, status: int, code: str
) -> None:
    gateway = cluster.layout.gateway_url.removeprefix("http://")
    for address in (gateway, cluster.layout.nodes[0].http_addr):
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n"
        got_status, headers, body = _raw_http(address, request)
        assert got_status == status, (address, body)
        assert headers["content-type"].startswith("application/problem+json")
        assert json.loads(body)["code"] == code
    # and the server goes on serving
    with urllib.request.urlopen(f"{cluster.layout.gateway_url}/healthz", timeout=5) as ok:
        assert ok.status == 200


async def test_the_gateway_serves_its_openapi_document(
    cluster: LocalCluster, shop_a: PartnerClient
) -> None:
    with urllib.request.urlopen(f"{cluster.layout.gateway_url}/v1/openapi.json", timeout=5) as r:
        assert r.status == 200
        assert json.loads(r.read()) == openapi_document()
    # every partner call of these tests is checked against it (shop_a is a CheckedPartnerClient)
    before = openapi_check.answers_checked
    created = await shop_a.put_record({"kind": "openapi"})
    await shop_a.get_record(created.body["record_id"])
    await shop_a.get_record("zz")
    assert openapi_check.answers_checked == before + 3


@pytest.mark.parametrize(
    ("content_type", "body", "code"),
    [
        ("application/json", b"{}", "unsupported_media_type"),
        ("application/msgpack", b"\xc1\xc1", "invalid_request"),
        ("application/msgpack", b"\x81\xa7records\x90", "invalid_request"),
        ("application/msgpack", b"\x81\xa7records\x91\x81\xa3rid\xa1x", "invalid_request"),
    ],
)
def test_node_api_bad_input_is_a_problem(
    cluster: LocalCluster, content_type: str, body: bytes, code: str
) -> None:
    token = (Path(cluster.layout.directory) / "secrets" / "node-api.token").read_text().strip()
    node = cluster.layout.nodes[4]
    request = urllib.request.Request(
        f"http://{node.http_addr}/internal/v1/records",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 400
    assert json.loads(caught.value.read())["code"] == code
