"""The simulator's payments + Market workload and its checkers, and the short-horizon seed sweep
of every workload (the cluster simulator's own tests are in tests/test_sim.py)."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from business.identity.model import CODE_PREFIX, decode_code
from business.payments.model import (
    LISTING_PREFIX,
    PAYMENT_PREFIX,
    decode_listing,
    decode_payment,
    encode_listing,
    encode_payment,
)
from business.payments.outbox import EVENT_PREFIX
from node.consensus.state_machine import Dispatcher
from node.main import FEATURE_VERSION_MAX
from node.sim import World
from node.sim.bridge_load import BAAS
from node.sim.checkers import LiveNode, SimFailure, check_deposits, check_payments
from node.sim.cli import run_seed
from node.sim.world import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent
PAYMENTS_SEED = 2  # authorises, captures, refunds, places orders, and payments lapse
# Full-horizon payments seeds that draw small clusters (as the Bridge's in tests/test_sim.py).
PAYMENTS_CI_SEEDS = (2, 4, 6, 7, 8, 10, 16, 17)
# The sweep: every workload, many seeds, a short faulty phase (then the usual convergence).
SWEEP_SEEDS = range(50)
SWEEP_SAFETY_MS = 20_000


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_a_seed_sweep_of_short_runs_passes(workload: str) -> None:
    failures = [
        f"seed {seed}: {result.failure}"
        for seed in SWEEP_SEEDS
        if not (result := run_seed(seed, workload=workload, safety_ms=SWEEP_SAFETY_MS)).ok
    ]
    assert not failures, "\n".join(failures)


def test_payments_seeds_pass_and_cover_payments_and_the_market() -> None:
    failures, totals = [], Counter[str]()
    for seed in PAYMENTS_CI_SEEDS:
        result = run_seed(seed, workload="payments")
        if not result.ok:
            failures.append(f"seed {seed}: {result.failure}")
        totals.update({k: v for k, v in result.stats.items() if k.startswith("payments_")})
    assert not failures, "\n".join(failures)
    assert totals["payments_ops_resent"] > 0, totals  # answered with the first outcome
    for event in (
        "payment.authorised",
        "payment.captured",
        "payment.refunded",
        "payment.voided",
        "payment.expired",
        "order.placed",
        "order.expired",
    ):
        assert totals[f"payments_event_{event}"] > 0, (event, totals)
    for code in (
        "ok",
        "payment_expired",
        "payment_already_captured",
        "sold_out",
        "redeem_ok",
        "credited",
        "held_in_suspense",
    ):
        assert totals[f"payments_{code}"] > 0, (code, totals)
    # a deposit sent again is one record: answered with its first outcome (checked), credited
    # once (check_deposits)
    assert sum(v for k, v in totals.items() if k.startswith("payments_deposit_again_")) > 0


@pytest.fixture(scope="module")
def payments_world() -> World:
    world = World(PAYMENTS_SEED, random.Random(PAYMENTS_SEED), workload="payments")
    result = world.run()
    assert result.ok, result.failure
    return world


def test_the_payments_world_runs_at_the_newest_feature_with_codes_and_a_market(
    payments_world: World,
) -> None:
    reference = payments_world.checker.reference
    assert Dispatcher.feature_version(reference) == FEATURE_VERSION_MAX
    workload = payments_world.payments
    assert workload is not None
    for code in workload.codes:  # issued by the user's own signature; only the hash stored
        raw = reference.get(CODE_PREFIX + code.hash)
        assert raw is not None and decode_code(raw).wallet == code.user.address
    for listing in workload.listings:
        assert reference.get(LISTING_PREFIX + listing) is not None
    check_payments(reference.kv, workload.listings)


def _first(kv: dict[bytes, bytes], prefix: bytes, wanted: object = None) -> bytes:
    return next(k for k in sorted(kv) if k.startswith(prefix) and (wanted is None or wanted(k)))


def test_the_payments_checkers_fail_on_broken_amounts_balances_stock_or_outbox(
    payments_world: World,
) -> None:
    workload = payments_world.payments
    assert workload is not None
    kv = dict(payments_world.checker.reference.kv)
    listings = workload.listings
    key = _first(kv, PAYMENT_PREFIX, lambda k: decode_payment(kv[k]).captured > 0)
    p = decode_payment(kv[key])
    over = encode_payment(replace(p, captured=p.amount + 1))
    with pytest.raises(SimFailure, match="payments-amounts"):
        check_payments({**kv, key: over}, listings)
    # A fee the record overstates: the settlement account holds more than its payments say.
    assert p.fee > 0  # a capture always pays the platform's minimum fee here
    forgot = encode_payment(replace(p, fee=p.fee - 1))
    with pytest.raises(SimFailure, match="payments-settlement"):
        check_payments({**kv, key: forgot}, listings)
    listing_key = _first(kv, LISTING_PREFIX)
    listing = decode_listing(kv[listing_key])
    more = encode_listing(replace(listing, stock=listing.stock + 1))
    with pytest.raises(SimFailure, match="payments-stock"):
        check_payments({**kv, listing_key: more}, listings)
    gap = {k: v for k, v in kv.items() if k != _first(kv, EVENT_PREFIX)}
    with pytest.raises(SimFailure, match="payments-outbox"):
        check_payments(gap, listings)


def test_the_deposits_checker_fails_on_a_deposit_credited_twice_or_not_at_all(
    payments_world: World,
) -> None:
    workload = payments_world.payments
    assert workload is not None
    kv = payments_world.checker.reference.kv
    credited = workload.expected_deposits()
    assert credited, "the seed sent no deposit"
    check_deposits(kv, credited, BAAS)
    account, amount = next(iter(credited.items()))
    with pytest.raises(SimFailure, match="deposits"):
        check_deposits(kv, {**credited, account: 2 * amount}, BAAS)  # as if credited twice
    with pytest.raises(SimFailure, match="deposits"):
        check_deposits(kv, {k: v for k, v in credited.items() if k != account}, BAAS)


def test_a_replica_with_another_outbox_or_payments_state_is_caught(payments_world: World) -> None:
    checker = payments_world.checker
    member = next(
        n for n in payments_world.nodes.values() if n.up and n.core.membership.is_member(n.id)
    )
    live = LiveNode(member.id, member.core, member.disk, member.machine)
    checker.check_converged([live])
    kv = member.machine.kv
    event = _first(kv, EVENT_PREFIX)
    saved = kv.pop(event)
    try:
        with pytest.raises(SimFailure, match="payments-outbox"):
            checker.check_converged([live])
    finally:
        kv[event] = saved
    key = _first(kv, PAYMENT_PREFIX)
    saved = kv[key]
    stamped = decode_payment(saved)
    kv[key] = encode_payment(replace(stamped, fee_min=stamped.fee_min + 1))
    try:
        with pytest.raises(SimFailure, match="payments-digest"):
            checker.check_converged([live])
    finally:
        kv[key] = saved


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "node.sim", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def test_cli_runs_every_workload_and_documents_them() -> None:
    out = _cli("--count", "2", "--workload", "all", "--safety-ms", "10000")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{2 * len(WORKLOADS)}/{2 * len(WORKLOADS)} seeds passed" in out.stdout
    helped = _cli("--help")
    assert helped.returncode == 0
    for word in ("payments", "bridge", "ledger", "all", "--safety-ms"):
        assert word in helped.stdout, word
    bug = _cli("--seed", "0", "--workload", "payments", "--bug", "skip-refund-record")
    assert bug.returncode == 1, bug.stdout + bug.stderr
    assert "--bug skip-refund-record --workload payments" in bug.stdout
