"""Cluster membership on a running node: the adapter around :mod:`node.consensus.members`.

Adding or removing a storage node goes through the log, in two layers:

* **storage membership** (``member.put`` entries): which nodes placement puts new shards on,
  where they listen, and the membership epoch. An operator changes it through any node's API
  (``POST /internal/v1/members``, ``DELETE /internal/v1/members/{peer}``; other nodes forward
  to the leader). The first change of a cluster first enables log feature version 2 -- only
  once every Raft member reports that it understands it -- and records the founding members,
  so from then on placement is defined by the log alone.
* **Raft membership** (voters and learners): the leader reconciles it with the storage
  membership every ``members_reconcile_interval_s``, one single-server change at a time, by
  the pure policy :func:`~node.consensus.members.next_conf_change` (new members join as
  learners and are promoted while fewer than 5 vote, once at most
  ``learner_lag_entries_max`` entries behind).

Every node also reconciles its p2p layer with the committed members (admits and dials a
member that joined), and its coordinator places each write batch over the committed active
members (:meth:`MembershipManager.placement`), recording the epoch in the index entries.

**Incarnations** (log feature 5, enabled like the others once every Raft member understands
it): every node records its data directory's incarnation (:mod:`node.incarnation`) with its
member, proposing it through the leader once it is an active member in Raft whose record lacks
it. A member whose disk was lost is brought back by ``POST /internal/v1/members/{peer}/rejoin``
(``baas-cluster rejoin-node``): it is recorded ``rejoining`` (still in placement), the leader
removes it from Raft, then records it ``active`` again, so it is added back as a learner with
an empty log (caught up by snapshot) and promoted; the node itself starts with
``join_existing``, so it never bootstraps nor votes as the voter it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

import aiohttp
from libp2p.peer.id import ID

from node.api.wire import MEMBERS_PATH
from node.config import ClusterMember
from node.consensus.members import (
    ACTIVE,
    INCARNATION_FEATURE_VERSION,
    REJOINING,
    REMOVED,
    Member,
    Members,
    MemberStore,
    members_of,
    next_conf_change,
)
from node.consensus.members import EPOCH_KEY as MEMBERS_EPOCH_KEY
from node.consensus.state_machine import FEATURE_ENTRY, AppEntry, Dispatcher
from node.consensus.types import ConfChangeKind
from node.errors import ConfigError, InvalidRequest, NotLeader, OperationFailed
from node.replication.log import ReplicatedLog

__all__ = [
    "MEMBERS_FEATURE_VERSION",
    "MembershipManager",
    "StoreView",
    "validate_member_addresses",
]

log = logging.getLogger("baas.node.membership")

MEMBERS_FEATURE_VERSION = 2  # member.put (and index.move) need it enabled in the log


def validate_member_addresses(member: Member) -> None:
    """A TCP multiaddr, a host:port and a libp2p peer id, or :class:`ConfigError`."""
    ClusterMember(member.name, member.peer_id, member.p2p_addr, member.http_addr).validate()
    try:
        ID.from_base58(member.peer_id)
    except Exception as exc:  # base58/multihash raise several types
        raise ConfigError(f"{member.peer_id!r} is not a libp2p peer id") from exc


class StoreView:
    """Applied state read through a store, as the state machines' read-only view."""

    def __init__(self, store: MemberStore) -> None:
        self._store = store

    def get(self, key: bytes) -> bytes | None:
        return self._store.state_get(key)


class PeerAdmission(Protocol):
    async def add_member(self, peer_id: str, p2p_addr: str) -> None: ...


