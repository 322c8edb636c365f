"""The consensus transport /baas/raft/1.0.0 between real P2PNodes on loopback."""

from __future__ import annotations

import asyncio
import threading

import pytest
from libp2p.stream_muxer.yamux import yamux
from test_p2p_node import TIMEOUTS, Member, MemoryHandler, make_members, wait_for

from node.config import NodeLimits
from node.p2p.raft_link import coalesce
from node.p2p.service import P2PNode

pytestmark = pytest.mark.timeout(60)


class Inbox:
    """Collects (peer, payload) as the trio thread delivers them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames: list[tuple[str, bytes]] = []

    def __call__(self, peer: str, payload: bytes) -> None:
        with self.lock:
            self.frames.append((peer, payload))

    def payloads(self, peer: str) -> list[bytes]:
        with self.lock:
            return [p for who, p in self.frames if who == peer]


def raft_node(me: Member, members: list[Member], inbox: Inbox | None, **limits: int) -> P2PNode:
    return P2PNode(
        identity_seed=me.seed,
        listen_addr=me.addr,
        members=[m.entry() for m in members],
        limits=NodeLimits(**limits),
        timeouts=TIMEOUTS,
        handler=MemoryHandler(),
        raft_inbox=inbox,
    )


async def test_frames_arrive_in_order_and_each_peer_is_told_apart() -> None:
    members = make_members(3)
    inboxes = [Inbox() for _ in members]
    nodes = [raft_node(m, members, box) for m, box in zip(members, inboxes, strict=True)]
    for node in nodes:
        await node.start()
    try:
        a, b, c = nodes
        for i in range(300):
            assert a.send_raft(b.peer_id, f"a{i}".encode())
            assert c.send_raft(b.peer_id, f"c{i}".encode())
        await wait_for(lambda: len(inboxes[1].frames) == 600, timeout_s=10)
        assert inboxes[1].payloads(a.peer_id) == [f"a{i}".encode() for i in range(300)]
        assert inboxes[1].payloads(c.peer_id) == [f"c{i}".encode() for i in range(300)]
        assert a.raft_stats()["frames_sent_total"] == 300
        assert b.raft_stats()["frames_received_total"] == 600
        # The burst queued while the stream opened went out in fewer writes than frames, and
        # the reader still told every frame apart, in order (above).
        assert a.raft_stats()["writes_total"] < 300
        # Not a member: dropped at once, counted, nothing sent.
        assert not a.send_raft("12D3KooWNotAMember", b"x")
        assert a.raft_stats()["frames_dropped_total"] == 1
    finally:
        for node in nodes:
            await node.stop()


async def test_a_down_peer_costs_dropped_frames_not_a_blocked_sender() -> None:
    members = make_members(2)
    inbox = Inbox()
    a = raft_node(members[0], members, Inbox(), raft_queue_frames_max=16)
    await a.start()
    try:
        b_id = members[1].peer_id
        started = asyncio.get_running_loop().time()
        results = [a.send_raft(b_id, b"hb") for _ in range(200)]
        assert asyncio.get_running_loop().time() - started < 0.5  # never waits for the peer
        assert all(results)  # handed to the trio thread; the outbox decides there
        await wait_for(lambda: a.raft_stats()["frames_dropped_total"] >= 150, timeout_s=10)
        # The peer comes up: frames flow again, through a freshly opened stream.
        b = raft_node(members[1], members, inbox)
        await b.start()
        try:

            def delivered() -> bool:
                a.send_raft(b_id, b"after")
                return b"after" in inbox.payloads(a.peer_id)

            await wait_for(delivered, timeout_s=10)
        finally:
            await b.stop()
    finally:
        await a.stop()


async def test_oversized_frames_are_dropped_and_a_node_without_raft_refuses_streams() -> None:
    members = make_members(2)
    inbox = Inbox()
    a = raft_node(
        members[0], members, Inbox(), p2p_frame_bytes_max=4 * 1024 * 1024, read_batch_records_max=4
    )
    b = raft_node(members[1], members, None)  # no consensus here: raft streams are refused
    await a.start()
    await b.start()
    try:
        await wait_for(lambda: b.peer_id in a.connected_peers())
        a.send_raft(b.peer_id, b"x" * (4 * 1024 * 1024 + 1))
        await wait_for(lambda: a.raft_stats()["frames_dropped_total"] == 1)
        for _ in range(5):
            a.send_raft(b.peer_id, b"hello")
        await wait_for(lambda: a.raft_stats()["frames_dropped_total"] >= 2, timeout_s=10)
        assert b.raft_stats()["frames_received_total"] == 0
        assert not inbox.frames
    finally:
        await a.stop()
        await b.stop()


def test_coalesce_takes_what_is_queued_up_to_the_write_bound() -> None:
    queued = [b"b" * 10, b"c" * 10, b"d" * 10, b"e"]

    def take() -> bytes | None:
        return queued.pop(0) if queued else None

    assert coalesce(b"a" * 10, take, bytes_max=25) == [b"a" * 10, b"b" * 10, b"c" * 10]
    assert coalesce(b"x" * 99, take, bytes_max=25) == [b"x" * 99]  # a large frame goes alone
    assert coalesce(b"y", take, bytes_max=25) == [b"y", b"d" * 10, b"e"]  # the queue ran dry
    assert coalesce(b"z", take, bytes_max=25) == [b"z"]


async def test_a_read_frame_does_not_cost_a_window_update_frame_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """py-libp2p answers every stream read with a WINDOW_UPDATE frame unless told not to
    (node/p2p/host.py: tune_yamux); credit then goes back in bulk."""
    updates = 0
    original = yamux.YamuxStream.send_window_update

    async def counted(self: yamux.YamuxStream, increment: int, skip_lock: bool = False) -> None:
        nonlocal updates
        updates += 1
        await original(self, increment, skip_lock)

    monkeypatch.setattr(yamux.YamuxStream, "send_window_update", counted)
    members = make_members(2)
    inbox = Inbox()
    nodes = [raft_node(members[0], members, Inbox()), raft_node(members[1], members, inbox)]
    for node in nodes:
        await node.start()
    try:
        a, b = nodes
        await wait_for(lambda: b.peer_id in a.connected_peers())
        frames = 200
        for i in range(frames):  # one at a time: each its own write and its own read
            assert a.send_raft(b.peer_id, f"f{i}".encode())
            await wait_for(lambda i=i: len(inbox.frames) == i + 1, timeout_s=10)
        # 274 without the setting (one per read, and more), ~155 with it.
        assert updates < frames, updates
    finally:
        for node in nodes:
            await node.stop()
