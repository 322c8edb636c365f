"""Ledger operations in real processes: 5 nodes, operations sent with the gateway's NodeClient.

Records carrying ledger events (transfers between flagged accounts, linked chains, pending
transfers that expire) go through the nodes' internal record route under load while the
Raft leader is killed with -9. Every operation is retried with its record id until it is
acknowledged; then every acknowledged operation was applied exactly once (each account's
posted balance is the sum of the acknowledged outcomes' successful transfers), a retry is
answered with the first outcome, every ledger stays balanced and every node computes the same
ledger state digest at the same applied index.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nodeapi import node_get, running_cluster
from test_cluster_index import wait_leader

from business.identity.ids import Mode, account_id
from business.identity.scope import PLATFORM
from business.ledger import (
    AccountFlags,
    AssetKind,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    TransferFlags,
    encode_events,
)
from gateway.config import GatewayLimits, GatewayTimeouts, NodeEndpoint
from gateway.node_client import NodeClient, WriteItem
from node.errors import BaasError
from tools.local_cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

PTS = 7  # a platform ledger (asset index 3) in live mode: the parity is the mode
ISSUED_EACH = 1_000
WORKERS = 8
# Each worker's 1st, 11th, ... operation overdraws: the limits refuse some however few
# operations a loaded machine gets through (random ones alone rarely drain an account then).
OVERDRAFT_EVERY = 10
# Every operation is the platform's own (the node's log enables feature 7, which checks who
# proposes what): its accounts' ids are derived from the setup operation, as the scope check
# requires (business/identity/scope.py).
PROPOSER, MODE = PLATFORM, Mode.LIVE


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("ledger"), chain="none") as local:
        yield local


def rid_of(name: str) -> bytes:
    return hashlib.sha256(b"ledger-test/" + name.encode()).digest()


ISSUER = account_id(rid_of("setup"), 1)
USERS = [account_id(rid_of("setup"), 2 + i) for i in range(16)]


def record(name: str, events: list[Event]) -> dict[str, Any]:
    wire = encode_events(events)
    rid = rid_of(name)
    return {
        "rid": rid,
        "blob": b"encrypted details of " + name.encode(),
        "pid": "shop-a",
        "fp": hashlib.sha256(rid + wire).digest(),
        "ev": wire,
    }


class Operator:
    """Sends operations and retries each with its record id until acknowledged."""

    def __init__(self, client: NodeClient) -> None:
        self.client = client
        self.outcomes: dict[str, dict[str, Any]] = {}  # name -> first acknowledged outcome
        self.events: dict[str, list[Event]] = {}
        self.refusals: list[str] = []

    async def send(self, name: str, events: list[Event], attempts: int = 200) -> dict[str, Any]:
        self.events[name] = events
        wire = record(name, events)
        loop = asyncio.get_running_loop()
        for _ in range(attempts):
            item = WriteItem.operation(
                {k: v for k, v in wire.items() if k != "ev"},
                wire["ev"],
                None,
                deadline=loop.time() + 10.0,
                request_id=name,
                partner=PROPOSER,
                mode=MODE,
            )
            try:
                (got,) = await self.client.write_operations([item])
            except BaasError as exc:  # refused before the log, or no node answered: retry
                self.refusals.append(exc.code)
                await asyncio.sleep(0.2)
                continue
            if got.get("ok"):
                outcome: dict[str, Any] = got["outcome"]
                first = self.outcomes.setdefault(name, outcome)
                assert first == outcome, (name, first, outcome)  # sticky across retries
                return outcome
            self.refusals.append(str(got.get("code")))
            assert got.get("status") == 503, got
            await asyncio.sleep(0.2)
        raise AssertionError(f"{name} never acknowledged: {self.refusals[-5:]}")


def posted_balances(operator: Operator) -> dict[int, int]:
    """Per account, credits - debits posted by the acknowledged successful transfers."""
    net: dict[int, int] = {}
    for name, outcome in operator.outcomes.items():
        for event, result in zip(operator.events[name], outcome["events"], strict=True):
            if type(event) is not CreateTransfer or result["result"] != "ok":
                continue
            if event.flags & TransferFlags.PENDING:
                continue  # reserved, never posted here: expires
            amount = int(result["amount"])
            net[event.debit_account_id] = net.get(event.debit_account_id, 0) - amount
            net[event.credit_account_id] = net.get(event.credit_account_id, 0) + amount
    return net


def random_operation(rng: random.Random, tid: int) -> list[Event]:
    a, b = rng.sample(USERS, 2)
    kind = rng.random()
    if kind < 0.6:
        return [CreateTransfer(tid, a, b, rng.randint(1, 120), PTS, 1)]
    if kind < 0.85:  # a linked chain: both legs or neither
        c = rng.choice([u for u in USERS if u not in (a, b)])
        return [
            CreateTransfer(tid, a, b, rng.randint(1, 80), PTS, 1, flags=TransferFlags.LINKED),
            CreateTransfer(tid + 1, b, c, rng.randint(1, 80), PTS, 1),
        ]
    return [CreateTransfer(tid, a, b, rng.randint(1, 50), PTS, 1,
                           flags=TransferFlags.PENDING, timeout=1)]  # fmt: skip


async def test_leader_kill_during_a_ledger_burst_applies_every_operation_once(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    names = [n.name for n in cluster.layout.nodes]
    token = (Path(cluster.layout.directory) / "secrets" / "node-api.token").read_text().strip()
    client = NodeClient(
        tuple(NodeEndpoint(n.name, n.http_addr) for n in cluster.layout.nodes),
        token,
        GatewayLimits(),
        GatewayTimeouts(),
    )
    leader = await wait_leader(cluster, names)
    await client.start()
    operator = Operator(client)
    try:
        setup: list[Event] = [
            CreateAsset(PTS, AssetKind.POINT, 2),
            CreateAccount(ISSUER, PTS, 1),
            *(CreateAccount(u, PTS, 2, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
              for u in USERS),
        ]  # fmt: skip
        created = await operator.send("setup", setup)
        assert [e["result"] for e in created["events"]] == ["ok"] * len(setup)
        issue = [
            CreateTransfer(10 + i, ISSUER, u, ISSUED_EACH, PTS, 1) for i, u in enumerate(USERS)
        ]
        assert {e["result"] for e in (await operator.send("issue", issue))["events"]} == {"ok"}

        stop = asyncio.Event()

        async def worker(w: int) -> None:
            rng = random.Random(w)
            seq = 0
            while not stop.is_set():
                seq += 1
                tid = 1_000_000 * (w + 1) + 2 * seq
                events = random_operation(rng, tid)
                if seq % OVERDRAFT_EVERY == 1:  # more than was issued in all: always refused
                    a, b = rng.sample(USERS, 2)
                    events = [CreateTransfer(tid, a, b, ISSUED_EACH * len(USERS) + 1, PTS, 1)]
                await operator.send(f"w{w}-{seq}", events)

        workers = [asyncio.create_task(worker(w)) for w in range(WORKERS)]
        await asyncio.sleep(3.0)
        before = len(operator.outcomes)
        cluster.kill(leader)
        survivors = [n for n in names if n != leader]
        await wait_leader(cluster, survivors, not_this=leader)
        await asyncio.sleep(4.0)
        stop.set()
        await asyncio.gather(*workers)
        assert len(operator.outcomes) > before + 20  # operations went on under the new leader
        results = [e["result"] for o in operator.outcomes.values() for e in o["events"]]
        assert "ok" in results and "exceeds_credits" in results  # the limits did refuse some

        # Retries of acknowledged operations get the first outcome, and change nothing.
        for name in list(operator.outcomes)[:: max(1, len(operator.outcomes) // 30)]:
            first = operator.outcomes.pop(name)
            assert await operator.send(name, operator.events[name]) == first

        # Let the pending transfers expire: an operation after their timeout sweeps them.
        await asyncio.sleep(2.0)
        await operator.send("after-expiry", [CreateTransfer(9, ISSUER, USERS[0], 1, PTS, 1)])

        expected = posted_balances(operator)
        digests = await settled_digests(cluster, survivors)
        assert len({(d["applied_index"], d["digest"]) for d in digests}) == 1, digests
        (totals,) = digests[0]["totals"]
        assert totals["balanced"] and totals["debits_pending"] == "0", totals
        for account in [ISSUER, *USERS]:
            doc = node_get(cluster, survivors[0], f"/internal/v1/ledger/accounts/{account}")
            assert doc is not None
            net = int(doc["credits_posted"]) - int(doc["debits_posted"])
            assert net == expected.get(account, 0), (account, net, expected.get(account))
            assert doc["debits_pending"] == "0"
            if account != ISSUER:
                assert net >= 0  # flagged: never overdrawn
        assert sum(expected.values()) == 0
        metrics = node_metrics(cluster, survivors[0])
        assert 'baas_node_ledger_operations_total{result="succeeded"}' in metrics
        print(f"ledger burst: {len(operator.outcomes)} operations acknowledged, "
              f"{len(operator.refusals)} attempts refused before the log and retried")  # fmt: skip
    finally:
        await client.stop()
        cluster.start_node(leader)


async def settled_digests(cluster: LocalCluster, names: list[str]) -> list[dict[str, Any]]:
    """Every node's ledger digest once they all report the same applied index."""
    deadline = time.monotonic() + 20
    while True:
        digests = [node_get(cluster, n, "/internal/v1/ledger/digest", 10.0) for n in names]
        present = [d for d in digests if d is not None]
        if len(present) == len(names) and len({d["applied_index"] for d in present}) == 1:
            return present
        assert time.monotonic() < deadline, digests
        await asyncio.sleep(0.3)


def node_metrics(cluster: LocalCluster, name: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://{cluster.node(name).http_addr}/metrics") as response:
        text: str = response.read().decode()
    return text
