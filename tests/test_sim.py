"""The cluster simulator: fixed seeds pass, runs are deterministic, broken variants are caught."""
# The data plane's cores are tested on their own in tests/test_dataplane.py.

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest

from business.bridge import user_lots
from business.bridge.model import (
    DAY_MS,
    LOTS_PREFIX,
    SWAP_INDEX_PREFIX,
    decode_lots,
    decode_swap_entry,
    encode_lots,
    encode_swap_entry,
)
from business.identity.ids import Mode
from business.identity.model import PARTNER_PREFIX, link_key
from business.ledger.ops_entry import LEDGER_TICK
from node.consensus.raft import RawNode, Ready
from node.consensus.state_machine import Dispatcher, decode_app_entry
from node.consensus.types import Entry, EntryKind, Membership, Role
from node.main import FEATURE_VERSION_MAX
from node.sim import Bug, World
from node.sim.bridge_load import VALIDITY_DAYS
from node.sim.checkers import (
    LiveNode,
    SimFailure,
    check_bridge,
    check_ledgers,
    check_swap_index,
)
from node.sim.cli import describe, run_seed
from node.sim.shards import SimShardStore
from node.sim.world import BAD_CLOCK_MS, BRIDGE_CLOCK_EPOCH_MS, CLOCK_OFFSET_MAX_MS

ROOT = Path(__file__).resolve().parent.parent
CI_SEEDS = range(100)
CHUNK = 25
# A chunk runs every workload at the newest feature: about 4 min at load 8 here, past
# pytest's default 300 s once at load 13 (the timeout is there for hangs, not for speed).
CHUNK_TIMEOUT_S = 900
# The Bridge workload (identity, the newest log feature): a fixed list of seeds that draw small
# clusters (about 0.5 s each here; seeds of 8-9 node clusters take several times that), so CI stays
# short. python -m node.sim --workload bridge --seeds 0:200 runs more.
BRIDGE_CI_SEEDS = (2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 15, 16, 17, 19)
BRIDGE_SEED = 2  # crosses the day boundary with points issued before it
# Each broken variant must fail on at least one of these seeds (and a correct run on none).
BUG_SEEDS = range(40)
# The workload a broken variant shows up in (the rest: the ledger workload).
BUG_WORKLOADS = {Bug.SKIP_EXPIRY: "bridge", Bug.SKIP_REFUND_RECORD: "payments"}
# A replica that skips the expiry sweep is given away by its Bridge state (expired lots kept, a
# br/ digest that differs), its ledger state digest (the breakage account never credited; a
# member it sent its state to in a snapshot shows it too) or, when it leads, by an outcome it
# acknowledged that the reference machine computes otherwise; which checker sees it first
# depends on the seed's message order.
SKIP_EXPIRY_CHECKERS = ("[bridge-", "[ledger-outcome]", "[ledger-digest]")
# A replica that forgets refunds in its payment records shows it in its settlement account (its
# payments say more than it holds), its payments digest, or an outcome it acknowledged.
SKIP_REFUND_CHECKERS = ("[payments-", "[ledger-outcome]")


@pytest.mark.timeout(CHUNK_TIMEOUT_S)
@pytest.mark.parametrize("first", range(CI_SEEDS.start, CI_SEEDS.stop, CHUNK))
def test_fixed_seeds_pass(first: int) -> None:
    failures = []
    moved = batched = ledger_ops = 0
    for seed in range(first, min(first + CHUNK, CI_SEEDS.stop)):
        result = run_seed(seed)
        if not result.ok:
            failures.append(f"seed {seed}: {result.failure}")
        assert result.stats["acked"] > 0, f"seed {seed} acknowledged no command"
        assert result.stats["records_acked"] > 0, f"seed {seed} acknowledged no record"
        ledger_ops += result.stats.get("ledger_ops_acked", 0)
        moved += result.stats["shard_deletes"]
        batched += result.stats.get("index_batch_records_applied", 0)
    assert not failures, "\n".join(failures)
    assert batched > 0, "no record was indexed through an index.put_batch entry in this chunk"
    assert moved > 0, "no shard move ran to its end (the old copy deleted) in this chunk"
    assert ledger_ops > 0, "no ledger operation was acknowledged in this chunk"


