"""zfec erasure coding: any k of n shards rebuild the blob exactly."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.errors import RecordUnavailable
from node.storage.erasure import decode_blob, encode_blob


@given(st.binary(min_size=0, max_size=3000), st.sampled_from([(1, 1), (2, 3), (3, 5), (4, 6)]))
def test_every_k_subset_rebuilds(blob: bytes, kn: tuple[int, int]) -> None:
    k, n = kn
    shards = encode_blob(blob, k, n)
    assert len(shards) == n and len({len(s) for s in shards}) == 1
    for subset in itertools.combinations(range(n), k):
        assert decode_blob({i: shards[i] for i in subset}, k, n, len(blob)) == blob


def test_systematic_shards_are_slices_of_the_blob() -> None:
    blob = bytes(range(256)) * 3
    shards = encode_blob(blob, 3, 5)
    assert b"".join(shards[:3])[: len(blob)] == blob


def test_fewer_than_k_shards_is_a_typed_error() -> None:
    shards = encode_blob(b"x" * 100, 3, 5)
    with pytest.raises(RecordUnavailable):
        decode_blob({0: shards[0], 4: shards[4]}, 3, 5, 100)
