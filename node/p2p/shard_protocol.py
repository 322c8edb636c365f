"""The shard protocol ``/baas/shard/1.0.0`` over libp2p streams: client pool and server loop.

Runs on the trio thread only (see :mod:`node.p2p.bridge`).

Client side: per peer, a bounded pool of LONG-LIVED streams (``p2p_streams_per_peer_max``),
each carrying many requests multiplexed by request id; a stream per request would cost about
four round trips of negotiation. A request picks the least-loaded stream and opens a new one
only while every stream is busy and the pool is below its bound. A stream that breaks fails
its in-flight requests with :class:`PeerUnavailable` and leaves the pool; the next request opens
a replacement. In-flight requests per peer are bounded (over the bound: :class:`Overloaded`),
frames are bounded in size, and every request has a deadline (-> :class:`PeerUnavailable`).

Server side: a stream's frames are read in order and each request is handled in its own task
(a slow request does not hold up the ones behind it); replies are written under a per-stream
lock so frames never interleave. Concurrently handled requests are bounded per peer: when the
bound is reached the reader stops reading, which back-pressures the peer through Yamux's window.
A malformed or oversized frame (:class:`PeerProtocolError`) resets that stream only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from node.errors import (
    BaasError,
    Overloaded,
    PayloadTooLarge,
    PeerProtocolError,
    PeerUnavailable,
)
from node.p2p.messages import PROTOCOL_ID, ErrorReply, Message, decode_frame, encode_frame

__all__ = [
    "SHARD_PROTOCOL",
    "Counters",
    "FrameReader",
    "PeerClient",
    "ServeRequest",
    "serve_stream",
]

SHARD_PROTOCOL = TProtocol(PROTOCOL_ID)
_LENGTH_BYTES = 4
_READ_CHUNK_BYTES = 64 * 1024
_logger = logging.getLogger(__name__)

ServeRequest = Callable[[Message, str], Awaitable[Message]]


@dataclass(slots=True)
class Counters:
    """Mutable counters of the p2p layer, written on the trio thread only."""

    streams_open: int = 0
    streams_opened_total: int = 0
    streams_broken_total: int = 0
    requests_inflight: int = 0
    requests_sent_total: int = 0
    requests_failed_total: int = 0
    requests_timed_out_total: int = 0
    requests_overloaded_total: int = 0
    inbound_streams: int = 0
    inbound_streams_refused_total: int = 0
    requests_handling: int = 0
    requests_served_total: int = 0
    protocol_errors_total: int = 0
    refused_peers_total: int = 0


class FrameReader:
    """Reads ``u32 big-endian length || payload`` frames from a stream, with a size bound."""

    def __init__(self, stream: INetStream, frame_bytes_max: int) -> None:
        self._stream = stream
        self._frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()

    async def _fill(self, wanted: int) -> bool:
        """Buffer at least ``wanted`` bytes; False on a clean EOF at a frame boundary."""
        while len(self._buffer) < wanted:
            try:
                chunk = await self._stream.read(_READ_CHUNK_BYTES)
            except EOFError:  # libp2p's StreamEOF derives from EOFError
                chunk = b""
            if not chunk:
                if self._buffer:
                    raise PeerProtocolError("stream ended inside a frame")
                return False
            self._buffer += chunk
        return True

    async def read_frame(self) -> bytes | None:
        """The next frame's payload, or None when the peer closed the stream cleanly."""
        if not await self._fill(_LENGTH_BYTES):
            return None
        length = int.from_bytes(self._buffer[:_LENGTH_BYTES], "big")
        if length > self._frame_bytes_max:
            raise PeerProtocolError(f"frame of {length} bytes exceeds the bound")
        if not await self._fill(_LENGTH_BYTES + length):
            raise PeerProtocolError("stream ended inside a frame")
        payload = bytes(self._buffer[_LENGTH_BYTES : _LENGTH_BYTES + length])
        del self._buffer[: _LENGTH_BYTES + length]
        return payload


@dataclass(slots=True)
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    reply: Message | None = None
    error: BaasError | None = None