def test_the_decodable_checker_fails_when_shards_are_gone() -> None:
    world = World(5, random.Random(5))
    assert world.run().ok
    checker = world.checker
    checker.check_records_decodable(lambda node_id: world.nodes[node_id].shards)
    record_id = next(iter(checker.records_acked))
    for node in world.nodes.values():  # every holder loses its shards of one record
        for key in [k for k in node.shards.live if k[0] == record_id]:
            del node.shards.live[key]
    with pytest.raises(SimFailure, match="decodable"):
        checker.check_records_decodable(lambda node_id: world.nodes[node_id].shards)


def test_a_fast_clock_leader_stamps_within_the_tolerance_of_the_quorum_clocks() -> None:
    seed = 3  # n2's clock is an hour fast, and n2 leads for a while
    world = World(seed, random.Random(seed))
    assert world.bad_clock == ("n2", BAD_CLOCK_MS)
    result = world.run()
    assert result.ok, result.failure
    assert "n2" in world.checker.leaders.values()
    # Stamps ran ahead of the quorum's real clocks by the honest skew at most, not an hour.
    assert 0 < result.stats["log_time_ahead_ms_max"] <= CLOCK_OFFSET_MAX_MS
    unbounded = run_seed(seed, Bug.UNBOUNDED_STAMPS)
    assert unbounded.failure is not None and unbounded.failure.startswith("[log-time]")


def test_idle_leaders_tick_and_log_time_advances() -> None:
    """The simulated log enables the ledger (feature 6 and up): idle leaders append tick entries and
    log time moves with them."""
    world = World(2, random.Random(2))
    result = world.run()
    assert result.ok, result.failure
    assert result.stats.get("log_ticks", 0) > 0
    ticks = [
        e
        for _, e in sorted(world.checker.committed.items())
        if e.kind is EntryKind.NORMAL
        and e.payload[:1] == b"\x83"
        and decode_app_entry(e.payload).type == LEDGER_TICK
    ]
    stamps = [e.leader_time_ms for e in ticks]
    assert len(stamps) >= 2 and stamps == sorted(stamps) and stamps[-1] > stamps[0]


def test_the_log_time_checker_fails_when_stamps_run_backwards() -> None:
    checker = World(5, random.Random(5)).checker
    entry = Entry(7, 2, EntryKind.NORMAL, b"x", 5_000)
    checker.committed[6] = replace(entry, index=6, leader_time_ms=6_000)
    with pytest.raises(SimFailure, match="log-time"):
        checker.on_ready("n0", _committing(entry), cast(RawNode, None))


def _committing(entry: Entry) -> Ready:
    return Ready(
        seq=1,
        hard_state=None,
        entries=(),
        snapshot=None,
        messages=(),
        committed_entries=(entry,),
        read_states=(),
        role=Role.FOLLOWER,
        leader_id=None,
        term=entry.term,
        membership=Membership.of(["n0"]),
    )


def test_the_ledger_checkers_fail_on_a_changed_outcome_or_unbalanced_state() -> None:
    world = World(5, random.Random(5))
    assert world.run().ok
    checker = world.checker
    kv = checker.reference.kv
    check_ledgers(kv)
    record_id, first = next(iter(checker.outcomes_acked.items()))
    changed = {**first, "log_time_ms": first["log_time_ms"] + 1}
    with pytest.raises(SimFailure, match="ledger-outcome"):
        checker._check_outcome(record_id, changed)
    with pytest.raises(SimFailure, match="ledger-outcome"):
        checker._check_outcome(record_id, None)  # an operation answered as a plain record
    account_key = next(k for k in sorted(kv) if k.startswith(b"lg/a/"))
    raw = bytearray(kv[account_key])
    raw[-1] ^= 1  # one unit of credits_posted appears from nowhere
    with pytest.raises(SimFailure, match="ledger-"):
        check_ledgers({**kv, account_key: bytes(raw)})


def test_same_seed_same_digest_different_seeds_differ() -> None:
    first, again, other = run_seed(3), run_seed(3), run_seed(4)
    assert first.digest == again.digest
    assert (first.events, first.sim_ms, first.stats) == (again.events, again.sim_ms, again.stats)
    assert len({run_seed(s).digest for s in range(10)}) == 10
    assert other.digest != first.digest


