"""The fast paths of the Merkle log give exactly what the plain ones give: verify_inclusion
against RFC 9162's own loop for every index, size and path length; proofs, roots and leaves
read through a NodeCache against reads without it, at every size; the cache's bound."""

from __future__ import annotations

import hashlib
import random

from node.merkle.log import CachedView, MerkleReader, NodeCache, _node_key
from node.merkle.tree import MerkleTree, leaf_hash, node_hash, verify_inclusion
from tests.test_merkle_log import DictView, at, dispatcher, feature, proposal


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


def _grown_log(leaves: int) -> DictView:
    view, d = DictView(), dispatcher()
    payloads = [feature(3)] + [proposal(i) for i in range(leaves)]
    for start in range(0, len(payloads), 50):
        batch = [(at(start + 1 + i), p) for i, p in enumerate(payloads[start : start + 50])]
        _, writes = d.apply_batch(batch, view)
        view.commit(writes)
    return view


def test_a_cache_gives_the_same_roots_and_proofs_as_no_cache_at_every_size() -> None:
    view = _grown_log(150)
    plain = MerkleReader(view)
    assert plain.size == 150
    for nodes_max in (1, 7, 40, 1 << 16):
        cache = NodeCache(nodes_max)
        for size in range(1, 151):
            cached = MerkleReader(cache.view(view))  # a fresh view per request, as the node
            assert cached.size == 150
            assert cached.root(size) == plain.root(size)
            for m in range(0, size, 7):
                assert cached.inclusion_proof(m, size) == plain.inclusion_proof(m, size)
            for old in range(1, size + 1, 5):
                assert cached.consistency_proof(old, size) == plain.consistency_proof(old, size)
            assert len(cache) <= nodes_max
        assert cached.leaf_at(3) == plain.leaf_at(3)  # other keys pass through


def test_the_cache_keeps_the_top_levels_within_its_bound_and_only_stored_hashes() -> None:
    view = _grown_log(256)  # complete: levels 0..8
    reads: list[bytes] = []

    class Counting:
        def get(self, key: bytes) -> bytes | None:
            reads.append(key)
            return view.get(key)

    cache = NodeCache(nodes_max=40)
    rng = random.Random(2)
    for _ in range(400):
        MerkleReader(cache.view(Counting())).inclusion_proof(rng.randrange(256), 256)
    assert len(cache) <= 40
    assert cache.level_min >= 3  # levels 3..8 hold 63 nodes: more than 40
    reads.clear()
    cached = CachedView(Counting(), cache)
    top = cached.get_node(7, 0)  # the left half: in every proof of the right half
    assert top == view.get(_node_key(7, 0)) and reads == []  # from memory
    low = cached.get_node(0, 5)
    assert low == view.get(_node_key(0, 5)) and len(reads) == 1  # below: from the store
    assert cached.get_node(8, 1) is None and len(reads) == 2  # absent: not kept...
    assert cached.get_node(8, 1) is None and len(reads) == 3  # ...so asked again


def test_a_proofs_low_levels_are_stored_next_to_each_other() -> None:
    """Keyed by first leaf then level, the siblings at levels < 5 of any leaf lie within a
    run of keys a few dozen long (by level first, level 0 and 1 would be ~n keys apart)."""
    view = _grown_log(1024)
    keys = sorted(k for k in view.data if k.startswith(b"ml/n/"))
    assert len(keys) == 2 * 1024 - 1
    position = {key: i for i, key in enumerate(keys)}
    for leaf in (0, 1, 517, 1023):
        siblings = [_node_key(level, (leaf >> level) ^ 1) for level in range(5)]
        spots = [position[key] for key in siblings]
        assert max(spots) - min(spots) < 2 * 2 * 2**5, (leaf, spots)
