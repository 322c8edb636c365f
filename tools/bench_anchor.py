"""``baas-bench-anchor``: anchor lag and chain transactions of the record log (issue 5).

    baas-bench-anchor --records 100000 --rate 1000 --chain anvil

Starts a 5-node cluster + gateway on a local chain (``--chain anvil``: anvil mining a block every
second and each transaction at once, as ``baas-cluster init`` sets it up) in a temporary
directory, writes ``--records`` records through the gateway in batched requests of
``--batch-size``, paced open loop at ``--rate`` records/s (retrying refused items with the same
idempotency key, so every record lands once), and measures:

* **anchor lag** of every record: from its commit to the moment the first anchor covering it is
  final (``confirmations`` blocks deep). The commit time is the leaf's ``committed_at_ms`` (the
  leader time of its ``index.put`` entry), read for *every* leaf from a node's LevelDB after the
  cluster stopped. The confirmation time is measured two ways:

  - ``observed`` (the verdict's): the wall time at which the bench, polling the gateway's public
    ``GET /v1/log`` every ``--poll-interval-s``, first saw ``final_through`` reach the batch
    (late by at most one poll interval plus the poll's round trip, both reported);
  - ``state``: the batch's ``final_ms`` in the replicated anchoring state (the leader time of its
    ``anchor.final`` entry), with the parts of the lag: commit -> intent (waiting for the batch
    trigger), intent -> included (signing, the transaction mined, the result committed),
    included -> final (confirmations), final -> observed.

  The target: ``p99 <= anchor_interval_s + confirmations x block time + 1 s``.
* **chain transactions**: what the key holders' addresses sent (``eth_getTransactionCount`` at
  the end minus at the start; the funding and the deployment come from other accounts, before),
  against the anchoring counters ``size_triggered + interval_triggered + reanchors``
  (``replacements`` reported apart: each is a transaction the formula does not allow for). Every
  block mined during the run is scanned too: every transaction in it is counted by sender, so
  anything else sent to the chain shows. Reported per 10^5 records.
* **anchors**: ``nextBatchId - 1`` of the contract equals the log's batches, every batch on the
  chain has the log's tree size and root, and the gateway's anchor chain document verifies
  (:func:`node.merkle.verify.verify_anchor_chain`: every anchor with its transaction and event,
  every consistency path).
* **receipts**: ``--receipts`` random records' receipts from the gateway, each verified against
  the chain alone (:func:`node.merkle.verify.verify_receipt` over
  :class:`node.anchoring.registry.RegistryReader`, ``confirmations`` deep).
* records/s achieved, the Merkle log's size on every node (== records written), wall time, the
  load average at the start and the end (other work on the machine skews every number).

The JSON (``"format": 1``) holds every number, the checks (a count that does not add up, an
anchor or receipt that does not verify) and the issue 5 target verdicts; the exit status is 1
when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import random
import shutil
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from web3 import Web3

from node.anchoring.config import AnchoringSettings
from node.anchoring.keyfile import load_key_file
from node.anchoring.registry import RegistryReader
from node.anchoring.state import Batch, batches, progress_of
from node.config import load_node_config
from node.errors import BaasError, ConfigError
from node.merkle.leaf import LeafData
from node.merkle.log import LEAF_PREFIX, MerkleReader
from node.merkle.receipt import AnchorChainDoc, AnchorRef, Receipt
from node.merkle.verify import verify_anchor_chain, verify_receipt
from node.replication.durable import DurableRaftStorage
from tools.bench_load import bench_record
from tools.bench_report import machine_info
from tools.bench_stats import Target, percentile, verdict
from tools.client import PartnerClient
from tools.cluster_init import (
    CHAIN_BLOCK_TIME_S,
    ClusterLayout,
    chain_key_relpath,
    init_cluster,
    set_toml_keys,
)
from tools.local_cluster import LocalCluster
from tools.status import read_token

__all__ = [
    "ANCHOR_TARGETS",
    "BatchTimes",
    "lag_summary_ms",
    "leaf_lags_ms",
    "main",
    "transaction_check",
]

FORMAT_VERSION = 1
REPO = Path(__file__).resolve().parent.parent
PARTNER = "bench"
RECORDS_FOR_TARGET = 100_000
PER_RECORDS = 100_000  # chain transactions are reported per this many records
INFLIGHT_REQUESTS_MAX = 32  # batched write requests in flight
ITEM_ATTEMPTS_MAX = 30  # sends of one record before the run gives up on it
RETRY_DELAY_S = 0.3
SETTLE_TIMEOUT_S = 180.0  # after the last write, until every node has a final anchor of it
STATUS_INTERVAL_S = 0.25
RECEIPT_CONCURRENCY = 8
RECEIPT_ATTEMPTS_MAX = 50
ANCHORS_PAGE = 1000  # the gateway's limit per anchors request
PROGRESS_INTERVAL_S = 5.0
HTTP_TIMEOUT_S = 30.0

ANCHOR_TARGETS = (
    Target(
        "anchor_lag_p99",
        "anchor",
        "anchor_lag_ms.observed.p99",
        "<=",
        0.0,  # set per run: (anchor interval + confirmations x block time + 1 s) in ms
        "ms",
        "record committed -> covering anchor final, p99 <= interval + confirmations x block + 1 s",
        issue=5,
    ),
    Target(
        "chain_transactions",
        "anchor",
        "chain.transactions_mismatch",
        "<=",
        0.0,
        "transactions",
        "key holders' transactions = size-triggered + interval-triggered + re-anchors",
        issue=5,
    ),
)


# ---------------------------------------------------------------- pure arithmetic (unit-tested)


@dataclass(frozen=True, slots=True)
class BatchTimes:
    """One batch as the lag needs it: the leaves it covers first, and when it became final."""

    batch_id: int
    tree_size: int
    trigger: str
    intent_ms: int
    included_ms: int | None
    final_ms: int | None
    observed_ms: int | None  # when the bench first saw final_through reach it
    block_number: int | None = None


def leaf_lags_ms(
    committed_ms: Sequence[int], sizes: Sequence[int], done_ms: Sequence[int | None]
) -> list[int]:
    """Per leaf: ``done_ms`` of the first batch covering it minus its commit time.

    ``sizes`` are the batches' tree sizes (strictly growing); batch ``i`` covers leaves
    ``sizes[i-1] .. sizes[i] - 1`` first. Raises ValueError when a leaf is not covered or its
    batch has no time (the run did not finish anchoring).
    """
    if any(b <= a for a, b in pairwise(sizes)):
        raise ValueError("batch tree sizes must strictly grow")
    if not sizes or sizes[-1] < len(committed_ms):
        raise ValueError(f"{len(committed_ms)} leaves, the last batch covers {sizes[-1:]}")
    lags = []
    for index, committed in enumerate(committed_ms):
        done = done_ms[bisect.bisect_right(sizes, index)]
        if done is None:
            raise ValueError(f"leaf {index}: its anchor has no time")
        lags.append(done - committed)
    return lags


def lag_summary_ms(values: Sequence[float]) -> dict[str, float | int | None]:
    ordered = sorted(values)
    summary: dict[str, float | int | None] = {
        f"p{q:g}": percentile(ordered, q) for q in (50.0, 90.0, 99.0)
    }
    summary["max"] = ordered[-1] if ordered else None
    summary["min"] = ordered[0] if ordered else None
    summary["count"] = len(ordered)
    return summary


def transaction_check(
    sent: int, counters: dict[str, int], unexpected_in_blocks: int
) -> dict[str, Any]:
    """Issue 5: the key holders' transactions = size + interval + re-anchors, nothing else."""
    expected = counters["size_triggered"] + counters["interval_triggered"] + counters["reanchors"]
    return {
        "sent_by_key_holders": sent,
        "expected": expected,
        "replacements": counters["replacements"],
        "transactions_mismatch": abs(sent - expected),
        "unexpected_in_blocks": unexpected_in_blocks,
        "equal": sent == expected and unexpected_in_blocks == 0,
    }


