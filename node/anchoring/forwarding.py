"""Anchoring proposals from any node that holds a chain key, through the Raft leader.

:class:`ForwardingProposer` proposes locally while this node leads and otherwise sends the
entry to the leader's node API (``POST /internal/v1/anchoring/propose``, msgpack ``{"entry":
<encoded application entry>}``), which appends it and answers with its outcome once applied.
So the lease goes to a node with a key wherever leadership is: the leader need not hold one,
and a leader change does not move the lease (it lapses only if its holder stops renewing).

Only ``anchor.*`` entries are taken on that path; the leader's apply still judges each (lease,
holder, batch order), so forwarding adds no authority. The identity entries (partner
onboarding, links; :mod:`node.api.identity_routes`) take the same path with their own leader
route (``path``) and their own set of accepted entry types.

The leader answers with the entry's log index, and the proposer returns only once this node has
applied it too: the anchoring service reads its own applied state on the next tick, and would
otherwise not see its entry yet and propose the same step again. The routing itself (local or
forwarded, retried while leadership moves) is the shared :class:`LeaderRoute`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Container, Sequence
from typing import Any, Protocol

from node.consensus.state_machine import (
    AppEntry,
    Applied,
    ApplyOutcome,
    decode_app_entry,
    encode_app_entry,
)
from node.errors import InvalidRequest, NotLeader, OperationFailed, UnsupportedFormat
from node.replication.leader_route import LeaderRoute

__all__ = ["ANCHORING_PROPOSE_PATH", "ForwardingProposer", "decode_forwarded", "outcome_body"]

ANCHORING_PROPOSE_PATH = "/internal/v1/anchoring/propose"
ENTRY_PREFIX = "anchor."


class _Log(Protocol):
    def status(self) -> Any: ...

    async def propose(self, entries: Sequence[AppEntry], *, timeout_s: float) -> list[Applied]: ...

    async def wait_applied(self, index: int, *, timeout_s: float) -> None: ...


def decode_forwarded(body: Any, accepts: Container[str] | None = None) -> AppEntry:
    """The entry of a forwarded proposal: only anchoring entries are taken, or with
    ``accepts``, only the entry types it holds."""
    raw = body.get("entry") if isinstance(body, dict) else None
    if not isinstance(raw, bytes):
        raise InvalidRequest("body must be {entry: <bytes>}")
    try:
        entry = decode_app_entry(raw)
    except UnsupportedFormat as exc:
        raise InvalidRequest(f"malformed entry: {exc.detail}") from exc
    if accepts is not None:
        if entry.type not in accepts:
            raise InvalidRequest(f"entries of type {entry.type!r} are not taken here")
    elif not entry.type.startswith(ENTRY_PREFIX):
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
        path: str = ANCHORING_PROPOSE_PATH,
    ) -> None:
        self._log = log
        self._path = path
        self._route = LeaderRoute(
            log, address_of=address_of, api_token=api_token, request_timeout_s=request_timeout_s
        )

    async def start(self) -> None:
        await self._route.start()

    async def stop(self) -> None:
        await self._route.stop()

    def can_propose(self) -> bool:
        return self._route.leader_known()

    async def propose(self, entry: AppEntry, *, timeout_s: float) -> ApplyOutcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        async def local() -> ApplyOutcome:
            (applied,) = await self._log.propose([entry], timeout_s=timeout_s)
            return applied.outcome

        async def remote(leader: str, left_s: float) -> ApplyOutcome:
            outcome, index = await self._forward(leader, entry, left_s)
            try:
                await self._log.wait_applied(index, timeout_s=max(0.1, deadline - loop.time()))
            except TimeoutError as exc:
                raise OperationFailed(
                    f"entry {index} committed but not applied here yet", code="not_applied"
                ) from exc
            return outcome

        try:
            return await self._route.run(local, remote, timeout_s=timeout_s)
        except NotLeader as exc:
            raise OperationFailed(
                f"no leader took the {entry.type} entry: {exc}", code="not_leader"
            ) from exc

    async def _forward(
        self, leader: str, entry: AppEntry, timeout_s: float
    ) -> tuple[ApplyOutcome, int]:
        body = {"entry": encode_app_entry(entry)}
        reply = await self._route.post(leader, self._path, body, timeout_s)
        if not isinstance(reply, dict):
            raise OperationFailed("malformed forwarding reply", code="forward_refused")
        index = reply.get("index")
        if not isinstance(reply.get("code"), str) or not isinstance(index, int):
            raise OperationFailed("malformed forwarding reply", code="forward_refused")
        detail = reply.get("detail")
        return ApplyOutcome(reply["code"], detail if isinstance(detail, dict) else {}), index
