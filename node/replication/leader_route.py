"""The one way to propose through the Raft leader from any node.

A proposal is made locally while this node leads; otherwise it is POSTed (msgpack) to the
leader's node API, which proposes it there and answers once applied. Leadership may move
meanwhile: an unknown or unreachable leader, and a leader that answers 503 (it stepped down,
or its own queue is full for a moment), are retried every :data:`LEADER_WAIT_S` until the
caller's deadline; any other answer is final. Used by the record index's gatherer
(node/replication/index_client.py) and by anchoring (node/anchoring/forwarding.py).

Every forward is signed with this node's own key (:mod:`node.replication.forward_auth`): the
node API token is shared with the gateways, so the leader needs the signature to know that a
proposal only a node may make (a vault deposit credit) came from a member node.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import aiohttp
import msgpack

from node.api.wire import MSGPACK
from node.errors import NotLeader, OperationFailed
from node.replication.forward_auth import ForwardSigner

__all__ = ["LEADER_WAIT_S", "LeaderRoute"]

LEADER_WAIT_S = 0.1
T = TypeVar("T")


class _Log(Protocol):
    def status(self) -> Any: ...


class LeaderRoute:
    def __init__(
        self,
        log: _Log,
        *,
        address_of: Callable[[str], str | None],
        api_token: str,
        request_timeout_s: float,
        signer: ForwardSigner | None = None,
    ) -> None:
        self._log = log
        self._signer = signer
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

    def leader_known(self) -> bool:
        try:
            return self._log.status().leader_id is not None
        except OperationFailed:
            return False

    async def run(
        self,
        local: Callable[[], Awaitable[T]],
        remote: Callable[[str, float], Awaitable[T]],
        *,
        timeout_s: float,
    ) -> T:
        """``local()`` on the leader, else ``remote(leader, seconds left)``; retried on NotLeader.

        Raises NotLeader (the last one) once ``timeout_s`` passed without a leader taking it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            status = self._log.status()
            try:
                if status.leader_id is None:
                    raise NotLeader("no leader known yet")
                if status.leader_id == status.node_id:
                    return await local()
                return await remote(status.leader_id, max(0.1, deadline - loop.time()))
            except NotLeader:
                if loop.time() + LEADER_WAIT_S >= deadline:
                    raise
                await asyncio.sleep(LEADER_WAIT_S)

    async def post(self, leader: str, path: str, body: dict[str, Any], timeout_s: float) -> Any:
        """POST ``body`` to the leader's node API; its decoded msgpack answer.

        Raises NotLeader when the leader is unknown, unreachable or answers 503 (retry), and
        OperationFailed (``forward_refused``, final) for any other non-200 answer.
        """
        assert self._session is not None, "LeaderRoute.start() was not called"
        address = self._address_of(leader)
        if address is None:
            raise NotLeader(f"leader {leader} is not a known member")
        data = msgpack.packb(body, use_bin_type=True)
        headers = {"Content-Type": MSGPACK}
        if self._signer is not None:
            headers.update(self._signer.headers(path, data, int(time.time() * 1000)))
        try:
            async with self._session.post(
                f"http://{address}{path}",
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=max(0.1, timeout_s)),
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotLeader(f"leader {leader} unreachable: {type(exc).__name__}") from exc
        if status == 503:  # not (or no longer) the leader, or briefly full: retry
            raise NotLeader(f"{leader} answered 503 ({_problem_code(raw)})")
        if status != 200:
            raise OperationFailed(
                f"leader {leader} refused the proposal ({status} {_problem_code(raw)})",
                code="forward_refused",
            )
        try:
            return msgpack.unpackb(raw, raw=False)
        except (msgpack.UnpackException, ValueError) as exc:
            raise OperationFailed(
                "malformed answer from the leader", code="forward_refused"
            ) from exc


def _problem_code(raw: bytes) -> str | None:
    try:
        code = json.loads(raw).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None