def lag_target_ms(interval_s: float, confirmations: int, block_time_s: float) -> float:
    return round((interval_s + confirmations * block_time_s + 1.0) * 1000.0, 3)


# ---------------------------------------------------------------- the cluster's view


def _node_get(session: aiohttp.ClientSession, url: str, token: str) -> Any:
    return session.get(url, headers={"Authorization": f"Bearer {token}"})


@dataclass(slots=True)
class Poller:
    """Polls the gateway's public log head; keeps when each batch was first seen final."""

    gateway_url: str
    interval_s: float
    first_final_ms: dict[int, int] = field(default_factory=dict)
    first_anchored_ms: dict[int, int] = field(default_factory=dict)
    rtt_ms: list[float] = field(default_factory=list)
    polls: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    final_through: int = 0
    anchored_through: int = 0
    late_polls: int = 0  # polls that started more than one interval after they were due

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        origin = time.monotonic()
        tick = 0
        while not stop.is_set():
            due = origin + tick * self.interval_s
            delay = due - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return
                except TimeoutError:
                    pass
            elif -delay > self.interval_s:
                self.late_polls += 1
            tick = max(tick + 1, int((time.monotonic() - origin) / self.interval_s) + 1)
            await self._poll(session)

    async def _poll(self, session: aiohttp.ClientSession) -> None:
        started = time.perf_counter()
        self.polls += 1
        try:
            async with session.get(self.gateway_url + "/v1/log") as response:
                head = await response.json() if response.status == 200 else None
                if head is None:
                    self.errors[f"http_{response.status}"] += 1
                    return
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            self.errors[type(exc).__name__] += 1
            return
        now_ms = time.time_ns() // 1_000_000  # the clock of the leader times it compares with
        self.rtt_ms.append((time.perf_counter() - started) * 1000.0)
        for batch_id in range(self.final_through + 1, int(head["final_through"]) + 1):
            self.first_final_ms.setdefault(batch_id, now_ms)
        for batch_id in range(self.anchored_through + 1, int(head["anchored_through"]) + 1):
            self.first_anchored_ms.setdefault(batch_id, now_ms)
        self.final_through = max(self.final_through, int(head["final_through"]))
        self.anchored_through = max(self.anchored_through, int(head["anchored_through"]))


# ---------------------------------------------------------------- writing


@dataclass(slots=True)
class WriteResult:
    record_ids: list[str] = field(default_factory=list)
    requests: int = 0
    retried_items: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latency_s: list[float] = field(default_factory=list)
    send_lag_s: list[float] = field(default_factory=list)
    started_s: float = 0.0
    ended_s: float = 0.0
    failed_records: int = 0


def _item_code(item: dict[str, Any]) -> str:
    return str(item.get("code") or f"http_{item.get('status')}")


