"""The asyncio-facing p2p node: one object the rest of a storage node talks to.

:class:`P2PNode` owns the trio thread (through :mod:`node.p2p.bridge`), the members-only libp2p
host (:mod:`node.p2p.host`), the shard protocol client pools and server
(:mod:`node.p2p.shard_protocol`), and keeps every other cluster member connected:

* on start it dials every member in the background (so a restarted node dials its peers, and
  they learn its possibly new address from that inbound connection);
* a keeper task redials members that are not connected every ``p2p_reconnect_interval_s``,
  first lifting libp2p's 60 s block of failed peers (``unblock_peer``) so a restarted peer is
  back within about a second;
* when a member connects, its listen address is read over identify; a changed address
  replaces the old one in the peerstore (an old address left there keeps dials failing).

The handler's ``serve()`` and ``handle()`` run on the trio thread, in trio.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol, TypeVar

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.identity.identify.identify import ID as IDENTIFY_PROTOCOL
from libp2p.identity.identify.pb.identify_pb2 import Identify as IdentifyMsg
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.utils.varint import read_length_prefixed_protobuf

from node.config import ClusterMember, NodeLimits, NodeTimeouts
from node.errors import ConfigError, PeerUnavailable
from node.p2p.bridge import TrioBridge
from node.p2p.host import admit_member, build_host, ensure_listen_port_free
from node.p2p.identity import keypair_of_seed, peer_id_of_seed
from node.p2p.messages import Message
from node.p2p.raft_link import RAFT_PROTOCOL, RaftCounters, RaftOutbox, serve_raft_stream
from node.p2p.shard_protocol import SHARD_PROTOCOL, Counters, PeerClient, serve_stream

__all__ = ["P2PNode", "ShardRequestHandler"]

T = TypeVar("T")

_logger = logging.getLogger(__name__)
_IDENTIFY_TIMEOUT_S = 2.0
_CLOSE_TIMEOUT_S = 3.0
_SOCKET_SEARCH_DEPTH = 8


class ShardRequestHandler(Protocol):
    """What a node plugs into the p2p layer. Both methods run on the trio thread."""

    async def serve(self) -> None:
        """A long-running task started before listening (e.g. a group-commit loop)."""
        ...

    async def handle(self, message: Message, from_peer: str) -> Message:
        """Answer one request; raise a BaasError to reply with an ErrorReply."""
        ...


def _tcp_only(addr: multiaddr.Multiaddr) -> str | None:
    """``/ip4/<ip>/tcp/<port>`` of an advertised address, without any ``/p2p/...`` suffix."""
    text = str(addr)
    parts = text.split("/")
    if len(parts) >= 5 and parts[1] in ("ip4", "ip6") and parts[3] == "tcp":
        return "/".join(parts[:5])
    return None


def _unblock(host: IHost, peer: ID) -> None:
    """Lift the swarm's 60 s redial block of a peer (a Swarm method, not on the interface)."""
    network = host.get_network()
    if isinstance(network, Swarm):
        network.unblock_peer(peer)


def _force_close_socket(conn: INetConn) -> None:
    """Close the TCP socket under a connection (Yamux -> Noise -> raw -> trio socket)."""
    layer: object = conn.muxed_conn
    for _ in range(_SOCKET_SEARCH_DEPTH):
        if isinstance(layer, trio.socket.SocketType):
            layer.close()
            return
        for attr in ("secured_conn", "conn", "stream", "socket"):
            inner = getattr(layer, attr, None)
            if inner is not None and inner is not layer:
                layer = inner
                break
        else:
            return


async def _count_trio_tasks() -> int:
    count = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


