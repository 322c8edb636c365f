"""Anchoring proposals from any node that holds a chain key, through the Raft leader.

:class:`ForwardingProposer` proposes locally while this node leads and otherwise sends the
entry to the leader's node API (``POST /internal/v1/anchoring/propose``, msgpack ``{"entry":
<encoded application entry>}``), which appends it and answers with its outcome once applied.
So the lease goes to a node with a key wherever leadership is: the leader need not hold one,
and a leader change does not move the lease (it lapses only if its holder stops renewing).

Only ``anchor.*`` entries are taken on that path; the leader's apply still judges each (lease,
holder, batch order), so forwarding adds no authority.

The leader answers with the entry's log index, and the proposer returns only once this node has
applied it too: the anchoring service reads its own applied state on the next tick, and would
otherwise not see its entry yet and propose the same step again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import aiohttp
import msgpack

from node.api.wire import MSGPACK
from node.consensus.state_machine import (
    AppEntry,
    Applied,
    ApplyOutcome,
    decode_app_entry,
    encode_app_entry,
)
from node.errors import InvalidRequest, NotLeader, OperationFailed, UnsupportedFormat

__all__ = ["ANCHORING_PROPOSE_PATH", "ForwardingProposer", "decode_forwarded", "outcome_body"]

ANCHORING_PROPOSE_PATH = "/internal/v1/anchoring/propose"
ENTRY_PREFIX = "anchor."
_LEADER_WAIT_S = 0.1


class _Log(Protocol):
    def status(self) -> Any: ...

    async def propose(self, entries: Sequence[AppEntry], *, timeout_s: float) -> list[Applied]: ...

    async def wait_applied(self, index: int, *, timeout_s: float) -> None: ...


def decode_forwarded(body: Any) -> AppEntry:
    """The entry of a forwarded proposal; only anchoring entries are taken."""
    raw = body.get("entry") if isinstance(body, dict) else None
    if not isinstance(raw, bytes):
        raise InvalidRequest("body must be {entry: <bytes>}")
    try:
        entry = decode_app_entry(raw)
    except UnsupportedFormat as exc:
        raise InvalidRequest(f"malformed entry: {exc.detail}") from exc
    if not entry.type.startswith(ENTRY_PREFIX):
        raise InvalidRequest("only anchoring entries are forwarded here")
    return entry


def outcome_body(applied: Applied) -> dict[str, Any]:
    return {
        "code": applied.outcome.code,
        "detail": dict(applied.outcome.detail),
        "index": applied.position.index,
    }


class ForwardingProposer:
    def __init__(
        self,
        log: _Log,
        *,
        address_of: Callable[[str], str | None],
        api_token: str,
        request_timeout_s: float,
    ) -> None:
        self._log = log
        self._address_of = address_of
        self._token = api_token
        self._timeout_s = request_timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    def can_propose(self) -> bool:
        try:
            return self._log.status().leader_id is not None
        except OperationFailed:
            return False

    async def propose(self, entry: AppEntry, *, timeout_s: float) -> ApplyOutcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last: Exception = NotLeader("no leader known yet")
        while loop.time() < deadline:
            status = self._log.status()
            try:
                if status.leader_id is None:
                    raise NotLeader("no leader known yet")
                if status.leader_id == status.node_id:
                    (applied,) = await self._log.propose([entry], timeout_s=timeout_s)
                    return applied.outcome
                outcome, index = await self._forward(
                    status.leader_id, entry, deadline - loop.time()
                )
                try:
                    await self._log.wait_applied(index, timeout_s=max(0.1, deadline - loop.time()))
                except TimeoutError as exc:
                    raise OperationFailed(
                        f"entry {index} committed but not applied here yet", code="not_applied"
                    ) from exc
                return outcome
            except NotLeader as exc:
                last = exc
                await asyncio.sleep(_LEADER_WAIT_S)
        raise OperationFailed(f"no leader took the anchoring entry: {last}", code="not_leader")

    async def _forward(
        self, leader: str, entry: AppEntry, timeout_s: float
    ) -> tuple[ApplyOutcome, int]:
        assert self._session is not None, "ForwardingProposer.start() was not called"
        address = self._address_of(leader)
        if address is None:
            raise NotLeader(f"leader {leader} is not a known member")
        body = msgpack.packb({"entry": encode_app_entry(entry)}, use_bin_type=True)
        try:
            async with self._session.post(
                f"http://{address}{ANCHORING_PROPOSE_PATH}",
                data=body,
                headers={"Content-Type": MSGPACK},
                timeout=aiohttp.ClientTimeout(total=max(0.1, timeout_s)),
            ) as response:
                raw = await response.read()
                if response.status == 503:
                    raise NotLeader(f"{leader} answered 503")  # it lost leadership: retry
                if response.status != 200:
                    raise OperationFailed(
                        f"leader {leader} refused the anchoring entry ({response.status})",
                        code="forward_refused",
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotLeader(f"leader {leader} unreachable: {type(exc).__name__}") from exc
        reply = msgpack.unpackb(raw, raw=False)
        if not isinstance(reply, dict):
            raise OperationFailed("malformed forwarding reply", code="forward_refused")
        index = reply.get("index")
        if not isinstance(reply.get("code"), str) or not isinstance(index, int):
            raise OperationFailed("malformed forwarding reply", code="forward_refused")
        detail = reply.get("detail")
        return ApplyOutcome(reply["code"], detail if isinstance(detail, dict) else {}), index
