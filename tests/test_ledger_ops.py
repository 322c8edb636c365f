"""ledger.ops and ledger.tick (log feature version 6): one operation = one record's index put
plus its ledger events, applied as one unit in one pass; outcomes stored and answered to
retries; refused operations apply nothing; ticks expire pending transfers; Merkle leaves for
every record created; the committed v6 log replays byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import test_index_batch as index_batch
from test_index_batch import DictView, at, batch, enabled, prop

from business.ledger import (
    AccountFlags,
    AssetKind,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    TransferFlags,
    encode_events,
    state_digest,
)
from business.ledger.outcome import OperationOutcome
from business.ledger.views import get_account, get_transfer
from node.consensus.ledger_ops import (
    LEDGER_OPS,
    LEDGER_TICK,
    OPERATION_EVENTS_MAX,
    LedgerOps,
    Operation,
    stored_outcome,
)
from node.consensus.record_index import INDEX_PUT_BATCH, BatchOutcome, RecordIndex
from node.consensus.state_machine import (
    AppEntry,
    Applied,
    Dispatcher,
    LogPosition,
    decode_app_entry,
    encode_app_entry,
)
from node.merkle.log import MerkleLog, MerkleReader

FIXTURE = Path(__file__).parent / "fixtures" / "ledger_ops_v6.json"
PTS = 1
SETUP: list[Event] = [
    CreateAsset(PTS, AssetKind.POINT, 2),
    CreateAccount(1, PTS, 1),  # the issuer: may go negative
    CreateAccount(2, PTS, 1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
    CreateAccount(3, PTS, 1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
]


def xfer(tid: int, dr: int, cr: int, amount: int, **fields: Any) -> CreateTransfer:
    return CreateTransfer(tid, dr, cr, amount, PTS, 1, **fields)


def op(
    rid: int, events: list[Event] | None = None, *, ap: bytes | None = None, **kw: Any
) -> Operation:
    return Operation(prop(rid, **kw), None if events is None else encode_events(events), ap)


def ops(*operations: Operation) -> bytes:
    return encode_app_entry(Operation.batch_entry(operations))


def tick() -> bytes:
    return encode_app_entry(AppEntry(LEDGER_TICK, {}))


def dispatcher(version: int = 6) -> Dispatcher:
    return Dispatcher([RecordIndex(), LedgerOps()], feature_version_max=version,
                      followers=[MerkleLog()])  # fmt: skip


def run(
    payloads: list[tuple[LogPosition, bytes]], view: DictView | None = None
) -> tuple[list[Applied], DictView]:
    return index_batch.run(payloads, view, dispatcher())


def codes(applied: Applied) -> list[str]:
    outs: tuple[BatchOutcome, ...] = applied.outcome.detail["results"]
    return [r.code for r in outs]


def event_results(result: BatchOutcome) -> list[str]:
    return [e.result for e in result.detail["outcome"].events]


def set_up() -> tuple[DictView, int]:
    """A log with features 2..6 and the setup operation applied; the next free index."""
    log = [*enabled(6), (at(6), ops(op(100, SETUP)))]
    applied, view = run(log)
    assert codes(applied[-1]) == ["created"]
    return view, 7


def test_an_entry_applies_index_puts_and_ledger_events_in_one_pass() -> None:
    view, i = set_up()
    entry = ops(
        op(1, [xfer(10, 1, 2, 500)]),  # issue 500 to 2
        op(2),  # a plain record
        op(3, [xfer(11, 2, 3, 200)]),  # sees the issue of the same entry
        op(4, [xfer(12, 3, 2, 999)]),  # more than 3 holds: refused by the ledger
    )
    (applied,), view = run([(at(i), entry)], view)
    assert applied.type == LEDGER_OPS and applied.outcome.code == "applied"
    assert codes(applied) == ["created"] * 4
    results = applied.outcome.detail["results"]
    assert event_results(results[0]) == ["ok"]
    assert "outcome" not in results[1].detail
    assert event_results(results[2]) == ["ok"]
    assert event_results(results[3]) == ["exceeds_credits"]
    assert results[0].detail["outcome"].events[0].amount == 500
    assert results[0].detail["outcome"].summary()["events"][0]["amount"] == "500"  # for JSON
    created = applied.outcome.detail["created"]
    outcomes = applied.outcome.detail["outcomes"]
    assert [p.record_id for p in created] == [prop(r).record_id for r in (1, 2, 3, 4)]
    assert len(outcomes) == 4 and outcomes[1] is None
    assert all(isinstance(o, OperationOutcome) for o in (outcomes[0], outcomes[2], outcomes[3]))
    assert stored_outcome(view, prop(1).record_id) == outcomes[0]
    assert stored_outcome(view, prop(2).record_id) is None
    assert RecordIndex.lookup(view, prop(2).record_id) is not None
    a2, a3 = get_account(view, 2), get_account(view, 3)  # type: ignore[arg-type]
    assert a2 is not None and a3 is not None
    assert (a2.credits_posted, a2.debits_posted, a3.credits_posted) == (500, 200, 200)
    # Every record created gets one (v1) leaf, in entry order.
    assert MerkleReader(view).size == 5


def test_a_retry_is_answered_with_the_first_outcome_and_runs_nothing() -> None:
    view, i = set_up()
    first = op(1, [xfer(10, 1, 2, 500)])
    (applied,), view = run([(at(i), ops(first))], view)
    # Later the account moved on; the retry must not run again, nor get another answer.
    (moved,), view = run([(at(i + 1), ops(op(2, [xfer(20, 2, 3, 500)])))], view)
    assert event_results(moved.outcome.detail["results"][0]) == ["ok"]
    before = {k: v for k, v in view.data.items() if k.startswith((b"ri/", b"lg/a/", b"lg/o/"))}
    (again,), view = run([(at(i + 2), ops(first))], view)
    assert codes(again) == ["existing"]
    assert (
        again.outcome.detail["results"][0].detail["outcome"]
        == (applied.outcome.detail["results"][0].detail["outcome"])
    )
    assert again.outcome.detail["created"] == () == again.outcome.detail["outcomes"]
    assert get_transfer(view, 10) is not None
    assert {k: v for k, v in view.data.items() if k in before} == before
    a2 = get_account(view, 2)
    assert a2 is not None and a2.credits_posted == 500 and a2.debits_posted == 500


def test_the_same_operation_twice_in_one_entry_is_created_then_existing_with_its_outcome() -> None:
    view, i = set_up()
    first = op(1, [xfer(10, 1, 2, 5)])
    (applied,), view = run([(at(i), ops(first, first))], view)
    assert codes(applied) == ["created", "existing"]
    one, two = applied.outcome.detail["results"]
    assert one.detail["outcome"] == two.detail["outcome"]
    a2 = get_account(view, 2)
    assert a2 is not None and a2.credits_posted == 5


def test_refused_operations_apply_nothing_and_never_crash() -> None:
    view, i = set_up()
    garbage = {**prop(1).to_entry().body, "ev": b"\x93not events"}
    too_many = encode_events([xfer(1000 + j, 1, 2, 1) for j in range(OPERATION_EVENTS_MAX + 1)])
    open_chain = op(3, [xfer(30, 1, 2, 7, flags=TransferFlags.LINKED)])
    body = {
        "ops": [
            garbage,
            {**prop(2).to_entry().body, "ev": too_many},
            open_chain.to_body(),
            {**prop(4).to_entry().body, "ev": "text"},
            {**prop(5).to_entry().body, "ap": 7},
            {**prop(6).to_entry().body, "ev": encode_events([])},
            "not a map",
            op(8, [xfer(80, 1, 2, 3)]).to_body(),  # the one good operation still applies
        ]
    }
    before = dict(view.data)
    (applied,), view = run([(at(i), encode_app_entry(AppEntry(LEDGER_OPS, body)))], view)
    assert codes(applied) == [
        "malformed", "malformed", "linked_event_chain_open", "malformed", "malformed",
        "malformed", "malformed", "created",
    ]  # fmt: skip
    for rid in (1, 2, 3, 4, 5, 6):
        assert RecordIndex.lookup(view, prop(rid).record_id) is None
    assert get_transfer(view, 30) is None and get_transfer(view, 80) is not None
    assert len(applied.outcome.detail["created"]) == 1
    assert set(before) <= set(view.data)
    # A linked chain that closes inside the operation is one unit: all or nothing.
    chain = op(9, [xfer(90, 1, 2, 4, flags=TransferFlags.LINKED), xfer(91, 3, 2, 10**9)])
    (applied,), view = run([(at(i + 1), ops(chain))], view)
    assert event_results(applied.outcome.detail["results"][0]) == [
        "linked_event_failed", "exceeds_credits"
    ]  # fmt: skip
    assert get_transfer(view, 90) is None


@pytest.mark.parametrize("body", [{}, {"ops": []}, {"ops": "x"}, {"ops": [{}] * 1025}])
def test_a_body_that_is_not_a_list_of_operations_is_malformed_whole(body: Any) -> None:
    view, i = set_up()
    entry = AppEntry(LEDGER_OPS, body)
    outcome = LedgerOps().apply(entry, at(i), view)
    assert outcome.code == "malformed" and outcome.writes == ()


def test_operations_wait_for_feature_version_6() -> None:
    log = [*enabled(5), (at(5), ops(op(1, SETUP))), (at(6), tick())]
    applied, view = run(log)
    assert [a.outcome.code for a in applied[-2:]] == ["feature_not_enabled"] * 2
    assert RecordIndex.lookup(view, prop(1).record_id) is None


def test_conflicts_and_expired_puts_run_no_events() -> None:
    view, i = set_up()
    run([(at(i), ops(op(1)))], view)
    other_fp = op(1, [xfer(10, 1, 2, 5)], fp=9)
    expired = op(2, [xfer(11, 1, 2, 5)], term=1)
    (applied,), view = run([(at(i + 1), ops(other_fp, expired))], view)
    assert codes(applied) == ["conflict", "expired"]
    assert get_transfer(view, 10) is None and get_transfer(view, 11) is None
    assert stored_outcome(view, prop(1).record_id) is None


def test_ticks_expire_pending_transfers_in_an_idle_log() -> None:
    view, i = set_up()
    pending = op(1, [xfer(10, 1, 2, 50, flags=TransferFlags.PENDING, timeout=2)])
    run([(at(i, ts=1_700_000_000_000), ops(pending))], view)
    a2 = get_account(view, 2)
    assert a2 is not None and a2.credits_pending == 50
    (early,), view = run([(at(i + 1, ts=1_700_000_001_000), tick())], view)
    assert early.type == LEDGER_TICK and early.outcome.code == "applied"
    a2 = get_account(view, 2)
    assert a2 is not None and a2.credits_pending == 50
    run([(at(i + 2, ts=1_700_000_003_000), tick())], view)
    a2 = get_account(view, 2)
    assert a2 is not None and a2.credits_pending == 0 and a2.credits_posted == 0


def test_the_split_into_ledger_calls_does_not_change_the_state() -> None:
    """Entries of 1 and of many operations give the same ledger state (and same outcomes)."""
    operations = [op(10 + j, [xfer(500 + j, 1, 2 + j % 2, 1 + j)]) for j in range(20)]
    one_view, i = set_up()
    (together,), one_view = run([(at(i), ops(*operations))], one_view)
    many_view, _ = set_up()
    apart = []
    for j, o in enumerate(operations):  # same log time, other entries
        (a,), many_view = run([(at(i + j, ts=at(i).leader_time_ms), ops(o))], many_view)
        apart.extend(a.outcome.detail["outcomes"])
    assert [o.events for o in together.outcome.detail["outcomes"]] == [o.events for o in apart]
    assert state_digest(one_view.data.items()) == state_digest(many_view.data.items())


def test_plain_operations_leave_the_same_index_and_leaves_as_index_put_batch() -> None:
    view_a, i = set_up()
    view_b, _ = set_up()
    run([(at(i), ops(op(1), op(2), op(3)))], view_a)
    run([(at(i), batch(prop(1), prop(2), prop(3)))], view_b)
    ri = {k: v for k, v in view_a.data.items() if k.startswith(b"ri/")}
    assert ri == {k: v for k, v in view_b.data.items() if k.startswith(b"ri/")}
    assert MerkleReader(view_a).root() == MerkleReader(view_b).root()


def test_approvals_are_stored_untouched_with_a_created_operation() -> None:
    view, i = set_up()
    run([(at(i), ops(op(1, [xfer(10, 1, 2, 5)], ap=b"\x01sig"), op(2, ap=b"")))], view)
    assert view.get(b"lg/ap/" + prop(1).record_id) == b"\x01sig"
    assert view.get(b"lg/ap/" + prop(2).record_id) == b""


def test_an_operation_round_trips_through_its_body() -> None:
    o = op(1, [xfer(10, 1, 2, 5)], ap=b"x")
    body = decode_app_entry(ops(o)).body["ops"][0]
    assert Operation.from_body(body) == o
    assert len(encode_app_entry(Operation.batch_entry([o]))) < 100 + o.encoded_bytes_max()


# -- the committed v6 log ---------------------------------------------------------------------


def v6_log() -> list[tuple[LogPosition, bytes]]:
    """Features 2..6, an index.put_batch, operations of every outcome, ticks (one expiring)."""
    t0 = at(7).leader_time_ms
    return [
        *enabled(6),
        (at(6), batch(prop(1))),
        (at(7), ops(op(100, SETUP), op(2))),
        (
            at(8),
            ops(
                op(3, [xfer(10, 1, 2, 500)]),
                op(4, [xfer(11, 2, 3, 100, flags=TransferFlags.PENDING, timeout=1)]),
                op(5, [xfer(12, 3, 2, 1)]),
                op(3, [xfer(10, 1, 2, 500)]),
                op(6, [xfer(13, 1, 2, 1, flags=TransferFlags.LINKED)]),
                op(7, [xfer(14, 1, 2, 5, flags=TransferFlags.LINKED), xfer(15, 2, 1, 10**6)]),
                op(2, fp=9),
                op(8, [xfer(16, 1, 2, 1)], term=1),
                op(9, ap=b"approved"),
            ),
        ),
        (at(9, ts=t0 + 500), tick()),
        (at(10, ts=t0 + 3_000), tick()),
        (at(11, ts=t0 + 3_000), ops(op(3, [xfer(10, 1, 2, 500)]))),
    ]


def replay(log: list[tuple[LogPosition, bytes]] | None = None) -> dict[str, Any]:
    applied, view = run(log or v6_log())
    outcomes = []
    for a in applied:
        if a.type in (INDEX_PUT_BATCH, LEDGER_OPS) and a.outcome.code == "applied":
            per_op = [
                [r.code, event_results(r) if "outcome" in r.detail else []]
                for r in a.outcome.detail["results"]
            ]
            outcomes.append([a.type, a.outcome.code, per_op])
        else:
            outcomes.append([a.type, a.outcome.code, []])
    return {
        "entries_hex": [payload.hex() for _, payload in v6_log()],
        "outcomes": outcomes,
        "state_sha256": hashlib.sha256(
            b"".join(len(k).to_bytes(4, "big") + k + v for k, v in sorted(view.data.items()))
        ).hexdigest(),
        "ledger_digest_hex": state_digest(view.data.items()).hex(),
        "merkle_root_hex": MerkleReader(view).root().hex(),
    }


def test_the_v6_log_fixture_replays_to_the_same_state() -> None:
    fixture: dict[str, Any] = json.loads(FIXTURE.read_text())
    assert replay()["entries_hex"] == fixture["entries_hex"]  # the encoding is unchanged
    # Replaying the committed bytes (not today's encoding) gives the committed state.
    positions = [position for position, _ in v6_log()]
    log = [(p, bytes.fromhex(h)) for p, h in zip(positions, fixture["entries_hex"], strict=True)]
    now = replay(log)
    for field in ("outcomes", "state_sha256", "ledger_digest_hex", "merkle_root_hex"):
        assert now[field] == fixture[field], field


if __name__ == "__main__":  # writes the fixture once; never regenerate it to make a test pass
    FIXTURE.write_text(
        json.dumps(
            {
                "comment": "v6 log: ledger.ops and ledger.tick (feature version 6) entries "
                "replayed with their outcomes, the resulting state's digest, the ledger digest "
                "and the Merkle root. Never edit: a change here means old logs replay "
                "differently.",
                **replay(),
            },
            indent=1,
        )
        + "\n"
    )
