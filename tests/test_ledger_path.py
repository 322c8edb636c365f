"""Ledger operations through a coordinator and the record index's gatherer, against a log that
applies with the real dispatcher: refused up front (nothing stored) while the log has not
enabled feature 6 or when the events are malformed or end in an open chain; once enabled every
record goes in ledger.ops entries, each operation's answer carries its outcome, and a retry of
the same record id gets the first outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_index_gatherer import NODES, FakeLog, StoringTransport, _h, client, prop, write
from test_ledger_ops import SETUP, xfer

from business.ledger import TransferFlags, encode_events, state_digest
from gateway.node_client import WriteItem
from node.config import ClusterConfig, ClusterMember, NodeLimits, NodeTimeouts
from node.consensus.ledger_ops import LEDGER_OPS
from node.consensus.state_machine import FEATURE_KEY
from node.coordinator import Coordinator, WriteRequest, WriteResult
from node.errors import InvalidRequest, OperationFailed
from node.replication.index_client import RecordIndexClient
from node.storage.hints import HintStore

assert len(NODES) == 5


def operation(i: int, events: bytes | None, approvals: bytes | None = None) -> WriteRequest:
    return WriteRequest(
        _h("rid", i), b"op %d" % i * 20, "shop-a", _h("fp", i), events=events, approvals=approvals
    )


class Harness:
    def __init__(self, log: FakeLog, index: RecordIndexClient, coordinator: Coordinator) -> None:
        self.log, self.index, self.coordinator = log, index, coordinator
        self.transport: StoringTransport = coordinator._transport  # type: ignore[assignment]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    members = tuple(
        ClusterMember(f"n{i}", f"peer-{i}", "/ip4/127.0.0.1/tcp/1", "x:1") for i in range(5)
    )
    log = FakeLog(feature=6)
    index = client(log)
    hints = HintStore(tmp_path / "hints", hints_max=100)
    coordinator = Coordinator(
        cluster=ClusterConfig("c", 3, 5, 4, members),
        limits=NodeLimits(),
        timeouts=NodeTimeouts(),
        transport=StoringTransport(),
        hints=hints,
        index=index,
    )
    yield Harness(log, index, coordinator)
    await coordinator.stop()
    await index.stop()
    hints.close()


def ok(result: WriteResult | BaseException) -> WriteResult:
    assert isinstance(result, WriteResult), result
    return result


def results_of(result: WriteResult) -> list[str]:
    assert result.outcome is not None
    return [e["result"] for e in result.outcome["events"]]


async def test_operations_are_refused_before_anything_is_stored_until_feature_6(
    harness: Harness,
) -> None:
    harness.log.data[FEATURE_KEY] = (5).to_bytes(4, "big")
    with pytest.raises(OperationFailed) as refused:
        await harness.coordinator.write_records([operation(1, encode_events(SETUP))])
    assert refused.value.code == "ledger_not_enabled" and refused.value.http_status == 503
    assert harness.transport.puts == 0 and harness.log.proposed == []
    # Plain records still go through, in index.put_batch entries.
    ok((await harness.coordinator.write_records([write(2)]))[0])
    assert [e.type for entries in harness.log.proposed for e in entries] == ["index.put_batch"]


@pytest.mark.parametrize(
    ("events", "approvals", "code"),
    [
        (b"\x92garbage", None, "invalid_ledger_events"),
        (b"", None, "invalid_ledger_events"),
        (encode_events([]), None, "invalid_ledger_events"),
        (encode_events([xfer(1, 1, 2, 5)] * 65), None, "invalid_ledger_events"),
        (encode_events([xfer(1, 1, 2, 5, flags=TransferFlags.LINKED)]), None,
         "linked_event_chain_open"),
        (None, b"x" * 4096, "invalid_approvals"),
    ],
)  # fmt: skip
async def test_malformed_operations_are_typed_4xx_before_anything_is_stored(
    harness: Harness, events: bytes | None, approvals: bytes | None, code: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await harness.coordinator.write_records([operation(1, events, approvals)])
    assert refused.value.code == code and refused.value.http_status == 400
    assert refused.value.param in ("ev", "ap")
    assert harness.transport.puts == 0 and harness.log.proposed == []


async def test_operations_carry_their_outcome_and_retries_get_the_first(harness: Harness) -> None:
    coordinator = harness.coordinator
    (setup,) = await coordinator.write_records([operation(100, encode_events(SETUP))])
    assert results_of(ok(setup)) == ["ok"] * len(SETUP)
    issue = operation(1, encode_events([xfer(10, 1, 2, 500)]))
    spend = operation(2, encode_events([xfer(11, 2, 3, 400)]), approvals=b"sig")
    overdraw = operation(3, encode_events([xfer(12, 3, 2, 401)]))
    got = [ok(r) for r in await coordinator.write_records([issue, spend, write(7)])]
    assert [results_of(r) for r in got[:2]] == [["ok"], ["ok"]]
    assert got[2].outcome is None  # a plain record
    assert got[0].outcome is not None and got[0].outcome["events"][0]["amount"] == "500"
    (refused,) = await coordinator.write_records([overdraw])
    assert results_of(ok(refused)) == ["exceeds_credits"]  # applied: its record stands
    # Every record went in ledger.ops entries once feature 6 is on.
    assert {e.type for entries in harness.log.proposed for e in entries} == {LEDGER_OPS}
    entries_before = len(harness.log.proposed)
    digest = state_digest(harness.log.data.items())
    # Retries: answered from the applied index and the stored outcome, nothing proposed.
    again = [ok(r) for r in await coordinator.write_records([issue, overdraw])]
    assert all(r.replayed for r in again)
    assert again[0].outcome == got[0].outcome and again[1].outcome == refused.outcome
    assert len(harness.log.proposed) == entries_before
    assert state_digest(harness.log.data.items()) == digest


async def test_racing_retries_in_one_entry_get_the_first_outcome(harness: Harness) -> None:
    await harness.coordinator.write_records([operation(100, encode_events(SETUP))])
    one = operation(1, encode_events([xfer(10, 1, 2, 5)]))
    first, second = await asyncio.gather(
        harness.coordinator.write_records([one]), harness.coordinator.write_records([one])
    )
    a, b = ok(first[0]), ok(second[0])
    assert a.outcome == b.outcome and results_of(a) == ["ok"]
    assert a.replayed or b.replayed  # one created it, the other was answered with it


async def test_a_leader_without_feature_6_refuses_forwarded_operations_and_keeps_records() -> None:
    """A follower ahead of the leader (it applied feature 6, the leader not yet) may forward
    an operation: the leader refuses it on its own (retryable) rather than drop its events;
    the plain records gathered with it still go in, in an index.put_batch entry."""
    log = FakeLog(feature=5)
    index = client(log)
    try:
        got = await index.propose_local([prop(1, events=encode_events(SETUP)), prop(2), prop(3)])
        assert [g["code"] for g in got] == ["ledger_not_enabled", "created", "created"]
        assert [e.type for entries in log.proposed for e in entries] == ["index.put_batch"]
        (only,) = await index.propose_local([prop(4, events=encode_events(SETUP))])
        assert only["code"] == "ledger_not_enabled" and len(log.proposed) == 1
    finally:
        await index.stop()


async def test_the_proposer_reaches_the_operation_body_and_a_bad_one_is_a_4xx(
    harness: Harness,
) -> None:
    """The gateway's pt/md/ur go into the ledger.ops body unchanged (the state machine checks
    them from feature 7); a malformed proposer is refused before anything is stored."""
    request = replace(
        operation(1, encode_events(SETUP)), proposer=b"p" * 16, mode=1, user_refs=(b"u" * 32,)
    )
    ok((await harness.coordinator.write_records([request]))[0])
    (entry,) = [e for entries in harness.log.proposed for e in entries]
    (body,) = entry.body["ops"]
    assert (body["pt"], body["md"], body["ur"]) == (b"p" * 16, 1, [b"u" * 32])
    puts = harness.transport.puts
    for bad in (
        {"proposer": b"p" * 15, "mode": 0},
        {"proposer": b"p" * 16, "mode": None},
        {"proposer": b"p" * 16, "mode": 2},
        {"user_refs": (b"u" * 32,)},  # references without their partner
    ):
        with pytest.raises(InvalidRequest) as refused:
            await harness.coordinator.write_records([replace(operation(2, None), **bad)])
        assert refused.value.code == "invalid_proposer" and refused.value.http_status == 400
    assert harness.transport.puts == puts  # nothing of the refused ones was stored


def test_the_gateways_write_item_carries_the_proposer_in_the_node_wire_form() -> None:
    base = {"rid": b"r" * 32, "blob": b"b", "pid": "demo-shop", "fp": b"f" * 32}
    item = WriteItem.operation(
        base, b"ev", b"ap", deadline=1.0, request_id="q", partner=b"p" * 16, mode=0,
        user_refs=[b"u" * 32],
    )  # fmt: skip
    assert item.record == {**base, "ev": b"ev", "ap": b"ap", "pt": b"p" * 16, "md": 0,
                           "ur": [b"u" * 32]}  # fmt: skip
    plain = WriteItem.operation(base, b"ev", None, deadline=1.0, request_id="q")
    assert plain.record == {**base, "ev": b"ev"}  # no proposer: refused at feature 7
