"""The fast paths of the Merkle log give exactly what the plain ones give: verify_inclusion
against RFC 9162's own loop for every index, size and path length."""

from __future__ import annotations

import hashlib
import random

from node.merkle.tree import MerkleTree, leaf_hash, node_hash, verify_inclusion


def rfc_inclusion_root(leaf: bytes, index: int, size: int, proof: list[bytes]) -> bytes | None:
    """RFC 9162 §2.1.3.2 step by step: the root the path leads to, None when it is refused."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


def _hashes(rng: random.Random, count: int) -> list[bytes]:
    return [rng.randbytes(32) for _ in range(count)]


def test_verify_inclusion_is_the_rfc_loop_for_every_index_size_and_path_length() -> None:
    rng = random.Random(9)
    leaf = hashlib.sha256(b"leaf").digest()
    for size in range(1, 140):
        for index in range(-1, size + 1):
            for length in range(0, 12):
                proof = _hashes(rng, length)
                expected = rfc_inclusion_root(leaf, index, size, proof)
                if expected is None:  # refused whatever the root: try the likeliest ones
                    for root in (leaf, *proof, hashlib.sha256(b"").digest()):
                        assert not verify_inclusion(leaf, index, size, proof, root)
                    continue
                assert verify_inclusion(leaf, index, size, proof, expected), (index, size)
                wrong = bytes([expected[0] ^ 1]) + expected[1:]
                assert not verify_inclusion(leaf, index, size, proof, wrong)


def test_verify_inclusion_refuses_hashes_of_another_length_anywhere_on_the_path() -> None:
    store: dict[tuple[int, int], bytes] = {}

    class Store:
        def get_node(self, level: int, index: int) -> bytes | None:
            return store.get((level, index))

    tree = MerkleTree(Store(), 0)
    leaves = [leaf_hash(bytes([i])) for i in range(45)]
    for leaf in leaves:
        for level, index, digest in tree.append(leaf):
            store[(level, index)] = digest
    for m in (0, 17, 40, 44):
        proof = tree.inclusion_proof(m)
        assert verify_inclusion(leaves[m], m, 45, proof, tree.root())
        for i in range(len(proof)):
            for bad in (proof[i][:31], proof[i] + b"\x00"):
                path = [*proof[:i], bad, *proof[i + 1 :]]
                assert not verify_inclusion(leaves[m], m, 45, path, tree.root())
