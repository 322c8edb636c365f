"""Payments requests through a coordinator and the record index's gatherer (log feature 9), on
the Bridge's path (one validation for both, node/coordinator.py ``_validate_request``): refused
up front (nothing stored) until the log enables feature 9, when the request does not decode,
names another op id than its record, or comes with ledger events or a Bridge request; once
enabled the request reaches the ``ledger.ops`` body as ``pm``, the answer carries the
operation's outcome with the request's own result code, and a retry of the record id is
answered that first outcome. The gateway's ``WriteItem.bridge_operation(field="pm")``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from test_bridge_path import bridge_request
from test_index_gatherer import _h
from test_ledger_path import Harness, harness, ok, operation

from business.identity.ids import ASSET_INDEX_BAAS, Mode, ledger_number
from business.ledger import encode_events
from business.payments import Authorise, encode_request
from gateway.node_client import NodeClient, WriteItem
from node.consensus.state_machine import FEATURE_KEY
from node.errors import InvalidRequest, OperationFailed

assert harness is not None  # the fixture, imported for pytest
PARTNER = b"p" * 16


def payments_request(i: int, op: bytes | None = None) -> bytes:
    request = Authorise(
        op or _h("rid", i), PARTNER, ledger_number(Mode.TEST, ASSET_INDEX_BAAS), 7, 100, 60
    )
    return encode_request(request)


async def test_payments_requests_wait_for_feature_9_and_are_checked_before_storing(
    harness: Harness,
) -> None:
    request = replace(operation(1, None), payments=payments_request(1), proposer=PARTNER, mode=0)
    harness.log.data[FEATURE_KEY] = (8).to_bytes(4, "big")  # Bridge requests, not payments yet
    with pytest.raises(OperationFailed) as refused:
        await harness.coordinator.write_records([request])
    assert refused.value.code == "payments_not_enabled" and refused.value.http_status == 503
    harness.log.data[FEATURE_KEY] = (9).to_bytes(4, "big")
    bads: list[dict[str, Any]] = [
        {"payments": b"\x93garbage"},
        {"payments": payments_request(1, op=_h("rid", 2))},  # another record's op id
        {"events": encode_events([])},  # events and a payments request together
    ]
    for bad in bads:
        with pytest.raises(InvalidRequest) as malformed:
            await harness.coordinator.write_records([replace(request, **bad)])
        assert malformed.value.code == "invalid_payments_request", bad
        assert malformed.value.param == "pm", bad
    with pytest.raises(InvalidRequest) as both:  # a Bridge and a payments request together
        await harness.coordinator.write_records([replace(request, bridge=bridge_request(1))])
    assert both.value.code == "invalid_bridge_request", both.value
    assert harness.transport.puts == 0 and harness.log.proposed == []
    # Enabled and well formed: in the ledger.ops body; the state machine answers (the partner
    # is not onboarded on this log) with the request's result code in the outcome.
    first = ok((await harness.coordinator.write_records([request]))[0])
    (entry,) = [e for entries in harness.log.proposed for e in entries]
    (body,) = entry.body["ops"]
    assert body["pm"] == request.payments and "ev" not in body and "br" not in body
    assert first.outcome is not None and first.outcome["result"] == "partner_not_found"
    assert not first.replayed
    # A retry of the record id: answered from the index with the first outcome, not proposed.
    again = ok((await harness.coordinator.write_records([request]))[0])
    assert again.replayed and again.outcome == first.outcome
    assert len([e for entries in harness.log.proposed for e in entries]) == 1


def test_the_gateways_payments_item_carries_the_request_in_the_node_wire_form() -> None:
    base = {"rid": b"r" * 32, "blob": b"b", "pid": "demo-shop", "fp": b"f" * 32}
    item = WriteItem.bridge_operation(
        base, b"pm", b"ap", deadline=1.0, request_id="q", partner=PARTNER, mode=0,
        user_refs=[b"u" * 32], field="pm",
    )  # fmt: skip
    assert item.record == {**base, "pm": b"pm", "ap": b"ap", "pt": PARTNER, "md": 0,
                           "ur": [b"u" * 32]}  # fmt: skip
    with pytest.raises(InvalidRequest):
        WriteItem.bridge_operation(
            base, b"x", None, deadline=1.0, request_id="q", partner=PARTNER, mode=0, field="ev"
        )


async def test_the_node_client_takes_one_request_per_operation() -> None:
    client = NodeClient.__new__(NodeClient)  # only the shape check runs: no node is called
    base = {"rid": b"r" * 32, "blob": b"b", "pid": "demo-shop", "fp": b"f" * 32}
    for record in ({**base, "pm": b"pm", "br": b"br"}, base, {**base, "pm": "text"}):
        with pytest.raises(InvalidRequest):
            await client.write_operations([WriteItem(record, 1.0, "q")])
