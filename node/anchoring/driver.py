"""The anchoring driver: what one node does next about anchoring, decided without any I/O.

The adapter (:mod:`node.anchoring.service`) calls :meth:`AnchorDriver.tick` with the time, a
snapshot of the applied anchoring state (:func:`read_snapshot`) and whether this node can
propose and holds the chain key; it gets back a list of actions (frozen dataclasses), does
them, and feeds what the chain answered back (``on_broadcast``, ``on_inclusion``,
``on_head``, ``on_block_hash``, ``on_chain_error``) and how each proposal ended
(``on_proposed``). Time is the ``now_ms`` of the ticks; randomness (jitter) an injected
seeded ``random.Random`` (:class:`Rng`). Given the same inputs the driver returns the same actions.

Rules (the state machine in :mod:`node.anchoring.state` enforces what safety needs; these
rules make it efficient and live):

* **lease** -- only a node with the key that can propose asks for the lease, once it is
  free or expired, after a random jitter (``lease_acquire_jitter_ms``) so candidates rarely
  collide. The holder renews it once a third of the ttl has passed, and stops every chain
  action when less than a third is left (clock skew between nodes must stay below that).
  Nothing touches the chain without the lease.
* **new batch** -- when the log grew by ``anchor_batch_max`` leaves since the last batch
  (``size``), or ``anchor_interval_ms`` passed since the last batch's intent and the log grew
  at all (``interval``; never an empty anchor), and fewer than ``open_batches_max`` batches
  are unmined, and no batch awaits a replacement. One intent is built at a time: the adapter
  signs ``anchor(batch, size, root)`` with nonce ``max(nonce_hint, chain nonce)`` and proposes
  it; only a *committed* intent is ever sent.
* **broadcast** -- every committed intent's exact bytes are sent, again every
  ``rebroadcast_interval_ms`` until mined (a new holder sends the previous holder's bytes).
  Each is sent at once, whatever its place: holding one back could leave its nonce unspent
  and block the sender's later nonces for good.
* **order** -- the contract takes batch ids in order, and nonces order one sender's
  transactions, so batches land in id order as long as every unmined batch has one sender
  and nonces grow with ids. Hence no new batch while an unmined one of another key exists
  (after a lease change, the previous holder's batches land first). A replacement breaks the
  order (its nonce is newer than the later batches'): those later batches revert on the
  chain, are marked failed and replaced in turn -- extra transactions, only after a fault.
* **poll** -- every ``poll_interval_ms``: the head (number and hash), the receipt of every
  unmined batch, and the hash of every block holding an included batch, a failed one (until
  replaced) or a final one less than ``reorg_window_blocks`` deep -- but only what the head
  can have changed. A block hash names its parent, so the head's hash names the whole chain
  below it: a block found on the chain under head H stays on it while H is the head (no
  read), and once the head moved, one read of H tells for every block found under it (H still
  there: they are too, and now under the new head; H gone: each is read itself). A receipt is
  read again only under a new head (nothing is mined or unmined without one). Each block and
  receipt is still read itself every ``recheck_interval_ms``: the head and a block are two
  requests, and a reorg and its undoing between them could otherwise hide a block until the
  head moves. An adapter whose ``on_head`` gives no hash gets every read on every poll. So an
  idle holder costs one request per poll, and a new block one more (plus its receipts), not
  one per watched block per poll.
* **result** -- a status-1 receipt is proposed in batch order; a status-0 one marks the batch
  failed. **final** -- the lowest included batch, once its block is ``confirmations`` deep and
  still has the same hash. **reorg** -- the lowest batch whose block hash changed or vanished
  (a block answer is compared with the hash recorded when it was asked for, so it never
  judges an inclusion committed after it).
* **replacement** -- the lowest unmined batch gets a new transaction when it failed, or when
  its nonce was spent by another transaction while it is nowhere on the chain
  (``nonce_used``, then ``nonce_used_misses_required`` receipt checks finding nothing) -- in
  both cases only once that is ``max(confirmations, reorg_window_blocks)`` blocks deep: a
  replaced transaction is forgotten, and a reorg that unspent its nonce would leave a gap
  blocking the sender's later transactions for good. Later batches needing one wait for it
  (they would revert before it lands). After a back-off; at most ``replacements_max`` per
  batch in one holding, then the batch is reported ``stuck_batch`` (a restart or another
  holder tries again).
* **simulation** -- an intent for the batch the contract takes next is first run as a call
  (``BuildIntent.simulate``); if it would revert (a revoked submitter, say) nothing is signed,
  the adapter answers ``would_revert`` and the driver tries again after a back-off.
* **errors** -- a failed chain call pauses every chain call for an exponential back-off with
  jitter (``retry_backoff_base_ms`` doubling up to ``retry_backoff_max_ms``; calls failing
  within one back-off count once); after ``chain_errors_max`` failures in a row, or as many
  refusals of one transaction, the holder gives the lease up (another node may reach
  the chain) and does not ask again for ``lease_cooloff_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from node.anchoring.state import (
    FAILED,
    INCLUDED,
    INTENT,
    INTERVAL,
    REVERTED,
    SIZE,
    Batch,
    FinalProposal,
    IntentProposal,
    Lease,
    LeaseProposal,
    Progress,
    ReorgProposal,
    ResultProposal,
    batches,
    lease_of,
    progress_of,
)
from node.anchoring.state import NONCE_USED as REPLACE_NONCE_USED
from node.consensus.state_machine import StateView
from node.errors import ConfigError

__all__ = [
    "BROADCAST_OUTCOMES",
    "KNOWN",
    "NONCE_USED",
    "REJECTED",
    "SENT",
    "WOULD_REVERT",
    "Action",
    "AnchorDriver",
    "AnchorSnapshot",
    "Broadcast",
    "BuildIntent",
    "ChainAction",
    "CheckBlock",
    "CheckHead",
    "CheckInclusion",
    "DriverSettings",
    "ProposalAction",
    "ProposeFinal",
    "ProposeLease",
    "ProposeReorg",
    "ProposeResult",
    "Rng",
    "TxInclusion",
    "read_snapshot",
]

# What sending a raw transaction can answer (AnchorChain.broadcast's outcomes, plus REJECTED for
# its ChainRejected: funds, fees); no answer at all goes to on_chain_error instead.
SENT = "sent"  # accepted into the pool now
KNOWN = "known"  # the chain already has it, in its pool or mined
NONCE_USED = "nonce_used"  # another transaction spent its nonce: it can never be mined
REJECTED = "rejected"  # refused as such: counted as a chain error, sent again after a back-off
BROADCAST_OUTCOMES = (SENT, KNOWN, NONCE_USED, REJECTED)
WOULD_REVERT = "would_revert"  # on_proposed code of a BuildIntent whose simulation reverted


# ---------------------------------------------------------------------- inputs


class Rng(Protocol):
    """The only randomness the driver uses (jitter); pass a seeded ``random.Random``. A
    protocol keeps this module free of the ``random`` module and its global generator."""

    def randint(self, a: int, b: int, /) -> int: ...


@dataclass(frozen=True, slots=True)
class DriverSettings:
    node_id: str
    sender: bytes | None  # this node's 20-byte chain address; None: no key, never anchors
    chain_id: int
    contract: bytes
    anchor_interval_ms: int
    anchor_batch_max: int
    confirmations: int
    lease_ttl_ms: int
    open_batches_max: int
    reorg_window_blocks: int
    poll_interval_ms: int
    rebroadcast_interval_ms: int
    retry_backoff_base_ms: int
    retry_backoff_max_ms: int
    chain_errors_max: int
    replacements_max: int
    proposal_timeout_ms: int
    request_timeout_ms: int
    lease_acquire_jitter_ms: int
    lease_cooloff_ms: int
    nonce_used_misses_required: int = 2
    watch_batches_max: int = 64  # final batches kept in the snapshot for the reorg watch
    # A block or receipt seen under the current head is read again at least this often even
    # when the head has not changed (see "poll" in the module docstring).
    recheck_interval_ms: int = 30_000

    def __post_init__(self) -> None:
        positive = (
            "anchor_interval_ms",
            "anchor_batch_max",
            "confirmations",
            "lease_ttl_ms",
            "open_batches_max",
            "poll_interval_ms",
            "rebroadcast_interval_ms",
            "retry_backoff_base_ms",
            "retry_backoff_max_ms",
            "chain_errors_max",
            "proposal_timeout_ms",
            "request_timeout_ms",
            "nonce_used_misses_required",
            "recheck_interval_ms",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"anchoring {name} must be a positive integer")
        for name in (
            "reorg_window_blocks",
            "replacements_max",
            "lease_acquire_jitter_ms",
            "lease_cooloff_ms",
            "watch_batches_max",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"anchoring {name} must be a non-negative integer")
        if self.retry_backoff_max_ms < self.retry_backoff_base_ms:
            raise ConfigError("anchoring retry_backoff_max_ms must be >= retry_backoff_base_ms")
        if self.sender is not None and len(self.sender) != 20:
            raise ConfigError("anchoring sender must be a 20-byte address")
        if len(self.contract) != 20:
            raise ConfigError("anchoring contract must be a 20-byte address")


@dataclass(frozen=True, slots=True)
class AnchorSnapshot:
    """The applied anchoring state a tick looks at."""

    lease: Lease | None
    progress: Progress
    batches: tuple[Batch, ...]  # consecutive ids up to next - 1 (recent finals, then the rest)
    tree_size: int  # leaves in the Merkle log

    @property
    def last(self) -> Batch | None:
        return self.batches[-1] if self.batches else None


def read_snapshot(view: StateView, tree_size: int, watch_batches_max: int) -> AnchorSnapshot:
    """Read what :meth:`AnchorDriver.tick` needs: the lease, the progress, every batch after
    the last final one and up to ``watch_batches_max`` final ones before it."""
    progress = progress_of(view)
    last = progress.next_batch_id - 1
    first = max(1, min(progress.final_through + 1 - watch_batches_max, last))
    return AnchorSnapshot(
        lease=lease_of(view),
        progress=progress,
        batches=tuple(batches(view, first, last - first + 1)),
        tree_size=tree_size,
    )


@dataclass(frozen=True, slots=True)
class TxInclusion:
    """Where a transaction is mined on the canonical chain; what
    :meth:`node.anchoring.chain.AnchorChain.inclusion` returns."""

    block_number: int
    block_hash: bytes
    status: int  # 1 success, 0 reverted


# ---------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class ProposeLease:
    proposal: LeaseProposal


@dataclass(frozen=True, slots=True)
class BuildIntent:
    """Sign ``anchor(batch_id, tree_size, root at tree_size)`` and propose it as an intent.

    Nonce: ``max(nonce_hint, the sender's pending nonce on the chain)``. A replacement names
    the transaction it replaces and why (``reverted`` or ``nonce_used``).
    """

    batch_id: int
    tree_size: int
    why: str
    nonce_hint: int
    replaces: bytes | None = None
    # The batch is the one the contract takes next (if the log and the chain agree): the
    # adapter first runs anchor() as a call and, if it would revert, signs nothing and
    # reports "would_revert" (no transaction is wasted on a revoked submitter, say).
    simulate: bool = False

    def intent(
        self, *, holder: str, root: bytes, sender: bytes, nonce: int, raw_tx: bytes, tx_hash: bytes
    ) -> IntentProposal:
        """The intent to propose once the adapter signed the transaction."""
        return IntentProposal(
            holder=holder,
            batch_id=self.batch_id,
            tree_size=self.tree_size,
            root=root,
            sender=sender,
            nonce=nonce,
            raw_tx=raw_tx,
            tx_hash=tx_hash,
            why=self.why,
            replaces=self.replaces,
        )


@dataclass(frozen=True, slots=True)
class ProposeResult:
    proposal: ResultProposal


@dataclass(frozen=True, slots=True)
class ProposeFinal:
    proposal: FinalProposal


@dataclass(frozen=True, slots=True)
class ProposeReorg:
    proposal: ReorgProposal


@dataclass(frozen=True, slots=True)
class Broadcast:
    batch_id: int
    raw_tx: bytes
    tx_hash: bytes


@dataclass(frozen=True, slots=True)
class CheckInclusion:
    batch_id: int
    tx_hash: bytes


@dataclass(frozen=True, slots=True)
class CheckHead:
    pass


@dataclass(frozen=True, slots=True)
class CheckBlock:
    number: int
    expected: bytes  # the hash recorded for it: the answer is compared with this


ProposalAction = ProposeLease | BuildIntent | ProposeResult | ProposeFinal | ProposeReorg
ChainAction = Broadcast | CheckInclusion | CheckHead | CheckBlock
Action = ProposalAction | ChainAction


# ---------------------------------------------------------------------- the driver


@dataclass(slots=True)
class _Track:
    """What this holder knows about one unmined transaction (reset when it changes)."""

    tx_hash: bytes
    next_send_ms: int = 0
    sends: int = 0  # broadcasts answered accepted or known
    send_errors: int = 0
    nonce_used: bool = False
    misses: int = 0  # receipt checks that found nothing since nonce_used
    nonce_used_head: int | None = None  # the head when nonce_used was first judged
    check_now: bool = False
    seen: TxInclusion | None = None
    seen_under: tuple[bytes, int] | None = None  # (head hash, when) of the last receipt answer


@dataclass(slots=True)
class DriverStats:
    leases_asked: int = 0
    leases_released: int = 0
    intents_built: int = 0
    replacements_built: int = 0
    broadcasts: int = 0
    chain_errors: int = 0
    results_proposed: int = 0
    finals_proposed: int = 0
    reorgs_proposed: int = 0
    requests_timed_out: int = 0


def _proposal_key(action: ProposalAction) -> tuple[Any, ...]:
    if isinstance(action, ProposeLease):
        return ("lease",)
    if isinstance(action, BuildIntent):
        return ("intent",)  # one intent at a time, new or replacement
    if isinstance(action, ProposeResult):
        return ("result", action.proposal.batch_id)
    if isinstance(action, ProposeFinal):
        return ("final",)
    return ("reorg",)


def _request_key(action: ChainAction) -> tuple[Any, ...]:
    if isinstance(action, Broadcast):
        return ("send", action.batch_id)
    if isinstance(action, CheckInclusion):
        return ("receipt", action.batch_id)
    if isinstance(action, CheckBlock):
        return ("block", action.number, action.expected)
    return ("head",)


class AnchorDriver:
    """The decision core of one node (see the module docstring)."""

    def __init__(self, settings: DriverSettings, rng: Rng) -> None:
        self.settings = settings
        self._rng = rng
        self.stats = DriverStats()
        self._now_ms = 0
        self._proposals: dict[tuple[Any, ...], int] = {}  # key -> deadline
        self._requests: dict[tuple[Any, ...], int] = {}  # key -> deadline
        self._acquire_after_ms: int | None = None
        self._cooloff_until_ms = 0
        self._epoch: int | None = None  # the lease epoch this node acts under
        self._released_epoch: int | None = None  # the epoch this node gave up
        self._snapshot: AnchorSnapshot | None = None
        self._reset_holding()

    def _reset_holding(self) -> None:
        self._tracks: dict[int, _Track] = {}
        self._head: int | None = None
        self._head_hash: bytes | None = None  # None: the adapter gives numbers only
        self._next_poll_ms = 0
        self._errors = 0
        self._quiet_until_ms = 0
        self._confirmed: dict[tuple[int, bytes], int] = {}  # (block, hash) -> head when seen
        self._vanished: set[tuple[int, bytes]] = set()  # (block, hash) found gone
        # (block, hash) -> (head number, head hash, when last read itself): the head whose
        # chain the block was last found on; while that head is still the head, or still on
        # the chain, the block is too (see "poll" in the module docstring).
        self._under: dict[tuple[int, bytes], tuple[int, bytes, int]] = {}
        self._replace_after: dict[tuple[int, bytes], int] = {}  # (batch, tx) -> not before
        self._replacements: dict[int, int] = {}  # batch -> replacements committed by this holding
        self._build_after_ms = 0
        self._would_revert = 0  # intents in a row that would have reverted
        self.stuck_batch: int | None = None

    # ------------------------------------------------------------------ the tick

    def tick(
        self, now_ms: int, snapshot: AnchorSnapshot, *, can_propose: bool, has_key: bool
    ) -> list[Action]:
        self._now_ms = now_ms
        self._snapshot = snapshot
        self._expire(now_ms)
        s = self.settings
        if not has_key or s.sender is None or not can_propose:
            self._leave()
            return []
        lease = snapshot.lease
        if lease is None or lease.free_at(now_ms):
            self._leave()
            return self._maybe_acquire(now_ms)
        if lease.holder != s.node_id:
            self._leave()
            self._acquire_after_ms = None
            return []
        if lease.epoch == self._released_epoch:
            return []  # given up (a release is on its way, or the lease lapses)
        if self._epoch != lease.epoch:
            self._reset_holding()
            self._epoch = lease.epoch
        actions: list[Action] = []
        third = lease.ttl_ms // 3
        if now_ms >= lease.renewed_ms + third:
            actions += self._propose(ProposeLease(LeaseProposal(s.node_id, s.lease_ttl_ms)))
        if now_ms >= lease.expires_ms - third:
            return actions  # too close to expiry to act on the chain: only renew
        if self._errors >= s.chain_errors_max or any(
            t.send_errors >= s.chain_errors_max for t in self._tracks.values()
        ):
            self._cooloff_until_ms = now_ms + s.lease_cooloff_ms
            return self._release(lease)
        self._sync_tracks(snapshot)
        actions += self._log_actions(now_ms, snapshot)
        if now_ms >= self._quiet_until_ms:
            actions += self._chain_actions(now_ms, snapshot)
        return actions

    def stop(self, now_ms: int, snapshot: AnchorSnapshot) -> list[Action]:
        """On shutdown: give the lease up if this node holds it (another takes over at once)."""
        self._now_ms = now_ms
        lease = snapshot.lease
        if lease is None or not lease.held_by(self.settings.node_id, now_ms):
            self._leave()
            return []
        return self._release(lease)

    def _release(self, lease: Lease) -> list[Action]:
        self._leave()
        self._released_epoch = lease.epoch
        self._proposals.pop(("lease",), None)
        self.stats.leases_released += 1
        return self._propose(
            ProposeLease(LeaseProposal(self.settings.node_id, lease.ttl_ms, release=True))
        )

    @property
    def holding(self) -> bool:
        return self._epoch is not None

    def status(self) -> dict[str, Any]:
        return {
            "holding": self.holding,
            "lease_epoch": self._epoch,
            "head": self._head,
            "chain_errors_in_a_row": self._errors,
            "stuck_batch": self.stuck_batch,
            "proposals_pending": len(self._proposals),
            "requests_pending": len(self._requests),
            **{name: getattr(self.stats, name) for name in self.stats.__dataclass_fields__},
        }

    # ------------------------------------------------------------------ feedback

    def on_proposed(self, action: ProposalAction, code: str | None) -> None:
        """How a proposal ended: its result code, or None when it was lost or timed out."""
        self._proposals.pop(_proposal_key(action), None)
        if isinstance(action, ProposeLease) and code == "held":
            self._acquire_after_ms = None
        if isinstance(action, BuildIntent):
            if code == WOULD_REVERT:
                self._would_revert += 1
                self._build_after_ms = self._now_ms + self._backoff_ms(self._would_revert)
            elif code == "created":
                self._would_revert = 0
                if action.replaces is not None:
                    count = self._replacements.get(action.batch_id, 0) + 1
                    self._replacements[action.batch_id] = count

    def on_broadcast(self, action: Broadcast, outcome: str) -> None:
        """What sending ``action.raw_tx`` answered (one of ``BROADCAST_OUTCOMES``)."""
        self._requests.pop(_request_key(action), None)
        track = self._tracks.get(action.batch_id)
        if track is None or track.tx_hash != action.tx_hash:
            return
        s = self.settings
        if outcome in (SENT, KNOWN):
            self._ok()
            track.sends += 1
            track.send_errors = 0
            track.next_send_ms = self._now_ms + s.rebroadcast_interval_ms
        elif outcome == NONCE_USED:
            self._ok()
            track.nonce_used = True
            track.check_now = True  # mined (find its receipt) or displaced (replace it)
        else:
            track.send_errors += 1
            track.next_send_ms = self._now_ms + self._backoff_ms(track.send_errors)
            self._error()

    def on_inclusion(self, action: CheckInclusion, inclusion: TxInclusion | None) -> None:
        """The receipt of ``action.tx_hash`` (None: not mined on the chain the node follows)."""
        self._requests.pop(_request_key(action), None)
        self._ok()
        track = self._tracks.get(action.batch_id)
        if track is None or track.tx_hash != action.tx_hash:
            return
        track.seen = inclusion
        if self._head_hash is not None:
            track.seen_under = (self._head_hash, self._now_ms)
        if inclusion is not None:
            track.misses = 0
        elif track.nonce_used:
            track.misses += 1  # the next poll checks again

    def on_head(self, action: CheckHead, number: int, block_hash: bytes | None = None) -> None:
        """The chain's latest block: its number and, from an adapter that reads it, its hash
        (without it every poll reads every watched block and receipt again)."""
        self._requests.pop(_request_key(action), None)
        self._ok()
        self._head = number
        self._head_hash = block_hash

    def on_block_hash(self, action: CheckBlock, block_hash: bytes | None) -> None:
        """The hash of block ``action.number`` now (None: the chain has no such block).

        Compared with the hash the batch recorded when the check was asked, so an answer
        never judges an inclusion committed after it was asked for."""
        self._requests.pop(_request_key(action), None)
        self._ok()
        key = (action.number, action.expected)
        linked = [k for k, under in self._under.items() if (under[0], under[1]) == key]
        if block_hash == action.expected:
            head = self._head if self._head is not None else 0
            self._confirmed[key] = head
            if self._head_hash is not None and action.number <= head:
                self._under[key] = (head, self._head_hash, self._now_ms)
                # The answer is also a former head still on the chain: so is every block that
                # was found below it, now below the current head (a hash names its parent).
                for k in linked:
                    self._confirmed[k] = head
                    self._under[k] = (head, self._head_hash, self._under[k][2])
                return
            # Above the head last read (or no head hash): nothing vouched, read again next poll.
            self._under.pop(key, None)
            for k in linked:
                self._under.pop(k, None)
            return
        self._confirmed.pop(key, None)
        self._under.pop(key, None)
        self._vanished.add(key)
        for k in linked:  # that head is gone: each block below it is read itself next poll
            self._under.pop(k, None)

    def on_chain_error(self, action: ChainAction, detail: str = "") -> None:
        """A chain call failed (transport, timeout, node error); ``detail`` is for logs."""
        self._requests.pop(_request_key(action), None)
        if isinstance(action, Broadcast):
            track = self._tracks.get(action.batch_id)
            if track is not None and track.tx_hash == action.tx_hash:
                track.send_errors += 1
                track.next_send_ms = self._now_ms + self._backoff_ms(track.send_errors)
        self._error()

    # ------------------------------------------------------------------ internals

    def _ok(self) -> None:
        self._errors = 0

    def _error(self) -> None:
        self.stats.chain_errors += 1
        if self._now_ms < self._quiet_until_ms:
            return  # more calls of the round that failed: the same outage, one failure
        self._errors += 1
        self._quiet_until_ms = self._now_ms + self._backoff_ms(self._errors)

    def _backoff_ms(self, failures: int) -> int:
        s = self.settings
        ceiling = min(s.retry_backoff_max_ms, s.retry_backoff_base_ms << min(failures - 1, 30))
        return ceiling // 2 + self._rng.randint(0, ceiling - ceiling // 2)

    def _expire(self, now_ms: int) -> None:
        for key, deadline in list(self._proposals.items()):
            if now_ms >= deadline:
                del self._proposals[key]
        for key, deadline in list(self._requests.items()):
            if now_ms >= deadline:
                del self._requests[key]
                self.stats.requests_timed_out += 1

    def _leave(self) -> None:
        if self._epoch is not None:
            self._epoch = None
            self._reset_holding()
            self._requests.clear()
            for key in [k for k in self._proposals if k != ("lease",)]:
                del self._proposals[key]

    def _propose(self, action: ProposalAction) -> list[Action]:
        key = _proposal_key(action)
        if key in self._proposals:
            return []
        self._proposals[key] = self._now_ms + self.settings.proposal_timeout_ms
        return [action]

    def _request(self, action: ChainAction) -> list[Action]:
        key = _request_key(action)
        if key in self._requests:
            return []
        self._requests[key] = self._now_ms + self.settings.request_timeout_ms
        return [action]

    def _maybe_acquire(self, now_ms: int) -> list[Action]:
        s = self.settings
        if now_ms < self._cooloff_until_ms or ("lease",) in self._proposals:
            return []
        if self._acquire_after_ms is None:
            self._acquire_after_ms = now_ms + self._rng.randint(0, s.lease_acquire_jitter_ms)
        if now_ms < self._acquire_after_ms:
            return []
        self._acquire_after_ms = None
        self.stats.leases_asked += 1
        return self._propose(ProposeLease(LeaseProposal(s.node_id, s.lease_ttl_ms)))

    def _sync_tracks(self, snapshot: AnchorSnapshot) -> None:
        unmined = {b.batch_id: b for b in snapshot.batches if b.state == INTENT}
        for batch_id in [i for i in self._tracks if i not in unmined]:
            del self._tracks[batch_id]
        for batch_id, b in unmined.items():
            track = self._tracks.get(batch_id)
            if track is None or track.tx_hash != b.tx_hash:
                self._tracks[batch_id] = _Track(b.tx_hash)
        blocks = {_block_of(b) for b in snapshot.batches if b.inclusion is not None}
        self._vanished &= blocks
        current = {(b.batch_id, b.tx_hash) for b in snapshot.batches}
        self._replace_after = {k: v for k, v in self._replace_after.items() if k in current}
        self._confirmed = {k: v for k, v in self._confirmed.items() if k in blocks}
        self._under = {k: v for k, v in self._under.items() if k in blocks}

    def _nonce_hint(self, snapshot: AnchorSnapshot) -> int:
        mine = [b.nonce + 1 for b in snapshot.batches if b.sender == self.settings.sender]
        return max(mine, default=0)

    # -- proposals that follow from what the chain said

    def _log_actions(self, now_ms: int, snap: AnchorSnapshot) -> list[Action]:
        s = self.settings
        me = s.node_id
        progress = snap.progress
        actions: list[Action] = []
        for b in snap.batches:
            track = self._tracks.get(b.batch_id)
            if b.state != INTENT or track is None or track.seen is None:
                continue
            seen = track.seen
            if seen.status == 1 and b.batch_id != progress.included_through + 1:
                continue  # results go in batch order (the contract took them in order)
            result = ResultProposal(
                me,
                b.batch_id,
                b.tx_hash,
                s.chain_id,
                s.contract,
                seen.block_number,
                seen.block_hash,
                seen.status,
            )
            proposed = self._propose(ProposeResult(result))
            self.stats.results_proposed += len(proposed)
            actions += proposed
        gone = [
            b for b in snap.batches if b.inclusion is not None and _block_of(b) in self._vanished
        ]
        if gone:  # the lowest: the reorg entry sends it and every later batch back
            b = gone[0]
            reorg = self._propose(ProposeReorg(ReorgProposal(me, b.batch_id, _block_of(b)[1])))
            self.stats.reorgs_proposed += len(reorg)
            return actions + reorg  # nothing is final, nor worth a new batch, until settled
        actions += self._maybe_final(snap)
        actions += self._maybe_intent(now_ms, snap)
        return actions

    def _maybe_final(self, snap: AnchorSnapshot) -> list[Action]:
        candidate = next(
            (b for b in snap.batches if b.batch_id == snap.progress.final_through + 1), None
        )
        if candidate is None or candidate.state != INCLUDED or candidate.inclusion is None:
            return []
        inclusion = candidate.inclusion
        head = self._confirmed.get((inclusion.block_number, inclusion.block_hash))
        if head is None:
            return []
        depth = head - inclusion.block_number + 1
        if depth < self.settings.confirmations:
            return []
        final = FinalProposal(
            self.settings.node_id, candidate.batch_id, inclusion.block_hash, depth
        )
        proposed = self._propose(ProposeFinal(final))
        self.stats.finals_proposed += len(proposed)
        return proposed

    def _maybe_intent(self, now_ms: int, snap: AnchorSnapshot) -> list[Action]:
        s = self.settings
        if ("intent",) in self._proposals:
            return []
        hint = self._nonce_hint(snap)
        self.stuck_batch = None
        if now_ms < self._build_after_ms:
            return []  # the last one would have reverted: wait
        unmined = [b for b in snap.batches if b.state in (INTENT, FAILED)]
        if unmined and self._needs_replacement(unmined[0]):
            if not self._failure_is_final(unmined[0]):
                return []  # a reorg could still undo the failure (and unspend its nonce)
            return self._replace(now_ms, unmined[0], snap, hint)
        if any(self._needs_replacement(b) for b in unmined):
            return []  # replaced once every earlier batch landed (it would revert before)
        if snap.progress.open_count >= s.open_batches_max:
            return []
        if any(b.state == INTENT and b.sender != s.sender for b in snap.batches):
            return []  # another key's batches first: nothing orders two senders' nonces
        last = snap.last
        grown = snap.tree_size - (last.tree_size if last is not None else 0)
        if grown <= 0:
            return []
        if grown >= s.anchor_batch_max:
            why = SIZE
        elif last is None or now_ms - last.intent_ms >= s.anchor_interval_ms:
            why = INTERVAL
        else:
            return []
        next_id = snap.progress.next_batch_id
        on_chain_next = next_id == snap.progress.included_through + 1
        built = self._propose(BuildIntent(next_id, snap.tree_size, why, hint, None, on_chain_next))
        self.stats.intents_built += len(built)
        return built

    def _needs_replacement(self, b: Batch) -> bool:
        """Failed, or displaced: its nonce spent by another transaction while it is nowhere
        on the chain (checked ``nonce_used_misses_required`` times)."""
        if b.state == FAILED:
            return True
        track = self._tracks.get(b.batch_id)
        return (
            b.state == INTENT
            and track is not None
            and track.nonce_used
            and track.seen is None
            and track.misses >= self.settings.nonce_used_misses_required
        )

    def _failure_is_final(self, b: Batch) -> bool:
        """The failure is past the reorg watch: the revert's block is still there that deep,
        or the nonce was found spent that many blocks ago. (Replaced, the old transaction is
        forgotten; a reorg undoing its failure would leave its nonce unspent, a gap that
        blocks the sender's later transactions.)"""
        depth_needed = max(self.settings.confirmations, self.settings.reorg_window_blocks)
        if b.state == FAILED:
            head = self._confirmed.get(_block_of(b))
            return head is not None and head - _block_of(b)[0] + 1 >= depth_needed
        track = self._tracks.get(b.batch_id)
        if track is None or self._head is None:
            return False
        if track.nonce_used_head is None:
            track.nonce_used_head = self._head
        return self._head - track.nonce_used_head + 1 >= depth_needed

    def _replace(self, now_ms: int, b: Batch, snap: AnchorSnapshot, hint: int) -> list[Action]:
        """A new transaction for the lowest unmined batch, after a back-off; at most
        ``replacements_max`` per batch in one holding (then reported stuck: a restart or
        another holder tries again)."""
        built_here = self._replacements.get(b.batch_id, 0)
        if built_here >= self.settings.replacements_max:
            self.stuck_batch = b.batch_id
            return []
        key = (b.batch_id, b.tx_hash)
        if key not in self._replace_after:
            self._replace_after[key] = now_ms + self._backoff_ms(built_here + 1)
        if now_ms < self._replace_after[key]:
            return []
        why = REVERTED if b.state == FAILED else REPLACE_NONCE_USED
        simulate = b.batch_id == snap.progress.included_through + 1
        built = self._propose(BuildIntent(b.batch_id, b.tree_size, why, hint, b.tx_hash, simulate))
        self.stats.replacements_built += len(built)
        return built

    # -- chain calls

    def _chain_actions(self, now_ms: int, snap: AnchorSnapshot) -> list[Action]:
        actions: list[Action] = []
        for b in snap.batches:
            if b.state != INTENT:
                continue
            track = self._tracks[b.batch_id]
            if track.nonce_used or now_ms < track.next_send_ms:
                continue
            sent = self._request(Broadcast(b.batch_id, b.raw_tx, b.tx_hash))
            self.stats.broadcasts += len(sent)
            actions += sent
        for b in snap.batches:
            checking = self._tracks.get(b.batch_id)
            if checking is not None and checking.check_now:
                checking.check_now = False
                actions += self._request(CheckInclusion(b.batch_id, b.tx_hash))
        if now_ms >= self._next_poll_ms:
            self._next_poll_ms = now_ms + self.settings.poll_interval_ms
            actions += self._poll(snap)
        return actions

    def _poll(self, snap: AnchorSnapshot) -> list[Action]:
        actions = self._request(CheckHead())
        for b in snap.batches:
            if b.state == INTENT:
                if self._receipt_due(self._tracks[b.batch_id]):
                    actions += self._request(CheckInclusion(b.batch_id, b.tx_hash))
            elif b.inclusion is not None:  # included, final, or failed (until replaced)
                number, block_hash = _block_of(b)
                watched = (
                    b.state in (INCLUDED, FAILED)
                    or self._head is None
                    or number + self.settings.reorg_window_blocks > self._head
                )
                if watched:  # batches sharing a block share the request
                    actions += self._check_block(number, block_hash)
        return actions

    def _fresh(self, under_hash: bytes, when_ms: int) -> bool:
        """Read under the current head, recently enough: nothing on the chain changed since."""
        return (
            self._head_hash == under_hash
            and self._now_ms - when_ms < self.settings.recheck_interval_ms
        )

    def _receipt_due(self, track: _Track) -> bool:
        """A receipt can only appear or vanish with a new head (a new block or a reorg)."""
        return track.seen_under is None or not self._fresh(*track.seen_under)

    def _check_block(self, number: int, block_hash: bytes) -> list[Action]:
        """Read the block itself; nothing while the head it was found under is still the head;
        or, once the head moved, read only that former head: still there, it vouches for
        every block found below it (one read for all of them)."""
        under = self._under.get((number, block_hash))
        if under is None or self._now_ms - under[2] >= self.settings.recheck_interval_ms:
            return self._request(CheckBlock(number, block_hash))
        if self._fresh(under[1], under[2]):
            return []
        return self._request(CheckBlock(under[0], under[1]))


def _block_of(b: Batch) -> tuple[int, bytes]:
    """(number, hash) of the block a batch's transaction was mined in."""
    assert b.inclusion is not None, "only mined batches have a block"
    return b.inclusion.block_number, b.inclusion.block_hash
