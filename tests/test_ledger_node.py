"""The node's ledger reads and metrics: the streamed digest equals the ledger's state digest and
reports per-ledger totals, bounded by keys; the measured machine applies exactly as the pure
one and counts operations by result and entry sizes; the routes answer from a real LevelDB."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from test_index_batch import at, enabled, prop
from test_ledger_ops import SETUP, dispatcher, op, ops, run, set_up, xfer
from test_raft_durable import entries, make_ready

from business.ledger import TransferFlags, state_digest
from node.api.ledger_routes import LedgerReads, add_ledger_routes, digest_items
from node.api.problem import problem_middleware
from node.consensus.ledger_ops import LedgerOps
from node.consensus.record_index import RecordIndex
from node.consensus.state_machine import Dispatcher
from node.consensus.types import HardState
from node.errors import OperationFailed
from node.ledger_metrics import MeasuredLedgerOps, ledger_stat_families
from node.membership import StoreView
from node.merkle.log import MerkleLog
from node.metrics import Metrics
from node.replication.durable import DurableRaftStorage


def test_the_streamed_digest_is_the_ledger_state_digest_with_totals() -> None:
    view, i = set_up()
    run([(at(i), ops(op(1, [xfer(10, 1, 2, 70, flags=TransferFlags.PENDING, timeout=60)])))], view)
    items = sorted((k, v) for k, v in view.data.items() if k.startswith(b"lg/"))
    got = digest_items(iter(items), keys_max=10_000)
    assert got.digest == state_digest(view.data.items()) and got.keys == len(items)
    (totals,) = got.totals
    assert totals["debits_pending"] == totals["credits_pending"] == "70" and totals["balanced"]
    with pytest.raises(OperationFailed) as refused:
        digest_items(iter(items), keys_max=len(items) - 1)
    assert refused.value.code == "ledger_too_large"


def test_the_measured_machine_applies_alike_and_counts_by_result() -> None:
    metrics = Metrics("t")
    measured = MeasuredLedgerOps(LedgerOps(), metrics)
    log = [
        *enabled(6),
        (at(6), ops(op(100, SETUP))),
        (at(7), ops(op(1, [xfer(10, 1, 2, 5)]), op(2), op(3, [xfer(11, 3, 2, 9)]), op(1))),
        (at(8), ops(op(4, [xfer(12, 1, 2, 1, flags=TransferFlags.LINKED)]))),
    ]
    plain, view_plain = run(log)
    machine = Dispatcher([RecordIndex(), measured], feature_version_max=6, followers=[MerkleLog()])
    measured_applied, _ = machine.apply_batch(log, view_plain.__class__())
    assert [a.outcome for a in measured_applied] == [a.outcome for a in plain]
    assert dict(measured.operations) == {
        "succeeded": 2, "plain": 1, "failed": 1, "existing": 1, "linked_event_chain_open": 1
    }  # fmt: skip
    text = metrics.exposition().decode()
    assert "t_ledger_apply_seconds_count 3.0" in text
    assert "t_ledger_entry_operations_count 3.0" in text
    assert dispatcher() is not None  # the pure dispatcher is the reference above


async def test_the_ledger_routes_answer_from_leveldb(tmp_path: Path) -> None:
    storage = DurableRaftStorage(tmp_path / "raft")
    try:
        log = [
            *enabled(6),
            (at(6), ops(op(100, SETUP))),
            (at(7), ops(op(1, [xfer(10, 1, 2, 500)]), op(2, [xfer(11, 2, 3, 9)]))),
        ]
        _, writes = dispatcher().apply_batch(log, StoreView(storage))
        storage.persist(make_ready(entries(1, 7, 2), HardState(2, None, 7)))
        storage.commit_applied(writes, 7)
        metrics = Metrics("t")
        metrics.add_stats(ledger_stat_families(MeasuredLedgerOps(LedgerOps(), metrics),
                                               storage.state_items))  # fmt: skip
        app = web.Application(middlewares=[problem_middleware])
        add_ledger_routes(app, LedgerReads(lambda: StoreView(storage), storage.read_state_at, 1000))
        async with TestClient(TestServer(app)) as client:
            account = await (await client.get("/internal/v1/ledger/accounts/2")).json()
            assert account["credits_posted"] == "500" and account["debits_posted"] == "9"
            transfer = await (await client.get("/internal/v1/ledger/transfers/10")).json()
            assert transfer["amount"] == "500" and transfer["object"] == "ledger_transfer"
            rid = prop(2).record_id.hex()
            outcome = await (await client.get(f"/internal/v1/ledger/operations/{rid}")).json()
            assert [e["result"] for e in outcome["events"]] == ["ok"]
            digest = await (await client.get("/internal/v1/ledger/digest")).json()
            state = dict(storage.state_items(b"lg/"))
            assert digest["digest"] == state_digest(state.items()).hex()
            assert digest["applied_index"] == 7
            for path, status in (("accounts/99", 404), ("transfers/x", 400), ("accounts/0", 400)):
                assert (await client.get(f"/internal/v1/ledger/{path}")).status == status
        assert "t_ledger_pending_amount" in metrics.exposition().decode()
    finally:
        storage.close()


async def test_the_list_routes_page_over_one_tag_from_leveldb(tmp_path: Path) -> None:
    """``GET /internal/v1/ledger/accounts|transfers?scope=``: only the accounts and transfers
    tagged ``scope`` (a partner's, one mode), paged by ``starting_after`` with ``has_more``;
    with ``account``, that account's transfers newest first; a page that reads its
    ``list_scan_keys_max`` keys answers what it found, ``has_more`` and where it got to."""
    from business.ledger import CreateAccount

    mine, theirs = 7, 8
    storage = DurableRaftStorage(tmp_path / "raft")
    try:
        ledger = SETUP[1].ledger
        accounts = [CreateAccount(20 + i, ledger, 1, user_data_128=mine if i % 2 else theirs)
                    for i in range(8)]  # fmt: skip
        # account 21, 23, 25, 27 are mine; transfers 30..35 from the issuer (1) to 21 or 22
        moves = [xfer(30 + i, 1, 21 + i % 2, 5 + i, user_data_128=mine if i % 2 == 0 else theirs)
                 for i in range(6)]  # fmt: skip
        log = [
            *enabled(6),
            (at(6), ops(op(100, SETUP + accounts))),
            *((at(7 + i), ops(op(1 + i, [m]))) for i, m in enumerate(moves)),
        ]
        _, writes = dispatcher().apply_batch(log, StoreView(storage))
        last = 6 + len(moves)
        storage.persist(make_ready(entries(1, last, 2), HardState(2, None, last)))
        storage.commit_applied(writes, last)
        reads = LedgerReads(
            lambda: StoreView(storage),
            storage.read_state_at,
            1000,
            read_range_at=storage.read_state_range_at,
            list_scan_keys_max=1000,
        )
        app = web.Application(middlewares=[problem_middleware])
        add_ledger_routes(app, reads)
        async with TestClient(TestServer(app)) as client:

            async def get(path: str) -> dict:
                reply = await client.get(f"/internal/v1/ledger/{path}")
                assert reply.status == 200, await reply.text()
                body: dict = await reply.json()
                assert body["applied_index"] == last
                return body

            first = await get(f"accounts?scope={mine}&limit=3")
            assert [a["id"] for a in first["data"]] == ["21", "23", "25"] and first["has_more"]
            rest = await get(f"accounts?scope={mine}&limit=3&starting_after=25")
            assert [a["id"] for a in rest["data"]] == ["27"] and not rest["has_more"]
            everything = await get(f"transfers?scope={mine}&limit=10")
            assert [t["id"] for t in everything["data"]] == ["30", "32", "34"]
            newest = await get(f"transfers?scope={mine}&limit=2&account=21")
            assert [t["id"] for t in newest["data"]] == ["34", "32"] and newest["has_more"]
            older = await get(f"transfers?scope={mine}&limit=2&account=21&starting_after=32")
            assert [t["id"] for t in older["data"]] == ["30"] and not older["has_more"]
            none = await get(f"transfers?scope={mine}&account=22")  # 22's are another tag's
            assert none["data"] == [] and not none["has_more"]
            for path in ("accounts?limit=3", f"accounts?scope={mine}&limit=0",
                         f"transfers?scope={mine}&account=x"):  # fmt: skip
                assert (await client.get(f"/internal/v1/ledger/{path}")).status == 400, path
        # The scan bound: 2 keys per page (the setup's accounts 1 and 2, none tagged), so the
        # walk stops early with nothing found and says where it got, for the caller to go on.
        bounded = web.Application(middlewares=[problem_middleware])
        add_ledger_routes(bounded, replace(reads, list_scan_keys_max=2))
        async with TestClient(TestServer(bounded)) as client:
            reply = await (await client.get(f"/internal/v1/ledger/accounts?scope={mine}")).json()
            assert reply["data"] == [] and reply["has_more"] and reply["scanned_to"] == "2"
            after = f"/internal/v1/ledger/accounts?scope={mine}&starting_after=2"
            on = await (await client.get(after)).json()  # keys 3 and 20: still none
            assert on["data"] == [] and on["scanned_to"] == "20"
    finally:
        storage.close()
