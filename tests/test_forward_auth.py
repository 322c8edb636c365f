"""Forwards to the leader are signed with the forwarding node's own key: the signature binds the
path, the time and the body, names a member, and is checked against the key its peer id
embeds. Then the real LeaderRoute over HTTP: what it sends is what it signed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from libp2p.peer.id import ID

from node.errors import AuthenticationFailed
from node.p2p.identity import keypair_of_seed
from node.replication.forward_auth import (
    FORWARD_SIGNATURE_HEADER,
    FORWARD_SIGNATURE_WINDOW_MS,
    FORWARD_SIGNED_MS_HEADER,
    FORWARDER_HEADER,
    ForwardSigner,
    verify_forwarder,
)
from node.replication.leader_route import LeaderRoute

PATH = "/internal/v1/index"
BODY = msgpack.packb({"proposals": [{"x": 1}]})
NOW_MS = 1_800_000_000_000


def signer(seed: bytes) -> ForwardSigner:
    pair = keypair_of_seed(seed)
    return ForwardSigner(ID.from_pubkey(pair.public_key).to_base58(), pair.private_key.sign)


NODE = signer(b"n" * 32)
OTHER = signer(b"o" * 32)
MEMBERS = frozenset({NODE.peer_id})


def check(
    headers: dict[str, str], *, path: str = PATH, body: bytes = BODY, now: int = NOW_MS
) -> str:
    return verify_forwarder(headers, path, body, now, MEMBERS)


def refusal(headers: dict[str, str], **kwargs: Any) -> str:
    with pytest.raises(AuthenticationFailed) as refused:
        check(headers, **kwargs)
    assert refused.value.http_status == 401
    return refused.value.code


def test_a_members_signature_names_it() -> None:
    assert check(NODE.headers(PATH, BODY, NOW_MS)) == NODE.peer_id
    edge = NOW_MS - FORWARD_SIGNATURE_WINDOW_MS
    assert check(NODE.headers(PATH, BODY, edge)) == NODE.peer_id


def test_every_way_a_forward_is_refused_has_its_code() -> None:
    good = NODE.headers(PATH, BODY, NOW_MS)
    assert refusal({}) == "forward_unsigned"
    assert refusal({k: v for k, v in good.items() if k != FORWARD_SIGNATURE_HEADER}) == (
        "forward_unsigned"
    )
    assert refusal({**good, FORWARD_SIGNED_MS_HEADER: "-5"}) == "forward_unsigned"
    assert refusal({**good, FORWARD_SIGNED_MS_HEADER: "١٢"}) == "forward_unsigned"  # not ASCII
    assert refusal({**good, FORWARD_SIGNATURE_HEADER: "ab" * 200}) == "forward_unsigned"
    assert refusal(OTHER.headers(PATH, BODY, NOW_MS)) == "forwarder_not_member"
    late = NODE.headers(PATH, BODY, NOW_MS - FORWARD_SIGNATURE_WINDOW_MS - 1)
    assert refusal(late) == "forward_signature_expired"
    assert refusal(good, body=BODY + b"\x00") == "forward_signature_invalid"  # another body
    assert refusal(good, path="/internal/v1/anchoring") == "forward_signature_invalid"
    retimed = {**good, FORWARD_SIGNED_MS_HEADER: str(NOW_MS + 1)}
    assert refusal(retimed) == "forward_signature_invalid"
    # Another key signing in a member's name: the member's peer id embeds its own key.
    forged = {**OTHER.headers(PATH, BODY, NOW_MS), FORWARDER_HEADER: NODE.peer_id}
    assert refusal(forged) == "forward_signature_invalid"
    assert refusal({**good, FORWARD_SIGNATURE_HEADER: "zz"}) == "forward_signature_invalid"


def test_a_peer_id_without_an_embedded_key_is_refused_not_crashed() -> None:
    members = frozenset({"QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"})  # a sha256 id
    headers = {**NODE.headers(PATH, BODY, NOW_MS), FORWARDER_HEADER: next(iter(members))}
    with pytest.raises(AuthenticationFailed) as refused:
        verify_forwarder(headers, PATH, BODY, NOW_MS, members)
    assert refused.value.code == "forward_signature_invalid"


@dataclass
class _Status:
    leader_id: str | None
    node_id: str = "follower"


class _Log:
    def __init__(self, leader: str) -> None:
        self.leader = leader

    def status(self) -> _Status:
        return _Status(self.leader)


async def test_the_leader_route_signs_exactly_what_it_sends() -> None:
    seen: list[str] = []

    async def leader(request: web.Request) -> web.Response:
        raw = await request.read()
        seen.append(
            verify_forwarder(request.headers, request.path, raw, int(time.time() * 1000), MEMBERS)
        )
        assert request.headers["Authorization"] == "Bearer token"
        return web.Response(body=msgpack.packb({"ok": True}), content_type="application/msgpack")

    app = web.Application()
    app.router.add_post(PATH, leader)
    async with TestServer(app, host="127.0.0.1") as server:
        address = f"127.0.0.1:{server.port}"
        route = LeaderRoute(
            _Log("the-leader"),
            address_of=lambda _peer: address,
            api_token="token",
            request_timeout_s=5.0,
            signer=NODE,
        )
        await route.start()
        try:
            assert await route.post("the-leader", PATH, {"proposals": [1, 2]}, 5.0) == {"ok": True}
        finally:
            await route.stop()
    assert seen == [NODE.peer_id]
