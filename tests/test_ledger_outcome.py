"""The operation outcome: one canonical encoding, a domain-separated digest, strict decoding."""

from __future__ import annotations

import hashlib

import pytest

from business.ledger.core import Ledger
from business.ledger.model import (
    AssetKind,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    LedgerConfig,
)
from business.ledger.outcome import (
    OUTCOME_DIGEST_TAG,
    EventOutcome,
    OperationOutcome,
    outcome_of,
)
from business.ledger.views import MemoryView
from node.errors import InvalidRequest, UnsupportedFormat


def _applied() -> OperationOutcome:
    events: list[Event] = [
        CreateAsset(ledger=7, kind=AssetKind.POINT, scale=2),
        CreateAccount(id=1, ledger=7, code=1),
        CreateAccount(id=2, ledger=7, code=1),
        CreateTransfer(
            id=10, debit_account_id=1, credit_account_id=2, amount=2**100, ledger=7, code=1
        ),
        CreateTransfer(id=11, debit_account_id=1, credit_account_id=1, amount=5, ledger=7, code=1),
    ]
    results, _ = Ledger(LedgerConfig()).apply(events, 1_700_000_000_000, MemoryView())
    return outcome_of(events, results, 1_700_000_000_000)


def test_outcome_reports_each_event_with_its_result_and_amount() -> None:
    outcome = _applied()
    kinds = [e.kind for e in outcome.events]
    assert kinds == [1, 2, 2, 3, 3]
    assert outcome.events[3].summary()["amount"] == str(2**100)
    assert outcome.events[3].result == "ok"
    assert outcome.events[4].result == "accounts_must_be_different"
    assert not outcome.succeeded
    assert [e.timestamp for e in outcome.events] == sorted({e.timestamp for e in outcome.events})


def test_round_trip_and_digest_is_domain_separated() -> None:
    outcome = _applied()
    raw = outcome.encode()
    assert OperationOutcome.decode(raw) == outcome
    assert outcome.digest() == hashlib.sha256(OUTCOME_DIGEST_TAG + raw).digest()
    assert outcome.digest() != hashlib.sha256(raw).digest()


def test_any_change_changes_the_digest() -> None:
    outcome = _applied()
    first = outcome.events[3]
    for changed in (
        EventOutcome(3, 10, 7, 1, 2, 2**100 - 1, "ok", first.timestamp),
        EventOutcome(3, 10, 7, 2, 1, 2**100, "ok", first.timestamp),
        EventOutcome(3, 10, 7, 1, 2, 2**100, "exceeds_credits", first.timestamp),
    ):
        other = OperationOutcome(
            outcome.log_time_ms, (*outcome.events[:3], changed, *outcome.events[4:])
        )
        assert other.digest() != outcome.digest()
    assert OperationOutcome(outcome.log_time_ms + 1, outcome.events).digest() != outcome.digest()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        b"\x93\x02\x00\x90",  # unknown version
        b"\x93\x01\x00\x91\x90",  # an event that is not 8 fields
        b"\x93\x01\xff\x90",  # negative fixint log time
    ],
)
def test_malformed_outcomes_are_refused_typed(raw: bytes) -> None:
    with pytest.raises(UnsupportedFormat):
        OperationOutcome.decode(raw)


def test_non_canonical_encoding_is_refused() -> None:
    outcome = OperationOutcome(5, ())
    assert OperationOutcome.decode(outcome.encode()) == outcome
    longer = b"\x93\x01\xcd\x00\x05\x90"  # 5 as uint16: same value, other bytes
    with pytest.raises(UnsupportedFormat):
        OperationOutcome.decode(longer)


def test_unknown_result_codes_and_widths_are_refused() -> None:
    with pytest.raises(InvalidRequest):
        EventOutcome(3, 1, 1, 1, 2, 1, "made_up", 1)
    with pytest.raises(InvalidRequest):
        EventOutcome(3, 2**128, 1, 1, 2, 1, "ok", 1)
    with pytest.raises(InvalidRequest):
        EventOutcome(4, 1, 1, 1, 2, 1, "ok", 1)
