"""index.put_batch (log feature version 4): many records' index puts in one entry, applied in
one pass with one result per record; the Merkle leaves it appends equal those of the same
records applied one entry each; the committed v4 log replays byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.consensus.record_index import (
    INDEX_PUT_BATCH,
    PUT_BATCH_BYTES_MAX,
    PUT_BATCH_RECORDS_MAX,
    BatchOutcome,
    IndexProposal,
    RecordIndex,
)
from node.consensus.state_machine import (
    ENTRY_BYTES_MAX,
    FEATURE_ENTRY,
    AppEntry,
    Applied,
    Dispatcher,
    LogPosition,
    decode_app_entry,
    encode_app_entry,
)
from node.errors import InvalidRequest, UnsupportedFormat
from node.merkle.log import MerkleLog, MerkleReader

FIXTURE = Path(__file__).parent / "fixtures" / "record_index_batch_v4.json"
NODES = ("n1", "n2", "n3", "n4", "n5")
TS = 1_700_000_000_000


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


def _h(tag: str, i: int) -> bytes:
    return hashlib.sha256(f"{tag}{i}".encode()).digest()


def prop(
    rid: int, *, fp: int = 1, owner: str = "shop-a", term: int = 2, max_index: int = 10**6
) -> IndexProposal:
    return IndexProposal(
        record_id=_h("rid", rid),
        content_hash=_h("ch", rid),
        k=3,
        n=5,
        shard_nodes=NODES,
        membership_epoch=1,
        owner=owner,
        body_fingerprint=bytes([fp]) * 32,
        expiry_term=term,
        expiry_max_index=max_index,
        shard_hashes=tuple(_h(f"s{rid}/", i) for i in range(5)),
        plaintext_commitment=_h("pc", rid),
    )


def batch(*proposals: IndexProposal) -> bytes:
    return encode_app_entry(IndexProposal.batch_entry(proposals))


def feature(version: int) -> bytes:
    return encode_app_entry(AppEntry(FEATURE_ENTRY, {"version": version}))


def at(index: int, term: int = 2, ts: int | None = None) -> LogPosition:
    return LogPosition(index, term, TS + index if ts is None else ts)


def dispatcher() -> Dispatcher:
    return Dispatcher([RecordIndex()], feature_version_max=4, followers=[MerkleLog()])


def run(
    payloads: list[tuple[LogPosition, bytes]],
    view: DictView | None = None,
    machine: Dispatcher | None = None,
) -> tuple[list[Applied], DictView]:
    view = view or DictView()
    applied, writes = (machine or dispatcher()).apply_batch(payloads, view)
    view.commit(writes)
    return applied, view


def enabled(version: int = 4) -> list[tuple[LogPosition, bytes]]:
    return [(at(i), feature(v)) for i, v in enumerate(range(2, version + 1), start=1)]


def results(applied: Applied) -> list[str]:
    outs: tuple[BatchOutcome, ...] = applied.outcome.detail["results"]
    return [r.code for r in outs]


def test_a_batch_applies_every_record_by_the_index_put_rules_in_one_pass() -> None:
    _, view = run([*enabled(), (at(4), batch(prop(1)))])  # record 1 is already indexed
    malformed = dict(prop(7).to_entry().body, rid=b"short")
    entry = AppEntry(
        INDEX_PUT_BATCH,
        {
            "puts": [
                dict(prop(2).to_entry().body),  # created
                dict(prop(2).to_entry().body),  # the same record again in the entry: existing
                dict(prop(2, fp=9).to_entry().body),  # another body for it: conflict
                dict(prop(1).to_entry().body),  # a retry of an earlier batch's record
                dict(prop(1, owner="shop-b").to_entry().body),  # another partner's id
                dict(prop(3, term=1).to_entry().body),  # proposed under an older leader
                dict(prop(4, max_index=4).to_entry().body),  # landed past its max index
                malformed,
                dict(prop(5).to_entry().body),  # created: a bad record spoils nothing else
            ]
        },
    )
    (applied,), view = run([(at(5), encode_app_entry(entry))], view)
    assert applied.outcome.code == "applied" and applied.type == INDEX_PUT_BATCH
    assert results(applied) == [
        "created",
        "existing",
        "conflict",
        "existing",
        "conflict",
        "expired",
        "expired",
        "malformed",
        "created",
    ]
    outs = applied.outcome.detail["results"]
    assert outs[1].detail["index"] == 5 == outs[2].detail["index"]  # the first one stands
    assert outs[3].detail["index"] == 4  # the earlier batch's position
    for rid, index in ((1, 4), (2, 5), (5, 5)):
        entry_now = RecordIndex.lookup(view, _h("rid", rid))
        assert entry_now is not None and (entry_now.index, entry_now.term) == (index, 2)
    assert RecordIndex.lookup(view, _h("rid", 3)) is None
    assert RecordIndex.lookup(view, _h("rid", 4)) is None
    assert MerkleReader(view).size == 3  # leaves of records 1, 2, 5: one per created record


def test_a_retried_batch_is_existing_for_every_record_and_writes_nothing() -> None:
    first = batch(*(prop(i) for i in range(10)))
    applied_all, view = run([*enabled(), (at(4), first)])
    applied = applied_all[-1]
    assert results(applied) == ["created"] * 10
    before = dict(view.data)
    (again,), writes = dispatcher().apply_batch([(at(5), first)], view)
    assert results(again) == ["existing"] * 10
    assert writes == [] and view.data == before


def test_a_batch_waits_for_feature_version_4() -> None:
    applied, view = run([*enabled(3), (at(3), batch(prop(1))), (at(4), feature(4))])
    assert applied[2].outcome.code == "feature_not_enabled"
    assert applied[3].outcome.code == "created"
    assert RecordIndex.lookup(view, _h("rid", 1)) is None
    old = Dispatcher([RecordIndex()], feature_version_max=3, followers=[MerkleLog()])
    with pytest.raises(Exception, match="upgrade"):
        old.apply_batch(enabled(4), DictView())


def test_leaves_of_a_batch_equal_those_of_the_same_records_one_per_entry() -> None:
    records = [prop(i) for i in range(37)] + [prop(3)]  # a retry inside: no second leaf
    one_by_one = [
        (at(10 + i, ts=TS), encode_app_entry(p.to_entry())) for i, p in enumerate(records)
    ]
    _, single = run([*enabled(), *one_by_one])
    chunks = [records[0:1], records[1:20], records[20:]]
    batched = [(at(10 + i, ts=TS), batch(*c)) for i, c in enumerate(chunks)]
    _, grouped = run([*enabled(), *batched])
    a, b = MerkleReader(single), MerkleReader(grouped)
    assert a.size == b.size == 37
    assert [a.leaf_at(i) for i in range(37)] == [b.leaf_at(i) for i in range(37)]
    assert a.root() == b.root()
    for rid in (0, 5, 36):
        assert a.leaf_of(_h("rid", rid)) == b.leaf_of(_h("rid", rid))
    ml = {k: v for k, v in single.data.items() if k.startswith(b"ml/")}
    assert ml == {k: v for k, v in grouped.data.items() if k.startswith(b"ml/")}


def test_malformed_batches_are_refused_whole() -> None:
    too_many = [dict(prop(1).to_entry().body)] * (PUT_BATCH_RECORDS_MAX + 1)
    for body in ({"puts": []}, {"puts": "x"}, {}, {"puts": too_many}):
        payload = msgpack.packb({"v": 1, "t": INDEX_PUT_BATCH, "b": body}, use_bin_type=True)
        if len(payload) > PUT_BATCH_BYTES_MAX:
            continue  # refused at decode, below
        applied, _ = run([*enabled(), (at(4), payload)])
        assert applied[-1].outcome.code == "malformed", body.keys()
    with pytest.raises(InvalidRequest):
        IndexProposal.batch_entry([])


def test_only_batches_may_exceed_the_ordinary_entry_bound() -> None:
    records = [prop(i) for i in range(200)]
    big = batch(*records)
    assert ENTRY_BYTES_MAX < len(big) <= PUT_BATCH_BYTES_MAX
    assert decode_app_entry(big).type == INDEX_PUT_BATCH
    other = msgpack.packb(
        {"v": 1, "t": "index.put", "b": {"pad": b"x" * ENTRY_BYTES_MAX}}, use_bin_type=True
    )
    with pytest.raises(UnsupportedFormat):
        decode_app_entry(other)
    with pytest.raises(UnsupportedFormat):
        decode_app_entry(b"\x00" * (PUT_BATCH_BYTES_MAX + 1))


@settings(max_examples=60, deadline=None)
@given(
    owner=st.text(min_size=1, max_size=128),
    nodes=st.lists(st.text(min_size=1, max_size=128), min_size=5, max_size=5, unique=True),
    big=st.integers(min_value=0, max_value=2**64 - 1),
    leaf_fields=st.booleans(),
)
def test_the_size_estimate_bounds_the_encoded_body(
    owner: str, nodes: list[str], big: int, leaf_fields: bool
) -> None:
    p = IndexProposal(
        record_id=bytes(32),
        content_hash=bytes(32),
        k=3,
        n=5,
        shard_nodes=tuple(nodes),
        membership_epoch=big,
        owner=owner,
        body_fingerprint=bytes(32),
        expiry_term=big,
        expiry_max_index=big,
        shard_hashes=(bytes(32),) * 5 if leaf_fields else (),
        plaintext_commitment=bytes(32) if leaf_fields else None,
    )
    encoded = msgpack.packb(dict(p.to_entry().body), use_bin_type=True)
    assert len(encoded) <= p.encoded_bytes_max()


# -- the committed v4 log ---------------------------------------------------------------------


def v4_log() -> list[tuple[LogPosition, bytes]]:
    """The log the fixture pins: features 2..4, an index.put, then batches (every outcome)."""
    return [
        *enabled(),
        (at(4), encode_app_entry(prop(1).to_entry())),
        (at(5), batch(prop(2), prop(3), prop(2), prop(1, fp=7), prop(4, term=1))),
        (at(6), batch(prop(3), prop(5, max_index=5), prop(6))),
    ]


def replay() -> dict[str, Any]:
    applied, view = run(v4_log())
    outcomes = []
    for a in applied:
        codes = results(a) if a.type == INDEX_PUT_BATCH else [a.outcome.code]
        outcomes.append([a.type, a.outcome.code, codes])
    return {
        "entries_hex": [payload.hex() for _, payload in v4_log()],
        "outcomes": outcomes,
        "state_sha256": hashlib.sha256(
            b"".join(len(k).to_bytes(4, "big") + k + v for k, v in sorted(view.data.items()))
        ).hexdigest(),
        "merkle_root_hex": MerkleReader(view).root().hex(),
    }


def test_the_v4_log_fixture_replays_to_the_same_state() -> None:
    fixture: dict[str, Any] = json.loads(FIXTURE.read_text())
    now = replay()
    assert now["entries_hex"] == fixture["entries_hex"]  # the encoding is unchanged
    # Replaying the committed bytes (not today's encoding) gives the committed results.
    log = [(at(i), bytes.fromhex(h)) for i, h in enumerate(fixture["entries_hex"], start=1)]
    applied, view = run(log)
    assert [a.type for a in applied] == [o[0] for o in fixture["outcomes"]]
    assert now["outcomes"] == fixture["outcomes"]
    assert now["state_sha256"] == fixture["state_sha256"]
    assert MerkleReader(view).root().hex() == fixture["merkle_root_hex"]


if __name__ == "__main__":  # writes the fixture once; never regenerate it to make a test pass
    FIXTURE.write_text(
        json.dumps(
            {
                "comment": "v4 log: index.put_batch (feature version 4) entries replayed with "
                "their outcomes, the resulting state's digest and Merkle root. Never edit: a "
                "change here means old logs replay differently.",
                **replay(),
            },
            indent=1,
        )
        + "\n"
    )
