"""Ledger encodings: stored values and the msgpack wire form round-trip, and every decoder
refuses truncations, garbage and unknown versions with a typed error (hypothesis); JSON
amounts are strings of digits only; a plyvel-backed view gives the same writes and digest as
the memory view; the benchmark's quick mode writes its JSON and balances."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import msgpack
import plyvel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledgerkit import STANDARD, T0_MS, Book, transfer

from business.ledger import (
    AMOUNT_MAX,
    Account,
    AccountBalance,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    Ledger,
    LedgerConfig,
    LedgerTotals,
    MemoryView,
    Transfer,
    TransferFlags,
    TransferResult,
    format_amount,
    parse_amount,
    state_digest,
)
from business.ledger.amounts import format_units
from business.ledger.leveldb import AccountCacheView, LevelDBView
from business.ledger.model import (
    Asset,
    AssetKind,
    decode_account,
    decode_asset,
    decode_balance,
    decode_index,
    decode_pending_status,
    decode_totals,
    decode_transfer,
    encode_account,
    encode_asset,
    encode_balance,
    encode_failure,
    encode_totals,
    encode_transfer,
)
from business.ledger.views import account_transfers
from business.ledger.wire import decode_events, encode_events, event_to_wire
from node.errors import BaasError, CorruptEntry, InvalidRequest, UnsupportedFormat

u128 = st.integers(min_value=0, max_value=AMOUNT_MAX)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
u16 = st.integers(min_value=0, max_value=2**16 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)

wire_events = st.one_of(
    st.builds(
        CreateAsset,
        ledger=u32,
        kind=st.integers(0, 255),
        scale=st.integers(0, 255),
        user_data_128=u128,
    ),
    st.builds(CreateAccount, id=u128, ledger=u32, code=u16, flags=u16, user_data_128=u128),
    st.builds(
        CreateTransfer,
        id=u128,
        debit_account_id=u128,
        credit_account_id=u128,
        amount=u128,
        ledger=u32,
        code=u16,
        flags=u16,
        pending_id=u128,
        timeout=u32,
        user_data_128=u128,
    ),
)
BYTES_MAX = 1 << 20


@settings(max_examples=200, deadline=None)
@given(st.lists(wire_events, max_size=20))
def test_wire_batches_round_trip(events: list[Event]) -> None:
    raw = encode_events(events)
    decoded = decode_events(raw, events_max=20, bytes_max=BYTES_MAX)
    assert decoded == events
    for got, want in zip(decoded, events, strict=True):
        # The decoder builds transfers through their slots: the same frozen value as the
        # checked constructor's (equal, hashed and printed alike, immutable).
        assert type(got) is type(want) and hash(got) == hash(want) and repr(got) == repr(want)
        with pytest.raises(dataclasses.FrozenInstanceError):
            got.ledger = 1  # type: ignore[misc]


@settings(max_examples=300, deadline=None)
@given(st.lists(wire_events, min_size=1, max_size=5), st.data())
def test_every_truncation_of_a_wire_batch_is_refused(events: list[Event], data: Any) -> None:
    raw = encode_events(events)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    with pytest.raises(UnsupportedFormat):
        decode_events(raw[:cut], events_max=20, bytes_max=BYTES_MAX)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_raises_anything_but_unsupported_format(raw: bytes) -> None:
    with contextlib.suppress(UnsupportedFormat):
        decode_events(raw, events_max=20, bytes_max=BYTES_MAX)


anything = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.binary(max_size=20),
        st.text(max_size=5),
    ),
    lambda inner: st.lists(inner, max_size=12),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(anything)
def test_well_formed_msgpack_of_the_wrong_shape_is_refused(obj: Any) -> None:
    for wrapped in (obj, [1, obj], [1, [obj]]):
        raw = msgpack.packb(wrapped, use_bin_type=True)
        try:
            events = decode_events(raw, events_max=20, bytes_max=BYTES_MAX)
        except UnsupportedFormat:
            continue
        # Whatever decoded is a list of real, in-range events that encode back identically.
        assert encode_events(events) == raw


def test_wire_bounds_and_versions() -> None:
    one = transfer()
    raw = encode_events([one, one, one])
    with pytest.raises(UnsupportedFormat):
        decode_events(raw, events_max=2, bytes_max=BYTES_MAX)
    with pytest.raises(UnsupportedFormat):
        decode_events(raw, events_max=5, bytes_max=len(raw) - 1)
    with pytest.raises(UnsupportedFormat, match="version"):
        decode_events(msgpack.packb([2, []]), events_max=5, bytes_max=BYTES_MAX)
    wire = event_to_wire(one)
    for bad in (
        [9, *wire[1:]],  # unknown type
        wire[:-1],  # a field short
        [*wire[:4], (1).to_bytes(17, "big"), *wire[5:]],  # a 17-byte amount
        [*wire[:5], 2**32, *wire[6:]],  # ledger beyond u32
        [*wire[:7], -1, *wire[8:]],  # negative flags
        [*wire[:7], True, *wire[8:]],  # a bool is not an integer here
        [*wire[:4], 5, *wire[5:]],  # an amount as a msgpack int
    ):
        with pytest.raises(UnsupportedFormat):
            decode_events(
                msgpack.packb([1, [bad]], use_bin_type=True), events_max=5, bytes_max=BYTES_MAX
            )
    # A 1,000-transfer batch stays compact (16-byte bins, positional fields).
    assert len(encode_events([one] * 1000)) < 120_000


@settings(max_examples=200, deadline=None)
@given(u32, u128, u32, u16, u16, u128, u64, u128, u128, u128, u128)
def test_stored_values_round_trip(
    ledger: int,
    ident: int,
    l2: int,
    code: int,
    flags: int,
    ud: int,
    ts: int,
    dp: int,
    dpo: int,
    cp: int,
    cpo: int,
) -> None:
    account = Account(ident, l2, code, flags, ud, ts, dp, dpo, cp, cpo)
    assert decode_account(ident, encode_account(account)) == account
    t = Transfer(ident, dp, dpo, cp, cpo, ud, l2, ledger, code, flags, ts)
    assert decode_transfer(ident, encode_transfer(t)) == t
    balance = AccountBalance(ts, dp, dpo, cp, cpo)
    assert decode_balance(ts, encode_balance(balance)) == balance
    totals = LedgerTotals(ledger, dp * 3, dpo, cp, cpo * 5)
    assert decode_totals(ledger, encode_totals(totals)) == totals
    asset = Asset(ledger, AssetKind.TOKEN, code % 19, ud, ts)
    assert decode_asset(ledger, encode_asset(asset)) == asset


def test_a_failure_record_round_trips() -> None:
    raw = encode_failure(TransferResult.EXCEEDS_CREDITS)
    assert decode_transfer(5, raw) == TransferResult.EXCEEDS_CREDITS
    with pytest.raises(CorruptEntry):
        decode_transfer(5, raw[:1] + b"no_such_code")


@pytest.mark.parametrize(
    ("decode", "value"),
    [
        (lambda raw: decode_account(1, raw), encode_account(Account(1, 1, 1, 0, 0, 0, 0, 0, 0, 0))),
        (
            lambda raw: decode_transfer(1, raw),
            encode_transfer(Transfer(1, 1, 2, 3, 0, 0, 0, 1, 1, 0, 9)),
        ),
        (lambda raw: decode_balance(1, raw), encode_balance(AccountBalance(1, 0, 0, 0, 0))),
        (lambda raw: decode_totals(1, raw), encode_totals(LedgerTotals(1, 0, 0, 0, 0))),
        (lambda raw: decode_asset(1, raw), encode_asset(Asset(1, AssetKind.BAAS, 18, 0, 0))),
        (decode_pending_status, b"\x01\x01"),
        (decode_index, b"\x01" + bytes(16)),
    ],
)
def test_stored_value_decoders_refuse_truncation_and_unknown_versions(
    decode: Any, value: bytes
) -> None:
    decode(value)
    for cut in range(len(value)):
        with pytest.raises((CorruptEntry, UnsupportedFormat)):
            decode(value[:cut])
    with pytest.raises(UnsupportedFormat):
        decode(b"\x02" + value[1:])
    with pytest.raises(CorruptEntry):
        decode(value + b"\x00")


def test_the_core_refuses_an_unknown_state_layout() -> None:
    book = Book.standard()
    book.view.data[b"lg/m"] = b"\x09" + book.view.data[b"lg/m"][1:]
    with pytest.raises(UnsupportedFormat):
        book.apply([transfer()])
    book = Book.standard()
    key = b"lg/a/" + (1).to_bytes(16, "big")
    book.view.data[key] = book.view.data[key][:-1]
    with pytest.raises(CorruptEntry):
        book.apply([transfer()])


# --- amounts in JSON ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "01",
        "+1",
        "-1",
        " 1",
        "1 ",
        "1.0",
        "1e3",
        "1_000",
        "٣",
        "0x10",
        str(AMOUNT_MAX + 1),
        "9" * 40,
    ],
)
def test_parse_amount_refuses_everything_but_plain_digits(text: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_amount(text)
    assert caught.value.code == "amount_invalid"


@pytest.mark.parametrize("value", [1.0, 1, True, None, b"1", [1]])
def test_parse_amount_refuses_non_strings(value: object) -> None:
    with pytest.raises(InvalidRequest):
        parse_amount(value)


@given(u128)
def test_amounts_round_trip_through_their_json_form(value: int) -> None:
    assert parse_amount(format_amount(value), allow_zero=True) == value
    assert json.loads(json.dumps({"amount": format_amount(value)}))["amount"] == str(value)


def test_amount_formatting() -> None:
    assert parse_amount("0", allow_zero=True) == 0
    assert parse_amount(str(AMOUNT_MAX)) == AMOUNT_MAX
    assert format_units(1500, 2) == "15.00"
    assert format_units(5, 18) == "0.000000000000000005"
    assert format_units(7, 0) == "7"
    for bad in (-1, AMOUNT_MAX + 1, 1.5, True):
        with pytest.raises(InvalidRequest):
            format_amount(bad)  # type: ignore[arg-type]


def test_every_error_is_one_of_ours() -> None:
    assert issubclass(UnsupportedFormat, BaasError) and issubclass(CorruptEntry, BaasError)


# --- a real LevelDB -------------------------------------------------------------------------


def _workload() -> list[tuple[int, list[Event]]]:
    pending = TransferFlags.PENDING
    return [
        (T0_MS, list(STANDARD)),
        (T0_MS, [transfer(id=60, amount=50), transfer(id=61, flags=pending, timeout=1, amount=7)]),
        (T0_MS + 1, [transfer(id=62, debit_account_id=4), transfer(id=63, credit_account_id=7)]),
        (
            T0_MS + 3000,
            [
                transfer(
                    id=64,
                    flags=TransferFlags.POST_PENDING_TRANSFER,
                    pending_id=61,
                    amount=AMOUNT_MAX,
                )
            ],
        ),
    ]


@pytest.mark.parametrize("cache", [0, 3, 1000])
def test_a_plyvel_view_gives_the_same_writes_and_digest(tmp_path: Path, cache: int) -> None:
    ledger = Ledger(LedgerConfig())
    memory = MemoryView()
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    try:
        disk = AccountCacheView(db, entries_max=cache) if cache else LevelDBView(db)
        for now_ms, events in _workload():
            mem_results, mem_writes = ledger.apply(events, now_ms, memory)
            disk_results, disk_writes = ledger.apply(events, now_ms, disk)
            assert mem_results == disk_results
            assert mem_writes == disk_writes
            memory.apply(mem_writes)
            disk.commit(disk_writes)
        with db.iterator(prefix=b"lg/") as it:
            assert state_digest(it) == state_digest(memory.data.items())
        assert (
            [t.id for t in account_transfers(disk, 7)]
            == [t.id for t in account_transfers(memory, 7)]
            == [63]
        )
        assert [t.id for t in account_transfers(disk, 1, limit=10)] == [63, 61, 60]
        if isinstance(disk, AccountCacheView):
            assert len(disk.cache) <= cache  # bounded
            for key, value in disk.cache.items():
                assert db.get(key) == value  # write-through: never a stale value
    finally:
        db.close()


def test_the_benchmark_quick_mode(tmp_path: Path) -> None:
    from tools.bench_ledger import main

    out = tmp_path / "bench.json"
    assert main(["--quick", "--out", str(out), "--dir", str(tmp_path / "db")]) == 0
    document = json.loads(out.read_text())
    assert document["tool"] == "baas-bench-ledger" and document["format"] == 2
    assert len(document["load_avg_start"]) == 3
    assert {r["phase"] for r in document["results"]} == {"apply", "ops"}
    for result in document["results"]:
        assert result["failed"] == 0
        assert result["transfers_timed"] == 5 * 200
        assert result["transfers_per_s"] > 0 and result["us_per_transfer"] > 0
        assert result["conservation"]["balanced"] is True
        assert int(result["conservation"]["debits_posted"]) > 0
        assert len(result["load_avg"]) == 3
        assert 0 < result["thread_cpu_us_per_transfer"] <= 1.5 * result["cpu_us_per_transfer"]
    for point in document["points"]:
        assert point["runs"] == 1 and point["transfers_per_s"] == point["transfers_per_s_runs"][0]
    assert {v["name"] for v in document["verdicts"]} >= {
        "apply_transfers_per_s_at_2000",
        "apply_cpu_transfers_per_s_at_2000",
        "ops_transfers_per_s_at_2000",
        "ops_all_ok_and_balanced_at_2000",
    }
