"""The scrub planner (node/dataplane/scrub_plan.py): pace, order, passes, resumption, sampling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.dataplane.scrub_plan import (
    CrossCheck,
    Read,
    ScrubRules,
    ScrubState,
    Wait,
    after_page,
    cross_check,
    next_step,
    spread,
)
from node.errors import InvalidRequest

RULES = ScrubRules(
    shards_per_s_max=100.0,
    bytes_per_s_max=1024.0 * 1024,
    pass_interval_s=3600.0,
    page_shards_max=64,
    page_bytes_max=4 * 1024 * 1024,
    cross_check_records_per_s_max=2.0,
)


def keys(first: int, count: int) -> list[bytes]:
    return [b"s" + i.to_bytes(4, "big") for i in range(first, first + count)]


def page(state: ScrubState, first: int, count: int, **kw: object) -> tuple[ScrubState, object]:
    args: dict[str, object] = {
        "started_s": 100.0,
        "now_s": 100.1,
        "keys": keys(first, count),
        "sizes": [1024] * count,
        "intact": [True] * count,
        "exhausted": False,
        "rules": RULES,
    }
    args.update(kw)
    result = after_page(state, **args)  # type: ignore[arg-type]
    return result.state, result


def test_the_pace_is_the_slower_of_the_shard_and_byte_bounds() -> None:
    # 64 small shards: the shard bound (0.64 s) holds
    state, _ = page(ScrubState(), 0, 64)
    assert state.not_before_s == pytest.approx(100.64)
    assert next_step(state, 100.5, RULES) == Wait(pytest.approx(0.14))
    assert next_step(state, 100.64, RULES) == Read(keys(0, 64)[-1], 64, 4 * 1024 * 1024)
    # 4 shards of 1 MiB: the byte bound (4 s) holds
    state, _ = page(ScrubState(), 0, 4, sizes=[1024 * 1024] * 4)
    assert state.not_before_s == pytest.approx(104.0)


def test_pages_follow_the_cursor_and_a_pass_ends_when_the_store_has_no_more() -> None:
    state, first = page(ScrubState(), 0, 64)
    assert state.cursor == keys(0, 64)[-1] and state.pass_started_s == 100.0
    assert first.pass_s is None  # type: ignore[attr-defined]
    state, _ = page(state, 64, 64, started_s=101.0, now_s=101.1)
    assert state.cursor == keys(64, 64)[-1]
    assert state.pass_started_s == 100.0  # the pass started with its first page
    with pytest.raises(InvalidRequest):  # keys before the cursor: the store went backwards
        page(state, 0, 3)
    state, last = page(state, 128, 10, started_s=102.0, now_s=102.5, exhausted=True)
    assert last.pass_s == pytest.approx(2.5)  # type: ignore[attr-defined]
    assert state.cursor == b"" and state.pass_started_s is None
    # The next pass starts pass_interval_s after this one started, from the first key.
    assert state.not_before_s == pytest.approx(100.0 + 3600.0)
    assert next_step(state, 3700.0, RULES) == Read(b"", 64, 4 * 1024 * 1024)


def test_a_pass_longer_than_its_interval_is_followed_at_the_pace_not_the_period() -> None:
    state = ScrubState(cursor=b"s\x00", pass_started_s=0.0)
    state, _ = page(state, 5, 8, started_s=5000.0, now_s=5000.1, exhausted=True)
    assert state.not_before_s == pytest.approx(5000.08)


def test_a_restarted_node_resumes_at_its_saved_cursor() -> None:
    saved = keys(300, 1)[0]
    resumed = ScrubState(cursor=saved)  # what the adapter builds from the stored cursor
    assert next_step(resumed, 0.0, RULES) == Read(saved, 64, 4 * 1024 * 1024)
    state, _ = page(resumed, 301, 64)
    assert state.cursor == keys(301, 64)[-1]


def test_cross_checks_are_a_paced_sample_spread_over_intact_entries() -> None:
    intact = [i % 4 != 0 for i in range(64)]  # every 4th entry corrupt: never sampled
    # 2/s over 3 s of credit: 6 checks, spread over the 48 intact entries
    state, result = page(
        ScrubState(credit_at_s=97.0), 0, 64, started_s=100.0, now_s=100.0, intact=intact
    )
    picked = result.cross_check  # type: ignore[attr-defined]
    assert len(picked) == 6 and all(intact[i] for i in picked)
    assert picked[0] < 8 and picked[-1] > 48  # the whole page, not its first entries
    assert state.credit == pytest.approx(0.0)
    # A long idle time saves up at most a page of credit.
    _, result = page(ScrubState(credit_at_s=0.0), 0, 64, started_s=1e6, now_s=1e6)
    assert len(result.cross_check) == 64  # type: ignore[attr-defined]
    # Credit below one check carries over.
    state, result = page(ScrubState(credit_at_s=99.8), 0, 8, now_s=100.0)
    assert result.cross_check == () and state.credit == pytest.approx(0.4)  # type: ignore[attr-defined]


@given(st.integers(0, 500), st.integers(0, 600))
def test_spread_picks_distinct_ordered_positions(total: int, count: int) -> None:
    picked = spread(total, count)
    assert len(picked) == min(total, max(count, 0))
    assert list(picked) == sorted(set(picked))
    assert all(0 <= p < total for p in picked)


def test_cross_check_verdicts() -> None:
    good, bad = b"\x01" * 32, b"\x02" * 32
    version, other = b"\x0a" * 32, b"\x0b" * 32

    def verdict(**kw: object) -> CrossCheck:
        args: dict[str, object] = {
            "content_hash": version,
            "shard_index": 1,
            "data_hash": good,
            "indexed_version": version,
            "leaf_content_hash": version,
            "leaf_shard_hashes": (bad, good, bad),
        }
        args.update(kw)
        return cross_check(**args)  # type: ignore[arg-type]

    assert verdict() is CrossCheck.AGREES
    assert verdict(data_hash=bad) is CrossCheck.DISAGREES
    assert verdict(indexed_version=None) is CrossCheck.NOT_COMPARABLE  # not indexed (yet)
    assert verdict(indexed_version=other) is CrossCheck.NOT_COMPARABLE  # a leftover version
    assert verdict(leaf_content_hash=None, leaf_shard_hashes=()) is CrossCheck.NOT_COMPARABLE
    assert verdict(shard_index=3) is CrossCheck.NOT_COMPARABLE


def test_rules_refuse_unbounded_settings() -> None:
    with pytest.raises(InvalidRequest):
        ScrubRules(0.0, 1.0, 1.0, 1, 1, 1.0)
    with pytest.raises(InvalidRequest):
        ScrubRules(1.0, 1.0, 1.0, 0, 1, 1.0)
    with pytest.raises(InvalidRequest):
        ScrubRules(1.0, 1.0, 1.0, 1, 1, -1.0)
