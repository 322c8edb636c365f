"""The v11 log-replay fixture: the Bridge's swap index and reserve.low events, byte for byte.

``fixtures/bridge_v11.json`` holds a committed log (features 2..8, then 11: 9 and 10 are
payments' and deposits'), demo-shop's market (points, issuance, liquidity, a 5 BAAS reserve,
a policy), a reserve threshold of 4.5 BAAS, then swaps: one that crosses the threshold (a
``reserve.low`` event), one refused (reserve exhausted: indexed too), one back out, a top-up
that clears the low flag and a swap that crosses again. Its outcomes, the state's digest, the
ledger+Bridge digest and the Merkle root must replay the same, and the replayed state holds one
index entry per swap and the reserve's second event. ``python
tests/test_log_replay_bridge_v11.py --write-fixture`` writes it once; never regenerate it to
make a test pass: a change here means old logs replay differently.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bridgeopskit import ALICE, ALICE_REF, BAAS, BAAS_UNIT, Node, market, rid, world
from identitykit import SHOP
from test_log_replay_bridge_v8 import replay, summary

from business.bridge import Direction, SetReserveThreshold, Swap, TopUpReserve
from business.bridge.model import SWAP_INDEX_PREFIX
from business.bridge.views import reserve_low
from node.consensus.state_machine import LogPosition

FIXTURE = Path(__file__).parent / "fixtures" / "bridge_v11.json"


def build(path: Path) -> Node:
    node = world(path, feature=11)
    market(node)
    signed: dict[str, Any] = {"refs": (ALICE_REF,), "signers": (ALICE,)}

    def swap(n: int, amount: int, direction: Direction = Direction.IN) -> Any:
        q = node.quote(ALICE, amount, direction)
        return node.bridge_op(Swap(rid(n), SHOP, q.ledger, q.wallet, q, q.digest()), **signed)

    node.ops(node.bridge_op(SetReserveThreshold(rid(10), SHOP, BAAS, 9 * BAAS_UNIT // 2)))
    node.ops(swap(11, 100), swap(12, 600))  # low (4 BAAS); 6 BAAS > the reserve
    node.ops(swap(13, BAAS_UNIT // 4, Direction.OUT))
    node.ops(node.bridge_op(TopUpReserve(rid(14), SHOP, BAAS, BAAS_UNIT)))  # not low any more
    node.ops(swap(15, 100))  # low again
    return node


def test_the_v11_bridge_log_fixture_replays_to_the_same_state(tmp_path: Path) -> None:
    fixture: dict[str, Any] = json.loads(FIXTURE.read_text())
    node = build(tmp_path / "built")
    built = summary(node)
    node.close()
    assert built["entries_hex"] == fixture["entries_hex"]  # the encoding
    assert built["positions"] == fixture["positions"]
    stored = [LogPosition(*p) for p in fixture["positions"]]
    payloads = [bytes.fromhex(h) for h in fixture["entries_hex"]]
    now = replay(tmp_path / "replayed", payloads, stored, feature_max=11)
    for field in ("outcomes", "state_sha256", "ledger_digest_hex", "bridge_digest_hex"):
        assert now[field] == fixture[field], field
    assert now["merkle_root_hex"] == fixture["merkle_root_hex"]
    # The verdicts and the feature-11 state themselves, so a regenerated fixture cannot
    # quietly bless a changed rule.
    swaps = [o[2] for o in fixture["outcomes"] if o[0] == "ledger.ops"][-4:]
    assert [[r[1] for r in ops] for ops in swaps] == [
        ["ok", "reserve_exhausted"],
        ["ok"],
        ["ok"],
        ["ok"],
    ]
    again = Node(tmp_path / "replayed", feature_max=11)
    try:
        index = [k for k, _ in again.items() if k.startswith(SWAP_INDEX_PREFIX)]
        assert sorted(k[-32:] for k in index) == sorted(rid(n) for n in (11, 12, 13, 15))
        low = reserve_low(again.view, SHOP, BAAS)
        assert low is not None and (low.count, low.op) == (2, rid(15))
    finally:
        again.close()


if __name__ == "__main__":  # writes the fixture once; never regenerate it to make a test pass
    if sys.argv[1:] != ["--write-fixture"]:
        raise SystemExit("usage: python tests/test_log_replay_bridge_v11.py --write-fixture")
    with tempfile.TemporaryDirectory() as tmp:
        built_node = build(Path(tmp) / "db")
        content = summary(built_node)
        built_node.close()
    FIXTURE.write_text(
        json.dumps(
            {
                "comment": "v11 log: the Bridge's swap index (br/sw/) and reserve.low events "
                "(br/rl/) from log feature 11, replayed with their outcomes, the state's digest, "
                "the ledger+Bridge digest and the Merkle root. Never edit: a change here means "
                "old logs replay differently.",
                **content,
            },
            indent=1,
        )
        + "\n"
    )
