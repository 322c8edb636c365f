"""An append-only Merkle tree with RFC 9162 (Certificate Transparency v2) hashing, pure.

Hashing (RFC 9162 §2.1.1): a leaf is ``SHA-256(0x00 || data)``, an interior node
``SHA-256(0x01 || left || right)``, the root of the empty tree ``SHA-256()``. A tree of ``n``
leaves splits at ``k``, the largest power of two below ``n``: ``MTH(D[0:n]) =
node(MTH(D[0:k]), MTH(D[k:n]))``.

State: the hash of every *complete* subtree, ``(level, index)`` covering leaves
``[index * 2**level, (index + 1) * 2**level)``, in a :class:`NodeStore` (the Merkle-log state
machine keeps them in LevelDB). Appending a leaf writes its hash and the hash of every subtree
it completes (two writes on average, ``log2 n`` at most); a root, an inclusion proof (§2.1.3.1)
or a consistency proof (§2.1.4.1) at any tree size ``<= n`` is built from ``O(log n)`` stored
hashes, never by rebuilding the tree. The verifiers (§2.1.3.2, §2.1.4.2) need no state at all:
they are what a user's ``verify`` runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

from node.errors import InvalidRequest

__all__ = [
    "EMPTY_ROOT",
    "MerkleTree",
    "NodeStore",
    "leaf_hash",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class NodeStore(Protocol):
    """Where the complete subtrees' hashes live (a dict in tests, LevelDB in the node)."""

    def get_node(self, level: int, index: int) -> bytes | None: ...


class MerkleTree:
    """Reads and appends over a :class:`NodeStore`; ``size`` is the number of leaves."""

    def __init__(self, store: NodeStore, size: int) -> None:
        if size < 0:
            raise InvalidRequest("tree size must not be negative")
        self._store = store
        self._get_node = store.get_node  # bound once: proofs read ~log2(n) nodes each
        self.size = size

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; returns the ``(level, index, hash)`` writes it makes."""
        if len(leaf) != HASH_BYTES:
            raise InvalidRequest("a leaf hash is 32 bytes")
        index, current = self.size, leaf
        writes = [(0, index, current)]
        level = 0
        pending = {(0, index): current}
        while index % 2 == 1:  # a right child completes its parent
            left = pending.get((level, index - 1)) or self._node(level, index - 1)
            current = node_hash(left, current)
            level, index = level + 1, index // 2
            pending[(level, index)] = current
            writes.append((level, index, current))
        self.size += 1
        return writes

    def extend(self, leaves: Iterable[bytes], apply: NodeWriter) -> None:
        for leaf in leaves:
            for level, index, digest in self.append(leaf):
                apply.put_node(level, index, digest)

    def _node(self, level: int, index: int) -> bytes:
        found = self._get_node(level, index)
        if found is None:
            raise InvalidRequest(f"the tree has no node ({level}, {index})")
        return found

    def _subtree(self, start: int, count: int) -> bytes:
        """MTH of leaves ``[start, start + count)`` (``start`` aligned as RFC 9162 splits)."""
        if count & (count - 1) == 0 and start & (count - 1) == 0:  # a stored, complete subtree
            level = count.bit_length() - 1
            found = self._get_node(level, start >> level)
            if found is None:
                raise InvalidRequest(f"the tree has no node ({level}, {start >> level})")
            return found
        k = _split(count)
        return node_hash(self._subtree(start, k), self._subtree(start + k, count - k))

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        self._check_size(size)
        return EMPTY_ROOT if size == 0 else self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(m, D[n]) of RFC 9162 §2.1.3.1: leaf ``index`` in the tree of ``size``."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise InvalidRequest(f"leaf {index} is not in a tree of {size}")
        proof: list[bytes] = []
        start, count, m = 0, size, index
        while count > 1:
            k = _split(count)
            if m < k:
                proof.append(self._subtree(start + k, count - k))
                count = k
            else:
                proof.append(self._subtree(start, k))
                start, count, m = start + k, count - k, m - k
        proof.reverse()  # the path runs from the leaf up
        return proof

    def consistency_proof(self, old_size: int, size: int | None = None) -> list[bytes]:
        """PROOF(m, D[n]) of RFC 9162 §2.1.4.1: the tree of ``old_size`` is a prefix."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 < old_size <= size:
            raise InvalidRequest(f"no consistency proof from {old_size} to {size}")
        proof: list[bytes] = []
        start, count, m, complete = 0, size, old_size, True
        while m != count:
            k = _split(count)
            if m <= k:
                proof.append(self._subtree(start + k, count - k))
                count = k
            else:
                proof.append(self._subtree(start, k))
                start, count, m, complete = start + k, count - k, m - k, False
        if not complete:
            proof.append(self._subtree(start, count))
        proof.reverse()
        return proof

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise InvalidRequest(f"tree size {size} is beyond the {self.size} leaves appended")


class NodeWriter(Protocol):
    def put_node(self, level: int, index: int, digest: bytes) -> None: ...


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` put leaf hash ``leaf`` at ``index`` under ``root``?

    The RFC's loop with its branches worked out in advance (the same verdict for every
    input; tests/test_merkle_fast.py checks it against the loop): below the level where the
    paths to ``index`` and to the last leaf of ``size`` meet (``inner`` levels), bit ``i`` of
    ``index`` says on which side hash ``i`` goes; above it every hash is a left sibling, one
    per 1 bit of ``index >> inner`` (the levels the RFC skips are its 0 bits). A path of any
    other length fails at once.
    """
    if not 0 <= index < size:
        return False
    inner = (index ^ (size - 1)).bit_length()
    if len(proof) != inner + (index >> inner).bit_count():
        return False
    r, bits = leaf, index
    for p in proof[:inner]:
        if len(p) != HASH_BYTES:
            return False
        r = _sha256(b"\x01" + p + r if bits & 1 else b"\x01" + r + p).digest()
        bits >>= 1
    for p in proof[inner:]:
        if len(p) != HASH_BYTES:
            return False
        r = _sha256(b"\x01" + p + r).digest()
    return r == root


def verify_consistency(
    old_size: int, size: int, proof: Sequence[bytes], old_root: bytes, root: bytes
) -> bool:
    """RFC 9162 §2.1.4.2: is the tree of ``old_size`` (``old_root``) a prefix of ``root``?"""
    if not 0 < old_size <= size or any(len(p) != HASH_BYTES for p in proof):
        return False
    if old_size == size:
        return not proof and old_root == root
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root starts the path
        path.insert(0, old_root)
    fn, sn = old_size - 1, size - 1
    while fn % 2 == 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == root
