"""The replicated state machine dispatcher and the record index, driven by data (no I/O)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from node.consensus.record_index import (
    INDEX_MOVE,
    INDEX_PUT,
    IndexEntry,
    IndexProposal,
    MoveProposal,
    PreviousLocation,
    RecordIndex,
    index_key,
)
from node.consensus.state_machine import (
    FEATURE_ENTRY,
    AppEntry,
    ApplyOutcome,
    Dispatcher,
    LogPosition,
    StateView,
    decode_app_entry,
    encode_app_entry,
)
from node.errors import InvalidRequest, OperationFailed, UnsupportedFormat

FIXTURES = Path(__file__).parent / "fixtures"
NODES = ("n1", "n2", "n3", "n4", "n5")


class DictView:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def commit(self, writes: list[tuple[bytes, bytes | None]]) -> None:
        for key, value in writes:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value


def proposal(
    rid: int, *, fp: int = 1, owner: str = "shop-a", term: int = 2, max_index: int = 100
) -> bytes:
    return encode_app_entry(
        IndexProposal(
            record_id=bytes([rid]) * 32,
            content_hash=bytes([rid + 100]) * 32,
            k=3,
            n=5,
            shard_nodes=NODES,
            membership_epoch=1,
            owner=owner,
            body_fingerprint=bytes([fp]) * 32,
            expiry_term=term,
            expiry_max_index=max_index,
        ).to_entry()
    )


def feature(version: int) -> bytes:
    return encode_app_entry(AppEntry(FEATURE_ENTRY, {"version": version}))


def at(index: int, term: int = 2) -> LogPosition:
    return LogPosition(index, term, 1_700_000_000_000 + index)


# (payload, position, expected code) applied in order, one batch per row.
SCENARIO: list[tuple[bytes, LogPosition, str]] = [
    (proposal(1), at(5), "created"),
    (proposal(1), at(6), "existing"),  # a retry or a racing gateway: the first one stands
    (proposal(1, fp=2), at(7), "conflict"),  # the same key with another body
    (proposal(1, owner="shop-b"), at(8), "conflict"),  # another partner's record id
    (proposal(2, term=1), at(9), "expired"),  # proposed under an older leader
    (proposal(3, max_index=9), at(10), "expired"),  # landed past its maximum index
    (proposal(2), at(11), "created"),  # the re-proposal under the current term
    (b"\x00not msgpack", at(12), "malformed"),
    (encode_app_entry(AppEntry("ledger.post", {})), at(13), "unknown_type"),
    (encode_app_entry(AppEntry(INDEX_PUT, {"rid": b"short"})), at(14), "malformed"),
]


def test_record_index_rules_table() -> None:
    dispatcher = Dispatcher([RecordIndex()], feature_version_max=1)
    view = DictView()
    for payload, position, expected in SCENARIO:
        (applied,), writes = dispatcher.apply_batch([(position, payload)], view)
        assert applied.outcome.code == expected, (position, applied.outcome)
        assert bool(writes) == (expected == "created")
        view.commit(writes)
    first = RecordIndex.lookup(view, bytes([1]) * 32)
    assert first is not None and (first.index, first.term) == (5, 2)
    assert first.leader_time_ms == at(5).leader_time_ms  # the leader's stamp, not a clock
    assert first.shard_nodes == NODES and first.owner == "shop-a"
    assert RecordIndex.lookup(view, bytes([3]) * 32) is None  # expired: never indexed
    assert len(view.data) == 2


def test_existing_and_conflict_return_the_first_result() -> None:
    dispatcher = Dispatcher([RecordIndex()], feature_version_max=1)
    view = DictView()
    # Two gateways race the same record into one batch: the earlier entry wins.
    applied, writes = dispatcher.apply_batch(
        [(at(20), proposal(9)), (at(21), proposal(9)), (at(22), proposal(9, fp=7))], view
    )
    assert [a.outcome.code for a in applied] == ["created", "existing", "conflict"]
    assert applied[1].outcome.detail["index"] == 20 == applied[2].outcome.detail["index"]
    assert len(writes) == 1


def test_apply_is_deterministic() -> None:
    batch = [(at(i), proposal(i % 7, fp=i % 3)) for i in range(1, 60)]
    results = []
    for _ in range(2):
        view = DictView()
        applied, writes = Dispatcher([RecordIndex()], 1).apply_batch(batch, view)
        results.append(([(a.type, a.outcome) for a in applied], writes))
    assert results[0] == results[1]


class Ledger:
    """A stand-in for a state machine introduced at feature version 2."""

    prefix = b"lg/"
    entry_types: Mapping[str, int] = {"ledger.post": 2}

    def apply(self, entry: AppEntry, position: LogPosition, view: StateView) -> ApplyOutcome:
        return ApplyOutcome("created", {}, ((b"lg/" + str(position.index).encode(), b"x"),))


def test_new_entry_types_wait_for_their_feature_version_in_the_log() -> None:
    dispatcher = Dispatcher([RecordIndex(), Ledger()], feature_version_max=2)
    view = DictView()
    post = encode_app_entry(AppEntry("ledger.post", {}))
    rows = [
        (post, "feature_not_enabled"),  # the cluster has not agreed to version 2 yet
        (feature(2), "created"),
        (post, "created"),
        (feature(1), "existing"),  # the feature version never goes down
        (post, "created"),
    ]
    for index, (payload, expected) in enumerate(rows, start=1):
        (applied,), writes = dispatcher.apply_batch([(at(index), payload)], view)
        assert applied.outcome.code == expected
        view.commit(writes)
    assert Dispatcher.feature_version(view) == 2
    # A node whose code only knows version 1 must stop, not diverge.
    old = Dispatcher([RecordIndex()], feature_version_max=1)
    with pytest.raises(OperationFailed, match="upgrade"):
        old.apply_batch([(at(9), feature(2))], DictView())


def test_dispatcher_refuses_overlapping_owners() -> None:
    class Twin(Ledger):
        entry_types: Mapping[str, int] = {INDEX_PUT: 1}

    with pytest.raises(InvalidRequest, match="two owners"):
        Dispatcher([RecordIndex(), Twin()], 1)

    class Nested(Ledger):
        prefix = b"ri/x"
        entry_types: Mapping[str, int] = {"nested": 1}

    with pytest.raises(InvalidRequest, match="overlap"):
        Dispatcher([RecordIndex(), Nested()], 1)


def test_v1_fixtures_decode_and_reencode_byte_for_byte() -> None:
    fixture: dict[str, Any] = json.loads((FIXTURES / "record_index_v1.json").read_text())
    payload = bytes.fromhex(fixture["index_put_entry_hex"])
    entry = decode_app_entry(payload)
    parsed = IndexProposal.from_body(entry.body)
    assert parsed.record_id == bytes(range(32)) and parsed.shard_nodes == NODES
    assert (parsed.expiry_term, parsed.expiry_max_index, parsed.owner) == (4, 1000, "shop-a")
    assert encode_app_entry(parsed.to_entry()) == payload
    value = bytes.fromhex(fixture["index_value_hex"])
    stored = IndexEntry.decode(bytes(range(32)), value)
    assert (stored.index, stored.term, stored.leader_time_ms) == (42, 4, 1795564938181)
    assert stored.encode() == value
    assert index_key(stored.record_id) == b"ri/" + bytes(range(32))


@pytest.mark.parametrize(
    "payload",
    [
        b"\x93\x01\x02\x03",  # a list, not a map
        b"\x83\xa1v\x02\xa1t\xa1x\xa1b\x80",  # format version 2
        b"\x83\xa1v\x01\xa1t\xa0\xa1b\x80",  # empty type
        b"\x83\xa1v\x01\xa1t\xa1x\xa1b\x01",  # body not a map
    ],
)
def test_malformed_envelopes_are_refused(payload: bytes) -> None:
    with pytest.raises(UnsupportedFormat):
        decode_app_entry(payload)


def test_corrupt_index_values_are_refused() -> None:
    good = bytes.fromhex(
        json.loads((FIXTURES / "record_index_v1.json").read_text())["index_value_hex"]
    )
    with pytest.raises(UnsupportedFormat):
        IndexEntry.decode(bytes(32), good[:-5])
    with pytest.raises(UnsupportedFormat):
        IndexEntry.decode(bytes(32), b"\x9b\x02" + good[2:])  # value version 2


def move(rid: int, shard: int, src: str, dst: str, *, ch: int | None = None) -> bytes:
    content = bytes([(rid + 100) if ch is None else ch]) * 32
    return encode_app_entry(MoveProposal(bytes([rid]) * 32, content, shard, src, dst).to_entry())


# (payload, expected code) applied in order at positions 1, 2, ... with feature version 2.
MOVE_SCENARIO: list[tuple[bytes, str]] = [
    (move(1, 2, "n3", "n6"), "feature_not_enabled"),  # index.move needs feature version 2
    (feature(2), "created"),
    (proposal(1, max_index=1000), "created"),
    (move(9, 0, "n1", "n6"), "unknown_record"),
    (move(1, 2, "n3", "n6", ch=7), "conflict"),  # another version of the record
    (move(1, 2, "n3", "n1"), "conflict"),  # n1 already holds shard 0
    (move(1, 2, "n4", "n6"), "stale"),  # shard 2 is not on n4
    (move(1, 2, "n3", "n6"), "created"),  # at position 8
    (move(1, 2, "n3", "n6"), "existing"),  # a retried proposal
    (move(1, 2, "n3", "n7"), "stale"),  # a racing move planned from the old location
    (move(1, 2, "n6", "n7"), "created"),  # moved again: the previous location is n6 now
    (encode_app_entry(AppEntry(INDEX_MOVE, {"rid": b"x"})), "malformed"),
]


def test_index_move_rules_table() -> None:
    dispatcher = Dispatcher([RecordIndex()], feature_version_max=2)
    view = DictView()
    outcomes = []
    for index, (payload, expected) in enumerate(MOVE_SCENARIO, start=1):
        (applied,), writes = dispatcher.apply_batch([(at(index), payload)], view)
        assert applied.outcome.code == expected, (index, applied.outcome)
        assert bool(writes) == (expected == "created")
        view.commit(writes)
        outcomes.append(applied.outcome)
    assert outcomes[7].detail["moved_at"] == 8 == outcomes[8].detail["moved_at"]
    entry = RecordIndex.lookup(view, bytes([1]) * 32)
    assert entry is not None
    assert entry.shard_nodes == ("n1", "n2", "n7", "n4", "n5")
    assert entry.previous == (PreviousLocation(2, "n6", 11),)  # one per shard: the latest
    assert (entry.index, entry.term) == (3, 2)  # a move never changes the record's position


def test_unmoved_values_stay_version_1_and_moved_ones_round_trip() -> None:
    dispatcher = Dispatcher([RecordIndex()], feature_version_max=2)
    view = DictView()
    for index, payload in enumerate([feature(2), proposal(4), move(4, 0, "n1", "n9")], start=1):
        _, writes = dispatcher.apply_batch([(at(index), payload)], view)
        if index == 2:
            assert writes[0][1][0] == 0x9B and writes[0][1][1] == 1  # 11 fields, version 1
        view.commit(writes)
    raw = view.data[index_key(bytes([4]) * 32)]
    moved = IndexEntry.decode(bytes([4]) * 32, raw)
    assert moved.previous == (PreviousLocation(0, "n1", 3),) and moved.encode() == raw


def test_v1_move_fixture_decodes_and_reencodes_byte_for_byte() -> None:
    fixture: dict[str, Any] = json.loads((FIXTURES / "record_index_move_v1.json").read_text())
    payload = bytes.fromhex(fixture["index_move_entry_hex"])
    entry = decode_app_entry(payload)
    assert entry.type == INDEX_MOVE
    parsed = MoveProposal.from_body(entry.body)
    assert (parsed.shard, parsed.from_node, parsed.to_node) == (2, "n3", "n6")
    assert encode_app_entry(parsed.to_entry()) == payload
    value = bytes.fromhex(fixture["moved_index_value_hex"])
    stored = IndexEntry.decode(bytes(range(32)), value)
    assert stored.shard_nodes == ("n1", "n2", "n6", "n4", "n5")
    assert stored.previous == (PreviousLocation(2, "n3", 57),)
    assert stored.encode() == value
    with pytest.raises(UnsupportedFormat):
        IndexEntry.decode(bytes(32), b"\x9b\x02" + value[2:])  # version 2 needs 12 fields
