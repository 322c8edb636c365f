"""One life of a node's data directory, and the start-up check that a wiped node is not let vote.

**The incarnation** is 16 random bytes (32 hex digits) naming one life of a node's data
directory, kept in ``<data_dir>/incarnation`` (written atomically: temporary file, fsync,
rename, fsync of the directory). Rules (:func:`establish`):

* a *fresh* Raft database (no hard state, no log, no snapshot) always gets a NEW incarnation,
  whatever file is lying around: a wiped Raft database next to a leftover file must not pass
  for the old life (its vote promises are gone);
* a Raft database with state keeps the file's incarnation (and writes one if the file is
  missing: the upgrade from nodes that had none).

The running node records its incarnation in the committed membership (``member.put``, log
feature 5; :mod:`node.membership` proposes it).

**The start-up check** (:func:`confirm_not_former_member`): a founding node (not
``join_existing``) whose Raft database is fresh asks the other founding members'
``GET /internal/v1/incarnation/{peer}`` what they record for it, before its Raft core starts,
and decides with :func:`node.consensus.incarnation.start_decision`: start, wait (bounded by
``raft.incarnation_check_timeout_s``, a log line every few seconds), or refuse with one line
telling the operator to run ``baas-cluster rejoin-node``. While it asks it serves the same route
itself (answering "fresh"), so a brand new cluster whose nodes all ask at once does not
deadlock: the real node API only listens once the Raft core runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from node.api.problem import ProblemAppRunner, problem_response
from node.api.wire import INCARNATION_PATH
from node.config import ClusterMember, parse_host_port
from node.consensus.incarnation import REFUSE, START, PeerView, StartDecision, start_decision
from node.consensus.members import valid_incarnation
from node.errors import ConfigError, OperationFailed, UnsupportedFormat
from node.fileio import write_atomically

__all__ = [
    "INCARNATION_FILE",
    "confirm_not_former_member",
    "establish",
    "read_incarnation",
    "write_incarnation",
]

log = logging.getLogger("baas.node.incarnation")

INCARNATION_FILE = "incarnation"
FILE_MAGIC = "baas-incarnation-v1 "
PROGRESS_LOG_INTERVAL_S = 5.0


def new_incarnation() -> str:
    return secrets.token_hex(16)


def write_incarnation(data_dir: Path, incarnation: str) -> None:
    """Atomically: a reader (or a restart after a crash) sees the old file or the new one."""
    if not valid_incarnation(incarnation) or not incarnation:
        raise ConfigError(f"not an incarnation: {incarnation!r}")
    write_atomically(data_dir / INCARNATION_FILE, (FILE_MAGIC + incarnation + "\n").encode())


def read_incarnation(data_dir: Path) -> str | None:
    """The incarnation in ``data_dir`` (None without a file); a foreign format is refused."""
    try:
        text = (data_dir / INCARNATION_FILE).read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UnsupportedFormat(f"{data_dir / INCARNATION_FILE} is unreadable: {exc}") from exc
    value = text.strip().removeprefix(FILE_MAGIC.strip()).strip()
    if not text.startswith(FILE_MAGIC) or not value or not valid_incarnation(value):
        raise UnsupportedFormat(f"{data_dir / INCARNATION_FILE} is not an incarnation file (v1)")
    return value


def establish(
    data_dir: Path, *, raft_fresh: bool, new_id: Callable[[], str] = new_incarnation
) -> str:
    """This life's incarnation (see the module docstring for the rules)."""
    if not raft_fresh:
        known = read_incarnation(data_dir)
        if known is not None:
            return known
    incarnation = new_id()
    write_incarnation(data_dir, incarnation)
    return incarnation


def _view_of(peer_id: str, raw: Any) -> PeerView | None:
    if not isinstance(raw, dict):
        return None
    fresh, recorded = raw.get("fresh"), raw.get("recorded")
    if not isinstance(fresh, bool) or not valid_incarnation(recorded):
        return None
    return PeerView(peer_id, fresh, str(recorded))


class _Asker:
    def __init__(self, session: aiohttp.ClientSession, me: str) -> None:
        self._session = session
        self._me = me

    async def ask(self, member: ClusterMember) -> PeerView | None:
        try:
            async with self._session.get(
                f"http://{member.http_addr}{INCARNATION_PATH}/{self._me}"
            ) as response:
                if response.status != 200:
                    return None
                return _view_of(member.peer_id, await response.json())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None


def _fresh_app(me: str, api_token: str) -> web.Application:
    """What a node still checking answers: it is fresh and records nobody's incarnation."""

    async def answer(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {api_token}".encode()):
            return problem_response(401, "unauthenticated", "missing or wrong node API token")
        return web.json_response({"peer_id": me, "fresh": True, "recorded": ""})

    app = web.Application()
    app.router.add_get(INCARNATION_PATH + "/{peer_id}", answer)
    return app


async def confirm_not_former_member(
    *,
    me: str,
    incarnation: str,
    founders: Sequence[ClusterMember],
    http_listen: str,
    api_token: str,
    timeout_s: float,
    retry_s: float,
    request_timeout_s: float,
) -> StartDecision:
    """Return once this fresh node may start its Raft core; raise :class:`ConfigError` if it
    is a former member that lost its disk, :class:`OperationFailed` if unsure at the deadline."""
    others = [m for m in founders if m.peer_id != me]
    runner = ProblemAppRunner(_fresh_app(me, api_token), access_log=None, handle_signals=False)
    await runner.setup()
    host, port = parse_host_port(http_listen, "node.http_listen")
    await web.TCPSite(runner, host, port).start()
    session = aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {api_token}"},
        timeout=aiohttp.ClientTimeout(total=request_timeout_s),
    )
    started = time.monotonic()
    logged = started
    try:
        asker = _Asker(session, me)
        while True:
            answers = await asyncio.gather(*(asker.ask(m) for m in others))
            decision = start_decision(
                incarnation=incarnation,
                founders=len(others) + 1,
                answers=[a for a in answers if a is not None],
            )
            if decision.verdict == START:
                log.info("fresh Raft database, not a former member: %s", decision.reason)
                return decision
            if decision.verdict == REFUSE:
                raise ConfigError(
                    f"this node's data directory was lost ({decision.reason}; this one is "
                    f"{incarnation}): it must not vote as the member it was. Run "
                    "`baas-cluster rejoin-node --name NAME` (or remove the member and start "
                    "this node with [raft] join_existing = true), then start it again",
                    code="former_member",
                )
            now = time.monotonic()
            if now - started >= timeout_s:
                raise OperationFailed(
                    f"could not confirm this fresh node is not a former member within "
                    f"{timeout_s:g} s ({decision.reason}); not starting",
                    code="former_member_check_timeout",
                )
            if now - logged >= PROGRESS_LOG_INTERVAL_S:
                logged = now
                log.info("fresh Raft database: waiting for founding members (%s)", decision.reason)
            await asyncio.sleep(retry_s)
    finally:
        await session.close()
        with contextlib.suppress(Exception):
            await runner.cleanup()