async def _send_batch(
    client: PartnerClient, seqs: list[int], run_tag: str, out: WriteResult
) -> None:
    """Send records ``seqs`` in one request; retry refused items (same idempotency keys)."""
    pending = seqs
    for attempt in range(ITEM_ATTEMPTS_MAX):
        if attempt:
            out.retried_items += len(pending)
            await asyncio.sleep(RETRY_DELAY_S)
        items = [{"idempotency_key": f"{run_tag}-{s}", "record": bench_record(s)} for s in pending]
        started = time.perf_counter()
        out.requests += 1
        try:
            response = await client.put_records(items)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            out.errors[type(exc).__name__] += len(pending)
            continue
        out.latency_s.append(time.perf_counter() - started)
        if response.status != 200 or not isinstance(response.body, dict):
            code = response.body.get("code") if isinstance(response.body, dict) else None
            out.errors[str(code or f"http_{response.status}")] += len(pending)
            continue
        again = []
        for seq, item in zip(pending, response.body["results"], strict=True):
            if item.get("status") in (200, 201):
                out.record_ids.append(str(item["record_id"]))
            else:
                out.errors[_item_code(item)] += 1
                again.append(seq)
        pending = again
        if not pending:
            return
    out.failed_records += len(pending)


async def write_paced(
    client: PartnerClient, records: int, rate: float, batch_size: int, run_tag: str
) -> WriteResult:
    """``records`` in requests of ``batch_size``, request ``i`` due at ``i * batch_size / rate``
    (open loop; at most INFLIGHT_REQUESTS_MAX in flight)."""
    out = WriteResult()
    slots = asyncio.Semaphore(INFLIGHT_REQUESTS_MAX)
    tasks: set[asyncio.Task[None]] = set()

    async def one(seqs: list[int]) -> None:
        try:
            await _send_batch(client, seqs, run_tag, out)
        finally:
            slots.release()

    out.started_s = time.time()
    origin = time.perf_counter()
    reported = origin
    for number, first in enumerate(range(0, records, batch_size)):
        due = origin + first / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        out.send_lag_s.append(max(0.0, time.perf_counter() - due))
        task = asyncio.create_task(one(list(range(first, min(first + batch_size, records)))))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if time.perf_counter() - reported >= PROGRESS_INTERVAL_S:
            reported = time.perf_counter()
            _say(f"  sent {number + 1} requests, {len(out.record_ids)} records acknowledged")
    if tasks:
        await asyncio.gather(*tasks)
    out.ended_s = time.time()
    return out


# ---------------------------------------------------------------- waiting for the anchors


async def node_statuses(
    session: aiohttp.ClientSession, layout: ClusterLayout, token: str
) -> dict[str, dict[str, Any]]:
    """Every node's ``/internal/v1/status`` that answered."""
    found: dict[str, dict[str, Any]] = {}
    for node in layout.nodes:
        url = f"http://{node.http_addr}/internal/v1/status"
        try:
            async with _node_get(session, url, token) as response:
                if response.status == 200:
                    found[node.name] = await response.json()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            continue
    return found


async def _log_sizes(
    session: aiohttp.ClientSession, layout: ClusterLayout, token: str
) -> dict[str, int | None]:
    sizes: dict[str, int | None] = {}
    for node in layout.nodes:
        url = f"http://{node.http_addr}/internal/v1/log"
        sizes[node.name] = None
        try:
            async with _node_get(session, url, token) as response:
                if response.status == 200:
                    sizes[node.name] = int((await response.json())["size"])
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            continue
    return sizes


async def wait_all_final(
    session: aiohttp.ClientSession, layout: ClusterLayout, token: str, size: int, poller: Poller
) -> dict[str, dict[str, Any]]:
    """Until every node has a final anchor covering ``size`` leaves, nothing is still open, and
    the poller saw the last batch final; the nodes' anchoring status then."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    statuses: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        statuses = {
            name: status.get("anchoring") or {}
            for name, status in (await node_statuses(session, layout, token)).items()
        }
        settled = len(statuses) == len(layout.nodes) and all(
            s.get("final_tree_size") == size
            and s.get("tree_size") == size
            and s.get("final_through") == s.get("next_batch_id", 0) - 1
            for s in statuses.values()
        )
        last = max((int(s.get("final_through", 0)) for s in statuses.values()), default=0)
        if settled and poller.final_through >= last:
            return statuses
        await asyncio.sleep(STATUS_INTERVAL_S)
    raise TimeoutError(
        f"no final anchor of all {size} leaves on every node after {SETTLE_TIMEOUT_S:g} s: "
        + json.dumps(
            {
                n: {
                    k: s.get(k)
                    for k in (
                        "tree_size",
                        "final_tree_size",
                        "final_through",
                        "next_batch_id",
                        "last_error",
                    )
                }
                for n, s in statuses.items()
            }
        )
    )


async def fetch_anchor_docs(session: aiohttp.ClientSession, gateway_url: str) -> list[str]:
    """Every page of the gateway's anchor chain document (JSON text), from batch 1."""
    pages: list[str] = []
    first = 1
    while True:
        url = f"{gateway_url}/v1/log/anchors?from={first}&limit={ANCHORS_PAGE}"
        async with session.get(url) as response:
            text = await response.text()
            if response.status == 409 and pages:
                return pages  # nothing anchored after the last page
            if response.status != 200:
                raise RuntimeError(f"GET {url}: {response.status} {text[:200]}")
        pages.append(text)
        count = len(AnchorChainDoc.from_json(text).anchors)
        if count < ANCHORS_PAGE:
            return pages
        first += count


async def fetch_receipts(client: PartnerClient, record_ids: list[str]) -> dict[str, str | None]:
    """The receipt (JSON text) of each record from the gateway; None when it never came."""
    slots = asyncio.Semaphore(RECEIPT_CONCURRENCY)
    found: dict[str, str | None] = {}

    async def one(record_id: str) -> None:
        async with slots:
            for _ in range(RECEIPT_ATTEMPTS_MAX):
                response = await client.request("GET", f"/v1/records/{record_id}/receipt")
                if response.status == 200:
                    found[record_id] = json.dumps(response.body)
                    return
                await asyncio.sleep(0.2)
            found[record_id] = None

    await asyncio.gather(*(one(r) for r in record_ids))
    return found


