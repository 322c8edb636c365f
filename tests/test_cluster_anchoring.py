"""The verifiable log end to end, in real processes: 5 nodes, the gateway and a chain (the
embedded eth-tester chain served over JSON-RPC, and a real anvil).

* receipts of 1,000 records, fetched from the gateway, verify against the chain alone
  (every step of baas-verify), and consistency proofs between every pair of anchors verify;
* after an anvil ``evm_revert`` that drops anchor blocks, the old receipt no longer verifies,
  the system notices the reorg and anchors again, and a fresh receipt verifies;
* ``kill -9`` of the lease holder after its anchor transaction is mined but before the result
  is committed neither loses nor doubles the anchor: the next holder commits that same
  transaction, and the key holders sent exactly one transaction per batch.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nodeapi import node_get, partner_client, running_cluster
from web3 import Web3

from node.anchoring.keyfile import load_key_file
from node.anchoring.registry import RegistryReader
from node.merkle.receipt import AnchorChainDoc, ConsistencyDoc, Receipt
from node.merkle.verify import verify_anchor_chain, verify_consistency_doc, verify_receipt
from tools.client import PartnerClient
from tools.cluster_init import chain_key_relpath
from tools.local_cluster import LocalCluster

pytestmark = pytest.mark.cluster

RECORDS = 1000
BATCH = 100
CONFIRMATIONS = 2  # what development clusters are configured with


async def wait_for(
    what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def anchoring(cluster: LocalCluster, name: str) -> dict[str, Any]:
    status = node_get(cluster, name, "/internal/v1/status") or {}
    return status.get("anchoring") or {}


def reader(cluster: LocalCluster) -> RegistryReader:
    """A fresh reader (each caches what it read, so a reorg needs a new one)."""
    assert cluster.chain_url is not None and cluster.chain_contract is not None
    return RegistryReader(Web3(Web3.HTTPProvider(cluster.chain_url)), cluster.chain_contract)


def key_holders(cluster: LocalCluster) -> dict[str, str]:
    """Node name -> its chain address, for the nodes that hold a chain key."""
    directory = Path(cluster.layout.directory)
    found = {}
    for node in cluster.layout.nodes:
        path = directory / chain_key_relpath(node.name)
        if path.exists():
            found[node.name] = load_key_file(path).address
    return found


def sent_transactions(cluster: LocalCluster) -> int:
    assert cluster.chain_url is not None
    w3 = Web3(Web3.HTTPProvider(cluster.chain_url))
    return sum(w3.eth.get_transaction_count(a) for a in key_holders(cluster).values())


async def write_records(client: PartnerClient, count: int, tag: str) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, BATCH):
        items = [
            {"idempotency_key": f"{tag}-{i}", "record": {"n": i, "amount_minor": 100 * i}}
            for i in range(start, min(start + BATCH, count))
        ]
        for _ in range(50):
            response = await client.put_records(items)
            results = response.body.get("results", []) if response.status == 200 else []
            if results and all(r.get("status") in (200, 201) for r in results):
                ids += [r["record_id"] for r in results]
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"batch at {start} never fully written: {response.body!r}")
    return ids


async def wait_final_covering(cluster: LocalCluster, size: int) -> dict[str, Any]:
    def covered() -> dict[str, Any] | None:
        status = anchoring(cluster, cluster.layout.nodes[0].name)
        return status if status.get("final_tree_size", 0) >= size else None

    return dict(await wait_for(f"a final anchor covering {size} leaves", covered, 90))


async def receipt_of(client: PartnerClient, record_id: str) -> Receipt:
    async def fetch() -> Any:
        response = await client.request("GET", f"/v1/records/{record_id}/receipt")
        return response

    for _ in range(100):
        response = await fetch()
        if response.status == 200:
            return Receipt.from_json(json.dumps(response.body))
        assert response.status == 409, response.body  # not anchored yet: ask again
        await asyncio.sleep(0.2)
    raise AssertionError(f"no receipt for {record_id}")


@pytest.mark.parametrize("chain", ["embedded", "anvil"])
async def test_receipts_of_1000_records_verify_against_the_chain_alone(
    tmp_path: Path, chain: str
) -> None:
    with running_cluster(tmp_path / chain, chain=chain) as cluster:
        async with partner_client(cluster, "shop-a") as client:
            ids = await write_records(client, RECORDS, "r")
            # One leaf per record, on every node (a follower may apply a moment later).
            for node in cluster.layout.nodes:
                await wait_for(
                    f"{node.name}'s log",
                    lambda n=node.name: (node_get(cluster, n, "/internal/v1/log") or {}).get("size")
                    == RECORDS,
                    10,
                )
            status = await wait_final_covering(cluster, RECORDS)
            receipts = [await receipt_of(client, rid) for rid in ids]
            # The owner checks the plaintext too (a sample: each needs a record read).
            records = {}
            for rid in ids[::50]:
                got = await client.get_record(rid)
                records[rid] = (json.dumps(got.body["record"]).encode(), got.body["plaintext_salt"])
            # Someone else's client never gets the receipt.
            other = await client.request("GET", f"/v1/records/{'00' * 32}/receipt")
            assert other.status == 404 and other.body["code"] == "record_not_found"
        chain_reader = reader(cluster)
        for receipt in receipts:
            record, salt = records.get(receipt.record_id.hex(), (None, None))
            verdict = verify_receipt(
                receipt,
                chain_reader,
                record_json=record,
                salt=bytes.fromhex(salt) if salt else None,
                confirmations=CONFIRMATIONS,
            )
            assert verdict.ok, [s for s in verdict.steps if not s.ok]
            if record is not None:
                assert verdict.step("plaintext commitment").ok
        assert sorted(r.leaf_index for r in receipts) == list(range(RECORDS))
        # Every pair of anchors of the run is consistent (the public audit routes).
        async with partner_client(cluster, "shop-a") as client:
            last = int(status["final_through"])
            assert last >= 1
            anchors = await client.request("GET", f"/v1/log/anchors?from=1&limit={last}")
            chain_doc = AnchorChainDoc.from_json(json.dumps(anchors.body))
            assert [a.batch_id for a in chain_doc.anchors] == list(range(1, last + 1))
            assert verify_anchor_chain(chain_doc, reader(cluster)).ok
            pair_reader = reader(cluster)
            for old in range(1, last + 1):
                for new in range(old, last + 1):
                    response = await client.request(
                        "GET", f"/v1/log/consistency?from={old}&to={new}"
                    )
                    doc = ConsistencyDoc.from_json(json.dumps(response.body))
                    assert verify_consistency_doc(doc, pair_reader).ok, (old, new)
            bad = await client.request("GET", "/v1/log/consistency?from=2&to=1")
            assert bad.status == 400 and bad.body["code"] == "invalid_range"
        # One transaction per anchor: nothing else was sent from the anchoring keys.
        final = anchoring(cluster, cluster.layout.nodes[1].name)
        counters = final["counters"]
        made = counters["size_triggered"] + counters["interval_triggered"]
        assert made == final["next_batch_id"] - 1
        # (A re-anchor sends the same signed bytes again, so it adds no nonce; a replacement
        # is a new transaction for the same batch.)
        assert sent_transactions(cluster) == made + counters["replacements"]
        assert counters["replacements"] == 0
