"""Malformed frames and requests against a real node (an OS process), which must stay up.

A 3-member cluster (k=2, n=3, write quorum 2) starts; once its third node has stopped, the
test speaks as that member through a real libp2p host with that member's key (so the nodes
admit it), and as a caller of the node HTTP API with the cluster's token. It sends:

* ``/baas/shard/1.0.0``: a truncated frame, an oversized length, a wrong frame version, an
  unknown message type, garbage msgpack -- each on its own stream, reset by the node; a
  protocol version it does not speak (``/baas/shard/9.0.0``) is refused at negotiation; then a
  good request on a new stream gets its answer;
* ``/baas/raft/1.0.0``: the same, plus a message type that is not a string (it used to escape
  the consensus loop's guard as a TypeError); each is dropped and counted;
* the node HTTP API: garbage msgpack, the wrong content type, a body past the bound, a body cut
  short, deep nesting, fields of the wrong type (an integer record id once made the node build
  a zero-filled buffer of that size) and msgpack values drawn by hypothesis on every POST route:
  each a 4xx problem with a stable code.

After all of it, the nodes still run, a record is written and read back through the gateway
(shards on both nodes, an index entry committed through Raft), and the counters show the node
noticed each bad frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import multiaddr
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from nodeapi import node_get, partner_client

from node.api.wire import MSGPACK
from node.consensus.messages import WIRE_VERSION
from node.p2p.host import build_host
from node.p2p.identity import keypair_of_seed, load_identity_seed
from node.p2p.messages import FRAME_VERSION, HasShards, MetasReply, decode_frame, encode_frame
from node.p2p.raft_link import RAFT_PROTOCOL
from node.p2p.shard_protocol import SHARD_PROTOCOL
from tools.cluster_init import init_cluster
from tools.local_cluster import LocalCluster

pytestmark = pytest.mark.cluster

RID = bytes(range(32))
TRUNCATED = (100).to_bytes(4, "big") + b"\x81\xa1v"  # says 100 bytes, sends 3, then closes
OVERSIZED = (2**31).to_bytes(4, "big")  # past p2p_frame_bytes_max


def _frame(payload: Any) -> bytes:
    raw = payload if isinstance(payload, bytes) else msgpack.packb(payload, use_bin_type=True)
    return len(raw).to_bytes(4, "big") + raw


# Well-framed payloads each protocol must refuse: (name, payload).
SHARD_BAD = [
    ("wrong version", {"v": FRAME_VERSION + 98, "id": 1, "op": "has", "b": {"rid": RID}}),
    ("unknown type", {"v": FRAME_VERSION, "id": 2, "op": "format_disk", "b": {}}),
    ("garbage msgpack", b"\xc1\xc1\xc1\xc1"),
    ("body not a map", {"v": FRAME_VERSION, "id": 3, "op": "has", "b": [RID]}),
]
RAFT_BAD = [
    ("wrong version", {"v": WIRE_VERSION + 98, "t": "hb"}),
    ("unknown type", {"v": WIRE_VERSION, "t": "format_disk"}),
    ("type not a string", {"v": WIRE_VERSION, "t": ["app"]}),
    ("garbage msgpack", b"\xc1\xc1\xc1\xc1"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    layout = init_cluster(
        tmp_path_factory.mktemp("frames"),
        nodes=3,
        k=2,
        n=3,
        write_quorum=2,
        partners=("shop-a",),
        chain="none",
    )
    local = LocalCluster(layout)
    local.start()
    try:
        # All three enable the log's features together; then the third member stops and this
        # test speaks with its key.
        third = layout.nodes[2].name
        local.kill(third, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while local.running(third):
            assert time.monotonic() < deadline, f"{third} did not stop"
            time.sleep(0.1)
        yield local
    finally:
        local.stop()


def _status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    status = node_get(cluster, name, "/internal/v1/status", timeout_s=5)
    assert status is not None, f"{name} does not answer"
    return dict(status)


def _as_third_member(cluster: LocalCluster, body: Callable[[IHost, ID], Awaitable[None]]) -> None:
    """Run ``body(host, target)`` on a libp2p host holding the third member's key (to_thread)."""
    directory = Path(cluster.layout.directory)
    me, target = cluster.layout.nodes[2], cluster.layout.nodes[0]
    seed = load_identity_seed(directory / me.name / "identity.key")

    async def main() -> None:
        host = build_host(
            keypair_of_seed(seed), "/ip4/127.0.0.1/tcp/0", [target.peer_id], lambda _: None
        )
        async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            peer = ID.from_base58(target.peer_id)
            await host.connect(PeerInfo(peer, [multiaddr.Multiaddr(target.p2p_addr)]))
            await body(host, peer)

    trio.run(main)