# ---------------------------------------------------------------- the chain


def key_holders(layout: ClusterLayout) -> dict[str, str]:
    """Node name -> the address of its chain key, for the nodes that hold one."""
    directory = Path(layout.directory)
    return {
        name: load_key_file(directory / chain_key_relpath(name)).address
        for name in layout.chain.anchor_nodes
    }


def nonces(w3: Web3, addresses: Sequence[str], *, pending: bool = False) -> dict[str, int]:
    """Each address's transaction count, mined (or with ``pending``, also in the pool)."""
    count = w3.eth.get_transaction_count
    return {
        a: int(count(Web3.to_checksum_address(a), "pending" if pending else "latest"))
        for a in addresses
    }


def scan_blocks(
    w3: Web3, first: int, last: int, holders: Sequence[str], contract: str
) -> dict[str, Any]:
    """Every transaction in blocks ``first..last``, by sender and by recipient."""
    mine = {a.lower() for a in holders}
    by_holder = 0
    to_registry = 0
    others: Counter[str] = Counter()
    total = 0
    for number in range(first, last + 1):
        block = w3.eth.get_block(number, full_transactions=True)
        transactions: list[Any] = list(block["transactions"])
        for tx in transactions:
            total += 1
            sender = str(tx["from"]).lower()
            recipient = str(tx.get("to") or "").lower()
            if sender in mine:
                by_holder += 1
            else:
                others[sender] += 1
            if recipient == contract.lower():
                to_registry += 1
    return {
        "blocks": max(0, last - first + 1),
        "transactions": total,
        "from_key_holders": by_holder,
        "to_registry": to_registry,
        "from_other_accounts": dict(others),
    }


def check_anchors(reader: RegistryReader, pages: list[str], log_batches: int) -> dict[str, Any]:
    """The contract's anchors against the log's: count, tree size and root of every batch, and
    the anchor chain documents verified against the chain."""
    anchors: list[AnchorRef] = []
    failures: list[str] = []
    for page in pages:
        doc = AnchorChainDoc.from_json(page)
        anchors += doc.anchors
        result = verify_anchor_chain(doc, reader)
        if not result.ok:
            step = result.first_failure
            failures.append(
                f"anchor chain page: {step.name if step else 'pending'}: "
                f"{step.detail if step else ''}"
            )
    on_chain = reader.next_batch_id() - 1
    mismatches = []
    for expected, anchor in enumerate(anchors, start=1):
        got = reader.anchor_of(anchor.batch_id)
        if anchor.batch_id != expected:
            mismatches.append(f"batch {anchor.batch_id} where {expected} was expected")
        elif got is None or (got.tree_size, got.root) != (anchor.tree_size, anchor.root):
            mismatches.append(f"batch {anchor.batch_id}: the chain has {got}")
        elif got.block_number != anchor.block_number:
            mismatches.append(f"batch {anchor.batch_id}: block {got.block_number} on the chain")
    return {
        "anchors_on_contract": on_chain,
        "anchors_in_log": log_batches,
        "anchors_in_documents": len(anchors),
        "mismatches": mismatches[:20],
        "anchor_chain_failures": failures,
        "match": on_chain == log_batches == len(anchors) and not mismatches and not failures,
    }


def verify_receipts(
    reader: RegistryReader, receipts: dict[str, str | None], confirmations: int
) -> dict[str, Any]:
    failures: list[str] = []
    verified = 0
    for record_id, text in receipts.items():
        if text is None:
            failures.append(f"{record_id}: no receipt")
            continue
        result = verify_receipt(Receipt.from_json(text), reader, confirmations=confirmations)
        if result.ok:
            verified += 1
        else:
            step = result.first_failure
            failures.append(
                f"{record_id}: {step.name}: {step.detail}" if step else f"{record_id}: not final"
            )
    return {"sampled": len(receipts), "verified": verified, "failures": failures[:20]}


# ---------------------------------------------------------------- the log after the run


@dataclass(frozen=True, slots=True)
class LogOnDisk:
    committed_ms: list[int]
    size: int
    batches: list[Batch]


def read_log(data_dir: Path) -> LogOnDisk:
    """Every leaf's commit time and every batch, from a stopped node's LevelDB."""
    storage = DurableRaftStorage(data_dir / "raft")
    try:

        class _View:
            def get(self, key: bytes) -> bytes | None:
                return storage.state_get(key)

        view = _View()
        size = MerkleReader(view).size
        committed = [0] * size
        seen = 0
        for key, value in storage.state_items(LEAF_PREFIX):
            index = int.from_bytes(key[len(LEAF_PREFIX) :], "big")
            committed[index] = LeafData.decode(value).committed_at_ms
            seen += 1
        if seen != size:
            raise ValueError(f"the log says {size} leaves, {seen} are stored")
        last = progress_of(view).next_batch_id - 1
        return LogOnDisk(committed, size, batches(view, 1, last))
    finally:
        storage.close()


def batch_times(found: Sequence[Batch], observed: dict[int, int]) -> list[BatchTimes]:
    return [
        BatchTimes(
            batch_id=b.batch_id,
            tree_size=b.tree_size,
            trigger=b.trigger,
            intent_ms=b.intent_ms,
            included_ms=b.inclusion.included_ms if b.inclusion is not None else None,
            final_ms=b.final.final_ms if b.final is not None else None,
            observed_ms=observed.get(b.batch_id),
            block_number=b.inclusion.block_number if b.inclusion is not None else None,
        )
        for b in found
    ]