class _ClientStream:
    """One long-lived outbound stream carrying many requests, matched by request id."""

    def __init__(self, stream: INetStream, peer: str, frame_bytes_max: int, counters: Counters):
        self._stream = stream
        self._peer = peer
        self._reader = FrameReader(stream, frame_bytes_max)
        self._write_lock = trio.Lock()
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._counters = counters
        self.broken = False

    @property
    def load(self) -> int:
        return len(self._pending)

    async def run_reader(self) -> None:
        """Route replies to their requests until the stream ends; then fail what is left."""
        reason = "stream closed by peer"
        try:
            while True:
                payload = await self._reader.read_frame()
                if payload is None:
                    break
                request_id, reply = decode_frame(payload)
                pending = self._pending.get(request_id)
                if pending is not None:  # else: the request timed out; drop the late reply
                    pending.reply = reply
                    pending.done.set()
        except PeerProtocolError as exc:
            self._counters.protocol_errors_total += 1
            reason = f"peer sent a bad frame: {exc.detail}"
        except trio.Cancelled:
            reason = "p2p layer stopping"
            raise
        except Exception as exc:  # any libp2p stream error: the stream is gone
            reason = f"stream failed: {type(exc).__name__}"
        finally:
            await self.break_stream(reason)

    async def break_stream(self, reason: str) -> None:
        if self.broken:
            return
        self.broken = True
        self._counters.streams_open -= 1
        self._counters.streams_broken_total += 1
        for pending in self._pending.values():
            pending.error = PeerUnavailable(f"peer {self._peer}: {reason}")
            pending.done.set()
        with trio.CancelScope(shield=True), contextlib.suppress(Exception):
            await self._stream.reset()

    async def request(self, message: Message, frame_bytes_max: int) -> Message:
        request_id = self._next_id
        self._next_id += 1
        frame = encode_frame(request_id, message)
        if len(frame) - _LENGTH_BYTES > frame_bytes_max:
            raise PayloadTooLarge(f"request frame of {len(frame)} bytes exceeds the bound")
        pending = _Pending()
        self._pending[request_id] = pending
        try:
            async with self._write_lock:
                if self.broken:
                    raise PeerUnavailable(f"peer {self._peer}: stream broken")
                try:
                    await self._stream.write(frame)
                except BaseException as exc:
                    # A write cut short (error or cancellation) may leave half a frame on the
                    # stream: nothing after it could be parsed, so the stream must go.
                    await self.break_stream(f"write failed: {type(exc).__name__}")
                    if isinstance(exc, Exception):
                        raise PeerUnavailable(f"peer {self._peer}: write failed") from exc
                    raise
            await pending.done.wait()
            if pending.error is not None:
                raise pending.error
            if pending.reply is None:
                raise PeerUnavailable(f"peer {self._peer}: no reply")
            return pending.reply
        finally:
            del self._pending[request_id]


class PeerClient:
    """The client side of the shard protocol towards one peer: a bounded pool of streams."""

    def __init__(
        self,
        host: IHost,
        peer_id: str,
        nursery: trio.Nursery,
        *,
        streams_max: int,
        inflight_max: int,
        frame_bytes_max: int,
        counters: Counters,
        ensure_connected: Callable[[str], Awaitable[None]],
    ) -> None:
        self._host = host
        self._peer = peer_id
        self._id = ID.from_base58(peer_id)
        self._nursery = nursery
        self._streams_max = streams_max
        self._inflight_max = inflight_max
        self._frame_bytes_max = frame_bytes_max
        self._counters = counters
        self._ensure_connected = ensure_connected
        self._streams: list[_ClientStream] = []
        self._open_lock = trio.Lock()
        self._inflight = 0

    @property
    def streams_open(self) -> int:
        return sum(1 for s in self._streams if not s.broken)

    @property
    def streams_in_use(self) -> int:
        return sum(1 for s in self._streams if not s.broken and s.load > 0)

    async def request(self, message: Message, timeout_s: float) -> Message:
        if self._inflight >= self._inflight_max:
            self._counters.requests_overloaded_total += 1
            raise Overloaded(f"{self._inflight} requests in flight to peer {self._peer}")
        self._inflight += 1
        self._counters.requests_inflight += 1
        self._counters.requests_sent_total += 1
        try:
            with trio.fail_after(timeout_s):
                stream = await self._pick_stream()
                return await stream.request(message, self._frame_bytes_max)
        except trio.TooSlowError as exc:
            self._counters.requests_timed_out_total += 1
            self._counters.requests_failed_total += 1
            raise PeerUnavailable(f"peer {self._peer} did not answer in {timeout_s} s") from exc
        except BaasError:
            self._counters.requests_failed_total += 1
            raise
        finally:
            self._inflight -= 1
            self._counters.requests_inflight -= 1

    def _least_loaded(self) -> _ClientStream | None:
        self._streams = [s for s in self._streams if not s.broken]
        return min(self._streams, key=lambda s: s.load, default=None)

    async def _pick_stream(self) -> _ClientStream:
        best = self._least_loaded()
        if best is not None and (best.load == 0 or len(self._streams) >= self._streams_max):
            return best
        async with self._open_lock:
            # Re-check: a stream may have been opened or freed while we waited for the lock.
            best = self._least_loaded()
            if best is not None and (best.load == 0 or len(self._streams) >= self._streams_max):
                return best
            return await self._open_stream()

    async def _open_stream(self) -> _ClientStream:
        await self._ensure_connected(self._peer)
        try:
            raw = await self._host.new_stream(self._id, [SHARD_PROTOCOL])
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise PeerUnavailable(f"cannot open a stream to peer {self._peer}: {exc}") from exc
        stream = _ClientStream(raw, self._peer, self._frame_bytes_max, self._counters)
        self._counters.streams_open += 1
        self._counters.streams_opened_total += 1
        self._streams.append(stream)
        self._nursery.start_soon(stream.run_reader)
        return stream

    async def close(self) -> None:
        for stream in self._streams:
            await stream.break_stream("closing")
        self._streams.clear()


