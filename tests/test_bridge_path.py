"""Bridge requests through a coordinator and the record index's gatherer (log feature 8): refused
up front (nothing stored) until the log enables feature 8, when the request does not decode,
names another op id than its record, or comes with ledger events; once enabled the request
reaches the ``ledger.ops`` body as ``br`` and the answer carries the operation's outcome with
the request's own result code. The gateway's ``WriteItem.bridge_operation`` wire form."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_index_gatherer import _h
from test_ledger_path import Harness, harness, ok, operation

from business.bridge import DefinePoints, encode_request
from business.ledger import encode_events
from gateway.node_client import WriteItem
from node.consensus.state_machine import FEATURE_KEY
from node.errors import InvalidRequest, OperationFailed

assert harness is not None  # the fixture, imported for pytest
PARTNER = b"p" * 16


def bridge_request(i: int, op: bytes | None = None) -> bytes:
    return encode_request(DefinePoints(op or _h("rid", i), PARTNER, 32, "SHOP", 0))


async def test_bridge_requests_wait_for_feature_8_and_are_checked_before_storing(
    harness: Harness,
) -> None:
    request = replace(operation(1, None), bridge=bridge_request(1), proposer=PARTNER, mode=0)
    with pytest.raises(OperationFailed) as refused:
        await harness.coordinator.write_records([request])
    assert refused.value.code == "bridge_not_enabled" and refused.value.http_status == 503
    harness.log.data[FEATURE_KEY] = (8).to_bytes(4, "big")
    for bad in (
        {"bridge": b"\x93garbage"},
        {"bridge": bridge_request(1, op=_h("rid", 2))},  # another record's op id
        {"events": encode_events([])},  # events and a Bridge request together
    ):
        with pytest.raises(InvalidRequest) as malformed:
            await harness.coordinator.write_records([replace(request, **bad)])
        assert malformed.value.code == "invalid_bridge_request" and malformed.value.param == "br"
    assert harness.transport.puts == 0 and harness.log.proposed == []
    # Enabled and well formed: in the ledger.ops body; the state machine answers (the partner
    # is not onboarded on this log) with the request's result code in the outcome.
    result = ok((await harness.coordinator.write_records([request]))[0])
    (entry,) = [e for entries in harness.log.proposed for e in entries]
    (body,) = entry.body["ops"]
    assert body["br"] == request.bridge and "ev" not in body
    assert result.outcome is not None and result.outcome["result"] == "partner_not_found"


def test_the_gateways_bridge_item_carries_the_request_in_the_node_wire_form() -> None:
    base = {"rid": b"r" * 32, "blob": b"b", "pid": "demo-shop", "fp": b"f" * 32}
    item = WriteItem.bridge_operation(
        base, b"br", b"ap", deadline=1.0, request_id="q", partner=PARTNER, mode=0,
        user_refs=[b"u" * 32],
    )  # fmt: skip
    assert item.record == {**base, "br": b"br", "ap": b"ap", "pt": PARTNER, "md": 0,
                           "ur": [b"u" * 32]}  # fmt: skip