@pytest.mark.parametrize("bug", [b for b in Bug if b is not Bug.NONE], ids=lambda b: b.value)
def test_broken_variant_is_caught(bug: Bug) -> None:
    workload = BUG_WORKLOADS.get(bug, "ledger")
    for seed in BUG_SEEDS:
        result = run_seed(seed, bug, workload=workload)
        if not result.ok:
            assert result.failure is not None and result.failure.startswith("[")
            report = describe(result)
            assert f"seed {seed}: FAILED" in report
            command = f"reproduce with: python -m node.sim --seed {seed} --bug {bug.value}"
            assert command + ("" if workload == "ledger" else f" --workload {workload}") in report
            if bug is Bug.SKIP_EXPIRY:
                assert result.failure.startswith(SKIP_EXPIRY_CHECKERS), result.failure
            if bug is Bug.SKIP_REFUND_RECORD:
                assert result.failure.startswith(SKIP_REFUND_CHECKERS), result.failure
            break
    else:
        pytest.fail(f"--bug {bug.value} passed every seed of {BUG_SEEDS}")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "node.sim", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def test_cli_runs_one_seed_and_a_count() -> None:
    one = _cli("--seed", "7")
    assert one.returncode == 0, one.stdout + one.stderr
    assert "seed 7: ok" in one.stdout
    five = _cli("--count", "5")
    assert five.returncode == 0, five.stdout + five.stderr
    assert "5/5 seeds passed" in five.stdout


def test_cli_failure_names_the_seed_and_exits_non_zero() -> None:
    out = _cli("--seed", "0", "--bug", "ack-before-commit")
    assert out.returncode == 1
    assert "seed 0: FAILED" in out.stdout
    assert "reproduce with: python -m node.sim --seed 0 --bug ack-before-commit" in out.stdout
    bridge = _cli("--seed", str(BRIDGE_SEED), "--workload", "bridge", "--bug", "skip-expiry")
    assert bridge.returncode == 1, bridge.stdout + bridge.stderr
    failed = f"seed {BRIDGE_SEED}: FAILED "
    assert any(failed + checker in bridge.stdout for checker in SKIP_EXPIRY_CHECKERS), bridge.stdout
    assert "--bug skip-expiry --workload bridge" in bridge.stdout


def test_shard_store_loses_unflushed_puts_and_never_serves_corrupt_or_newer_deleted() -> None:
    store = SimShardStore()
    key = (b"r" * 32, 1)
    store.put(key, b"h" * 32, 10, b"shard", placed_at=0)
    assert store.flush() == [key]
    store.put((b"s" * 32, 0), b"h" * 32, 10, b"lost", placed_at=0)
    store.crash(keep=0)
    assert store.get((b"s" * 32, 0)) is None and store.get(key) is not None
    # A late delete of an old location does not remove a copy a later move placed there.
    store.put(key, b"h" * 32, 10, b"shard", placed_at=50)
    assert not store.delete(key, before=40) and store.get(key) is not None
    assert store.delete(key, before=60) and store.get(key) is None
    store.put(key, b"h" * 32, 10, b"shard", placed_at=0)
    store.flush()
    store.corrupt(0)
    assert store.get(key) is None and store.corrupt_reads == 1


def test_bridge_seeds_pass_and_cover_the_market() -> None:
    """Every Bridge seed passes its checkers on every member; together they cover expiry
    across the day boundary, swaps, refusals and retries."""
    failures, totals = [], Counter[str]()
    for seed in BRIDGE_CI_SEEDS:
        result = run_seed(seed, workload="bridge")
        if not result.ok:
            failures.append(f"seed {seed}: {result.failure}")
        assert result.stats["ledger_ops_acked"] > 0, f"seed {seed} acknowledged no operation"
        totals.update({k: v for k, v in result.stats.items() if k.startswith("bridge_")})
    assert not failures, "\n".join(failures)
    assert totals["bridge_points_expired"] > 0, totals
    assert totals["bridge_ops_resent"] > 0, totals  # answered with the first outcome (checked)
    codes = ("ok", "reserve_exhausted", "quote_expired", "user_window_limit", "insufficient_funds")
    for code in codes:
        assert totals[f"bridge_{code}"] > 0, (code, totals)


def test_the_bridge_workload_replays_from_its_seed() -> None:
    """Keys, EIP-712 signatures (RFC 6979 nonces) and quotes all derive from the seed."""
    first, again = (
        run_seed(BRIDGE_SEED, workload="bridge"),
        run_seed(BRIDGE_SEED, workload="bridge"),
    )
    assert first.ok and first.digest == again.digest and first.stats == again.stats
    assert first.digest != run_seed(BRIDGE_SEED).digest  # the ledger workload's run differs


