"""Real libp2p hosts on 127.0.0.1: the shard protocol, membership, churn, restarts.

Every node is a real :class:`P2PNode` (its own trio thread) or a raw libp2p host run with
``trio.run`` in a worker thread; nothing of libp2p is mocked. Ports are ephemeral.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from node.config import ClusterMember, NodeLimits, NodeTimeouts
from node.errors import ConfigError, NotFound, PeerProtocolError, PeerUnavailable
from node.p2p.host import build_host
from node.p2p.identity import generate_identity_seed, keypair_of_seed, peer_id_of_seed
from node.p2p.messages import (
    PROTOCOL_ID,
    DeletedReply,
    DeleteShards,
    ErrorReply,
    GetShards,
    HasShards,
    Message,
    MetasReply,
    PutShards,
    PutShardsReply,
    ShardsReply,
    decode_frame,
    encode_frame,
)
from node.p2p.service import P2PNode
from node.records import ShardKey

pytestmark = pytest.mark.timeout(60)

RID = bytes(range(32))
TIMEOUTS = NodeTimeouts(p2p_dial_s=1.0, p2p_request_s=3.0, p2p_reconnect_interval_s=0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MemoryHandler:
    """A tiny in-memory shard store: PutShards stores, GetShards/HasShards answer."""

    seen_from: list[str] = field(default_factory=list)
    records: dict[bytes, list[Any]] = field(default_factory=dict)

    async def serve(self) -> None:
        await trio.sleep_forever()

    async def handle(self, message: Message, from_peer: str) -> Message:
        self.seen_from.append(from_peer)
        match message:
            case PutShards(shards):
                for shard in shards:
                    self.records.setdefault(shard.meta.record_id, []).append(shard)
                return PutShardsReply(len(shards))
            case GetShards(record_id, _):
                if record_id not in self.records:
                    raise NotFound("no such record")
                return ShardsReply(tuple(self.records[record_id]))
            case HasShards(_):
                await trio.sleep(0.001)  # yield so concurrent requests really overlap
                return MetasReply(())
        return ErrorReply("invalid_request", "unexpected message")


@dataclass
class Member:
    seed: bytes
    port: int
    name: str

    @property
    def peer_id(self) -> str:
        return peer_id_of_seed(self.seed)

    @property
    def addr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}"

    def entry(self) -> ClusterMember:
        return ClusterMember(self.name, self.peer_id, self.addr, f"127.0.0.1:{self.port + 1}")


def make_members(count: int) -> list[Member]:
    return [Member(generate_identity_seed(), free_port(), f"n{i}") for i in range(count)]


def make_node(
    me: Member, members: list[Member], handler: MemoryHandler | None = None, **limits: int
) -> P2PNode:
    return P2PNode(
        identity_seed=me.seed,
        listen_addr=me.addr,
        members=[m.entry() for m in members],
        limits=NodeLimits(**limits),
        timeouts=TIMEOUTS,
        handler=handler or MemoryHandler(),
    )


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout_s:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
    return time.perf_counter() - start


async def request_until_ok(node: P2PNode, peer: str, timeout_s: float = 5.0) -> float:
    """Retry a request until it succeeds; return how long that took."""
    start = time.perf_counter()
    while True:
        try:
            reply = await node.request(peer, HasShards(RID), timeout_s=1.0)
            assert isinstance(reply, MetasReply)
            return time.perf_counter() - start
        except PeerUnavailable:
            if time.perf_counter() - start > timeout_s:
                raise
            await asyncio.sleep(0.05)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[list[Member], P2PNode, P2PNode, MemoryHandler]]:
    members = make_members(2)
    handler_b = MemoryHandler()
    a, b = make_node(members[0], members), make_node(members[1], members, handler_b)
    await a.start()
    await b.start()
    try:
        await wait_for(lambda: b.peer_id in a.connected_peers())
        yield members, a, b, handler_b
    finally:
        await a.stop()
        await b.stop()


def run_raw_host(
    key_seed: bytes,
    body: Callable[[IHost], Awaitable[None]],
    *,
    plaintext_only: bool = False,
    allowed: list[str] | None = None,
) -> None:
    """Run ``body(host)`` with a raw libp2p host on its own trio loop (call via to_thread)."""

    async def main() -> None:
        key_pair = keypair_of_seed(key_seed)
        if plaintext_only:
            host = new_host(
                key_pair=key_pair,
                sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
                muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            )
        else:
            host = build_host(key_pair, "/ip4/127.0.0.1/tcp/0", allowed or [], lambda _: None)
        async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            await body(host)

    trio.run(main)


def peer_info(member: Member) -> PeerInfo:
    return PeerInfo(ID.from_base58(member.peer_id), [multiaddr.Multiaddr(member.addr)])


# -- request / reply -------------------------------------------------------------------------


async def test_put_get_round_trip(pair: Any) -> None:
    from node.records import Shard  # the lead's shard type; built through its own factory

    _members, a, b, handler_b = pair
    shard = _sample_shard(Shard)
    reply = await a.request(b.peer_id, PutShards((shard,)))
    assert reply == PutShardsReply(1)
    got = await a.request(b.peer_id, GetShards(shard.meta.record_id))
    assert isinstance(got, ShardsReply) and got.shards == (shard,)
    # A BaasError raised by the remote handler comes back as an ErrorReply, as-is.
    missing = await a.request(b.peer_id, GetShards(bytes(32)))
    assert missing == ErrorReply("not_found", "no such record")
    assert handler_b.seen_from == [a.peer_id] * 3


def _sample_shard(shard_cls: Any) -> Any:
    import inspect

    from node.records import ShardMeta

    params = inspect.signature(ShardMeta).parameters
    values: dict[str, Any] = {}
    for name, param in params.items():
        ann = str(param.annotation)
        if "bytes" in ann:
            values[name] = RID if "record" in name else bytes(32)
        elif "int" in ann:
            values[name] = {"k": 4, "n": 6}.get(name, 1)
        elif "str" in ann:
            values[name] = "x"
    meta = ShardMeta(**values)
    shard_params = inspect.signature(shard_cls).parameters
    kwargs = {n: (meta if n == "meta" else b"payload") for n in shard_params}
    return shard_cls(**kwargs)


async def test_many_concurrent_requests_share_a_bounded_pool(pair: Any) -> None:
    _members, a, b, _handler = pair
    start = time.perf_counter()
    replies = await asyncio.gather(*(a.request(b.peer_id, HasShards(RID)) for _ in range(200)))
    elapsed = time.perf_counter() - start
    assert all(isinstance(r, MetasReply) for r in replies)
    stats = a.stats()
    assert 1 <= stats["streams_open"] <= NodeLimits().p2p_streams_per_peer_max
    assert stats["streams_opened_total"] == stats["streams_open"]  # long-lived, reused
    assert stats["requests_inflight"] == 0 and stats["requests_failed_total"] == 0
    assert elapsed < 5.0
    # Sequential round trips reuse the same streams.
    rtts = []
    for _ in range(50):
        t0 = time.perf_counter()
        await a.request(b.peer_id, HasShards(RID))
        rtts.append(time.perf_counter() - t0)
    assert a.stats()["streams_opened_total"] == stats["streams_opened_total"]
    print(f"200 concurrent: {elapsed * 1e3:.1f} ms; RTT median {sorted(rtts)[25] * 1e3:.2f} ms")


async def test_self_request_short_circuits() -> None:
    members = make_members(2)
    handler = MemoryHandler()
    a = make_node(members[0], members, handler)
    await a.start()
    try:
        reply = await a.request(a.peer_id, HasShards(RID))
        assert isinstance(reply, MetasReply)
        assert handler.seen_from == [a.peer_id]
        assert a.stats()["requests_sent_total"] == 0  # never touched the network
    finally:
        await a.stop()


async def test_request_to_down_member_fails_fast_with_peer_unavailable() -> None:
    members = make_members(2)
    a = make_node(members[0], members)
    await a.start()
    try:
        start = time.perf_counter()
        with pytest.raises(PeerUnavailable):
            await a.request(members[1].peer_id, HasShards(RID))
        assert time.perf_counter() - start < TIMEOUTS.p2p_request_s + 0.5
        with pytest.raises(PeerUnavailable):
            await a.request(peer_id_of_seed(generate_identity_seed()), HasShards(RID))
    finally:
        await a.stop()


# -- membership ------------------------------------------------------------------------------


async def test_unknown_peer_is_refused(pair: Any) -> None:
    members, a, b, handler_b = pair
    stranger = Member(generate_identity_seed(), free_port(), "stranger")
    # The stranger thinks it is a member (its own list names b), but b's list does not name it.
    intruder = make_node(stranger, [stranger, members[1]])
    await intruder.start()
    try:
        with pytest.raises(PeerUnavailable):
            await intruder.request(b.peer_id, HasShards(RID), timeout_s=2.0)
        assert b.peer_id not in intruder.connected_peers()
        assert stranger.peer_id not in b.connected_peers()
        assert b.stats()["refused_peers_total"] >= 1
        assert handler_b.seen_from == []
    finally:
        await intruder.stop()
    # A raw Noise+Yamux host with a valid handshake cannot open our protocol either.
    outcome: dict[str, str] = {}

    async def try_stream(host: IHost) -> None:
        try:
            await host.connect(peer_info(members[1]))
            await host.new_stream(ID.from_base58(b.peer_id), [TProtocol(PROTOCOL_ID)])
            outcome["result"] = "opened"
        except Exception as exc:
            outcome["result"] = f"refused: {type(exc).__name__}"

    await asyncio.to_thread(run_raw_host, stranger.seed, try_stream, allowed=[members[1].peer_id])
    assert outcome["result"].startswith("refused"), outcome
    assert handler_b.seen_from == []
    # Members are unaffected.
    assert isinstance(await a.request(b.peer_id, HasShards(RID)), MetasReply)


async def test_plaintext_only_dialer_gets_no_session(pair: Any) -> None:
    members, _a, b, handler_b = pair
    outcome: dict[str, str] = {}

    async def try_plaintext(host: IHost) -> None:
        try:
            with trio.fail_after(5):
                await host.connect(peer_info(members[1]))
                await host.new_stream(ID.from_base58(b.peer_id), [TProtocol(PROTOCOL_ID)])
            outcome["result"] = "session"
        except Exception as exc:
            outcome["result"] = f"refused: {type(exc).__name__}"
        outcome["connected"] = str(bool(host.get_network().get_connections()))

    # Even a member's own key over plaintext must not get in.
    await asyncio.to_thread(run_raw_host, members[0].seed, try_plaintext, plaintext_only=True)
    assert outcome["result"].startswith("refused"), outcome
    assert outcome["connected"] == "False"
    assert handler_b.seen_from == []


# -- malformed frames ------------------------------------------------------------------------


async def test_malformed_frame_resets_only_that_stream(pair: Any) -> None:
    members, a, b, _handler_b = pair
    raw_member = members[0]  # speak as member a through a raw host (a second connection)
    outcome: dict[str, Any] = {}

    async def misbehave(host: IHost) -> None:
        await host.connect(peer_info(members[1]))
        peer = ID.from_base58(b.peer_id)
        bad = await host.new_stream(peer, [TProtocol(PROTOCOL_ID)])
        await bad.write(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")  # 0xc1 is never valid msgpack
        try:
            with trio.fail_after(3):
                data = await bad.read(100)
            outcome["bad"] = f"read {data!r}"
        except Exception as exc:
            outcome["bad"] = type(exc).__name__
        huge = await host.new_stream(peer, [TProtocol(PROTOCOL_ID)])
        await huge.write((2**31).to_bytes(4, "big"))  # over p2p_frame_bytes_max
        try:
            with trio.fail_after(3):
                data = await huge.read(100)
            outcome["huge"] = f"read {data!r}"
        except Exception as exc:
            outcome["huge"] = type(exc).__name__
        good = await host.new_stream(peer, [TProtocol(PROTOCOL_ID)])
        await good.write(encode_frame(7, HasShards(RID)))
        with trio.fail_after(3):
            header = await good.read(4)
            length = int.from_bytes(header[:4], "big")
            payload = header[4:]
            while len(payload) < length:
                payload += await good.read(length - len(payload))
        outcome["good"] = decode_frame(payload)

    await asyncio.to_thread(run_raw_host, raw_member.seed, misbehave, allowed=[b.peer_id])
    assert outcome["bad"] in {"StreamReset", "StreamEOF", "read b''"}, outcome
    assert outcome["huge"] in {"StreamReset", "StreamEOF", "read b''"}, outcome
    assert outcome["good"] == (7, MetasReply(()))
    assert b.stats()["protocol_errors_total"] == 2
    assert isinstance(await a.request(b.peer_id, HasShards(RID)), MetasReply)


# -- restarts --------------------------------------------------------------------------------


async def test_restarted_peer_same_port_is_back_within_seconds(pair: Any) -> None:
    members, a, b, _handler = pair
    assert isinstance(await a.request(b.peer_id, HasShards(RID)), MetasReply)
    await b.stop()
    await wait_for(lambda: b.peer_id not in a.connected_peers())
    with pytest.raises(PeerUnavailable):
        await a.request(b.peer_id, HasShards(RID), timeout_s=1.0)
    b2 = make_node(members[1], members)
    await b2.start()
    try:
        assert b2.peer_id == b.peer_id  # same identity, same peer id
        took = await request_until_ok(a, b2.peer_id)
        print(f"same port: requests succeed again {took * 1e3:.0f} ms after restart")
        assert took < 3.0
        assert isinstance(await b2.request(a.peer_id, HasShards(RID)), MetasReply)
    finally:
        await b2.stop()


async def test_restarted_peer_on_new_port_is_learned(pair: Any) -> None:
    members, a, b, _handler = pair
    await b.stop()
    await wait_for(lambda: b.peer_id not in a.connected_peers())
    moved = Member(members[1].seed, free_port(), members[1].name)
    # b comes back on a new port; a's member list still names the old one.
    b2 = make_node(moved, [members[0], moved])
    await b2.start()
    try:
        took = await request_until_ok(a, b2.peer_id)
        print(f"new port: requests succeed again {took * 1e3:.0f} ms after restart")
        assert took < 3.0
        # a learned the new address: after a drop it redials b on the new port by itself.
        await b2.stop()
        await wait_for(lambda: b.peer_id not in a.connected_peers())
        # This time b3 does not know a's address, so only a's redial can reconnect them.
        b3 = make_node(moved, [moved, Member(members[0].seed, free_port(), "n0")])
        await b3.start()
        try:
            took = await request_until_ok(a, b3.peer_id)
            assert took < 3.0
        finally:
            await b3.stop()
    finally:
        await b2.stop()


async def test_update_peer_address(pair: Any) -> None:
    members, a, b, _handler = pair
    await b.stop()
    moved = Member(members[1].seed, free_port(), members[1].name)
    # b comes back on a new port and does not know where a is: a must be told.
    b2 = make_node(moved, [moved, Member(members[0].seed, free_port(), "n0")])
    await b2.start()
    try:
        await a.update_peer_address(b.peer_id, moved.addr)
        took = await request_until_ok(a, b2.peer_id)
        assert took < 3.0
    finally:
        await b2.stop()


async def test_start_fails_loudly_when_the_port_is_taken() -> None:
    members = make_members(2)
    a = make_node(members[0], members)
    await a.start()
    try:
        clash = make_node(members[0], members)
        with pytest.raises(ConfigError):
            await clash.start()
        assert not clash.connected_peers()
        await clash.stop()  # harmless after a failed start
    finally:
        await a.stop()


def test_delete_shards_frames_round_trip_and_refuse_bad_keys() -> None:
    key = ShardKey(b"\x01" * 32, b"\x02" * 32, 4)
    frame = encode_frame(7, DeleteShards((key,)))
    assert decode_frame(frame[4:]) == (7, DeleteShards((key,)))
    assert decode_frame(encode_frame(8, DeletedReply(1))[4:]) == (8, DeletedReply(1))
    bad = msgpack.packb(
        {"v": 1, "id": 9, "op": "delete", "b": {"k": [[b"\x01" * 32, b"short", 4]]}},
        use_bin_type=True,
    )
    with pytest.raises(PeerProtocolError):
        decode_frame(bad)
