"""The AnchorRegistry's rules, on eth-tester (in process) and on a real anvil.

Each refusal is checked twice: as a call (``simulate_anchor``: the revert's custom error is
decoded, whichever exception type the backend raised) and, for the anchor rules, as a mined
transaction with a fixed gas limit (status 0, nothing changes), which is what the anchoring
service actually sends.
"""

from __future__ import annotations

from typing import Any

import pytest
from chains import ANVIL_DEV_KEYS, FUND_WEI, TestChain, chain_fixture, mined  # noqa: F401
from eth_tester.exceptions import TransactionFailed
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError

from node.anchoring.chain import (
    AnchorChain,
    AnchoredEvent,
    AnchorOnChain,
    ChainRejected,
    decode_revert,
    fund,
    set_submitter,
)
from node.anchoring.keyfile import ChainKey
from node.anchoring.registry import load_artifact

ROOT_A = bytes.fromhex("aa" * 32)
ROOT_B = bytes.fromhex("bb" * 32)
ROOT_C = bytes.fromhex("cc" * 32)


def registry(chain: TestChain) -> Contract:
    address = Web3.to_checksum_address(chain.contract)
    return chain.w3.eth.contract(address=address, abi=load_artifact()["abi"])


def anchor_ok(anchors: AnchorChain, batch_id: int, tree_size: int, root: bytes) -> int:
    """Anchor and return the block it was mined in."""
    signed = anchors.sign_anchor(batch_id, tree_size, root, anchors.account_nonce())
    assert anchors.broadcast(signed.raw) == "sent"
    inclusion = mined(anchors, signed.tx_hash)
    assert inclusion is not None and inclusion.status == 1
    return inclusion.block_number


def refused(anchors: AnchorChain, batch_id: int, tree_size: int, root: bytes) -> Any:
    """The contract refuses the anchor: as a call (decoded error) and as a mined transaction
    (status 0, state unchanged). Returns the Revert."""
    before = anchors.next_batch_id()
    with pytest.raises(ChainRejected) as caught:
        anchors.simulate_anchor(batch_id, tree_size, root)
    assert caught.value.code == "chain_reverted"
    signed = anchors.sign_anchor(batch_id, tree_size, root, anchors.account_nonce())
    assert anchors.broadcast(signed.raw) == "sent"
    inclusion = mined(anchors, signed.tx_hash)
    assert inclusion is not None and inclusion.status == 0
    assert anchors.anchored_in(signed.tx_hash) == ()
    assert anchors.next_batch_id() == before
    return caught.value.revert


def test_batch_ids_are_consecutive_from_one(chain: TestChain) -> None:
    anchors = chain.anchors
    assert anchors.next_batch_id() == 1
    revert = refused(anchors, 0, 1, ROOT_A)
    assert (revert.name, revert.args) == ("BatchOutOfOrder", (1, 0))
    assert refused(anchors, 2, 1, ROOT_A).name == "BatchOutOfOrder"
    anchor_ok(anchors, 1, 3, ROOT_A)
    assert anchors.next_batch_id() == 2
    repeat = refused(anchors, 1, 4, ROOT_B)
    assert (repeat.name, repeat.args) == ("BatchOutOfOrder", (2, 1))
    gap = refused(anchors, 3, 4, ROOT_B)
    assert (gap.name, gap.args) == ("BatchOutOfOrder", (2, 3))
    anchor_ok(anchors, 2, 4, ROOT_B)
    assert anchors.next_batch_id() == 3


def test_a_root_is_anchored_once(chain: TestChain) -> None:
    anchors = chain.anchors
    anchor_ok(anchors, 1, 3, ROOT_A)
    revert = refused(anchors, 2, 4, ROOT_A)
    assert (revert.name, revert.args) == ("RootAlreadyAnchored", (ROOT_A, 1))


def test_tree_size_must_grow(chain: TestChain) -> None:
    anchors = chain.anchors
    first = refused(anchors, 1, 0, ROOT_A)
    assert (first.name, first.args) == ("TreeNotGrown", (0, 0))
    anchor_ok(anchors, 1, 5, ROOT_A)
    same = refused(anchors, 2, 5, ROOT_B)
    assert (same.name, same.args) == ("TreeNotGrown", (5, 5))
    assert refused(anchors, 2, 4, ROOT_B).args == (5, 4)
    anchor_ok(anchors, 2, 6, ROOT_B)