@pytest.fixture(scope="module")
def bridge_world() -> World:
    world = World(BRIDGE_SEED, random.Random(BRIDGE_SEED), workload="bridge")
    result = world.run()
    assert result.ok, result.failure
    assert result.stats["bridge_points_expired"] > 0  # this seed crosses the day boundary
    return world


def test_the_bridge_world_runs_identity_at_the_newest_feature(bridge_world: World) -> None:
    reference = bridge_world.checker.reference
    assert Dispatcher.feature_version(reference) == FEATURE_VERSION_MAX
    workload = bridge_world.bridge
    assert workload is not None
    for partner in workload.partners:  # onboarded, every user linked by their own signature
        assert reference.get(PARTNER_PREFIX + partner.id) is not None
        for user in partner.users:
            assert reference.get(link_key(partner.id, Mode.TEST, user.ref)) is not None
    # the log clock crossed a day boundary, and the expiry sweep ran after it
    assert reference.swept_ms // DAY_MS > BRIDGE_CLOCK_EPOCH_MS // DAY_MS
    a = workload.partners[0]
    assert a.validity_days == VALIDITY_DAYS
    assert all(
        lot.expiry_day > reference.swept_ms // DAY_MS
        for user in a.users
        for lot in user_lots(reference, a.points(reference), user.account(a.points(reference)))
    )


def test_the_bridge_checkers_fail_on_expired_lots_bad_lots_or_a_differing_replica(
    bridge_world: World,
) -> None:
    checker = bridge_world.checker
    kv = dict(checker.reference.kv)
    partners = [p.id for p in bridge_world.bridge.partners] if bridge_world.bridge else []
    today = checker.reference.swept_ms // DAY_MS
    check_bridge(kv, partners, today)
    key = next(k for k in sorted(kv) if k.startswith(LOTS_PREFIX))
    lots = decode_lots(kv[key])
    expired = [replace(lots[0], expiry_day=today), *lots[1:]]
    with pytest.raises(SimFailure, match="bridge-expiry"):
        check_bridge({**kv, key: encode_lots(expired)}, partners, today)
    more = [replace(lots[0], amount=lots[0].amount + 1), *lots[1:]]
    with pytest.raises(SimFailure, match="bridge-lots"):
        check_bridge({**kv, key: encode_lots(more)}, partners, today)
    member = next(
        n for n in bridge_world.nodes.values() if n.up and n.core.membership.is_member(n.id)
    )
    live = LiveNode(member.id, member.core, member.disk, member.machine)
    saved = member.machine.kv[key]
    member.machine.kv[key] = encode_lots(more)
    try:
        with pytest.raises(SimFailure, match="bridge-digest"):
            checker.check_converged([live])
    finally:
        member.machine.kv[key] = saved


def test_every_swap_is_listed_once_and_the_swap_index_checker_fails_otherwise(
    bridge_world: World,
) -> None:
    """The swap index (feature 11) lists every created swap once, as the ledger moved it; a
    missing, doubled, altered or invented entry is caught."""
    workload = bridge_world.bridge
    assert workload is not None
    kv = dict(bridge_world.checker.reference.kv)
    check_swap_index(kv, workload.swaps)
    listed = sorted(k for k in kv if k.startswith(SWAP_INDEX_PREFIX))
    assert len(listed) == len(set(workload.swaps)) > 0
    ok = next(k for k in listed if decode_swap_entry(kv[k]).result == "ok")
    failed = next(k for k in listed if decode_swap_entry(kv[k]).result != "ok")
    entry = decode_swap_entry(kv[ok])
    missing = {k: v for k, v in kv.items() if k != ok}
    later = ok[:-40] + (int.from_bytes(ok[-40:-32], "big") + 1).to_bytes(8, "big") + ok[-32:]
    altered = encode_swap_entry(replace(entry, amount_in=entry.amount_in + 1))
    relabelled = encode_swap_entry(replace(decode_swap_entry(kv[failed]), result="ok"))
    invented = ok[:-32] + bytes(32)
    for broken in (
        missing,
        {**kv, later: kv[ok]},
        {**kv, ok: altered},
        {**kv, failed: relabelled},
        {**kv, invented: kv[ok]},
    ):
        with pytest.raises(SimFailure, match="bridge-swap-index"):
            check_swap_index(broken, workload.swaps)