def lag_report(committed_ms: list[int], times: list[BatchTimes]) -> dict[str, Any]:
    sizes = [t.tree_size for t in times]

    def per_leaf(done: Sequence[int | None], start: Sequence[int] | None = None) -> dict[str, Any]:
        if start is None:
            return lag_summary_ms(leaf_lags_ms(committed_ms, sizes, done))
        # from the batch's own start time rather than each leaf's commit
        return lag_summary_ms(
            leaf_lags_ms(_per_leaf_times(start, sizes, len(committed_ms)), sizes, done)
        )

    intents = [t.intent_ms for t in times]
    included = [t.included_ms for t in times]
    finals = [t.final_ms for t in times]
    included_ms = [x if x is not None else 0 for x in included]
    final_ms = [x if x is not None else 0 for x in finals]
    return {
        "observed": per_leaf([t.observed_ms for t in times]),
        "state": per_leaf(finals),
        "parts": {
            "commit_to_intent": per_leaf(intents),
            "intent_to_included": per_leaf(included, intents),
            "included_to_final": per_leaf(finals, included_ms),
            "final_to_observed": per_leaf([t.observed_ms for t in times], final_ms),
        },
    }


def _per_leaf_times(batch_ms: Sequence[int], sizes: Sequence[int], leaves: int) -> list[int]:
    """Each leaf gets the time of the batch covering it first."""
    return [batch_ms[bisect.bisect_right(sizes, i)] for i in range(leaves)]


def batch_report(times: list[BatchTimes]) -> dict[str, Any]:
    sizes = [t.tree_size for t in times]
    leaves = [b - a for a, b in pairwise([0, *sizes])]
    gaps = [b.intent_ms - a.intent_ms for a, b in pairwise(times)]
    return {
        "count": len(times),
        "by_trigger": dict(Counter(t.trigger for t in times)),
        "leaves_per_batch": lag_summary_ms(leaves),
        "intent_gap_ms": lag_summary_ms(gaps),
        "per_batch": [_batch_row(t, leaves) for t, leaves in zip(times, leaves, strict=True)],
    }


def _batch_row(t: BatchTimes, leaves: int) -> dict[str, Any]:
    """One batch: its leaves, trigger, block, and each step's time after its intent (ms)."""

    def after(ms: int | None) -> int | None:
        return None if ms is None else ms - t.intent_ms

    return {
        "batch_id": t.batch_id,
        "leaves": leaves,
        "tree_size": t.tree_size,
        "trigger": t.trigger,
        "block_number": t.block_number,
        "intent_ms": t.intent_ms,
        "included_after_ms": after(t.included_ms),
        "final_after_ms": after(t.final_ms),
        "observed_after_ms": after(t.observed_ms),
    }


def cluster_report(measured: dict[str, Any]) -> dict[str, Any]:
    """CPU of each process over the run, raft terms (elections), the anchoring lease and the
    holder's driver counters at the end."""
    start, end = measured["status_start"], measured["status_end"]

    def raft(status: dict[str, Any]) -> dict[str, Any]:
        return {
            name: {k: s.get("raft", {}).get(k) for k in ("role", "term", "leader_id")}
            for name, s in status.items()
        }

    holders = {s.get("anchoring", {}).get("lease_holder") for s in end.values()}
    peer = next(iter(holders)) if len(holders) == 1 else None
    holder = next((name for name, s in end.items() if peer and s.get("peer_id") == peer), None)
    driver = end[holder].get("anchoring", {}).get("driver") if holder else None
    terms = [s.get("raft", {}).get("term", 0) for s in (*start.values(), *end.values())]
    return {
        "cpu": measured["cpu"],
        "raft_start": raft(start),
        "raft_end": raft(end),
        "term_increase": (max(terms) - min(terms)) if terms else None,
        "lease_holder_end": holder,
        "holder_driver": driver,
        "last_errors": {name: s.get("anchoring", {}).get("last_error") for name, s in end.items()},
    }


# ---------------------------------------------------------------- the run


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_overrides(pairs: Sequence[str]) -> dict[str, dict[str, object]]:
    """``TABLE.KEY=VALUE`` pairs (VALUE a TOML value) -> {table: {key: value}} for every node's
    TOML, e.g. ``anchoring.poll_interval_s=0.2`` or ``raft.snapshot_entries=200000``."""
    found: dict[str, dict[str, object]] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        table, dot, key = name.strip().partition(".")
        if not sep or not dot or not table or not key:
            raise ConfigError(f"--node-set takes TABLE.KEY=VALUE, got {pair!r}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--node-set {pair!r}: not a TOML value") from exc
        found.setdefault(table, {})[key] = value
    return found


@contextmanager
def _cluster(
    directory: Path, chain: str, log_level: str, overrides: dict[str, dict[str, object]]
) -> Iterator[LocalCluster]:
    layout = init_cluster(directory, partners=(PARTNER,), chain=chain)
    for node in layout.nodes:
        path = Path(node.config_path)
        for table, values in overrides.items():
            path.write_text(set_toml_keys(path.read_text(), table, values))
    local = LocalCluster(layout, log_level=log_level)
    local.start()
    try:
        yield local
    finally:
        local.stop()


