"""The data of a state snapshot (format 2), written and read as a stream in bounded pieces.

A snapshot's data is every state-machine key and value of the Raft database (the ``b"x"``
keys of :mod:`node.replication.durable`) at one applied index::

    b"BSNP" || u8 format (2) || msgpack [key, value] arrays in key order || SHA-256 (32 bytes)

The digest covers everything before it, so a receiver checks a transfer end to end (what the
sender's state produced, not only each frame) before the snapshot replaces its state. Empty
data is the empty state (the bootstrap snapshot at index 0). Format 1, one msgpack list of
pairs built in memory, was never taken by a node (nothing compacted before format 2) and is
refused. Nothing here holds more than one piece (a chunk, at most
``snapshot_chunk_bytes_max``) and the decoder's bounded buffer, whatever the state's size.

A sender streams the data straight from a pinned view of its state, never writing it down:
:func:`encoded_size` tells the size an ``InstallSnapshot`` announces in its first frame (a
pass over the keys and values, no encoding), :func:`encode_pieces` then yields the data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack

from node.errors import PeerProtocolError, UnsupportedFormat

__all__ = [
    "DATA_MAGIC",
    "StateCheck",
    "decode_state",
    "encode_pieces",
    "encode_state",
    "encoded_size",
]

DATA_MAGIC = b"BSNP"
DATA_FORMAT = 2
HEADER = DATA_MAGIC + bytes((DATA_FORMAT,))
DIGEST_BYTES = 32
DATA_BYTES_MIN = len(HEADER) + DIGEST_BYTES  # the header and digest of a state with no keys
PIECE_BYTES = 64 * 1024  # what the encoder gathers before handing bytes on
STATE_KEY_BYTES_MAX = 1024  # durable.STATE_KEY_BYTES_MAX
STATE_VALUE_BYTES_MAX = 1024 * 1024  # a state value is made from at most one entry payload


def encode_pieces(items: Iterable[tuple[bytes, bytes]]) -> Iterator[bytes]:
    """The format-2 data of ``items`` (key order), in pieces of ~64 KiB."""
    digest = hashlib.sha256()
    piece = bytearray(HEADER)
    packer = msgpack.Packer(use_bin_type=True)
    for key, value in items:
        piece += packer.pack([key, value])
        if len(piece) >= PIECE_BYTES:
            digest.update(piece)
            yield bytes(piece)
            piece.clear()
    digest.update(piece)
    piece += digest.digest()
    yield bytes(piece)


def encode_state(items: Iterable[tuple[bytes, bytes]], write: Callable[[bytes], None]) -> None:
    """Write the format-2 data of ``items`` (key order) to ``write``, in pieces of ~64 KiB."""
    for piece in encode_pieces(items):
        write(piece)


def encoded_size(items: Iterable[tuple[bytes, bytes]]) -> int:
    """The size of :func:`encode_pieces`' data for ``items``, without encoding them."""
    size = len(HEADER) + DIGEST_BYTES
    for key, value in items:
        size += 1 + _bin_bytes(len(key)) + _bin_bytes(len(value))  # fixarray of 2, 2 bins
    return size


def _bin_bytes(length: int) -> int:
    """msgpack's encoding of ``length`` bytes as bin 8, 16 or 32: header plus data."""
    return length + (2 if length < 1 << 8 else 3 if length < 1 << 16 else 5)


class StateCheck:
    """Checks format-2 data of ``total_bytes`` fed in pieces: header, size and digest.

    :meth:`update` hands back the part of each piece that is key/value pairs (neither header
    nor digest) so a decoder can parse it without a second pass over the data.
    """

    def __init__(self, total_bytes: int) -> None:
        if total_bytes != 0 and total_bytes < DATA_BYTES_MIN:
            raise PeerProtocolError(f"snapshot data of {total_bytes} bytes is too short")
        self.total_bytes = total_bytes
        self.received_bytes = 0
        self._head = bytearray()
        self._tail = bytearray()
        self._digest = hashlib.sha256()

    def update(self, piece: bytes) -> bytes:
        start, end = self.received_bytes, self.received_bytes + len(piece)
        if end > self.total_bytes:
            raise PeerProtocolError("snapshot data longer than announced")
        self.received_bytes = end
        self._digest.update(piece[: max(0, self.total_bytes - DIGEST_BYTES - start)])
        if start < len(HEADER):
            self._head += piece[: len(HEADER) - start]
            if len(self._head) == len(HEADER) and bytes(self._head) != HEADER:
                raise _bad_header(bytes(self._head))
        tail_from = self.total_bytes - DIGEST_BYTES
        if end > tail_from:
            self._tail += piece[max(0, tail_from - start) :]
        return piece[max(0, len(HEADER) - start) : max(0, tail_from - start)]

    def finish(self) -> None:
        if self.received_bytes != self.total_bytes:
            raise PeerProtocolError("snapshot data shorter than announced")
        if self.total_bytes and self._digest.digest() != bytes(self._tail):
            raise PeerProtocolError("snapshot data fails its digest")


def _bad_header(head: bytes) -> Exception:
    if head.startswith(DATA_MAGIC):
        return UnsupportedFormat(f"snapshot data format {head[len(DATA_MAGIC)]} (reads 2)")
    return PeerProtocolError("snapshot data has no snapshot header")


def decode_state(pieces: Iterable[bytes], total_bytes: int) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) pairs of format-2 data given as pieces; checked as they stream.

    The digest is only known correct at the end: a caller that must not act on a corrupt
    stream (replacing state) keeps its old state authoritative until this generator ends.
    """
    check = StateCheck(total_bytes)
    unpacker = msgpack.Unpacker(
        raw=False, max_buffer_size=max(PIECE_BYTES, 4 * STATE_VALUE_BYTES_MAX)
    )
    for piece in pieces:
        body = check.update(piece)
        for offset in range(0, len(body), PIECE_BYTES):  # stay within the decoder's buffer
            unpacker.feed(body[offset : offset + PIECE_BYTES])
            for item in unpacker:
                yield _pair(item)
    check.finish()
    if unpacker.read_bytes(1):
        raise PeerProtocolError("snapshot data ends inside a key/value pair")


def _pair(item: Any) -> tuple[bytes, bytes]:
    if not (isinstance(item, list) and len(item) == 2):
        raise PeerProtocolError("snapshot item is not a [key, value] pair")
    key, value = item
    if not (isinstance(key, bytes) and isinstance(value, bytes)):
        raise PeerProtocolError("snapshot key and value must be bytes")
    if not 0 < len(key) <= STATE_KEY_BYTES_MAX or len(value) > STATE_VALUE_BYTES_MAX:
        raise PeerProtocolError("snapshot key or value out of bounds")
    return key, value