@dataclass(slots=True)
class _ServeState:
    stream: INetStream
    peer: str
    serve: ServeRequest
    limiter: trio.Semaphore
    counters: Counters
    frame_bytes_max: int
    write_lock: trio.Lock = field(default_factory=trio.Lock)


async def serve_stream(
    stream: INetStream,
    peer: str,
    serve: ServeRequest,
    *,
    limiter: trio.Semaphore,
    counters: Counters,
    frame_bytes_max: int,
) -> None:
    """Serve one inbound shard-protocol stream until it ends, fails or misbehaves."""
    state = _ServeState(stream, peer, serve, limiter, counters, frame_bytes_max)
    reader = FrameReader(stream, frame_bytes_max)
    async with trio.open_nursery() as nursery:
        try:
            while True:
                payload = await reader.read_frame()
                if payload is None:
                    break  # clean close: let the handlers in flight finish and reply
                request_id, message = decode_frame(payload)
                await limiter.acquire()  # back-pressure: stop reading while at the bound
                nursery.start_soon(_serve_one, state, request_id, message, nursery.cancel_scope)
        except PeerProtocolError as exc:
            counters.protocol_errors_total += 1
            _logger.warning("peer %s: %s; resetting the stream", peer, exc.detail)
            nursery.cancel_scope.cancel()
            await _reset(stream)
        except trio.Cancelled:
            raise
        except Exception as exc:  # the stream or connection failed: nobody to reply to
            _logger.debug("peer %s: inbound stream failed: %r", peer, exc)
            nursery.cancel_scope.cancel()
            await _reset(stream)
    with contextlib.suppress(Exception):
        await stream.close()


async def _reset(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), contextlib.suppress(Exception):
        await stream.reset()


async def _serve_one(
    state: _ServeState, request_id: int, message: Message, stream_scope: trio.CancelScope
) -> None:
    state.counters.requests_handling += 1
    try:
        try:
            reply = await state.serve(message, state.peer)
        except BaasError as exc:
            reply = ErrorReply(exc.code, exc.detail)
        except Exception:
            _logger.exception("shard request handler failed (peer %s)", state.peer)
            reply = ErrorReply("internal_error", "the node failed to handle the request")
    finally:
        state.counters.requests_handling -= 1
        state.limiter.release()
    frame = encode_frame(request_id, reply)
    if len(frame) - _LENGTH_BYTES > state.frame_bytes_max:
        frame = encode_frame(
            request_id, ErrorReply(PayloadTooLarge.code, "reply exceeds the frame bound")
        )
    try:
        async with state.write_lock:
            await state.stream.write(frame)
        state.counters.requests_served_total += 1
    except trio.Cancelled:
        raise
    except Exception as exc:
        _logger.debug("peer %s: cannot write reply: %r", state.peer, exc)
        stream_scope.cancel()
