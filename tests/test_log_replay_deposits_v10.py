"""The v10 log-replay fixture: vault deposits credited through the log, byte for byte.

``fixtures/deposits_v10.json`` holds a committed log (features 2..10 -- 9 is enabled with no
entry of its own here --, two partners onboarded, users linked, then as ``ledger.ops`` deposit
credits: a deposit to alice's linked wallet, the same deposit again (one credit: ``existing``),
and a deposit to an unknown wallet held in suspense), its entries' outcomes, the state's
digest, the ledger digest and the Merkle root. The test rebuilds the log (its encoding must
not change) and replays the stored bytes on a fresh LevelDB (the outcomes and digests must not
change). ``python tests/test_log_replay_deposits_v10.py --write-fixture`` writes it once;
never regenerate it to make a test pass: a change here means old logs replay differently.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bridgeopskit import ALICE, BAAS, Node, world
from depositkit import UNIT, credit_op, deposit_body
from identitykit import address, user
from test_log_replay_bridge_v8 import replay, summary

from node.consensus.state_machine import LogPosition

FIXTURE = Path(__file__).parent / "fixtures" / "deposits_v10.json"


def build(path: Path) -> Node:
    node = world(path, feature=10)
    credit = deposit_body(1, address(ALICE), 5 * UNIT, ledger=BAAS, block=12)
    node.ops(credit_op(credit))
    node.ops(credit_op(credit))  # proposed again (a retry, another node): one credit
    unknown = deposit_body(2, address(user("stranger")), 2 * UNIT, ledger=BAAS, block=13)
    node.ops(credit_op(unknown))
    return node


def test_the_v10_deposit_log_fixture_replays_to_the_same_state(tmp_path: Path) -> None:
    fixture: dict[str, Any] = json.loads(FIXTURE.read_text())
    node = build(tmp_path / "built")
    built = summary(node)
    node.close()
    assert built["entries_hex"] == fixture["entries_hex"]  # the encoding
    assert built["positions"] == fixture["positions"]
    stored = [LogPosition(*p) for p in fixture["positions"]]
    payloads = [bytes.fromhex(h) for h in fixture["entries_hex"]]
    now = replay(tmp_path / "replayed", payloads, stored, feature_max=10)
    for field in ("outcomes", "state_sha256", "ledger_digest_hex", "merkle_root_hex"):
        assert now[field] == fixture[field], field
    # The verdicts themselves, so a regenerated fixture cannot quietly bless a changed rule.
    ops = [o[2] for o in fixture["outcomes"] if o[0] == "ledger.ops"]
    assert [[r[:2] for r in entry] for entry in ops] == [
        [["created", "credited"]],
        [["existing", "credited"]],
        [["created", "held_in_suspense"]],
    ]


if __name__ == "__main__":  # writes the fixture once; never regenerate it to make a test pass
    if sys.argv[1:] != ["--write-fixture"]:
        raise SystemExit("usage: python tests/test_log_replay_deposits_v10.py --write-fixture")
    with tempfile.TemporaryDirectory() as tmp:
        built_node = build(Path(tmp) / "db")
        content = summary(built_node)
        built_node.close()
    FIXTURE.write_text(
        json.dumps(
            {
                "comment": "v10 log: vault deposit credits inside ledger.ops operations (feature "
                "version 10): a credit, the same deposit again, a deposit held in suspense; "
                "replayed with their outcomes, the state's digest, the ledger digest and the "
                "Merkle root. Never edit: a change here means old logs replay differently.",
                **content,
            },
            indent=1,
        )
        + "\n"
    )
