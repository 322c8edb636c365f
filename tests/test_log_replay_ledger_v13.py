"""The v13 log-replay fixture: the ledger's index by scope tag and codes spent on presentation.

``fixtures/ledger_v13.json`` holds a committed log that starts at features 2..11: demo-shop and
other-shop funded by the faucet, accounts of both, a transfer, alice paid and her one-time code
issued, and a debit presenting that code refused at feature 11 (``code_limit_exceeded``: the
code stays valid then). Features 12 and 13 are enabled; then more accounts and transfers, a
debit presenting a second code refused (``code_limit_exceeded``: now the code is spent), the
same code presented again (``code_used``) and the first code used at last (``ok``: the old
refusal did not spend it). Its outcomes, the state's digest, the ledger digest (which covers
``lg/pa/``, ``lg/pt/`` and the mark ``lg/pm``) and the Merkle root must replay the same.
``python tests/test_log_replay_ledger_v13.py --write-fixture`` writes it once; never
regenerate it to make a test pass: a change here means old logs replay differently.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bridgeopskit import ALICE, ALICE_REF, BAAS, Node, rid, wallet_account, world
from identitykit import OTHER_SHOP, code_entry
from ledgerindexkit import (
    OTHER_TAG,
    RESERVE,
    TAG,
    fund,
    indexed_accounts,
    indexed_transfers,
    op,
    open_accounts,
    pay,
    results,
    upgrade_to_13,
)
from test_log_replay_bridge_v8 import replay, summary, write_fixture

from business.identity.approvals import CodeApproval, encode_approvals
from business.identity.ids import account_id, code_hash, transfer_id
from business.identity.model import CODE_PREFIX, decode_code
from business.ledger import CreateTransfer
from business.ledger.index import indexed_after
from node.consensus.state_machine import AppEntry, LogPosition

FIXTURE = Path(__file__).parent / "fixtures" / "ledger_v13.json"
ALICE_BAAS = wallet_account(ALICE, BAAS)
OLD_CODE, NEW_CODE = b"o" * 16, b"n" * 16


def _debit(n: int, amount: int, code: bytes) -> Any:
    move = CreateTransfer(transfer_id(rid(n), 0), ALICE_BAAS, RESERVE, amount, BAAS, 1)
    return op(n, [move], approvals=encode_approvals([CodeApproval(code)]))


def _issue(node: Node, code: bytes) -> None:
    entry = code_entry(ALICE, code_hash(code), ledger=BAAS, amount_limit=500)
    assert node.apply(AppEntry("code.issue", entry.to_body())).outcome.code == "ok"


def build(path: Path) -> Node:
    node = world(path, feature=11)
    fund(node)
    old = open_accounts(node, 10, 2)
    open_accounts(node, 11, 2, partner=OTHER_SHOP)
    paid = CreateTransfer(transfer_id(rid(12), 0), RESERVE, ALICE_BAAS, 1000, BAAS, 1)
    assert results(node, op(12, [paid], refs=(ALICE_REF,)), pay(13, RESERVE, old[0], 50)) == [
        ["ok", "ok"],
        ["ok"],
    ]
    _issue(node, OLD_CODE)
    assert results(node, _debit(14, 600, OLD_CODE)) == [["code_limit_exceeded"]]
    upgrade_to_13(node)
    new = open_accounts(node, 20, 2)
    assert results(node, pay(21, RESERVE, new[0], 70), pay(22, old[0], new[1], 5)) == [
        ["ok"],
        ["ok"],
    ]
    _issue(node, NEW_CODE)
    assert results(node, _debit(23, 600, NEW_CODE)) == [["code_limit_exceeded"]]
    assert results(node, _debit(24, 10, NEW_CODE), _debit(25, 10, OLD_CODE)) == [
        ["code_used"],
        ["ok"],
    ]
    return node


def test_the_v13_ledger_log_fixture_replays_to_the_same_state(tmp_path: Path) -> None:
    fixture: dict[str, Any] = json.loads(FIXTURE.read_text())
    node = build(tmp_path / "built")
    built = summary(node)
    node.close()
    assert built["entries_hex"] == fixture["entries_hex"]  # the encoding
    assert built["positions"] == fixture["positions"]
    stored = [LogPosition(*p) for p in fixture["positions"]]
    payloads = [bytes.fromhex(h) for h in fixture["entries_hex"]]
    now = replay(tmp_path / "replayed", payloads, stored, feature_max=13)
    for field in ("outcomes", "state_sha256", "ledger_digest_hex", "merkle_root_hex"):
        assert now[field] == fixture[field], field
    # The verdicts and the feature-13 state themselves, so a regenerated fixture cannot
    # quietly bless a changed rule.
    verdicts = [[r[2] for r in o[2]] for o in fixture["outcomes"] if o[0] == "ledger.ops"]
    assert verdicts[-3:] == [[["ok"], ["ok"]], [["code_limit_exceeded"]], [["code_used"], ["ok"]]]
    again = Node(tmp_path / "replayed", feature_max=13)
    try:
        after = indexed_after(again.view)
        assert after is not None and after > 0  # upgraded with objects: the walk lists
        new = sorted(account_id(rid(20), i) for i in range(2))
        assert indexed_accounts(again) == new and indexed_accounts(again, OTHER_TAG) == []
        assert indexed_transfers(again) == sorted(transfer_id(rid(n), 0) for n in (21, 22))
        spent = again.view.get(CODE_PREFIX + code_hash(NEW_CODE))
        assert spent is not None and decode_code(spent).used_by != bytes(32)
        assert TAG != OTHER_TAG
    finally:
        again.close()


if __name__ == "__main__":  # writes the fixture once; never regenerate it to make a test pass
    if sys.argv[1:] != ["--write-fixture"]:
        raise SystemExit("usage: python tests/test_log_replay_ledger_v13.py --write-fixture")
    write_fixture(
        FIXTURE,
        build,
        summary,
        "v13 log: features 2..11 then 12 and 13 on a ledger with objects: the index by scope "
        "tag (lg/pa/, lg/pt/, the mark lg/pm) of what is created from 13 on, and one-time codes "
        "spent by a refused presentation from 13 on (not before). Never edit: a change here "
        "means old logs replay differently.",
    )
