"""The deposit step of the ledger-ops apply (log feature 10), over the node's dispatcher and a
real LevelDB: a confirmed vault deposit credits the named wallet once, or the suspense account.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from bridgeopskit import ALICE, BAAS, SHOP, Node, wallet_account, world
from depositkit import CHAIN, UNIT, VAULT, credit_op, deposit_body, record_id_of
from identitykit import address, user

from business.identity.ids import Mode, ledger_number, wallet_account_id, wallet_id
from business.ledger.views import all_totals
from node.chain.deposits import suspense_account, vault_account
from node.consensus.deposit_ops import (
    SUSPENSE_PREFIX,
    read_credited,
    read_cursor,
)
from node.consensus.ledger_ops import stored_outcome

LIVE_BAAS = ledger_number(Mode.LIVE, 1)
STRANGER = user("stranger")  # never linked: an unknown wallet


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = world(tmp_path / "db", feature=10)
    yield n
    n.close()


def _balanced(node: Node) -> bool:
    return all(t.balanced for t in all_totals(node.view))


def test_a_deposit_to_a_linked_wallet_credits_it_from_the_vault_account(node: Node) -> None:
    body = deposit_body(1, address(ALICE), 5 * UNIT, ledger=BAAS)
    (result,) = node.ops(credit_op(body))
    assert result.code == "created"
    assert result.detail["outcome"].result == "credited"
    assert node.balance(wallet_account(ALICE, BAAS)) == 5 * UNIT
    assert node.balance(vault_account(Mode.TEST, BAAS)) == -5 * UNIT
    credited = read_credited(node.view, record_id_of(body))
    assert credited is not None and not credited.suspense and credited.amount == 5 * UNIT
    assert read_cursor(node.view, CHAIN, VAULT) == (100, body.cursor_hash)
    assert _balanced(node)


def test_the_same_deposit_proposed_twice_is_one_credit(node: Node) -> None:
    body = deposit_body(2, address(ALICE), 3 * UNIT, ledger=BAAS)
    first = node.ops(credit_op(body), credit_op(body))  # twice in one entry
    assert [r.code for r in first] == ["created", "existing"]
    # Again later, by another node after a leader change: its hint may even differ.
    (again,) = node.ops(credit_op(replace(body, address=None, cursor_number=90)))
    assert again.code == "existing"
    assert again.detail["outcome"].result == "credited"  # the first outcome, forever
    assert node.balance(wallet_account(ALICE, BAAS)) == 3 * UNIT
    assert read_cursor(node.view, CHAIN, VAULT) == (100, body.cursor_hash)  # never lowered


def test_an_unknown_wallet_is_held_in_suspense_and_listed(node: Node) -> None:
    unknown = deposit_body(3, address(STRANGER), 7 * UNIT, ledger=BAAS, log_index=1)
    no_hint = deposit_body(4, address(ALICE), UNIT, ledger=BAAS, hint=False)
    # A hint that does not hash to the wallet id cannot redirect the credit to alice.
    lying = replace(deposit_body(5, address(STRANGER), UNIT, ledger=BAAS), address=address(ALICE))
    results = node.ops(credit_op(unknown), credit_op(no_hint), credit_op(lying))
    assert [r.detail["outcome"].result for r in results] == ["held_in_suspense"] * 3
    assert node.balance(suspense_account(Mode.TEST, BAAS)) == 9 * UNIT
    assert node.balance(wallet_account(ALICE, BAAS)) == 0
    listed = {k[len(SUSPENSE_PREFIX) :] for k, _ in node.items() if k.startswith(SUSPENSE_PREFIX)}
    assert listed == {record_id_of(b) for b in (unknown, no_hint, lying)}
    assert _balanced(node)


def test_only_the_platform_credits_deposits(node: Node) -> None:
    body = deposit_body(6, address(ALICE), UNIT, ledger=BAAS)
    (result,) = node.ops(credit_op(body, partner=SHOP))
    assert result.code == "created"
    assert result.detail["outcome"].result == "deposit_not_platform"
    assert node.balance(wallet_account(ALICE, BAAS)) == 0
    assert stored_outcome(node.view, record_id_of(body)) is not None  # sticky


def test_a_deposit_whose_record_id_is_not_its_keys_is_malformed(node: Node) -> None:
    body = deposit_body(7, address(ALICE), UNIT, ledger=BAAS)
    (result,) = node.ops(credit_op(body, record_id=b"\x11" * 32))
    assert result.code == "malformed"
    (wrong_mode,) = node.ops(credit_op(body, mode=Mode.LIVE))
    assert wrong_mode.code == "malformed"
    assert node.balance(wallet_account(ALICE, BAAS)) == 0


def test_before_feature_10_a_deposit_is_malformed(tmp_path: Path) -> None:
    old = world(tmp_path / "v8", feature=8)
    try:
        (result,) = old.ops(credit_op(deposit_body(8, address(ALICE), UNIT, ledger=BAAS)))
        assert result.code == "malformed"
        assert "feature 10" in result.detail["reason"]
    finally:
        old.close()


def test_live_mode_deposits_mint_live_baas_only_through_the_vault_account(node: Node) -> None:
    # alice is linked in test mode only: her live wallet is unknown -> live suspense.
    body = deposit_body(9, address(ALICE), 2 * UNIT, ledger=LIVE_BAAS)
    (result,) = node.ops(credit_op(body))
    assert result.detail["outcome"].result == "held_in_suspense"
    assert node.balance(vault_account(Mode.LIVE, LIVE_BAAS)) == -2 * UNIT
    assert node.balance(suspense_account(Mode.LIVE, LIVE_BAAS)) == 2 * UNIT
    live_alice = wallet_account_id(wallet_id(address(ALICE), Mode.LIVE), Mode.LIVE, LIVE_BAAS)
    assert node.balance(live_alice) == 0
    assert _balanced(node)


def test_a_token_ledger_without_its_asset_is_refused_and_moves_nothing(node: Node) -> None:
    token_ledger = ledger_number(Mode.TEST, 2)  # a platform token never registered as an asset
    body = deposit_body(10, address(ALICE), UNIT, ledger=token_ledger)
    (result,) = node.ops(credit_op(body))
    assert result.detail["outcome"].result == "deposit_refused"
    assert node.balance(vault_account(Mode.TEST, token_ledger)) == 0
    credited = read_credited(node.view, record_id_of(body))
    assert credited is not None and credited.result == "deposit_refused"  # listed, not retried