def test_zero_root_is_refused(chain: TestChain) -> None:
    assert refused(chain.anchors, 1, 1, bytes(32)).name == "ZeroRoot"


def test_only_allowed_submitters_and_only_the_owner_changes_them(chain: TestChain) -> None:
    stranger = ChainKey.generate()
    fund(chain.w3, stranger.address, FUND_WEI)
    as_stranger = AnchorChain(chain.w3, chain.contract, stranger)
    assert not as_stranger.is_submitter(stranger.address)
    assert chain.anchors.is_submitter(chain.key.address)
    revert = refused(as_stranger, 1, 1, ROOT_A)
    assert (revert.name, revert.args) == ("NotSubmitter", (stranger.address,))

    with pytest.raises(ChainRejected) as not_owner:
        set_submitter(chain.w3, chain.contract, chain.key, stranger.address, True)
    assert not_owner.value.revert is not None
    assert (not_owner.value.revert.name, not_owner.value.revert.args) == (
        "NotOwner",
        (chain.key.address,),
    )
    assert not as_stranger.is_submitter(stranger.address)

    set_submitter(chain.w3, chain.contract, chain.owner, stranger.address, True)
    assert as_stranger.is_submitter(stranger.address)
    anchor_ok(as_stranger, 1, 1, ROOT_A)

    set_submitter(chain.w3, chain.contract, chain.owner, stranger.address, False)
    assert refused(as_stranger, 2, 2, ROOT_B).name == "NotSubmitter"
    anchor_ok(chain.anchors, 2, 2, ROOT_B)


def test_anchored_event_and_reads(chain: TestChain) -> None:
    anchors = chain.anchors
    assert anchors.anchor_of(1) == AnchorOnChain(0, bytes(32), 0)
    assert anchors.batch_of_root(ROOT_A) == 0
    signed = anchors.sign_anchor(1, 7, ROOT_A, anchors.account_nonce())
    assert anchors.broadcast(signed.raw) == "sent"
    inclusion = mined(anchors, signed.tx_hash)
    assert inclusion is not None
    assert anchors.anchored_in(signed.tx_hash) == (AnchoredEvent(1, ROOT_A, 7),)
    # the indexed fields are topics: check them as a log reader sees them
    receipt = chain.w3.eth.get_transaction_receipt(HexBytes(signed.tx_hash))
    contract = registry(chain)
    (event,) = contract.events.Anchored().process_receipt(receipt)
    assert event["args"] == {"batchId": 1, "root": ROOT_A, "treeSize": 7}
    assert len(receipt["logs"][0]["topics"]) == 3  # signature, batchId, root

    tree_size, root, block_number = anchors.anchor_of(1)
    assert (tree_size, root, block_number) == (7, ROOT_A, inclusion.block_number)
    assert anchors.batch_of_root(ROOT_A) == 1
    assert anchors.next_batch_id() == 2
    block_c = anchor_ok(anchors, 2, 9, ROOT_C)
    assert anchors.anchor_of(2) == AnchorOnChain(9, ROOT_C, block_c)
    assert anchors.anchor_of(3) == AnchorOnChain(0, bytes(32), 0)


def test_revert_errors_differ_by_backend_and_decode_alike(chain: TestChain) -> None:
    """eth-tester raises TransactionFailed, anvil ContractCustomError; both decode."""
    contract = registry(chain)
    expected = TransactionFailed if chain.kind == "eth-tester" else ContractCustomError
    with pytest.raises(expected) as caught:
        contract.functions.anchor(1, 1, bytes(32)).call({"from": chain.key.address})
    revert = decode_revert(caught.value)
    assert revert is not None and revert.name == "ZeroRoot"
    dev_account = list(chain.w3.eth.accounts)[1]  # unlocked on both, not a submitter
    with pytest.raises(expected) as sent:
        contract.functions.anchor(1, 1, ROOT_A).transact({"from": dev_account})
    revert = decode_revert(sent.value)
    assert revert is not None and (revert.name, revert.args) == ("NotSubmitter", (dev_account,))


def test_owner_is_the_deployer(chain: TestChain) -> None:
    contract = registry(chain)
    assert contract.functions.owner().call() == chain.owner.address
    if chain.kind == "anvil":
        assert chain.owner == ChainKey(bytes.fromhex(ANVIL_DEV_KEYS[0][2:]))
