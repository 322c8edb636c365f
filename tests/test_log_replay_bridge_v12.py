"""The v12 log-replay fixture: partner tokens on the log, byte for byte.

``fixtures/bridge_v12.json`` holds a committed log (features 2..12), demo-shop's point market
(points, issuance, liquidity, a 5 BAAS reserve, a policy), then at feature 12: a token
registered (its ledger allocated from the asset-index counter), the same ERC-20 address
registered again (refused ``token_address_taken``), test-mode liquidity from the faucet, the
token's policy, and swaps: points -> BAAS (so alice holds BAAS), BAAS -> token and token ->
BAAS. Its outcomes, the state's digest, the ledger+Bridge digest and the Merkle root must
replay the same. ``python tests/test_log_replay_bridge_v12.py --write-fixture`` writes it
once; never regenerate it to make a test pass: a change here means old logs replay differently.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bridgeopskit import (
    ALICE,
    ALICE_REF,
    BAAS,
    BAAS_UNIT,
    TOKEN,
    TOKEN_ADDRESS,
    TOKEN_UNIT,
    Node,
    market,
    rid,
    swap_of,
    token_market,
    wallet_account,
    world,
)
from identitykit import SHOP
from test_log_replay_bridge_v8 import replay, summary

from business.bridge import Direction, RegisterToken, tokens_of
from business.identity.ids import Mode
from node.consensus.state_machine import LogPosition

FIXTURE = Path(__file__).parent / "fixtures" / "bridge_v12.json"
FEATURE = 12


def build(path: Path) -> Node:
    node = world(path, feature=FEATURE)
    market(node)
    token_market(node)  # register (ledger allocated), liquidity from the faucet, policy
    signed: dict[str, Any] = {"refs": (ALICE_REF,), "signers": (ALICE,)}
    duplicate = RegisterToken(rid(103), SHOP, BAAS, "AGAIN", 6, TOKEN_ADDRESS)
    node.ops(node.bridge_op(duplicate))
    node.ops(node.bridge_op(swap_of(104, node.quote(ALICE, 300)), **signed))
    out = node.quote(ALICE, 2 * BAAS_UNIT, Direction.OUT, ledger=TOKEN)
    node.ops(node.bridge_op(swap_of(105, out), **signed))
    back = node.quote(ALICE, TOKEN_UNIT, Direction.IN, ledger=TOKEN)
    node.ops(node.bridge_op(swap_of(106, back), **signed))
    return node


def test_the_v12_bridge_log_fixture_replays_to_the_same_state(tmp_path: Path) -> None:
    fixture: dict[str, Any] = json.loads(FIXTURE.read_text())
    node = build(tmp_path / "built")
    built = summary(node)
    node.close()
    assert built["entries_hex"] == fixture["entries_hex"]  # the encoding
    assert built["positions"] == fixture["positions"]
    stored = [LogPosition(*p) for p in fixture["positions"]]
    payloads = [bytes.fromhex(h) for h in fixture["entries_hex"]]
    now = replay(tmp_path / "replayed", payloads, stored, feature_max=FEATURE)
    for field in ("outcomes", "state_sha256", "ledger_digest_hex", "bridge_digest_hex"):
        assert now[field] == fixture[field], field
    assert now["merkle_root_hex"] == fixture["merkle_root_hex"]
    # The verdicts and the feature-12 state themselves, so a regenerated fixture cannot
    # quietly bless a changed rule.
    ops = [o[2] for o in fixture["outcomes"] if o[0] == "ledger.ops"][-7:]
    assert [[r[1] for r in op] for op in ops] == [
        ["ok"],  # the token registered
        ["ok"],  # its liquidity
        ["ok"],  # its policy
        ["token_address_taken"],
        ["ok"],  # points -> BAAS
        ["ok"],  # BAAS -> token
        ["ok"],  # token -> BAAS
    ]
    again = Node(tmp_path / "replayed", feature_max=FEATURE)
    try:
        assert [ledger for ledger, _ in tokens_of(again.view, SHOP, Mode.TEST)] == [TOKEN]
        held = 198 * TOKEN_UNIT // 100 - TOKEN_UNIT  # 1.98 bought, 1 sold back
        assert again.balance(wallet_account(ALICE, TOKEN)) == held
        assert again.balanced()
    finally:
        again.close()


if __name__ == "__main__":  # writes the fixture once; never regenerate it to make a test pass
    if sys.argv[1:] != ["--write-fixture"]:
        raise SystemExit("usage: python tests/test_log_replay_bridge_v12.py --write-fixture")
    with tempfile.TemporaryDirectory() as tmp:
        built_node = build(Path(tmp) / "db")
        content = summary(built_node)
        built_node.close()
    FIXTURE.write_text(
        json.dumps(
            {
                "comment": "v12 log: partner tokens from log feature 12 (a RegisterToken "
                "allocates the token's ledger; br/ta/, br/tl/), a duplicate address refused, "
                "test-mode liquidity and swaps both ways, replayed with their outcomes, the "
                "state's digest, the ledger+Bridge digest and the Merkle root. Never edit: a "
                "change here means old logs replay differently.",
                **content,
            },
            indent=1,
        )
        + "\n"
    )