class MembershipManager:
    def __init__(
        self,
        *,
        log: ReplicatedLog,
        store: MemberStore,
        founding: Sequence[ClusterMember],
        join_existing: bool,
        p2p: PeerAdmission,
        n: int,
        api_token: str,
        request_timeout_s: float,
        reconcile_interval_s: float,
        learner_lag_entries_max: int,
        feature_version_max: int,
        incarnation: str = "",
    ) -> None:
        self._log = log
        self._incarnation = incarnation  # this life of the node's data directory
        self._store = store
        self._founding = tuple(founding)
        self._join_existing = join_existing
        self._p2p = p2p
        self._n = n
        self._token = api_token
        self._timeout_s = request_timeout_s
        self._interval_s = reconcile_interval_s
        self._lag_max = learner_lag_entries_max
        self._feature_max = feature_version_max
        self._cached: Members | None = None
        self._admitted: dict[str, str] = {m.peer_id: m.p2p_addr for m in founding}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._change_lock = asyncio.Lock()
        self._kick = asyncio.Event()  # reconcile now: a new epoch awaits admission
        self._placed: tuple[int, tuple[str, ...]] | None = None  # the last admitted view
        self.conf_changes_proposed = 0
        self._features_enabled = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
        )
        self._task = asyncio.create_task(self._reconcile_forever(), name="membership")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ reads

    def members(self) -> Members:
        """The committed storage membership (re-read only when the epoch moved)."""
        raw = self._store.state_get(MEMBERS_EPOCH_KEY)
        epoch = int.from_bytes(raw, "big") if raw else 0
        if self._cached is None or self._cached.epoch != epoch:
            self._cached = members_of(self._store)
        return self._cached

    def placement(self) -> tuple[int, tuple[str, ...]]:
        """(epoch, active peer ids) that new writes are placed over.

        A new epoch is used once this node's p2p layer admits every active member (the
        reconcile loop does that within moments): until then the previous one, so shards are
        never sent to a member this node would still refuse to talk to.
        """
        members = self.members()
        if members.epoch > 0:
            view = (members.epoch, members.active_ids)
            if self._placed is not None and self._placed[0] == members.epoch:
                return self._placed
            if all(
                self._admitted.get(m.peer_id) == m.p2p_addr for m in members.members if m.active
            ):
                self._placed = view
                return view
            self._kick.set()
            return self._placed or view
        if self._join_existing:
            raise OperationFailed(
                "this node has not caught up with the cluster membership yet", code="not_ready"
            )
        return 0, tuple(sorted(m.peer_id for m in self._founding))

    def serving(self) -> bool:
        """Whether this node takes client traffic: an active member, in Raft.

        A node taken out of the membership stops at once (its /ready turns 503 and record
        calls are refused at the call level, so the gateway fails over to another node):
        once out of Raft it no longer learns new index entries and could not confirm a miss.
        """
        if not self.features_enabled():
            return False
        members = self.members()
        if members.epoch == 0:
            return not self._join_existing
        status = self._log.status()
        me = members.get(status.node_id)
        if me is None or not me.active:
            return False
        return status.node_id in status.voters or status.node_id in status.learners

    def features_enabled(self) -> bool:
        """Whether the log has enabled every feature this code has (checked until it has).

        Until then a node takes no record traffic: a record indexed before the Merkle log is
        enabled would have no leaf, so the log would not cover every record.
        """
        if not self._features_enabled:
            view = StoreView(self._store)
            self._features_enabled = Dispatcher.feature_version(view) >= self._feature_max
            if not self._features_enabled:
                self._kick.set()
        return self._features_enabled

    def require_serving(self) -> None:
        if not self.features_enabled():
            raise OperationFailed(
                "the cluster has not enabled its log features yet; retry shortly",
                code="not_ready",
            )
        if not self.serving():
            raise OperationFailed(
                "this node is not an active cluster member; ask another node", code="not_a_member"
            )

    def member_ids(self) -> frozenset[str]:
        """Peer ids of the members not removed (the founding ones before any change)."""
        members = self.members().members
        if not members:
            return frozenset(m.peer_id for m in self._founding)
        return frozenset(m.peer_id for m in members if m.state != REMOVED)

    def http_addr(self, peer_id: str) -> str | None:
        found = self.members().get(peer_id)
        if found is not None:
            return found.http_addr
        return next((m.http_addr for m in self._founding if m.peer_id == peer_id), None)

    def describe(self) -> dict[str, Any]:
        members = self.members()
        status = self._log.status()
        listed = members.members or tuple(
            Member(m.peer_id, m.name, m.p2p_addr, m.http_addr) for m in self._founding
        )
        return {
            "epoch": members.epoch,
            "members": [
                {
                    "peer_id": m.peer_id,
                    "name": m.name,
                    "p2p_addr": m.p2p_addr,
                    "http_addr": m.http_addr,
                    "state": m.state,
                    "since": m.since,
                    "incarnation": m.incarnation,
                    "raft": "voter"
                    if m.peer_id in status.voters
                    else "learner"
                    if m.peer_id in status.learners
                    else "none",
                }
                for m in listed
            ],
            "voters": list(status.voters),
            "learners": list(status.learners),
        }

    # ------------------------------------------------------------------ changes

    async def submit(self, member: Member) -> dict[str, Any]:
        """Commit one storage membership change, through the leader wherever it is."""
        status = self._log.status()
        if status.leader_id is None:
            raise OperationFailed("no leader known yet; retry", code="index_unavailable")
        if status.leader_id == status.node_id:
            return await self.put_local(member)
        address = self.http_addr(status.leader_id)
        if address is None:
            raise NotLeader(f"leader {status.leader_id} has no known address")
        body = {
            "peer_id": member.peer_id,
            "name": member.name,
            "p2p_addr": member.p2p_addr,
            "http_addr": member.http_addr,
            "state": member.state,
        }
        if member.incarnation:
            body["incarnation"] = member.incarnation
        return await self._call("POST", address, MEMBERS_PATH, body)

    async def put_local(self, member: Member) -> dict[str, Any]:
        """On the leader: enable the feature, record the founders once, then the change."""
        async with self._change_lock:
            current = self.members()
            after = {m.peer_id: m for m in current.members} or {
                m.peer_id: Member(m.peer_id, m.name, m.p2p_addr, m.http_addr)
                for m in self._founding
            }
            after[member.peer_id] = member
            active = [m for m in after.values() if m.active]
            if len(active) < self._n:
                raise InvalidRequest(
                    f"the change would leave {len(active)} active members; every record "
                    f"needs n={self._n}",
                    code="too_few_members",
                )
            await self._enable_feature()
            if member.incarnation or member.state == REJOINING:
                await self._enable_feature(INCARNATION_FEATURE_VERSION)
            entries: list[AppEntry] = []
            if current.epoch == 0:
                entries += [
                    Member(m.peer_id, m.name, m.p2p_addr, m.http_addr).to_entry()
                    for m in self._founding
                    if m.peer_id != member.peer_id
                ]
            entries.append(member.to_entry())
            applied = await self._log.propose(entries, timeout_s=self._timeout_s)
            outcome = applied[-1].outcome
            if outcome.code not in ("created", "updated", "existing"):
                raise OperationFailed(
                    f"the membership change was not applied ({outcome.code})",
                    code="membership_change_failed",
                )
            log.info(
                "membership: %s is %s (epoch %s)",
                member.peer_id,
                member.state,
                outcome.detail.get("epoch"),
            )
            return {"code": outcome.code, "epoch": outcome.detail.get("epoch")}

    def _known(self, peer_id: str) -> Member:
        """The committed member, or the founding one before the first change."""
        known = self.members().get(peer_id)
        if known is None:
            founder = next((m for m in self._founding if m.peer_id == peer_id), None)
            if founder is None:
                raise InvalidRequest(f"{peer_id} is not a member", code="member_not_found")
            known = Member(founder.peer_id, founder.name, founder.p2p_addr, founder.http_addr)
        return known

    def removal_of(self, peer_id: str) -> Member:
        known = self._known(peer_id)
        return Member(known.peer_id, known.name, known.p2p_addr, known.http_addr, REMOVED)

    def rejoin_of(self, peer_id: str) -> Member:
        """The change that brings back a member whose disk was lost (see the docstring)."""
        known = self._known(peer_id)
        if known.state == REMOVED:
            raise InvalidRequest(
                f"{peer_id} was removed; add it again instead", code="member_removed"
            )
        return Member(known.peer_id, known.name, known.p2p_addr, known.http_addr, REJOINING)

    def incarnation_view(self, peer_id: str) -> dict[str, Any]:
        """What this running node's committed membership records for ``peer_id``."""
        found = self.members().get(peer_id)
        return {
            "peer_id": self._log.status().node_id,
            "fresh": False,
            "recorded": "" if found is None else found.incarnation,
            "state": None if found is None else found.state,
        }

    async def _enable_feature(self, version: int = MEMBERS_FEATURE_VERSION) -> None:
        """Commit log feature ``version`` once every Raft member says it understands it."""
        view = StoreView(self._store)
        if Dispatcher.feature_version(view) >= version:
            return
        if self._feature_max < version:
            raise OperationFailed(f"this node cannot enable log feature version {version}")
        status = self._log.status()
        for peer in (*status.voters, *status.learners):
            if peer == status.node_id:
                continue
            address = self.http_addr(peer)
            if address is None:
                raise OperationFailed(f"member {peer} has no known address")
            reply = await self._call("GET", address, "/internal/v1/status", None)
            understood = reply.get("raft", {}).get("feature_version_max", 1)
            if not isinstance(understood, int) or understood < version:
                raise OperationFailed(
                    f"member {peer} runs code without log feature version {version}: "
                    "upgrade it first",
                    code="upgrade_required",
                )
        log.info("enabling log feature version %d", version)
        await self._log.propose(
            [AppEntry(FEATURE_ENTRY, {"version": version})], timeout_s=self._timeout_s
        )

    async def _call(
        self, method: str, address: str, path: str, body: dict[str, Any] | None
    ) -> dict[str, Any]:
        assert self._session is not None, "MembershipManager.start() was not called"
        try:
            async with self._session.request(
                method, f"http://{address}{path}", json=body
            ) as response:
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OperationFailed(
                f"{address} unreachable: {type(exc).__name__}", code="member_unreachable"
            ) from exc
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {}
        if response.status != 200 or not isinstance(parsed, dict):
            code = parsed.get("code") if isinstance(parsed, dict) else None
            if code == "not_leader":
                raise NotLeader(f"{address} is no longer the leader")
            raise OperationFailed(
                f"{address} refused ({response.status} {code})",
                code=str(code or "membership_change_failed"),
            )
        return parsed

    # ------------------------------------------------------------------ reconcile

    async def _reconcile_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._kick.wait()
            self._kick.clear()
            try:
                await self.reconcile_once()
            except (OperationFailed, NotLeader, InvalidRequest) as exc:
                log.info("membership reconcile: %s", exc.detail)
            except Exception:  # keep reconciling; a bug here must not stop the node
                log.exception("membership reconcile failed")

    async def reconcile_once(self) -> None:
        members = self.members()
        for member in members.members:
            if member.active and self._admitted.get(member.peer_id) != member.p2p_addr:
                await self._p2p.add_member(member.peer_id, member.p2p_addr)
                self._admitted[member.peer_id] = member.p2p_addr
        status = self._log.status()
        await self._record_incarnation(members)
        if status.role != "leader":
            return
        # The newest log features (the Merkle log, anchoring) are enabled as soon as every
        # member runs code that understands them, so they cover the log from its start.
        if Dispatcher.feature_version(StoreView(self._store)) < self._feature_max:
            await self._enable_feature(self._feature_max)
        if members.epoch == 0:
            return
        in_raft = set(status.voters) | set(status.learners)
        for member in members.members:
            if member.state == REJOINING and member.peer_id not in in_raft:
                # Its old life is out of Raft: it may come back, as a learner with an empty log.
                log.info("membership: %s left Raft; adding it back as a new member", member.peer_id)
                await self.put_local(replace(member, state=ACTIVE, incarnation=""))
                return
        caught_up = []
        for peer in status.learners:
            match = self._log.match_index(peer)
            if match is not None and status.last_index - match <= self._lag_max:
                caught_up.append(peer)
        change = next_conf_change(
            voters=status.voters,
            learners=status.learners,
            active=[m.peer_id for m in members.members if m.in_raft],
            caught_up=caught_up,
            leader=status.node_id,
        )
        if change is None:
            return
        kind, peer = change
        if kind is ConfChangeKind.REMOVE_NODE and peer == status.node_id:
            # Hand over first: removing itself would leave the cluster without a leader for
            # an election timeout (no writes, no read barriers). The new leader removes us.
            staying = [m.peer_id for m in members.members if m.in_raft]
            await self._hand_over(status.voters, status.node_id, staying)
            return
        log.info("membership: proposing %s %s", kind.name, peer)
        self.conf_changes_proposed += 1
        await self._log.propose_change(kind, peer, timeout_s=self._timeout_s)

    async def _record_incarnation(self, members: Members) -> None:
        """Propose this node's incarnation once it is an active member in Raft whose record
        lacks it (or names another life), and feature 5 is committed."""
        if not self._incarnation:
            return
        if Dispatcher.feature_version(StoreView(self._store)) < INCARNATION_FEATURE_VERSION:
            return
        status = self._log.status()
        if status.node_id not in status.voters and status.node_id not in status.learners:
            return
        me = members.get(status.node_id)
        if me is None:
            if members.epoch != 0 or self._join_existing:
                return
            founder = next((m for m in self._founding if m.peer_id == status.node_id), None)
            if founder is None:
                return
            me = Member(founder.peer_id, founder.name, founder.p2p_addr, founder.http_addr)
        if me.state != ACTIVE or me.incarnation == self._incarnation:
            return
        log.info("membership: recording incarnation %s", self._incarnation)
        try:
            await self.submit(replace(me, incarnation=self._incarnation))
        except (OperationFailed, NotLeader) as exc:  # the next round tries again
            log.info("membership: incarnation not recorded yet: %s", exc.detail)

    async def _hand_over(self, voters: Sequence[str], me: str, active: Sequence[str]) -> None:
        staying = [v for v in voters if v != me and v in active]
        if not staying:
            return
        # The most caught-up staying voter (ties by peer id): the quickest to take over.
        target = max(staying, key=lambda v: (self._log.match_index(v) or 0, v))
        log.info("membership: handing leadership to %s before leaving", target)
        handed = await self._log.transfer_leadership(target, timeout_s=self._timeout_s)
        if not handed:
            log.info("membership: %s did not take over; trying again next round", target)
