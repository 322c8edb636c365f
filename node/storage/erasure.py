"""Erasure coding of record blobs with zfec (Reed-Solomon): n shards, any k rebuild the blob.

Shards ``0..k-1`` are systematic (plain slices of the padded blob), so a read that gets them
needs no decoding arithmetic; that is why readers ask for the systematic shards first.
The blob length is carried in the shard meta, so padding is stripped exactly.
"""

from __future__ import annotations

import zfec

from node.errors import InvalidRequest, RecordUnavailable

__all__ = ["decode_blob", "encode_blob"]


def _chunk_bytes(blob_bytes: int, k: int) -> int:
    return max(1, -(-blob_bytes // k))


def encode_blob(blob: bytes, k: int, n: int) -> list[bytes]:
    """Split ``blob`` into ``n`` equal shards of which any ``k`` suffice."""
    if not 1 <= k <= n <= 255:
        raise InvalidRequest(f"invalid erasure parameters k={k} n={n}")
    chunk = _chunk_bytes(len(blob), k)
    padded = blob.ljust(chunk * k, b"\x00")
    blocks = [padded[i * chunk : (i + 1) * chunk] for i in range(k)]
    shards = [bytes(s) for s in zfec.Encoder(k, n).encode(blocks)]
    return shards


def decode_blob(shards: dict[int, bytes], k: int, n: int, blob_bytes: int) -> bytes:
    """Rebuild the blob from at least ``k`` shards given as ``{index: data}``."""
    if len(shards) < k:
        raise RecordUnavailable(f"need {k} shards to rebuild, have {len(shards)}")
    chosen = sorted(shards)[:k]
    sizes = {len(shards[i]) for i in chosen}
    if len(sizes) != 1 or sizes.pop() != _chunk_bytes(blob_bytes, k):
        raise RecordUnavailable("shards disagree on size; cannot rebuild")
    if chosen == list(range(k)):
        data = b"".join(shards[i] for i in chosen)  # systematic: no arithmetic needed
    else:
        blocks = zfec.Decoder(k, n).decode([shards[i] for i in chosen], chosen)
        data = b"".join(bytes(b) for b in blocks)
    return data[:blob_bytes]