async def _outcome_of(stream: INetStream) -> str:
    """What the node did with what we wrote: reset or closed the stream, or answered."""
    try:
        with trio.fail_after(5):
            data = await stream.read(100)
        return "closed" if not data else f"answered {data!r}"
    except trio.TooSlowError:
        return "no answer"
    except Exception as exc:  # StreamReset / StreamEOF: what a node does to a bad stream
        return type(exc).__name__


async def _good_request(host: IHost, peer: ID) -> tuple[int, Any]:
    stream = await host.new_stream(peer, [SHARD_PROTOCOL])
    await stream.write(encode_frame(7, HasShards(RID)))
    with trio.fail_after(5):
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            data += await stream.read(65536)
    await stream.close()
    return decode_frame(data[4 : 4 + int.from_bytes(data[:4], "big")])


async def test_shard_protocol_bad_frames_reset_their_stream_and_the_node_serves_on(
    cluster: LocalCluster,
) -> None:
    target = cluster.layout.nodes[0].name
    before = _status(cluster, target)["p2p"]["protocol_errors_total"]
    outcomes: dict[str, Any] = {}

    async def misbehave(host: IHost, peer: ID) -> None:
        frames = [("truncated", TRUNCATED), ("oversized", OVERSIZED)]
        for name, payload in [*frames, *((n, _frame(p)) for n, p in SHARD_BAD)]:
            stream = await host.new_stream(peer, [SHARD_PROTOCOL])
            await stream.write(payload)
            if name == "truncated":
                await stream.close()  # our side ends inside the frame
            outcomes[name] = await _outcome_of(stream)
        try:  # a protocol version the node does not speak: refused at negotiation
            with trio.fail_after(10):
                await host.new_stream(peer, [TProtocol("/baas/shard/9.0.0")])
            outcomes["protocol version"] = "opened"
        except trio.TooSlowError:
            outcomes["protocol version"] = "no answer"
        except Exception as exc:
            outcomes["protocol version"] = f"refused: {type(exc).__name__}"
        outcomes["good"] = await _good_request(host, peer)

    await asyncio.to_thread(_as_third_member, cluster, misbehave)
    assert outcomes.pop("protocol version").startswith("refused"), outcomes
    assert outcomes.pop("good") == (7, MetasReply(())), outcomes
    for name, outcome in outcomes.items():
        assert outcome in {"StreamReset", "StreamEOF", "closed"}, (name, outcome)
    after = _status(cluster, target)["p2p"]["protocol_errors_total"]
    assert after - before == 2 + len(SHARD_BAD), (before, after)
    assert cluster.running(target)


async def test_raft_protocol_bad_frames_are_dropped_and_consensus_goes_on(
    cluster: LocalCluster,
) -> None:
    target = cluster.layout.nodes[0].name
    before = _status(cluster, target)["raft"]
    outcomes: dict[str, str] = {}

    async def misbehave(host: IHost, peer: ID) -> None:
        for name, payload in (("truncated", TRUNCATED), ("oversized", OVERSIZED)):
            stream = await host.new_stream(peer, [RAFT_PROTOCOL])
            await stream.write(payload)
            if name == "truncated":
                await stream.close()
            outcomes[name] = await _outcome_of(stream)
        # Raft frames are one way: the well-framed bad ones go on one stream and are dropped.
        stream = await host.new_stream(peer, [RAFT_PROTOCOL])
        for _name, payload in RAFT_BAD:
            await stream.write(_frame(payload))
        await stream.close()

    await asyncio.to_thread(_as_third_member, cluster, misbehave)
    for name, outcome in outcomes.items():
        assert outcome in {"StreamReset", "StreamEOF", "closed"}, (name, outcome)
    deadline = time.monotonic() + 10
    while True:
        after = _status(cluster, target)["raft"]
        if after["frames_malformed"] - before["frames_malformed"] >= len(RAFT_BAD):
            break
        assert time.monotonic() < deadline, (before, after)
        await asyncio.sleep(0.1)
    assert after["frames_malformed"] - before["frames_malformed"] == len(RAFT_BAD)
    assert after["link_protocol_errors_total"] - before["link_protocol_errors_total"] == 2
    await _write_and_read_back(cluster, "after-raft-frames")


