"""ForwardingProposer: a key holder's anchoring entries go to the Raft leader's node API, and
the proposer returns only once this node has applied the entry too (else the service, reading
its own state on the next tick, would propose the same step again)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from aiohttp import web

from node.anchoring.forwarding import (
    ANCHORING_PROPOSE_PATH,
    ForwardingProposer,
    decode_forwarded,
    outcome_body,
)
from node.consensus.state_machine import AppEntry, Applied, ApplyOutcome, LogPosition
from node.errors import InvalidRequest, OperationFailed

LEASE = AppEntry("anchor.lease", {"node": "me", "ttl_ms": 6000, "release": False})


@dataclass
class Status:
    node_id: str
    leader_id: str | None


class FakeLog:
    """This node's log: a follower of ``leader``; applies up to ``applied`` when told."""

    def __init__(self, leader: str | None) -> None:
        self.leader = leader
        self.applied = 0
        self.changed = asyncio.Event()

    def status(self) -> Status:
        return Status("me", self.leader)

    async def propose(self, entries: Sequence[AppEntry], *, timeout_s: float) -> list[Applied]:
        raise AssertionError("a follower forwards; it never proposes locally")

    async def wait_applied(self, index: int, *, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while self.applied < index:
                self.changed.clear()
                await self.changed.wait()

    def apply_to(self, index: int) -> None:
        self.applied = index
        self.changed.set()


@pytest.fixture
async def leader() -> AsyncIterator[tuple[str, list[Any]]]:
    """A leader's endpoint: answers every anchoring entry as created at log index 42."""
    seen: list[Any] = []
    answers = {"status": 200}

    async def handler(request: web.Request) -> web.Response:
        entry = decode_forwarded(msgpack.unpackb(await request.read(), raw=False))
        seen.append(entry)
        if answers["status"] != 200:
            return web.Response(status=answers["status"])
        applied = Applied(LogPosition(42, 3, 0), entry.type, ApplyOutcome("created", {"n": 1}))
        return web.Response(body=msgpack.packb(outcome_body(applied), use_bin_type=True))

    app = web.Application()
    app.router.add_post(ANCHORING_PROPOSE_PATH, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    seen.append(answers)
    yield f"127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_the_outcome_comes_back_only_once_this_node_applied_the_entry(
    leader: tuple[str, list[Any]],
) -> None:
    address, seen = leader
    log = FakeLog("L")
    proposer = ForwardingProposer(
        log, address_of={"L": address}.get, api_token="t", request_timeout_s=5
    )
    await proposer.start()
    try:
        assert proposer.can_propose()
        task = asyncio.create_task(proposer.propose(LEASE, timeout_s=5))
        await asyncio.sleep(0.3)
        assert not task.done()  # committed at the leader, not applied here yet
        log.apply_to(41)
        await asyncio.sleep(0.1)
        assert not task.done()
        log.apply_to(42)
        outcome = await asyncio.wait_for(task, 2)
        assert (outcome.code, dict(outcome.detail)) == ("created", {"n": 1})
        assert seen[1:] == [LEASE]
    finally:
        await proposer.stop()


async def test_a_leader_that_stepped_down_is_asked_again_until_the_deadline(
    leader: tuple[str, list[Any]],
) -> None:
    address, seen = leader
    seen[0]["status"] = 503  # not the leader (any more)
    proposer = ForwardingProposer(
        FakeLog("L"), address_of={"L": address}.get, api_token="t", request_timeout_s=5
    )
    await proposer.start()
    try:
        with pytest.raises(OperationFailed) as caught:
            await proposer.propose(LEASE, timeout_s=0.6)
        assert caught.value.code == "not_leader" and len(seen) > 2  # asked more than once
    finally:
        await proposer.stop()
    assert not ForwardingProposer(
        FakeLog(None), address_of=lambda _: None, api_token="t", request_timeout_s=1
    ).can_propose()


def test_only_anchoring_entries_are_taken_on_the_forwarding_path() -> None:
    from node.consensus.state_machine import encode_app_entry

    assert decode_forwarded({"entry": encode_app_entry(LEASE)}) == LEASE
    other = encode_app_entry(AppEntry("index.put", {}))
    for body in ({"entry": other}, {"entry": "text"}, {}, [1]):
        with pytest.raises(InvalidRequest):
            decode_forwarded(body)
