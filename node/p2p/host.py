"""Build the one kind of libp2p host a node runs: TCP + Noise + Yamux, members only.

libp2p's defaults are unsafe for us (see REFERENCE.md): the default security list includes
plaintext, secio and TLS, the default muxer list includes mplex, and the default
``ConnectionConfig`` waits 250 ms after every dial. Everything is set explicitly here.

Membership is enforced inside the security handshake: :class:`MembersOnlyNoise` checks the
*authenticated* remote peer id right after Noise completes, in both directions, and fails the
handshake for anyone not in the cluster member list. The connection is closed before a muxer
is negotiated, so an unknown peer can never open a stream of any protocol. (The connection gate
of libp2p only sees IP addresses, which prove nothing about identity.)

Yamux credit: py-libp2p 0.8.1 by default sends a WINDOW_UPDATE frame back for every read of
a stream (``PY_YAMUX_RELEASE_ON_READ``, on by default), so every small raft or shard frame a
node receives costs a second frame the other way: its own yamux header, Noise encryption,
socket write, and the sender's read and decryption of it. :func:`tune_yamux` turns that off
(an operator's own setting of the variable wins): credit is then released by the library's
hysteresis (at the latest once half the receive window is consumed, as go-yamux does), so a
stream never stalls. Measured: half the window updates and ~10-35% less CPU per raft frame
between two nodes (docs/performance.md, "Frames per record").

Runs on the trio thread only.
"""

from __future__ import annotations

import logging
import os
import socket
import weakref
from collections.abc import Callable, Iterable

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost, IRawConnection, ISecureConn
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from node.errors import ConfigError
from node.p2p.patches import apply_patches

__all__ = [
    "YAMUX_RELEASE_ON_READ_ENV",
    "MembersOnlyNoise",
    "build_host",
    "ensure_listen_port_free",
    "quiet_libp2p_loggers",
    "tune_yamux",
]

# Cluster sizes are tiny; these bounds only stop runaway growth.
_MAX_CONNECTIONS = 64
_MIN_CONNECTIONS = 0
# Read by py-libp2p's yamux at every stream read (libp2p/stream_muxer/yamux/yamux.py, 0.8.1).
YAMUX_RELEASE_ON_READ_ENV = "PY_YAMUX_RELEASE_ON_READ"


def tune_yamux() -> None:
    """No WINDOW_UPDATE frame per stream read (see the module docstring); idempotent."""
    os.environ.setdefault(YAMUX_RELEASE_ON_READ_ENV, "0")


def quiet_libp2p_loggers() -> None:
    """libp2p logs chatty warnings (some via the root logger path); keep only errors."""
    for name in ("libp2p", "multiaddr", "async_service", "libp2p.tools.anyio_service"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A failed dial to a member that is down is routine here (the keeper redials every half
    # second); the TCP transport logs each one at ERROR. Our own dial failures log at DEBUG.
    logging.getLogger("libp2p.transport.tcp.tcp").setLevel(logging.CRITICAL)


class MembersOnlyNoise(NoiseTransport):
    """Noise XX that fails the handshake unless the authenticated peer is a cluster member."""

    def __init__(
        self,
        key_pair: KeyPair,
        allowed: Iterable[ID],
        on_refused: Callable[[ID], None],
    ) -> None:
        super().__init__(key_pair, noise_privkey=create_x25519_key_pair().private_key)
        self._allowed = frozenset(allowed)
        self._on_refused = on_refused

    def allow(self, peer: ID) -> None:
        """Admit a member that joined through the log (rebinding is atomic for readers)."""
        self._allowed = self._allowed | {peer}

    async def _admit(self, conn: ISecureConn) -> ISecureConn:
        remote = conn.get_remote_peer()
        if remote in self._allowed:
            return conn
        self._on_refused(remote)
        try:
            await conn.close()
        finally:
            # HandshakeFailure is what the upgrader maps to SecurityUpgradeFailure: the swarm
            # then drops the raw connection without negotiating a muxer.
            raise HandshakeFailure(f"peer {remote} is not a cluster member")

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return await self._admit(await super().secure_inbound(conn))

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return await self._admit(await super().secure_outbound(conn, peer_id))


def ensure_listen_port_free(listen_addr: str) -> None:
    """Refuse to start when another process already listens on our port.

    libp2p's TCP listener sets SO_REUSEPORT (for hole punching), so a second node started on a
    taken port binds without error and the kernel then splits inbound connections between the
    two processes. A probe bind *without* SO_REUSEPORT fails against any live listener; with
    SO_REUSEADDR it still succeeds over TIME_WAIT leftovers of our own previous run.
    """
    parts = listen_addr.split("/")
    if len(parts) != 5 or parts[3] != "tcp" or parts[1] not in ("ip4", "ip6"):
        raise ConfigError(f"listen address must be /ip4|ip6/<ip>/tcp/<port>, got {listen_addr}")
    port = int(parts[4])
    if port == 0:
        return
    family = socket.AF_INET if parts[1] == "ip4" else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((parts[2], port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {listen_addr}: {exc.strerror}") from exc


# The members-only Noise of each host built here, to admit members that join later.
_ADMISSION: weakref.WeakKeyDictionary[IHost, MembersOnlyNoise] = weakref.WeakKeyDictionary()


def build_host(
    key_pair: KeyPair,
    listen_addr: str,
    member_peer_ids: Iterable[str],
    on_refused: Callable[[ID], None],
) -> IHost:
    """A host that speaks only TCP + Noise (members only) + Yamux, with dial delay disabled."""
    apply_patches()
    tune_yamux()
    quiet_libp2p_loggers()
    allowed = [ID.from_base58(peer_id) for peer_id in member_peer_ids]
    noise = MembersOnlyNoise(key_pair, allowed, on_refused)
    sec_opt = {NOISE_PROTOCOL_ID: noise}
    muxer_opt = {TProtocol(YAMUX_PROTOCOL_ID): Yamux}
    connection_config = ConnectionConfig(
        # One connection per peer: with more, every successful dial waits a 250 ms
        # "happy eyeballs" delay for a second connection we do not want.
        max_connections_per_peer=1,
        max_connections=_MAX_CONNECTIONS,
        min_connections=_MIN_CONNECTIONS,
        # No auto-connect to random peers from the peerstore and no pruning of members: the
        # node's keeper task decides whom to dial.
        low_watermark=_MIN_CONNECTIONS,
        high_watermark=_MAX_CONNECTIONS,
    )
    host = new_host(
        key_pair=key_pair,
        sec_opt=sec_opt,
        muxer_opt=muxer_opt,
        listen_addrs=[multiaddr.Multiaddr(listen_addr)],
        connection_config=connection_config,
        enable_tcp=True,
        enable_quic=False,
        enable_mDNS=False,
        enable_upnp=False,
    )
    _disable_auto_connector(host)
    _ADMISSION[host] = noise
    return host


def admit_member(host: IHost, peer_id: str) -> None:
    """Let a member that joined after the host was built pass the members-only handshake."""
    _ADMISSION[host].allow(ID.from_base58(peer_id))


async def _no_auto_connect() -> None:
    return None


def _disable_auto_connector(host: IHost) -> None:
    """The node's keeper alone decides whom to dial (members, at their current address).

    libp2p's AutoConnector would otherwise aim for (low+high watermark)/2 connections and keep
    dialing whatever peers the peerstore holds, including stale addresses of members.
    """
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is not None:
        connector.maybe_connect = _no_auto_connect
