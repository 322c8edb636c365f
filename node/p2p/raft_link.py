"""The consensus transport ``/baas/raft/1.0.0``: one-way message frames between members.

Raft tolerates lost, duplicated and reordered messages (it retransmits on its own ticks), so
this link is deliberately simple and never blocks the consensus loop:

* **sending** -- per peer, a bounded queue (``raft_queue_frames_max``) drained by one writer
  task onto one long-lived stream. ``offer()`` never waits: a full queue drops the frame and
  counts it. The frames waiting when the writer takes one go with it in one stream write of
  up to about ``raft_write_bytes_max`` (:func:`coalesce`): the bytes on the wire are the same
  length-prefixed frames, but a burst (a leader's Append and its commit notice, a follower's
  answers to pipelined Appends) costs one yamux frame, one Noise message and one socket write
  instead of one each per frame, which is what a small frame costs most of. A broken stream
  is dropped with the frames in hand and every frame queued behind them (stale by the time
  the peer is back), and reopened for the next one after a short back-off while the peer is
  unreachable. ``queued_frames`` lets a snapshot sender pace itself on the queue.
* **receiving** -- every inbound raft stream is read frame by frame (``u32 length || payload``,
  at most ``p2p_frame_bytes_max``) and each payload is handed to the node's inbox callback on
  the trio thread. Decoding and validating the payload is the consensus adapter's job.

Shard traffic uses its own protocol and streams, so a heartbeat never waits behind a large
shard frame.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from node.errors import BaasError, PeerProtocolError
from node.p2p.shard_protocol import FrameReader

__all__ = ["RAFT_PROTOCOL", "RaftCounters", "RaftOutbox", "coalesce", "serve_raft_stream"]

RAFT_PROTOCOL = TProtocol("/baas/raft/1.0.0")
_logger = logging.getLogger(__name__)
_REOPEN_BACKOFF_S = 0.2


@dataclass(slots=True)
class RaftCounters:
    frames_sent_total: int = 0
    frames_dropped_total: int = 0  # queue full or stream broken: Raft will retransmit
    writes_total: int = 0  # stream writes (each carries one or more frames)
    frames_received_total: int = 0
    streams_opened_total: int = 0
    protocol_errors_total: int = 0


def coalesce(first: bytes, take: Callable[[], bytes | None], bytes_max: int) -> list[bytes]:
    """``first`` and the frames ``take`` hands over without waiting (None: no more), until
    they hold ``bytes_max`` bytes or more: one write's worth (the last frame may pass the
    bound, so a frame larger than it still goes, alone)."""
    frames, size = [first], len(first)
    while size < bytes_max and (payload := take()) is not None:
        frames.append(payload)
        size += len(payload)
    return frames


def _frame_bytes(frames: list[bytes]) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in frames)


class RaftOutbox:
    """Frames to one peer: a bounded queue and the task that writes it to one stream."""

    def __init__(
        self,
        host: IHost,
        peer_id: str,
        *,
        queue_frames_max: int,
        frame_bytes_max: int,
        write_bytes_max: int,
        counters: RaftCounters,
        ensure_connected: Callable[[str], Awaitable[None]],
    ) -> None:
        self._host = host
        self._peer = peer_id
        self._id = ID.from_base58(peer_id)
        self._frame_bytes_max = frame_bytes_max
        self._write_bytes_max = write_bytes_max
        self._counters = counters
        self._ensure_connected = ensure_connected
        self._send, self._receive = trio.open_memory_channel[bytes](queue_frames_max)
        self._stream: INetStream | None = None

    @property
    def queued_frames(self) -> int:
        """Frames waiting to be written (read from any thread: a snapshot sender paces on it)."""
        return self._send.statistics().current_buffer_used

    def offer(self, payload: bytes) -> bool:
        """Queue a frame without waiting; False (and counted) when dropped."""
        if len(payload) > self._frame_bytes_max:
            self._counters.frames_dropped_total += 1
            return False
        try:
            self._send.send_nowait(payload)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._counters.frames_dropped_total += 1
            return False
        return True

    async def run(self) -> None:
        """The writer task (runs until cancelled with the p2p layer)."""
        try:
            async for payload in self._receive:
                frames = coalesce(payload, self._take_nowait, self._write_bytes_max)
                if not await self._write(frames):
                    # The peer is away: everything queued for it is stale by the time it is
                    # back (Raft resends what is still needed, from its current state, and a
                    # peer far behind gets a snapshot rather than hundreds of old Appends).
                    dropped = len(frames) + self._drop_queued()
                    self._counters.frames_dropped_total += dropped
                    await trio.sleep(_REOPEN_BACKOFF_S)
        finally:
            if self._stream is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await self._stream.reset()

    def _take_nowait(self) -> bytes | None:
        try:
            return self._receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return None

    def _drop_queued(self) -> int:
        dropped = 0
        while True:
            try:
                self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return dropped
            dropped += 1

    async def _write(self, frames: list[bytes]) -> bool:
        try:
            if self._stream is None:
                await self._ensure_connected(self._peer)
                self._stream = await self._host.new_stream(self._id, [RAFT_PROTOCOL])
                self._counters.streams_opened_total += 1
            await self._stream.write(_frame_bytes(frames))
        except trio.Cancelled:
            raise
        except (BaasError, Exception) as exc:  # libp2p raises many types; the peer is away
            _logger.debug("raft frame to %s not sent: %r", self._peer, exc)
            stream, self._stream = self._stream, None
            if stream is not None:
                with trio.move_on_after(1.0):
                    try:
                        await stream.reset()
                    except Exception as reset_exc:  # already broken
                        _logger.debug("raft stream reset failed: %r", reset_exc)
            return False
        self._counters.frames_sent_total += len(frames)
        self._counters.writes_total += 1
        return True

    def close(self) -> None:
        self._send.close()


async def serve_raft_stream(
    stream: INetStream,
    peer: str,
    deliver: Callable[[str, bytes], None],
    *,
    frame_bytes_max: int,
    counters: RaftCounters,
) -> None:
    """Read frames until the peer closes the stream; a malformed one resets it."""
    reader = FrameReader(stream, frame_bytes_max)
    try:
        while (payload := await reader.read_frame()) is not None:
            counters.frames_received_total += 1
            deliver(peer, payload)
    except PeerProtocolError as exc:
        counters.protocol_errors_total += 1
        _logger.warning("raft stream from %s reset: %s", peer, exc.detail)
        await stream.reset()
    except trio.Cancelled:
        raise
    except Exception as exc:  # the connection went away under the reader
        _logger.debug("raft stream from %s ended: %r", peer, exc)
