"""The v8 log-replay fixture: the Bridge on the log, byte for byte.

``fixtures/bridge_v8.json`` holds a committed log (features 2..8, two partners onboarded,
users linked, then as ``ledger.ops`` Bridge operations: points defined with a validity
period, issued, liquidity funded, the reserve topped up from the test-mode faucet, a policy
set, a quote swapped points -> BAAS and one BAAS -> points, a swap refused (reserve
exhausted), a redemption, and a ``ledger.tick`` a month later that expires the rest of the
points), its entries' outcomes, the state's digest, the ledger+Bridge digest and the Merkle
root. The test rebuilds the log (its encoding must not change) and replays the stored bytes
on a fresh LevelDB (the outcomes and digests must not change). ``python
tests/test_log_replay_bridge_v8.py --write-fixture`` writes it once; never regenerate it to
make a test pass: a change here means old logs replay differently.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridgeopskit import (
    ALICE,
    ALICE_REF,
    BAAS,
    BAAS_UNIT,
    DAY_MS,
    POINTS,
    Node,
    policy,
    rid,
    wallet_account,
    world,
)
from identitykit import SHOP, T0_MS

from business.bridge import (
    DefinePoints,
    Direction,
    FundLiquidity,
    IssuePoints,
    Quote,
    RedeemPoints,
    Swap,
    TopUpReserve,
)
from node.consensus.ledger_ops import LEDGER_TICK
from node.consensus.state_machine import AppEntry, LogPosition

FIXTURE = Path(__file__).parent / "fixtures" / "bridge_v8.json"
ALICE_PTS = wallet_account(ALICE, POINTS)


def _swap(n: int, q: Quote) -> Swap:
    return Swap(rid(n), SHOP, POINTS, q.wallet, q, q.digest())


def build(path: Path) -> Node:
    node = world(path)
    signed: dict[str, Any] = {"refs": (ALICE_REF,), "signers": (ALICE,)}
    node.ops(node.bridge_op(DefinePoints(rid(1), SHOP, POINTS, "SHOP", 2, 30)))
    node.ops(
        node.bridge_op(IssuePoints(rid(2), SHOP, POINTS, ALICE_PTS, 1000), refs=(ALICE_REF,)),
        node.bridge_op(FundLiquidity(rid(3), SHOP, POINTS, 10_000)),
        node.bridge_op(TopUpReserve(rid(4), SHOP, BAAS, 5 * BAAS_UNIT)),
    )
    node.ops(node.bridge_op(policy(5)))
    node.ops(node.bridge_op(_swap(6, node.quote(ALICE, 100)), **signed))
    node.ops(
        node.bridge_op(_swap(7, node.quote(ALICE, BAAS_UNIT // 2, Direction.OUT)), **signed),
        node.bridge_op(_swap(8, node.quote(ALICE, 600)), **signed),  # 6 BAAS > the reserve
        node.bridge_op(RedeemPoints(rid(9), SHOP, POINTS, ALICE_PTS, 50), signers=(ALICE,)),
    )
    node.apply(AppEntry(LEDGER_TICK, {}), now_ms=(T0_MS // DAY_MS + 31) * DAY_MS)
    return node


def summary(node: Node) -> dict[str, Any]:
    outcomes = []
    for a in node.applied:
        per_op = []
        for r in a.outcome.detail.get("results", ()):
            outcome = r.detail.get("outcome")
            events = [] if outcome is None else [e.result for e in outcome.events]
            per_op.append([r.code, None if outcome is None else outcome.result, events])
        expired = a.outcome.detail.get("expired") if a.type == LEDGER_TICK else None
        outcomes.append([a.type, a.outcome.code, per_op, expired])
    return {
        "positions": [[p.index, p.term, p.leader_time_ms] for p in node.positions],
        "entries_hex": [p.hex() for p in node.payloads],
        "outcomes": outcomes,
        **node.digests(),
    }


def replay(
    path: Path,
    payloads: list[bytes],
    positions: list[LogPosition],
    summarise: Callable[[Node], dict[str, Any]] | None = None,
    feature_max: int = 8,
) -> dict[str, Any]:
    """Apply the stored ``payloads`` at their ``positions`` on a fresh node; ``summarise``
    (this fixture's :func:`summary` by default; the v9 fixture passes its own) of the result."""
    node = Node(path, feature_max=feature_max)
    for position, payload in zip(positions, payloads, strict=True):
        (applied,), writes = node.dispatcher.apply_batch([(position, payload)], node.view)
        node.view.commit(writes)
        node.applied.append(applied)
        node.payloads.append(payload)
        node.positions.append(position)
    try:
        return (summarise or summary)(node)
    finally:
        node.close()


def test_the_v8_bridge_log_fixture_replays_to_the_same_state(tmp_path: Path) -> None:
    fixture: dict[str, Any] = json.loads(FIXTURE.read_text())
    node = build(tmp_path / "built")
    built = summary(node)
    node.close()
    assert built["entries_hex"] == fixture["entries_hex"]  # the encoding
    assert built["positions"] == fixture["positions"]
    stored = [LogPosition(*p) for p in fixture["positions"]]
    now = replay(tmp_path / "replayed", [bytes.fromhex(h) for h in fixture["entries_hex"]], stored)
    fields = ("outcomes", "state_sha256", "ledger_digest_hex", "bridge_digest_hex")
    for field in (*fields, "merkle_root_hex"):
        assert now[field] == fixture[field], field
    # The verdicts themselves, so a regenerated fixture cannot quietly bless a changed rule.
    verdicts = [[r for r in o[2]] for o in fixture["outcomes"] if o[0] == "ledger.ops"]
    assert [[r[1] for r in ops] for ops in verdicts] == [
        ["ok"],
        ["ok", "ok", "ok"],
        ["ok"],
        ["ok"],
        ["ok", "reserve_exhausted", "ok"],
    ]
    assert fixture["outcomes"][-1][0] == LEDGER_TICK and fixture["outcomes"][-1][3] == 1


def write_fixture(
    fixture: Path,
    builder: Callable[[Path], Node],
    summarise: Callable[[Node], dict[str, Any]],
    comment: str,
) -> None:
    """Build the log once and write its fixture (the v8 and v9 fixtures' one writer)."""
    with tempfile.TemporaryDirectory() as tmp:
        built_node = builder(Path(tmp) / "db")
        content = summarise(built_node)
        built_node.close()
    fixture.write_text(json.dumps({"comment": comment, **content}, indent=1) + "\n")


if __name__ == "__main__":  # writes the fixture once; never regenerate it to make a test pass
    if sys.argv[1:] != ["--write-fixture"]:
        raise SystemExit("usage: python tests/test_log_replay_bridge_v8.py --write-fixture")
    write_fixture(
        FIXTURE,
        build,
        summary,
        "v8 log: Bridge requests inside ledger.ops operations (feature "
        "version 8) and the point-expiry sweep of a tick, replayed with their outcomes, "
        "the state's digest, the ledger+Bridge digest and the Merkle root. Never edit: a "
        "change here means old logs replay differently.",
    )