class _Notifee(INotifee):
    """Forwards connection events to the node (trio thread)."""

    def __init__(self, node: P2PNode) -> None:
        self._node = node

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._node._on_connected(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._node._on_disconnected(conn)

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


class P2PNode:
    """A storage node's libp2p presence: members-only host + shard protocol, from asyncio."""

    def __init__(
        self,
        *,
        identity_seed: bytes,
        listen_addr: str,
        members: Sequence[ClusterMember],
        limits: NodeLimits,
        timeouts: NodeTimeouts,
        handler: ShardRequestHandler,
        raft_inbox: Callable[[str, bytes], None] | None = None,
    ) -> None:
        limits.validate()
        timeouts.validate()
        self._seed = identity_seed
        self._peer_id = peer_id_of_seed(identity_seed)
        self._listen_addr = listen_addr
        self._limits = limits
        self._timeouts = timeouts
        self._handler = handler
        # Called on the trio thread with (peer id, payload) for every inbound Raft frame; it
        # must hand the payload on without blocking (node/p2p/raft_link.py).
        self._raft_inbox = raft_inbox
        self._raft_counters = RaftCounters()
        self._raft_outboxes: dict[str, RaftOutbox] = {}
        # Frames per peer handed to the trio thread / taken by it: each counter is written by
        # one thread only, so their difference is the frames still crossing the bridge.
        self._raft_posted: dict[str, int] = {}
        self._raft_taken: dict[str, int] = {}
        member_ids = [m.peer_id for m in members]
        if len(set(member_ids)) != len(member_ids):
            raise ConfigError("duplicate peer id in the member list")
        # Grows when a member joins through the log (add_member); rebinding is atomic.
        self._members = frozenset(member_ids)
        # Where to dial each other member; replaced when it shows up elsewhere.
        self._addrs: dict[str, str] = {
            m.peer_id: m.p2p_addr for m in members if m.peer_id != self._peer_id
        }
        self._bridge = TrioBridge(calls_max=limits.p2p_bridge_calls_max)
        self._counters = Counters()
        # Published for the asyncio thread: rebinding a reference is atomic under the GIL.
        self._connected: frozenset[str] = frozenset()
        self._listen_addrs: tuple[str, ...] = ()
        # Trio-thread state (set in _trio_run).
        self._host: IHost | None = None
        self._clients: dict[str, PeerClient] = {}
        self._serve_limiters: dict[str, trio.Semaphore] = {}
        self._dialing: set[str] = set()
        self._dial_failed_at: dict[str, float] = {}  # trio clock of a member's last failed dial
        self._live_conns: set[INetConn] = set()
        self._wake_keeper: trio.Event | None = None
        self._stopping: trio.Event | None = None
        self._finished: trio.Event | None = None
        self._nursery: trio.Nursery | None = None

    # -- asyncio API --------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        """Addresses actually listened on (``/ip4/.../tcp/<port>``), known after start."""
        return self._listen_addrs

    async def start(self) -> None:
        """Start the trio thread, handler.serve(), listen; dial members in the background."""
        await self._bridge.start()
        try:
            await self._bridge.call(self._trio_start)
        except BaseException:
            await self._bridge.stop()
            raise

    async def stop(self) -> None:
        """Close every connection and stream, stop the trio thread and join it."""
        if self._bridge.running:
            with contextlib.suppress(PeerUnavailable):
                await self._bridge.call(self._trio_stop)
        await self._bridge.stop()

    async def request(
        self, peer_id: str, message: Message, *, timeout_s: float | None = None
    ) -> Message:
        """Send one request and await its reply (an ErrorReply from the peer is returned)."""
        timeout = self._timeouts.p2p_request_s if timeout_s is None else timeout_s
        if peer_id == self._peer_id:
            return await self._bridge.call(lambda: self._handle_local(message, timeout))
        if peer_id not in self._addrs:
            raise PeerUnavailable(f"{peer_id} is not a cluster member")
        return await self._bridge.call(lambda: self._trio_request(peer_id, message, timeout))

    def send_raft(self, peer_id: str, payload: bytes) -> bool:
        """Queue one Raft frame for ``peer_id`` without waiting (False: dropped and counted).

        Raft retransmits what is lost, so a full queue or an unreachable peer drops frames
        instead of ever blocking the consensus loop.
        """
        if peer_id not in self._addrs:
            self._raft_counters.frames_dropped_total += 1
            return False
        if not self._bridge.post(lambda: self._offer_raft(peer_id, payload)):
            self._raft_counters.frames_dropped_total += 1
            return False
        self._raft_posted[peer_id] = self._raft_posted.get(peer_id, 0) + 1
        return True

    def raft_backlog(self, peer_id: str) -> int:
        """Frames for ``peer_id`` not yet written (a snapshot transfer paces on it)."""
        crossing = self._raft_posted.get(peer_id, 0) - self._raft_taken.get(peer_id, 0)
        outbox = self._raft_outboxes.get(peer_id)
        return max(0, crossing) + (0 if outbox is None else outbox.queued_frames)

    def raft_stats(self) -> dict[str, int]:
        c = self._raft_counters
        return {
            "frames_sent_total": c.frames_sent_total,
            "frames_dropped_total": c.frames_dropped_total,
            "writes_total": c.writes_total,
            "frames_received_total": c.frames_received_total,
            "streams_opened_total": c.streams_opened_total,
            "protocol_errors_total": c.protocol_errors_total,
        }

    async def update_peer_address(self, peer_id: str, addr: str) -> None:
        """Dial ``peer_id`` at ``addr`` from now on (e.g. after it moved to another port)."""

        async def _update() -> None:
            self._set_addr(peer_id, addr)

        await self._bridge.call(_update)

    async def trio_task_count(self) -> int:
        """Number of live tasks on the trio thread (for leak checks and metrics)."""
        return await self._bridge.call(_count_trio_tasks)

    def connected_peers(self) -> frozenset[str]:
        return self._connected

    def stats(self) -> dict[str, int]:
        c = self._counters
        clients = list(self._clients.values())
        return {
            "connected_peers": len(self._connected),
            "streams_open": c.streams_open,
            "streams_in_use": sum(p.streams_in_use for p in clients),
            "streams_max": self._limits.p2p_streams_per_peer_max * len(self._addrs),
            "streams_opened_total": c.streams_opened_total,
            "streams_broken_total": c.streams_broken_total,
            "requests_inflight": c.requests_inflight,
            "requests_sent_total": c.requests_sent_total,
            "requests_failed_total": c.requests_failed_total,
            "requests_timed_out_total": c.requests_timed_out_total,
            "requests_overloaded_total": c.requests_overloaded_total,
            "inbound_streams": c.inbound_streams,
            "inbound_streams_refused_total": c.inbound_streams_refused_total,
            "requests_handling": c.requests_handling,
            "requests_served_total": c.requests_served_total,
            "protocol_errors_total": c.protocol_errors_total,
            "refused_peers_total": c.refused_peers_total,
            "bridge_calls_inflight": self._bridge.inflight,
        }

    # -- trio side: lifecycle -----------------------------------------------------------------

    async def _trio_start(self) -> None:
        """Start the node's long-lived task in the root nursery; fail if it cannot listen."""
        ready = trio.Event()
        failures: list[Exception] = []

        async def _run() -> None:
            try:
                await self._trio_run(ready)
            except Exception as exc:
                if ready.is_set():
                    # After start nobody awaits this task: log it rather than take the whole
                    # trio thread (and every other call in flight) down with it.
                    _logger.exception("p2p node stopped on an error")
                else:
                    failures.append(exc)
                    ready.set()

        self._bridge.nursery.start_soon(_run)
        await ready.wait()
        if failures:
            raise failures[0]

    async def _trio_run(self, ready: trio.Event) -> None:
        ensure_listen_port_free(self._listen_addr)
        host = build_host(
            keypair_of_seed(self._seed), self._listen_addr, self._members, self._on_refused
        )
        self._host = host
        self._stopping = trio.Event()
        self._finished = trio.Event()
        self._wake_keeper = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._handler.serve)
                async with host.run(listen_addrs=[multiaddr.Multiaddr(self._listen_addr)]):
                    try:
                        host.set_stream_handler(SHARD_PROTOCOL, self._on_inbound_stream)
                        if self._raft_inbox is not None:
                            host.set_stream_handler(RAFT_PROTOCOL, self._on_raft_stream)
                        host.get_network().register_notifee(_Notifee(self))
                        self._listen_addrs = self._read_listen_addrs()
                        if not self._listen_addrs:  # libp2p reports this only in its logs
                            raise ConfigError(f"cannot listen on {self._listen_addr}")
                        nursery.start_soon(self._keeper)
                        ready.set()
                        await self._stopping.wait()
                    finally:
                        with trio.CancelScope(shield=True):
                            await self._close_host(host)
                nursery.cancel_scope.cancel()
        finally:
            self._finished.set()

    async def _close_host(self, host: IHost) -> None:
        """Close every stream and connection, then the sockets themselves."""
        for conns in host.get_network().get_connections_map().values():
            self._live_conns.update(conns)
        # Close explicitly: cancelling host.run alone leaves the sockets open, and peers would
        # keep a dead connection (and never redial) until TCP times out.
        with trio.move_on_after(_CLOSE_TIMEOUT_S):
            for outbox in self._raft_outboxes.values():
                outbox.close()
            for client in list(self._clients.values()):
                await client.close()
            await host.close()
        # Belt and braces: close every socket we ever saw connected, hard, in case close()
        # gave up on one; a socket left open is a dead connection that the peer keeps.
        for conn in list(self._live_conns):
            _force_close_socket(conn)
        self._live_conns.clear()

    def _read_listen_addrs(self) -> tuple[str, ...]:
        assert self._host is not None
        found = (_tcp_only(a) for a in self._host.get_transport_addrs())
        return tuple(a for a in found if a)

    async def _trio_stop(self) -> None:
        """Ask the node task to shut down and wait until it has closed everything."""
        if self._stopping is not None and self._finished is not None:
            self._stopping.set()
            await self._finished.wait()

    # -- trio side: requests ------------------------------------------------------------------

    async def _handle_local(self, message: Message, timeout_s: float) -> Message:
        with trio.move_on_after(timeout_s) as scope:
            return await self._handler.handle(message, self._peer_id)
        assert scope.cancelled_caught
        raise PeerUnavailable(f"local handler did not answer in {timeout_s} s")

    async def _trio_request(self, peer_id: str, message: Message, timeout_s: float) -> Message:
        return await self._client(peer_id).request(message, timeout_s)

    def _client(self, peer_id: str) -> PeerClient:
        client = self._clients.get(peer_id)
        if client is None:
            if self._host is None or self._nursery is None:
                raise PeerUnavailable("p2p layer is not running")
            client = PeerClient(
                self._host,
                peer_id,
                self._nursery,
                streams_max=self._limits.p2p_streams_per_peer_max,
                inflight_max=self._limits.p2p_inflight_requests_per_peer_max,
                frame_bytes_max=self._limits.p2p_frame_bytes_max,
                counters=self._counters,
                ensure_connected=self._ensure_connected,
            )
            self._clients[peer_id] = client
        return client

    def _offer_raft(self, peer_id: str, payload: bytes) -> None:
        self._raft_taken[peer_id] = self._raft_taken.get(peer_id, 0) + 1
        outbox = self._raft_outboxes.get(peer_id)
        if outbox is None:
            if self._host is None or self._nursery is None:
                self._raft_counters.frames_dropped_total += 1
                return
            outbox = RaftOutbox(
                self._host,
                peer_id,
                queue_frames_max=self._limits.raft_queue_frames_max,
                frame_bytes_max=self._limits.p2p_frame_bytes_max,
                write_bytes_max=self._limits.raft_write_bytes_max,
                counters=self._raft_counters,
                ensure_connected=self._ensure_connected,
            )
            self._raft_outboxes[peer_id] = outbox
            self._nursery.start_soon(outbox.run)
        outbox.offer(payload)

    async def on_trio(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` on the libp2p (trio) thread, where the shard store's committer runs."""
        return await self._bridge.call(call)

    async def add_member(self, peer_id: str, p2p_addr: str) -> None:
        """Admit and dial a member that joined the cluster (committed in the log)."""
        if peer_id == self._peer_id or (
            peer_id in self._members and self._addrs.get(peer_id) == p2p_addr
        ):
            return
        ID.from_base58(peer_id)  # a malformed id fails here, before anything changes
        multiaddr.Multiaddr(p2p_addr)
        await self._bridge.call(partial(self._trio_add_member, peer_id, p2p_addr))

    async def _trio_add_member(self, peer_id: str, p2p_addr: str) -> None:
        self._members = self._members | {peer_id}
        if self._host is not None:
            admit_member(self._host, peer_id)
        self._addrs.setdefault(peer_id, p2p_addr)
        self._set_addr(peer_id, p2p_addr)
        if self._wake_keeper is not None:
            self._wake_keeper.set()

    async def _admit_stream(self, stream: INetStream, peer: str) -> bool:
        """Refuse (reset) a stream from a non-member or beyond ``p2p_inbound_streams_max``."""
        if peer not in self._members or peer == self._peer_id:
            self._counters.refused_peers_total += 1
            await stream.reset()
            return False
        if self._counters.inbound_streams >= self._limits.p2p_inbound_streams_max:
            self._counters.inbound_streams_refused_total += 1
            await stream.reset()
            return False
        return True

    async def _on_raft_stream(self, stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        if self._raft_inbox is None:
            self._counters.refused_peers_total += 1
            await stream.reset()
            return
        if not await self._admit_stream(stream, peer):
            return
        self._counters.inbound_streams += 1
        try:
            await serve_raft_stream(
                stream,
                peer,
                self._raft_inbox,
                frame_bytes_max=self._limits.p2p_frame_bytes_max,
                counters=self._raft_counters,
            )
        finally:
            self._counters.inbound_streams -= 1

    async def _on_inbound_stream(self, stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        # Membership is enforced in the Noise handshake already; this is defence in depth.
        if not await self._admit_stream(stream, peer):
            return
        limiter = self._serve_limiters.get(peer)
        if limiter is None:
            limiter = trio.Semaphore(self._limits.p2p_inflight_requests_per_peer_max)
            self._serve_limiters[peer] = limiter
        self._counters.inbound_streams += 1
        try:
            await serve_stream(
                stream,
                peer,
                self._handler.handle,
                limiter=limiter,
                counters=self._counters,
                frame_bytes_max=self._limits.p2p_frame_bytes_max,
            )
        finally:
            self._counters.inbound_streams -= 1

    # -- trio side: membership and connectivity ----------------------------------------------

    def _on_refused(self, peer: ID) -> None:
        self._counters.refused_peers_total += 1
        _logger.warning("refused a connection from non-member peer %s", peer)

    def _publish_connected(self) -> None:
        if self._host is None:
            return
        network = self._host.get_network()
        self._connected = frozenset(
            str(peer) for peer, conns in network.get_connections_map().items() if conns
        )

    def _on_connected(self, conn: INetConn) -> None:
        self._dial_failed_at.pop(str(conn.muxed_conn.peer_id), None)
        self._live_conns.add(conn)
        self._publish_connected()
        peer = str(conn.muxed_conn.peer_id)
        if self._nursery is not None and peer in self._addrs:
            self._nursery.start_soon(self._learn_address, peer)

    def _on_disconnected(self, conn: INetConn) -> None:
        self._live_conns.discard(conn)
        self._publish_connected()
        peer = conn.muxed_conn.peer_id
        if self._host is not None:
            # A dead peer is blocked from redial for 60 s by default; we want it back at once.
            _unblock(self._host, peer)
        if self._wake_keeper is not None:
            self._wake_keeper.set()

    def _set_addr(self, peer_id: str, addr: str) -> None:
        if peer_id not in self._addrs:
            raise PeerUnavailable(f"{peer_id} is not a cluster member")
        self._addrs[peer_id] = addr
        if self._host is not None:
            peer = ID.from_base58(peer_id)
            # Drop the old address first: left in the peerstore it keeps dials failing.
            self._host.get_peerstore().clear_addrs(peer)
            self._host.get_peerstore().add_addrs(peer, [multiaddr.Multiaddr(addr)], 0)
            _unblock(self._host, peer)

    async def _learn_address(self, peer_id: str) -> None:
        """Ask a newly connected member (identify) where it listens; adopt a new address."""
        if self._host is None:
            return
        try:
            with trio.fail_after(_IDENTIFY_TIMEOUT_S):
                stream = await self._host.new_stream(ID.from_base58(peer_id), [IDENTIFY_PROTOCOL])
                try:
                    data = await read_length_prefixed_protobuf(stream, use_varint_format=True)
                finally:
                    await stream.close()
        except (trio.TooSlowError, Exception) as exc:
            _logger.debug("identify of %s failed: %r", peer_id, exc)
            return
        msg = IdentifyMsg()
        msg.ParseFromString(data)
        addrs = []
        for raw in msg.listen_addrs:
            try:
                addr = _tcp_only(multiaddr.Multiaddr(raw))
            except Exception:
                continue
            if addr is not None:
                addrs.append(addr)
        if addrs and self._addrs.get(peer_id) not in addrs:
            _logger.info("member %s now listens on %s", peer_id, addrs[0])
            self._set_addr(peer_id, addrs[0])

    async def _ensure_connected(self, peer_id: str) -> None:
        if peer_id in self._connected:
            return
        if peer_id in self._dial_failed_at:
            # Circuit open: a dial failed, so fail fast instead of queueing every request behind
            # another dial. The keeper redials every p2p_reconnect_interval_s in the background
            # and closes the circuit when the peer is back (or the peer dials us).
            raise PeerUnavailable(f"peer {peer_id} is unreachable (last dial failed)")
        if not await self._dial(peer_id):
            self._dial_failed_at[peer_id] = trio.current_time()
            raise PeerUnavailable(f"cannot connect to peer {peer_id}")
        self._dial_failed_at.pop(peer_id, None)

    async def _dial(self, peer_id: str) -> bool:
        """One dial attempt within ``p2p_dial_s``; True once connected."""
        if self._host is None:
            return False
        peer = ID.from_base58(peer_id)
        network = self._host.get_network()
        if network.get_connections(peer):
            return True
        peerstore = self._host.get_peerstore()
        peerstore.clear_addrs(peer)
        peerstore.add_addrs(peer, [multiaddr.Multiaddr(self._addrs[peer_id])], 0)
        _unblock(self._host, peer)
        with trio.move_on_after(self._timeouts.p2p_dial_s):
            try:
                await network.dial_peer(peer)
            except Exception as exc:
                _logger.debug("dial %s failed: %r", peer_id, exc)
        self._publish_connected()
        return bool(network.get_connections(peer))

    async def _dial_in_background(self, peer_id: str) -> None:
        if peer_id in self._dialing:
            return
        self._dialing.add(peer_id)
        try:
            if await self._dial(peer_id):
                self._dial_failed_at.pop(peer_id, None)
            else:
                self._dial_failed_at[peer_id] = trio.current_time()
        finally:
            self._dialing.discard(peer_id)

    async def _keeper(self) -> None:
        """Keep every other member connected: dial now, then redial the missing ones."""
        assert self._nursery is not None
        while True:
            for peer_id in sorted(self._addrs):
                if peer_id not in self._connected and peer_id not in self._dialing:
                    self._nursery.start_soon(self._dial_in_background, peer_id)
            self._wake_keeper = trio.Event()
            with trio.move_on_after(self._timeouts.p2p_reconnect_interval_s):
                await self._wake_keeper.wait()