async def _measure(cluster: LocalCluster, args: argparse.Namespace) -> dict[str, Any]:
    layout = cluster.layout
    token = read_token(Path(layout.directory))
    credentials = layout.partners[PARTNER]
    poller = Poller(layout.gateway_url, args.poll_interval_s)
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        PartnerClient(
            layout.gateway_url,
            credentials["api_key"],
            bytes.fromhex(credentials["secret_hex"]),
            connections_max=INFLIGHT_REQUESTS_MAX,
        ) as client,
    ):
        status_start = await node_statuses(session, layout, token)
        cpu = CpuMeter(cluster)
        client_cpu_start = time.process_time()
        polling = asyncio.create_task(poller.run(session, stop))
        _say(f"writing {args.records} records at {args.rate:g}/s in requests of {args.batch_size}")
        written = await write_paced(client, args.records, args.rate, args.batch_size, "bench")
        _say(f"written in {written.ended_s - written.started_s:.1f} s; waiting for final anchors")
        settle_start = time.monotonic()
        try:
            statuses = await wait_all_final(session, layout, token, args.records, poller)
        finally:
            stop.set()
            await polling
        settle_s = time.monotonic() - settle_start
        cpu_s = cpu.read()
        cpu_s["bench_client_cpu_s"] = round(time.process_time() - client_cpu_start, 2)
        status_end = await node_statuses(session, layout, token)
        sizes = await _log_sizes(session, layout, token)
        pages = await fetch_anchor_docs(session, layout.gateway_url)
        rng = random.Random(args.seed)
        sample = rng.sample(written.record_ids, min(args.receipts, len(written.record_ids)))
        _say(f"fetching {len(sample)} receipts")
        receipts = await fetch_receipts(client, sample)
    return {
        "written": written,
        "poller": poller,
        "statuses": statuses,
        "sizes": sizes,
        "pages": pages,
        "receipts": receipts,
        "settle_s": settle_s,
        "cpu": cpu_s,
        "status_start": status_start,
        "status_end": status_end,
    }


class CpuMeter:
    """CPU seconds each cluster process (nodes, gateway, chain) used since it was made."""

    def __init__(self, cluster: LocalCluster) -> None:
        names = [n.name for n in cluster.layout.nodes] + ["gateway"]
        self._processes = {name: psutil.Process(cluster.pid(name)) for name in names}
        if cluster.chain_process is not None:
            self._processes["chain"] = psutil.Process(cluster.chain_process.pid)
        self._started = time.monotonic()
        self._start = {name: self._cpu(p) for name, p in self._processes.items()}

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def read(self) -> dict[str, Any]:
        span_s = time.monotonic() - self._started
        used = {n: self._cpu(p) - self._start[n] for n, p in self._processes.items()}
        return {
            "span_s": round(span_s, 3),
            "cpu_s": {n: round(v, 2) for n, v in used.items()},
            "cores": {n: round(v / span_s, 3) for n, v in used.items()},
            "cores_total": round(sum(used.values()) / span_s, 3),
        }


def _write_section(written: WriteResult, args: argparse.Namespace) -> dict[str, Any]:
    span_s = max(written.ended_s - written.started_s, 1e-9)
    return {
        "records_acknowledged": len(written.record_ids),
        "records_failed": written.failed_records,
        "distinct_record_ids": len(set(written.record_ids)),
        "requests": written.requests,
        "retried_items": written.retried_items,
        "errors": dict(written.errors),
        "duration_s": round(span_s, 3),
        "records_per_s": round(len(written.record_ids) / span_s, 1),
        "rate_target_per_s": args.rate,
        "request_latency_ms": _ms(lag_summary_ms(written.latency_s)),
        "send_lag_ms": _ms(lag_summary_ms(written.send_lag_s)),
    }


def _ms(summary: dict[str, float | int | None]) -> dict[str, float | int | None]:
    return {
        k: (round(v * 1000.0, 3) if isinstance(v, float) and k != "count" else v)
        for k, v in summary.items()
    }


@dataclass(frozen=True, slots=True)
class ChainStart:
    """The chain as the run found it: the key holders' nonces and the head."""

    w3: Web3
    contract: str
    addresses: list[str]
    nonces: dict[str, int]
    head: int


def chain_start(cluster: LocalCluster) -> ChainStart:
    assert cluster.chain_url is not None and cluster.chain_contract is not None
    w3 = Web3(Web3.HTTPProvider(cluster.chain_url, request_kwargs={"timeout": HTTP_TIMEOUT_S}))
    addresses = sorted(key_holders(cluster.layout).values())
    return ChainStart(
        w3, cluster.chain_contract, addresses, nonces(w3, addresses), int(w3.eth.block_number)
    )


