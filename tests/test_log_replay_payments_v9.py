"""The v9 log-replay fixture: payments and the Market on the log, byte for byte.

``fixtures/payments_v9.json`` holds a committed log (features 2..9, two partners onboarded and
given the payments roles by a later ``partner.put``, users linked, demo-shop's points defined
and issued, then as ``ledger.ops`` payments operations: a payment authorised with the user's
signature, captured in part, refunded in two parts; one authorised and voided in the same
entry; one left to expire; a consumer code issued and redeemed (authorised and captured at
once), then refused when used twice; a listing, an order placed and fulfilled, a sold-out
order refused; a ``ledger.tick`` past the expiring payment's window (the sweep expires it);
and a ``payments.ack`` of the first events), its entries' outcomes, the state's digest, the
ledger, Bridge and payments digests and the Merkle root. The test rebuilds the log (its
encoding must not change) and replays the stored bytes on a fresh LevelDB (the outcomes and
digests must not change). ``python tests/test_log_replay_payments_v9.py --write-fixture``
writes it once; never regenerate it to make a test pass: a change here means old logs replay
differently.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bridgeopskit import ALICE, CAROL, POINTS, Node, rid
from identitykit import SHOP, T0_MS
from paymentsopskit import ALICE_PTS, CAROL_PTS, issue_code, pm_op, shop_world
from test_log_replay_bridge_v8 import replay as replay_v8
from test_log_replay_bridge_v8 import summary as summary_v8
from test_log_replay_bridge_v8 import write_fixture

from business.payments import (
    Authorise,
    Capture,
    FulfilOrder,
    PlaceOrder,
    PutListing,
    RedeemCode,
    Refund,
    Void,
)
from business.payments.outbox import PAYMENTS_ACK
from business.payments.views import payments_state_digest
from node.consensus.ledger_ops import LEDGER_TICK
from node.consensus.state_machine import AppEntry, LogPosition

FIXTURE = Path(__file__).parent / "fixtures" / "payments_v9.json"
LISTING = b"M" * 16
SECRET = b"\x5a" * 16
MINUTE_MS = 60_000


def build(path: Path) -> Node:
    node = shop_world(path)
    signed: dict[str, Any] = {"signers": (ALICE,)}
    node.ops(pm_op(100, Authorise(rid(100), SHOP, POINTS, ALICE_PTS, 300, 600), **signed))
    node.ops(
        pm_op(101, Capture(rid(101), SHOP, rid(100), 200)),
        pm_op(102, Refund(rid(102), SHOP, rid(100), 50)),
    )
    node.ops(
        pm_op(103, Refund(rid(103), SHOP, rid(100), 150)),
        pm_op(104, Authorise(rid(104), SHOP, POINTS, ALICE_PTS, 100, 600), **signed),
        pm_op(105, Void(rid(105), SHOP, rid(104))),
    )
    node.ops(pm_op(106, Authorise(rid(106), SHOP, POINTS, CAROL_PTS, 70, 60), signers=(CAROL,)))
    hashed = issue_code(node, ALICE, SECRET, limit=100)
    node.ops(
        pm_op(107, RedeemCode(rid(107), SHOP, POINTS, hashed, 80, True, 600), codes=(SECRET,)),
        pm_op(108, RedeemCode(rid(108), SHOP, POINTS, hashed, 10, True, 600), codes=(SECRET,)),
    )
    put = PutListing(rid(109), SHOP, LISTING, POINTS, 25, 2, True, "Mug", "A blue mug")
    node.ops(pm_op(109, put))
    node.ops(
        pm_op(110, PlaceOrder(rid(110), SHOP, LISTING, ALICE_PTS, 2, 600), **signed),
        pm_op(111, PlaceOrder(rid(111), SHOP, LISTING, CAROL_PTS, 1, 600), signers=(CAROL,)),
    )
    node.ops(pm_op(112, FulfilOrder(rid(112), SHOP, rid(110))))
    node.apply(AppEntry(LEDGER_TICK, {}), now_ms=T0_MS + 10 * MINUTE_MS)
    node.apply(AppEntry(PAYMENTS_ACK, {"upto": 3}))
    return node


def summary(node: Node) -> dict[str, Any]:
    out = summary_v8(node)
    for row, a in zip(out["outcomes"], node.applied, strict=True):
        if a.type in (LEDGER_TICK, PAYMENTS_ACK):
            row[3] = dict(a.outcome.detail)
    out["payments_digest_hex"] = payments_state_digest(node.items()).hex()
    return out


def replay(path: Path, payloads: list[bytes], positions: list[LogPosition]) -> dict[str, Any]:
    return replay_v8(path, payloads, positions, summarise=summary)


def test_the_v9_payments_log_fixture_replays_to_the_same_state(tmp_path: Path) -> None:
    fixture: dict[str, Any] = json.loads(FIXTURE.read_text())
    node = build(tmp_path / "built")
    built = summary(node)
    node.close()
    assert built["entries_hex"] == fixture["entries_hex"]  # the encoding
    assert built["positions"] == fixture["positions"]
    stored = [LogPosition(*p) for p in fixture["positions"]]
    now = replay(tmp_path / "replayed", [bytes.fromhex(h) for h in fixture["entries_hex"]], stored)
    fields = ("outcomes", "state_sha256", "ledger_digest_hex", "bridge_digest_hex")
    for field in (*fields, "payments_digest_hex", "merkle_root_hex"):
        assert now[field] == fixture[field], field
    # The verdicts themselves, so a regenerated fixture cannot quietly bless a changed rule.
    payments = [o for o in fixture["outcomes"] if o[0] == "ledger.ops"][3:]  # after the Bridge's
    assert [[r[1] for r in o[2]] for o in payments] == [
        ["ok"],
        ["ok", "ok"],
        ["ok", "ok", "ok"],
        ["ok"],
        ["ok", "code_used"],
        ["ok"],
        ["ok", "sold_out"],
        ["ok"],
    ]
    tick, ack = fixture["outcomes"][-2:]
    assert tick[0] == LEDGER_TICK and tick[3]["payments_expired"] == 1
    assert ack[0] == PAYMENTS_ACK and ack[3] == {"acked": 3, "first": 4}


if __name__ == "__main__":  # writes the fixture once; never regenerate it to make a test pass
    if sys.argv[1:] != ["--write-fixture"]:
        raise SystemExit("usage: python tests/test_log_replay_payments_v9.py --write-fixture")
    write_fixture(
        FIXTURE,
        build,
        summary,
        "v9 log: payments and Market requests inside ledger.ops operations (feature version "
        "9), the payments expiry sweep of a tick and an outbox acknowledgement, replayed with "
        "their outcomes, the state's digest, the ledger, Bridge and payments digests and the "
        "Merkle root. Never edit: a change here means old logs replay differently.",
    )