async def _write_and_read_back(cluster: LocalCluster, key: str) -> None:
    async with partner_client(cluster, "shop-a") as client:
        for _ in range(50):  # the cluster may still be settling its leader
            written = await client.put_record({"n": 1}, idempotency_key=key)
            if written.status in (200, 201):
                break
            await asyncio.sleep(0.2)
        assert written.status in (200, 201), written.body
        read = await client.get_record(written.body["record_id"])
        assert read.status == 200 and read.body["record"] == {"n": 1}, read.body
    for node in cluster.layout.nodes[:2]:
        assert cluster.running(node.name), node.name


# -- the node HTTP API ---------------------------------------------------------------------


def _post(
    cluster: LocalCluster, path: str, body: bytes, content_type: str = MSGPACK
) -> tuple[int, dict[str, Any]]:
    node = cluster.layout.nodes[0]
    token = (Path(cluster.layout.directory) / "secrets" / "node-api.token").read_text().strip()
    request = urllib.request.Request(
        f"http://{node.http_addr}{path}",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        assert exc.headers.get("Content-Type", "").startswith("application/problem+json"), raw
        return exc.code, json.loads(raw)


def _record(**fields: Any) -> bytes:
    base = {"rid": RID, "blob": b"x", "pid": "shop-a", "fp": b"f" * 32}
    return msgpack.packb({"records": [{**base, **fields}]}, use_bin_type=True)


NODE_API_BAD = [
    ("/internal/v1/records", b"\xc1\xc1", MSGPACK, "invalid_request"),
    ("/internal/v1/records", b'{"records": []}', "application/json", "unsupported_media_type"),
    ("/internal/v1/records", b"\x91" * 200_000, MSGPACK, "invalid_request"),  # nested arrays
    ("/internal/v1/records", _record(rid=2**62), MSGPACK, "invalid_request"),
    ("/internal/v1/records", _record(blob=10**9), MSGPACK, "invalid_request"),
    ("/internal/v1/records", _record(fp=[1, 2]), MSGPACK, "invalid_request"),
    ("/internal/v1/records/read", msgpack.packb({"ids": [2**62]}), MSGPACK, "invalid_record_id"),
    ("/internal/v1/index", msgpack.packb({"proposals": [[1]]}), MSGPACK, "invalid_request"),
    ("/internal/v1/members", b"[" * 100_000, "application/json", "invalid_json"),
]


@pytest.mark.parametrize(("path", "body", "content_type", "code"), NODE_API_BAD)
def test_node_api_refuses_malformed_bodies_with_problems(
    cluster: LocalCluster, path: str, body: bytes, content_type: str, code: str
) -> None:
    status, problem = _post(cluster, path, body, content_type)
    assert 400 <= status < 500 and problem.get("code") == code, (status, problem)


def test_node_api_refuses_a_body_past_its_bound_and_a_body_cut_short(
    cluster: LocalCluster,
) -> None:
    status, problem = _post(cluster, "/internal/v1/records", b"\x00" * (64 * 1024 * 1024))
    assert status == 413 and problem["code"] == "payload_too_large", problem
    node = cluster.layout.nodes[0]
    host, port = node.http_addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /internal/v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack"
            b"\r\nContent-Length: 1000\r\n\r\n\x81\xa7records"
        )
        sock.shutdown(socket.SHUT_WR)  # the body ends 990 bytes early
        sock.settimeout(5)
        with contextlib.suppress(OSError):  # the node may answer 400 or just close
            sock.recv(4096)
    assert _status(cluster, node.name)["peer_id"] == node.peer_id


msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.binary(max_size=40),
        st.text(max_size=10),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
ROUTE_FIELDS = {
    "/internal/v1/records": ("records", "reqs"),
    "/internal/v1/records/read": ("ids", "reqs"),
    "/internal/v1/index": ("proposals",),
    "/internal/v1/anchoring/propose": ("entry",),
}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_node_api_answers_drawn_bodies_without_5xx(cluster: LocalCluster, data: Any) -> None:
    path = data.draw(st.sampled_from(sorted(ROUTE_FIELDS)))
    fields = ROUTE_FIELDS[path]
    body = data.draw(
        st.one_of(
            msgpack_values,
            st.fixed_dictionaries({}, optional={f: msgpack_values for f in fields}),
            st.fixed_dictionaries(
                {
                    fields[0]: st.lists(
                        st.dictionaries(st.text(max_size=4), msgpack_values, max_size=5),
                        min_size=1,
                        max_size=3,
                    )
                }
            ),
        )
    )
    status, problem = _post(cluster, path, msgpack.packb(body, use_bin_type=True))
    assert status < 500 or problem.get("code") == "not_leader", (path, body, status, problem)
    assert status == 200 or isinstance(problem.get("code"), str)
