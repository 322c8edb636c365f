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
import os
import signal
import time
import urllib.request
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
        for node in cluster.layout.nodes:
            if cluster.running(node.name):
                status = anchoring(cluster, node.name)
                return status if status.get("final_tree_size", 0) >= size else None
        return None

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
        # The same numbers are in the node's Prometheus metrics.
        node = cluster.layout.nodes[1]
        with urllib.request.urlopen(f"http://{node.http_addr}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert f"baas_node_merkle_log_leaves {float(RECORDS)}" in metrics
        interval = float(counters["interval_triggered"])
        assert f'baas_node_anchor_transactions_total{{kind="interval"}} {interval}' in metrics


def peer_name(cluster: LocalCluster, peer_id: str | None) -> str | None:
    return next((n.name for n in cluster.layout.nodes if n.peer_id == peer_id), None)


def survivor_status(cluster: LocalCluster, not_this: str) -> dict[str, Any]:
    for node in cluster.layout.nodes:
        if node.name != not_this and cluster.running(node.name):
            status = anchoring(cluster, node.name)
            if status:
                return status
    return {}


async def test_evm_revert_drops_the_anchor_then_the_system_anchors_again(tmp_path: Path) -> None:
    with running_cluster(tmp_path, chain="anvil") as cluster:
        assert cluster.chain_url is not None
        w3 = Web3(Web3.HTTPProvider(cluster.chain_url))
        async with partner_client(cluster, "shop-a") as client:
            await write_records(client, 20, "before")
            await wait_final_covering(cluster, 20)
            snapshot = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
            ids = await write_records(client, 20, "after")
            await wait_final_covering(cluster, 40)
            old = await receipt_of(client, ids[-1])
            assert verify_receipt(old, reader(cluster), confirmations=CONFIRMATIONS).ok
            reverted = w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]
            assert reverted["result"] is True
            # The chain no longer has that anchor: the receipt is not final any more.
            verdict = verify_receipt(old, reader(cluster), confirmations=CONFIRMATIONS)
            assert not verdict.ok
            failed = verdict.first_failure
            assert failed is not None and failed.name in ("anchor on chain", "anchor transaction")
            # The nodes notice, send the same transaction again, and it becomes final again.
            await wait_for(
                "the reorg to be noticed",
                lambda: anchoring(cluster, "node-2").get("counters", {}).get("reanchors", 0) >= 1,
                30,
            )
            await wait_final_covering(cluster, 40)
            await asyncio.sleep(1)  # the chain we read is at least as far as the nodes' view
            again = await receipt_of(client, ids[-1])
        assert again.anchor.batch_id == old.anchor.batch_id
        assert again.anchor.tx_hash == old.anchor.tx_hash  # the same signed transaction
        verdict = verify_receipt(again, reader(cluster), confirmations=CONFIRMATIONS)
        assert verdict.ok, [s for s in verdict.steps if not s.ok]
        status = anchoring(cluster, "node-3")
        made = status["counters"]["size_triggered"] + status["counters"]["interval_triggered"]
        assert sent_transactions(cluster) == made  # re-anchoring made no new transaction


async def test_killing_the_lease_holder_between_send_and_result_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    # The holder asks for receipts once a second here: the window between a mined anchor and
    # its committed result is then wide enough to catch it reliably from outside.
    with running_cluster(tmp_path, anchoring={"poll_interval_s": 1.0}) as cluster:
        assert cluster.chain_url is not None
        registry = reader(cluster)
        async with partner_client(cluster, "shop-a") as client:
            await write_records(client, 10, "warm")
            await wait_final_covering(cluster, 10)
            holder = peer_name(cluster, anchoring(cluster, "node-1").get("lease_holder"))
            assert holder in key_holders(cluster)
            # Keep records coming, and catch a batch mined on the chain whose result the log
            # has not committed yet: freeze the holder there, check the window, then kill it.
            writer = asyncio.create_task(write_records(client, 400, "load"))
            victim_batch = 0
            deadline = time.monotonic() + 60
            while not victim_batch and time.monotonic() < deadline:
                on_chain = reader(cluster).next_batch_id() - 1
                logged = survivor_status(cluster, holder).get("included_through", 0)
                if on_chain > logged:
                    os.kill(cluster.pid(holder), signal.SIGSTOP)
                    await asyncio.sleep(1.0)  # anything already on its way lands meanwhile
                    if survivor_status(cluster, holder).get("included_through", 0) < on_chain:
                        victim_batch = on_chain
                        cluster.kill(holder)  # SIGKILL, frozen in the window
                    else:
                        os.kill(cluster.pid(holder), signal.SIGCONT)
                await asyncio.sleep(0.02)
            assert victim_batch, "never caught a mined anchor before its result was committed"
            await writer

            # Another key holder takes the lease once it lapses and commits that same transaction.
            def included() -> bool:
                status = survivor_status(cluster, holder)
                return status.get("included_through", 0) >= victim_batch and peer_name(
                    cluster, status.get("lease_holder")
                ) not in (None, holder)

            await wait_for("the next holder to commit the result", included, 40)
            status = survivor_status(cluster, holder)
            await wait_final_covering(cluster, status["tree_size"])
            anchors = await client.request("GET", f"/v1/log/anchors?from={victim_batch}&limit=1")
            doc = AnchorChainDoc.from_json(json.dumps(anchors.body))
        (anchor,) = doc.anchors
        on_chain = registry.anchor_of(victim_batch)
        assert on_chain is not None and on_chain.root == anchor.root
        inclusion = reader(cluster).tx_inclusion(anchor.tx_hash)
        assert inclusion is not None and inclusion.block_hash == anchor.block_hash
        status = survivor_status(cluster, holder)
        made = status["counters"]["size_triggered"] + status["counters"]["interval_triggered"]
        assert made == status["next_batch_id"] - 1
        # One transaction per batch across every key, the killed holder's included.
        assert sent_transactions(cluster) == made + status["counters"]["replacements"]
        assert reader(cluster).next_batch_id() - 1 >= victim_batch
        assert verify_anchor_chain(doc, reader(cluster)).ok
