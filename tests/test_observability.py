"""Metrics and request ids on a real cluster (5 node processes + gateway, debug logging)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tools.client import PartnerClient
from tools.cluster_init import init_cluster
from tools.local_cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    layout = init_cluster(tmp_path_factory.mktemp("observability"), partners=("shop-a",))
    local = LocalCluster(layout, log_level="DEBUG")
    local.start()
    try:
        yield local
    finally:
        local.stop()


def _client(cluster: LocalCluster) -> PartnerClient:
    credentials = cluster.layout.partners["shop-a"]
    return PartnerClient(
        cluster.layout.gateway_url,
        credentials["api_key"],
        bytes.fromhex(credentials["secret_hex"]),
    )


def _scrape(url: str) -> tuple[Samples, str]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, content_type


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every label set that includes ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and wanted <= set(lbl))


def _node_urls(cluster: LocalCluster) -> list[str]:
    return [f"http://{node.http_addr}" for node in cluster.layout.nodes]


async def test_metrics_count_exactly_the_requests_sent(cluster: LocalCluster) -> None:
    gateway_url = cluster.layout.gateway_url
    gw_before, content_type = _scrape(gateway_url)
    assert content_type.startswith("text/plain")
    nodes_before = [_scrape(url)[0] for url in _node_urls(cluster)]

    async with _client(cluster) as client:
        singles = await asyncio.gather(
            *(client.put_record({"type": "metric-test", "seq": i}) for i in range(20))
        )
        assert all(r.status == 201 for r in singles), singles
        batch = await client.put_records(
            [{"record": {"type": "batch", "seq": i}} for i in range(30)]
        )
        assert batch.status == 200 and all(r["status"] == 201 for r in batch.body["results"])
        ids = [r.body["record_id"] for r in singles[:10]]
        reads = await asyncio.gather(*(client.get_record(rid) for rid in ids))
        assert all(r.status == 200 for r in reads)
        missing = await asyncio.gather(*(client.get_record("ab" * 32) for _ in range(3)))
        assert all(r.status == 404 for r in missing)

    gw_after, _ = _scrape(gateway_url)

    def delta(name: str, **labels: str) -> float:
        return _value(gw_after, name, **labels) - _value(gw_before, name, **labels)

    requests = "baas_gateway_http_requests_total"
    assert delta(requests, route="/v1/records", method="POST", status="201") == 20
    assert delta(requests, route="/v1/records/batch", method="POST", status="200") == 1
    assert delta(requests, route="/v1/records/{record_id}", method="GET", status="200") == 10
    assert delta(requests, route="/v1/records/{record_id}", method="GET", status="404") == 3
    assert delta("baas_gateway_records_written_total", status="201") == 50
    assert delta("baas_gateway_records_read_total", status="200") == 10
    latency_count = "baas_gateway_http_request_seconds_count"
    assert delta(latency_count, route="/v1/records", method="POST") == 20
    assert _value(gw_after, "baas_gateway_node_healthy", node="node-1") == 1

    nodes_after = [_scrape(url)[0] for url in _node_urls(cluster)]
    shards_delta = sum(
        _value(after, "baas_node_shards") - _value(before, "baas_node_shards")
        for before, after in zip(nodes_before, nodes_after, strict=True)
    )
    assert shards_delta == 50 * 5  # n = 5 shards per record, every one stored somewhere
    put_items = sum(
        _value(after, "baas_node_coalesce_items_total", op="put")
        - _value(before, "baas_node_coalesce_items_total", op="put")
        for before, after in zip(nodes_before, nodes_after, strict=True)
    )
    assert put_items == 50 * 5
    node_calls = sum(
        _total(after, "baas_node_http_requests_total", route="/internal/v1/records")
        - _total(before, "baas_node_http_requests_total", route="/internal/v1/records")
        for before, after in zip(nodes_before, nodes_after, strict=True)
    )
    gateway_calls = _value(gw_after, "baas_gateway_node_calls_total") - _value(
        gw_before, "baas_gateway_node_calls_total"
    )
    assert 1 <= node_calls <= gateway_calls  # reads make node calls too
    for samples in nodes_after:
        assert _value(samples, "baas_node_peers_connected") == 4
        assert _value(samples, "baas_node_commit_fsync_seconds_count") > 0
        assert _value(samples, "baas_node_shard_bytes") > 0
        assert _value(samples, "baas_node_p2p_streams_max") > 0
        assert _value(samples, "baas_node_queue_records_max") == 20_000


async def test_request_id_reaches_every_node_it_touches(cluster: LocalCluster) -> None:
    request_id = f"trace-{uuid.uuid4().hex[:16]}"
    async with _client(cluster) as client:
        body = json.dumps({"record": {"type": "traced"}}).encode()
        headers = client.signed_headers("POST", "/v1/records", body, None)
        headers["X-Request-Id"] = request_id
        response = await client.send("POST", "/v1/records", body, headers)
        assert response.status == 201, response
        assert response.headers["X-Request-Id"] == request_id
        # A malformed id is replaced by one of our own, never echoed.
        headers = client.signed_headers("POST", "/v1/records", body, None)
        headers["X-Request-Id"] = "bad id\twith spaces"
        replaced = await client.send("POST", "/v1/records", body, headers)
        assert replaced.headers["X-Request-Id"] != "bad id\twith spaces"
    await asyncio.sleep(0.5)  # let log lines reach the files
    log_dir = Path(cluster.layout.directory) / "logs"
    for node in cluster.layout.nodes:  # n = 5 of 5 nodes: every node holds a shard
        lines = [
            json.loads(line)
            for line in (log_dir / f"{node.name}.log").read_text().splitlines()
            if request_id in line
        ]
        assert lines, f"{node.name} never logged request {request_id}"
        assert all(
            line.get("request_id") == request_id or request_id in line.get("request_ids", [])
            for line in lines
        )
