"""Log feature 13's index by scope tag on a real LevelDB (business/ledger/index.py): one key
per account and transfer an entry creates with a tag, whoever creates it, nothing for updates
or sticky failures; the mark says whether the index is complete; a ledger upgraded from
feature 11 with objects in it keeps indexing only what is new (and lists by the walk)."""

from __future__ import annotations

from pathlib import Path

from bridgeopskit import Node, market, rid, world
from identitykit import OTHER_SHOP
from ledgerindexkit import (
    OTHER_TAG,
    RESERVE,
    TAG,
    fund,
    indexed_accounts,
    indexed_transfers,
    open_accounts,
    pay,
    results,
    upgrade_to_13,
)

from business.identity.ids import transfer_id
from business.ledger import state_digest
from business.ledger.index import (
    INDEX_MARK_KEY,
    index_complete,
    indexed_after,
    tag_index_writes,
)
from business.ledger.leveldb import LevelDBView
from node.consensus.ledger_ops import LEDGER_TICK
from node.consensus.state_machine import AppEntry


def test_every_created_tagged_account_and_transfer_is_indexed_once(tmp_path: Path) -> None:
    node = world(tmp_path / "db", feature=13)
    try:
        assert indexed_after(node.view) is None  # nothing applied at feature 13 yet
        fund(node)
        assert index_complete(node.view) and indexed_after(node.view) == 0
        mine = open_accounts(node, 10, 3)
        theirs = open_accounts(node, 11, 2, partner=OTHER_SHOP)
        assert indexed_accounts(node) == sorted(mine)
        assert indexed_accounts(node, OTHER_TAG) == sorted(theirs)
        # transfers: two ok, one refused by the ledger (exceeds_credits: a sticky failure
        # under its id, no transfer), one in the same entry as another partner's
        moves = results(
            node,
            pay(20, RESERVE, mine[0], 100),
            pay(21, mine[0], mine[1], 40),
            pay(22, mine[1], mine[2], 10**6),
        )
        assert moves == [["ok"], ["ok"], ["exceeds_credits"]]
        ok = sorted(transfer_id(rid(n), 0) for n in (20, 21))
        assert indexed_transfers(node) == ok
        assert indexed_transfers(node, OTHER_TAG) == []
        # updated accounts (balances) add no index key; the new transfer adds one
        before = _index_keys(node)
        assert results(node, pay(23, mine[0], mine[2], 1)) == [["ok"]]
        assert _index_keys(node) - before == {
            b"lg/pt/" + TAG.to_bytes(16, "big") + transfer_id(rid(23), 0).to_bytes(16, "big")
        }
        # an untagged transfer is not indexed under any tag
        assert results(node, pay(24, mine[2], mine[0], 1, tag=0)) == [["ok"]]
        assert transfer_id(rid(24), 0) not in indexed_transfers(node)
        assert indexed_transfers(node) == sorted([*ok, transfer_id(rid(23), 0)])
    finally:
        node.close()


def _index_keys(node: Node) -> set[bytes]:
    return {k for k, _ in node.items() if k.startswith((b"lg/pa/", b"lg/pt/"))}


def test_the_bridge_creations_are_indexed_by_their_tag(tmp_path: Path) -> None:
    """Objects the Bridge creates (not raw events) go through the same step: whatever tag
    they carry is indexed, and the index stays consistent with the objects."""
    node = world(tmp_path / "db", feature=13)
    try:
        market(node)
        for key, value in node.items():
            if key.startswith((b"lg/pa/", b"lg/pt/")):
                assert value == b""
                tag, oid = key[6:22], key[22:]
                account = key.startswith(b"lg/pa/")
                stored = node.view.get((b"lg/a/" if account else b"lg/t/") + oid)
                assert stored is not None
                assert (stored[9:25] if account else stored[65:81]) == tag  # its user_data_128
        tagged = {
            k[5:]
            for k, v in node.items()
            if k.startswith(b"lg/a/") and int.from_bytes(v[9:25], "big") != 0
        }
        assert {k[22:] for k, _ in node.items() if k.startswith(b"lg/pa/")} == tagged
    finally:
        node.close()


def test_a_ledger_upgraded_from_feature_11_indexes_what_is_new(tmp_path: Path) -> None:
    """Objects created at feature 11 are not in the index (no backfill yet): the mark keeps
    the ledger's last timestamp then, the index is not complete, and the node's lists keep
    walking (test_ledger_index_routes.py checks they list everything once)."""
    node = world(tmp_path / "db", feature=11)
    try:
        fund(node)
        old = open_accounts(node, 10, 2)
        assert node.view.get(INDEX_MARK_KEY) is None
        upgrade_to_13(node)
        node.apply(AppEntry(LEDGER_TICK, {}))  # the first feature-13 entry writes the mark
        after = indexed_after(node.view)
        assert after is not None and after > 0 and not index_complete(node.view)
        new = open_accounts(node, 12, 2)
        assert indexed_accounts(node) == sorted(new)
        assert set(old).isdisjoint(indexed_accounts(node))
    finally:
        node.close()


def test_before_feature_13_nothing_is_indexed(tmp_path: Path) -> None:
    node = world(tmp_path / "db", feature=11)
    try:
        fund(node)
        open_accounts(node, 10, 2)
        assert results(node, pay(20, RESERVE, open_accounts(node, 11, 1)[0], 5)) == [["ok"]]
        assert not [k for k, _ in node.items() if k.startswith((b"lg/pa/", b"lg/pt/", b"lg/pm"))]
    finally:
        node.close()


def test_the_index_is_in_the_ledger_state_digest(tmp_path: Path) -> None:
    node = world(tmp_path / "db", feature=13)
    try:
        fund(node)
        open_accounts(node, 10, 1)
        items = node.items()
        without = [(k, v) for k, v in items if not k.startswith(b"lg/pa/")]
        assert state_digest(items) != state_digest(without)
    finally:
        node.close()


def test_tag_index_writes_reads_no_object_and_skips_updates(tmp_path: Path) -> None:
    """The step itself over a real LevelDB view: an entry's writes of an existing account
    (a balance update, older timestamp) give nothing; a new one gives its key."""
    node = world(tmp_path / "db", feature=13)
    try:
        fund(node)
        (account,) = open_accounts(node, 10, 1)
        key = b"lg/a/" + account.to_bytes(16, "big")
        stored = node.view.get(key)
        assert stored is not None
        view = LevelDBView(node.db)
        assert tag_index_writes(view, {key: stored}) == []  # as if rewritten: not new
        assert tag_index_writes(view, {b"lg/a/" + b"\x01" * 16: None}) == []  # a delete
        assert TAG != OTHER_TAG
    finally:
        node.close()
