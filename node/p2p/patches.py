"""Runtime fixes for py-libp2p 0.8.1 that this node cannot run without.

The inbound-slot bug: ``Swarm._do_handle_inbound_connection`` keeps each accepted connection's
handler (and its inbound slot) alive with ``await self.manager.wait_finished()``, i.e. until the
whole swarm stops. After 250 inbound connections over a node's lifetime (max_connections 300 -
min_connections 50) the node refuses every inbound connection, even from new peers, and leaks
one task per connection. A storage node lives through far more reconnects than that, so we
replace the handler with one that waits for *that connection* to close (or the swarm to stop,
whichever comes first), which frees the slot and the task.

The closed-listener bug: ``TCPListener.get_addrs`` calls ``getsockname`` on every listener
socket, closed or not. While a host closes, an inbound identify handler still running asks
for the host's addresses, gets ``OSError(EBADF)`` and the error tears down the whole
``host.run`` nursery (seen in CI: a churning peer's stop failed this way). The patched
method leaves closed sockets out: a closed listener listens on nothing.

The patch is applied idempotently by :func:`apply_patches` (called when a host is built). It
refuses any libp2p version other than the one it was written and tested against: an upgrade
must re-check whether the bug is still there and whether the copied code still matches.
"""

from __future__ import annotations

import logging
from importlib.metadata import version as _dist_version
from typing import Any

import trio
from libp2p.abc import IMuxedConn
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.swarm import Swarm
from libp2p.transport.tcp.tcp import TCPListener, _multiaddr_from_socket

from node.errors import InvariantViolation

__all__ = ["PATCHED_LIBP2P_VERSION", "apply_patches", "patches_applied", "revert_patches"]

PATCHED_LIBP2P_VERSION = "0.8.1"
_MARK = "_baas_inbound_slot_patch"
_logger = logging.getLogger(__name__)
_original_handler: Any = None
_original_get_addrs: Any = None


async def _wait_closed_or_swarm_done(swarm: Swarm, muxed_conn: IMuxedConn) -> None:
    """Return when this connection closes, or when the swarm's service finishes."""
    closed = getattr(muxed_conn, "event_closed", None)
    if not isinstance(closed, trio.Event):
        # Unknown muxer without a close event: keep the library's behaviour rather than guess.
        await swarm.manager.wait_finished()
        return
    async with trio.open_nursery() as nursery:

        async def _on_swarm_done() -> None:
            await swarm.manager.wait_finished()
            nursery.cancel_scope.cancel()

        nursery.start_soon(_on_swarm_done)
        await closed.wait()
        nursery.cancel_scope.cancel()


async def _do_handle_inbound_connection(
    self: Swarm, read_write_closer: Any, maddr: Any, failure_event: Any
) -> None:
    """Copy of Swarm._do_handle_inbound_connection (0.8.1), waiting on the connection's close.

    Only the two ``wait_finished`` barriers differ from the original.
    """
    remote_maddr = self._build_remote_multiaddr(read_write_closer)
    if remote_maddr is not None and not await self.connection_gate.is_allowed(remote_maddr):
        try:
            await read_write_closer.close()
            failure_event.conn_incoming_error = True
            if self.metric_send_channel is not None:
                await self.metric_send_channel.send(failure_event)
        except Exception:
            pass
        return

    if isinstance(read_write_closer, IMuxedConn):
        try:
            muxed = read_write_closer
            await self.add_conn(muxed, direction="inbound")
            await _wait_closed_or_swarm_done(self, muxed)
        except Exception:
            await read_write_closer.close()
            failure_event.conn_incoming_error = True
            if self.metric_send_channel is not None:
                await self.metric_send_channel.send(failure_event)
        return

    raw_conn = None
    try:
        raw_conn = RawConnection(read_write_closer, False)
        muxed_conn = await self.upgrade_inbound_raw_conn(raw_conn, maddr)
        await _wait_closed_or_swarm_done(self, muxed_conn)
    except Exception as exc:
        _logger.debug("inbound connection failed: %s", exc)
        try:
            if raw_conn is not None:
                await raw_conn.close()
            else:
                await read_write_closer.close()
                failure_event.conn_incoming_error = True
                if self.metric_send_channel is not None:
                    await self.metric_send_channel.send(failure_event)
        except Exception:
            pass


def _get_addrs_of_open_listeners(self: TCPListener) -> tuple[Any, ...]:
    """Copy of TCPListener.get_addrs (0.8.1) that skips sockets already closed."""
    return tuple(
        _multiaddr_from_socket(listener.socket)
        for listener in self.listeners
        if listener.socket.fileno() != -1
    )


def apply_patches() -> None:
    """Install the fixes once; raise if the installed libp2p is not the audited version."""
    global _original_handler, _original_get_addrs
    installed = _dist_version("libp2p")
    if installed != PATCHED_LIBP2P_VERSION:
        raise InvariantViolation(
            f"node.p2p.patches was written for libp2p {PATCHED_LIBP2P_VERSION}, found "
            f"{installed}: re-check the inbound-slot bug and update the patch"
        )
    if getattr(Swarm._do_handle_inbound_connection, _MARK, False):
        return
    _original_handler = Swarm._do_handle_inbound_connection
    setattr(_do_handle_inbound_connection, _MARK, True)
    Swarm._do_handle_inbound_connection = _do_handle_inbound_connection  # type: ignore[method-assign]
    _original_get_addrs = TCPListener.get_addrs
    TCPListener.get_addrs = _get_addrs_of_open_listeners  # type: ignore[method-assign]


def revert_patches() -> None:
    """Restore the library's original code (only for demonstrating the bug in a test)."""
    global _original_handler, _original_get_addrs
    if _original_handler is not None:
        Swarm._do_handle_inbound_connection = _original_handler  # type: ignore[method-assign]
        _original_handler = None
    if _original_get_addrs is not None:
        TCPListener.get_addrs = _original_get_addrs  # type: ignore[method-assign]
        _original_get_addrs = None


def patches_applied() -> bool:
    return bool(getattr(Swarm._do_handle_inbound_connection, _MARK, False))