def chain_section(
    start: ChainStart, measured: dict[str, Any], confirmations: int, records: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the chain holds against the counters and the log, the sampled receipts verified)."""
    w3, addresses = start.w3, start.addresses
    nonce_end = nonces(w3, addresses)
    pending_end = nonces(w3, addresses, pending=True)
    head_end = int(w3.eth.block_number)
    blocks = scan_blocks(w3, start.head + 1, head_end, addresses, start.contract)
    first = next(iter(measured["statuses"].values()))
    counters = {k: int(v) for k, v in first["counters"].items()}
    anchors = check_anchors(
        RegistryReader(w3, start.contract), measured["pages"], first["next_batch_id"] - 1
    )
    receipts = verify_receipts(
        RegistryReader(w3, start.contract), measured["receipts"], confirmations
    )
    sent = sum(nonce_end.values()) - sum(start.nonces.values())
    holders = {
        a: {
            "nonce_start": start.nonces[a],
            "nonce_end": nonce_end[a],
            "pending_end": pending_end[a],
        }
        for a in addresses
    }
    chain = {
        "key_holders": holders,
        "head_start": start.head,
        "head_end": head_end,
        "blocks_scanned": blocks,
        "counters": counters,
        **transaction_check(sent, counters, blocks["transactions"] - blocks["from_key_holders"]),
        "transactions_per_1e5_records": round(sent * PER_RECORDS / max(records, 1), 2),
        "anchors": anchors,
    }
    return chain, receipts


def _parameters(
    args: argparse.Namespace, settings: AnchoringSettings, nodes: int, start: ChainStart
) -> dict[str, Any]:
    return {
        "records": args.records,
        "rate": args.rate,
        "batch_size": args.batch_size,
        "chain": args.chain,
        "poll_interval_s": args.poll_interval_s,
        "receipts": args.receipts,
        "seed": args.seed,
        "nodes": nodes,
        "anchoring": {
            "anchor_interval_s": settings.anchor_interval_s,
            "anchor_batch_max": settings.anchor_batch_max,
            "confirmations": settings.confirmations,
            "block_time_s": CHAIN_BLOCK_TIME_S,
            "poll_interval_s": settings.poll_interval_s,
            "tick_s": settings.tick_s,
            "lease_ttl_s": settings.lease_ttl_s,
            "open_batches_max": settings.open_batches_max,
            "key_holders": len(start.addresses),
        },
        "chain_url": settings.rpc_url,
        "contract": start.contract,
        "node_overrides": parse_overrides(args.node_set),
    }


def _polling(poller: Poller) -> dict[str, Any]:
    return {
        "interval_s": poller.interval_s,
        "polls": poller.polls,
        "late_polls": poller.late_polls,
        "errors": dict(poller.errors),
        "round_trip_ms": {
            k: (round(v, 3) if isinstance(v, float) else v)
            for k, v in lag_summary_ms(poller.rtt_ms).items()
        },
    }


LAG_SOURCE = (
    "commit: each leaf's committed_at_ms (leader time of its index.put entry) read from node-1's "
    "LevelDB after the run; observed: wall time when the bench's poll of the gateway's GET "
    "/v1/log first showed final_through >= the covering batch; state: the batch's final_ms "
    "(leader time of its anchor.final entry)"
)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    machine = machine_info(REPO)
    directory = Path(tempfile.mkdtemp(prefix="baas-bench-anchor-"))
    overrides = parse_overrides(args.node_set)
    try:
        with _cluster(directory / "cluster", args.chain, args.log_level, overrides) as cluster:
            config = load_node_config(Path(cluster.layout.nodes[0].config_path))
            settings = config.anchoring
            start = chain_start(cluster)
            _say(
                f"cluster up in {time.time() - started:.1f} s (chain {args.chain}, head "
                f"{start.head}, key holders' nonces {sorted(start.nonces.values())})"
            )
            measured = asyncio.run(_measure(cluster, args))
            chain, receipts = chain_section(start, measured, settings.confirmations, args.records)
            nodes = len(cluster.layout.nodes)
        _say("cluster stopped; reading every leaf and batch from node-1's LevelDB")
        on_disk = read_log(config.node.data_dir)
    finally:
        if args.keep_cluster:
            _say(f"cluster directory kept: {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    written: WriteResult = measured["written"]
    times = batch_times(on_disk.batches, measured["poller"].first_final_ms)
    target_ms = lag_target_ms(
        settings.anchor_interval_s, settings.confirmations, CHAIN_BLOCK_TIME_S
    )
    document: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "tool": "baas-bench-anchor",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": machine,
        "load_average_start": machine["load_average_start"],
        "parameters": _parameters(args, settings, nodes, start),
        "cluster": cluster_report(measured),
        "write": _write_section(written, args),
        "log": {
            "size_on_disk": on_disk.size,
            "size_per_node": measured["sizes"],
            "records_written": len(set(written.record_ids)),
        },
        "anchor_lag_source": LAG_SOURCE,
        "anchor_lag_ms": lag_report(on_disk.committed_ms, times),
        "anchor_lag_target_ms": target_ms,
        "polling": _polling(measured["poller"]),
        "settle_s": round(measured["settle_s"], 3),
        "batches": batch_report(times),
        "chain": chain,
        "receipts": receipts,
        "duration_s": round(time.time() - started, 3),
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    document["checks"] = _checks(document, args)
    document["checks_passed"] = all(document["checks"].values())
    document["targets"] = _verdicts(document, args, target_ms)
    return document


def _checks(document: dict[str, Any], args: argparse.Namespace) -> dict[str, bool]:
    write, log, chain = document["write"], document["log"], document["chain"]
    holders = chain["key_holders"].values()
    sizes = set(log["size_per_node"].values())
    return {
        "every_record_written_once": write["records_failed"] == 0
        and write["distinct_record_ids"] == write["records_acknowledged"] == args.records,
        "log_size_equals_records": sizes == {args.records} and log["size_on_disk"] == args.records,
        "chain_transactions_equal_counters": bool(chain["equal"]),
        "no_transaction_left_pending": all(h["pending_end"] == h["nonce_end"] for h in holders),
        "anchors_match_log": bool(chain["anchors"]["match"]),
        "receipts_verified": document["receipts"]["verified"] == document["receipts"]["sampled"]
        and document["receipts"]["sampled"] == min(args.receipts, args.records),
        "every_batch_observed_final": document["anchor_lag_ms"]["observed"]["count"]
        == args.records,
    }


def _verdicts(document: dict[str, Any], args: argparse.Namespace, target_ms: float) -> list[Any]:
    rows = []
    for target in ANCHOR_TARGETS:
        if target.name == "anchor_lag_p99":
            target = Target(**{**_fields(target), "threshold": target_ms})
            measured = document["anchor_lag_ms"]["observed"]["p99"]
        else:
            measured = document["chain"]["transactions_mismatch"]
        note = _note(target, document, args)
        rows.append(verdict(target, None if measured is None else float(measured), note))
    return rows


def _fields(target: Target) -> dict[str, Any]:
    return {name: getattr(target, name) for name in target.__dataclass_fields__}


def _note(target: Target, document: dict[str, Any], args: argparse.Namespace) -> str | None:
    if args.chain != "anvil":
        return f"the target is on anvil; this run used the {args.chain} chain"
    if args.records < RECORDS_FOR_TARGET:
        return f"the target is over 10^5 records; this run wrote {args.records}"
    if document["parameters"]["node_overrides"]:
        return f"the node settings were changed: {document['parameters']['node_overrides']}"
    if target.name == "chain_transactions" and document["chain"]["unexpected_in_blocks"]:
        return "other accounts sent transactions during the run"
    if not document["checks_passed"]:
        return "a check failed: " + ", ".join(k for k, v in document["checks"].items() if not v)
    return None


def print_table(document: dict[str, Any]) -> None:
    lag = document["anchor_lag_ms"]
    write, chain = document["write"], document["chain"]
    rows = [
        (
            "records written",
            f"{write['records_acknowledged']} in {write['duration_s']} s "
            f"({write['records_per_s']}/s; target {write['rate_target_per_s']:g}/s)",
        ),
        (
            "Merkle log size",
            f"{document['log']['size_on_disk']} (nodes: "
            f"{sorted(set(document['log']['size_per_node'].values()), key=str)})",
        ),
        ("anchor lag observed", _lag_line(lag["observed"])),
        ("anchor lag state", _lag_line(lag["state"])),
        ("  commit -> intent", _lag_line(lag["parts"]["commit_to_intent"])),
        ("  intent -> included", _lag_line(lag["parts"]["intent_to_included"])),
        ("  included -> final", _lag_line(lag["parts"]["included_to_final"])),
        ("  final -> observed", _lag_line(lag["parts"]["final_to_observed"])),
        ("lag target (p99)", f"<= {document['anchor_lag_target_ms']:g} ms"),
        ("batches", f"{document['batches']['count']} {document['batches']['by_trigger']}"),
        (
            "chain transactions",
            f"{chain['sent_by_key_holders']} sent by key holders; counters "
            f"size+interval+reanchors = {chain['expected']}; replacements "
            f"{chain['replacements']}; others in blocks "
            f"{chain['unexpected_in_blocks']}",
        ),
        ("  per 10^5 records", f"{chain['transactions_per_1e5_records']}"),
        (
            "anchors on contract",
            f"{chain['anchors']['anchors_on_contract']} (log "
            f"{chain['anchors']['anchors_in_log']}; match "
            f"{chain['anchors']['match']})",
        ),
        (
            "receipts verified",
            f"{document['receipts']['verified']}/{document['receipts']['sampled']}",
        ),
        (
            "cluster CPU",
            f"{document['cluster']['cpu']['cores_total']} cores over "
            f"{document['cluster']['cpu']['span_s']} s {document['cluster']['cpu']['cores']}; "
            f"raft term +{document['cluster']['term_increase']}",
        ),
        (
            "holder's proposals",
            _proposals_line(document["cluster"]["holder_driver"], document["batches"]["count"]),
        ),
        (
            "wall time",
            f"{document['duration_s']} s; load {document['load_average_start']} -> "
            f"{document['load_average_end']}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for name, ok in document["checks"].items():
        print(f"check {name}: {'ok' if ok else 'FAILED'}")
    for row in document["targets"]:
        state = "PASS" if row["pass"] else "FAIL"
        extra = "" if row["conclusive"] else f" (inconclusive: {row['note']})"
        print(
            f"target {row['name']}: {state}, measured {row['measured']} {row['op']} "
            f"{row['threshold']:g} {row['unit']}{extra}"
        )


def _proposals_line(driver: dict[str, Any] | None, batches: int) -> str:
    if not driver:
        return "unknown (no single lease holder at the end)"
    names = ("intents_built", "results_proposed", "finals_proposed", "replacements_built")
    counts = ", ".join(f"{name} {driver.get(name)}" for name in names)
    return f"{counts} for {batches} batches; chain_errors {driver.get('chain_errors')}"


def _lag_line(summary: dict[str, Any]) -> str:
    return (
        f"p50 {summary['p50']} ms, p90 {summary['p90']} ms, p99 {summary['p99']} ms, "
        f"max {summary['max']} ms"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="baas-bench-anchor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--records", type=int, default=RECORDS_FOR_TARGET)
    p.add_argument("--rate", type=float, default=1000.0, help="records/s offered (open loop)")
    p.add_argument("--batch-size", type=int, default=100, help="records per write request")
    p.add_argument("--chain", choices=("anvil", "embedded"), default="anvil")
    p.add_argument("--poll-interval-s", type=float, default=0.1, help="log head polling")
    p.add_argument("--receipts", type=int, default=200, help="random receipts verified")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, help="result file (bench-results/bench-anchor-*.json)")
    p.add_argument("--log-level", default="WARNING", help="the cluster processes' log level")
    p.add_argument("--keep-cluster", action="store_true", help="keep the temporary cluster dir")
    p.add_argument(
        "--node-set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="override a setting in every node's TOML (a TOML value; repeatable; exploring: "
        "the targets are for the cluster as baas-cluster init lays it out)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("records", "rate", "batch_size", "poll_interval_s"):
        if getattr(args, name) <= 0:
            print(
                f"baas-bench-anchor: --{name.replace('_', '-')} must be positive", file=sys.stderr
            )
            return 2
    if args.receipts < 0:
        print("baas-bench-anchor: --receipts must not be negative", file=sys.stderr)
        return 2
    out = args.out or Path("bench-results") / f"bench-anchor-{time.strftime('%Y%m%d-%H%M%S')}.json"
    try:
        document = run(args)
    except (BaasError, ConfigError, TimeoutError) as exc:
        print(f"baas-bench-anchor: {exc}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print_table(document)
    print(f"results: {out}")
    return 0 if document["checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
