"""RFC 9162 Merkle tree: roots, inclusion and consistency proofs against a naive reference,
for every tree size, and the stateless verifiers (what a user's ``verify`` runs)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.errors import InvalidRequest
from node.merkle.tree import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)


class DictStore:
    def __init__(self) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.reads = 0

    def get_node(self, level: int, index: int) -> bytes | None:
        self.reads += 1
        return self.nodes.get((level, index))

    def put_node(self, level: int, index: int, digest: bytes) -> None:
        self.nodes[(level, index)] = digest


def naive_root(leaves: list[bytes]) -> bytes:
    """MTH straight from RFC 9162 §2.1.1."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(naive_root(leaves[:k]), naive_root(leaves[k:]))


def naive_path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*naive_path(m, leaves[:k]), naive_root(leaves[k:])]
    return [*naive_path(m - k, leaves[k:]), naive_root(leaves[:k])]


def naive_subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [naive_root(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*naive_subproof(m, leaves[:k], complete), naive_root(leaves[k:])]
    return [*naive_subproof(m - k, leaves[k:], False), naive_root(leaves[:k])]


def grown(count: int) -> tuple[MerkleTree, list[bytes], DictStore]:
    store = DictStore()
    tree = MerkleTree(store, 0)
    leaves = [leaf_hash(f"record-{i}".encode()) for i in range(count)]
    tree.extend(leaves, store)
    return tree, leaves, store


def test_hashing_is_rfc_9162() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )


def test_every_size_up_to_70_matches_the_reference_for_every_proof() -> None:
    tree, leaves, _ = grown(70)
    for size in range(0, 71):
        root = tree.root(size)
        assert root == naive_root(leaves[:size]), size
        for m in range(size):
            proof = tree.inclusion_proof(m, size)
            assert proof == naive_path(m, leaves[:size]), (m, size)
            assert verify_inclusion(leaves[m], m, size, proof, root)
        for old in range(1, size + 1):
            proof = tree.consistency_proof(old, size)
            assert proof == naive_subproof(old, leaves[:size], True), (old, size)
            assert verify_consistency(old, size, proof, tree.root(old), root), (old, size)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.data())
def test_large_trees_prove_and_verify(size: int, data: st.DataObject) -> None:
    tree, leaves, _ = grown(size)
    m = data.draw(st.integers(0, size - 1))
    old = data.draw(st.integers(1, size))
    root = tree.root()
    assert verify_inclusion(leaves[m], m, size, tree.inclusion_proof(m), root)
    assert verify_consistency(old, size, tree.consistency_proof(old), tree.root(old), root)


def test_proofs_read_log_n_stored_hashes() -> None:
    tree, _, store = grown(5000)
    store.reads = 0
    tree.inclusion_proof(1234)
    assert store.reads <= 4 * 13  # at most a few hashes per level, never the whole tree
    store.reads = 0
    tree.consistency_proof(1777)
    assert store.reads <= 4 * 13


def test_appending_writes_each_completed_subtree_once() -> None:
    tree, _, store = grown(16)
    assert len(store.nodes) == 16 + 8 + 4 + 2 + 1
    writes = tree.append(leaf_hash(b"17th"))
    assert writes == [(0, 16, leaf_hash(b"17th"))]


def test_any_flipped_byte_fails_verification() -> None:
    tree, leaves, _ = grown(37)
    root = tree.root()
    proof = tree.inclusion_proof(21)
    flipped_leaf = bytes([leaves[21][0] ^ 1]) + leaves[21][1:]
    assert not verify_inclusion(flipped_leaf, 21, 37, proof, root)
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert not verify_inclusion(leaves[21], 21, 37, bad, root)
    assert not verify_inclusion(leaves[21], 22, 37, proof, root)  # wrong index
    assert not verify_inclusion(leaves[21], 21, 32, proof, root)  # a size with another path
    assert not verify_inclusion(leaves[21], 21, 37, proof[:-1], root)  # short path
    consistency = tree.consistency_proof(20)
    old_root = tree.root(20)
    assert not verify_consistency(20, 37, consistency, tree.root(19), root)
    assert not verify_consistency(20, 37, [], old_root, root)
    for i in range(len(consistency)):
        bad = list(consistency)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert not verify_consistency(20, 37, bad, old_root, root)


def test_a_rewritten_history_is_not_consistent() -> None:
    tree, leaves, _ = grown(30)
    forged, _, _ = grown(0)
    other = list(leaves)
    other[3] = leaf_hash(b"rewritten")
    forged.extend(other, forged._store)  # type: ignore[arg-type]
    assert not verify_consistency(
        10, 30, forged.consistency_proof(10), tree.root(10), forged.root()
    )


def test_bad_arguments_are_typed_errors() -> None:
    tree, _, _ = grown(5)
    for call in (
        lambda: tree.root(6),
        lambda: tree.inclusion_proof(5),
        lambda: tree.consistency_proof(0),
        lambda: tree.consistency_proof(6),
        lambda: tree.append(b"short"),
    ):
        with pytest.raises(InvalidRequest):
            call()
