"""The anchoring service of a node: runs the pure :class:`~node.anchoring.driver.AnchorDriver`
against the node's replicated log and the chain.

Every ``tick_s`` it reads the applied anchoring state and the Merkle log's size, asks the
driver what to do, and does it:

* **proposals** (lease, intent, result, final, reorg) go through the :class:`Proposer`, in the
  order the driver gave them, and each outcome goes back to the driver;
* **chain calls** (sign, simulate, nonce, broadcast, receipt, head, block hash) run on a
  worker thread (``asyncio.to_thread``), one at a time behind one lock: the
  :class:`~node.anchoring.chain.AnchorChain` is not thread-safe, and the lock makes this
  service the one owner of the key's nonces. A nonce is read and the transaction signed under
  the same lock hold.

An intent is signed, then proposed; the driver only ever broadcasts intents it read back from
the applied state, so a signed transaction whose proposal was lost is never sent.

Ticks go on while actions are in flight (the driver never repeats an outstanding one), so a
slow RPC endpoint delays chain calls but never the lease renewals. Chain calls are bounded by
the web3 provider's ``rpc_timeout_s`` (a thread cannot be cancelled; waiting for it keeps the
one-caller rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from node.anchoring.config import AnchoringSettings
from node.anchoring.driver import (
    REJECTED,
    WOULD_REVERT,
    Action,
    AnchorDriver,
    AnchorSnapshot,
    Broadcast,
    BuildIntent,
    ChainAction,
    CheckBlock,
    CheckHead,
    CheckInclusion,
    ProposalAction,
    ProposeFinal,
    ProposeLease,
    ProposeReorg,
    ProposeResult,
    TxInclusion,
    read_snapshot,
)
from node.anchoring.state import (
    AnchorCounters,
    RootAt,
    counters,
    latest_anchored,
    latest_final,
    lease_of,
    progress_of,
)
from node.consensus.state_machine import AppEntry, Applied, ApplyOutcome, StateView
from node.errors import BaasError, ConfigError, OperationFailed

__all__ = [
    "AnchorService",
    "ChainPort",
    "LeaderProposer",
    "Proposer",
    "StateReader",
    "open_chain",
]

log = logging.getLogger("baas.node.anchoring")
RELEASE_AT_STOP_S = 2.0  # how long a stopping node tries to hand its lease back


def _now_ms() -> int:
    return time.time_ns() // 1_000_000  # the same clock as the leader time of log entries


class Proposer(Protocol):
    """Where anchoring entries are proposed."""

    def can_propose(self) -> bool: ...

    async def propose(self, entry: AppEntry, *, timeout_s: float) -> ApplyOutcome: ...


class _Log(Protocol):
    def status(self) -> Any: ...

    async def propose(self, entries: Sequence[AppEntry], *, timeout_s: float) -> list[Applied]: ...


class LeaderProposer:
    """Proposals through this node's own log, which takes them only while it leads.

    With it, the lease follows leadership among the nodes that have a key: a holder that loses
    leadership stops acting at once and its lease lapses after the ttl. (A proposer that
    forwards to the leader would let any keyed node hold the lease.)
    """

    def __init__(self, replicated_log: _Log) -> None:
        self._log = replicated_log

    def can_propose(self) -> bool:
        try:
            return bool(self._log.status().role == "leader")
        except OperationFailed:
            return False

    async def propose(self, entry: AppEntry, *, timeout_s: float) -> ApplyOutcome:
        (applied,) = await self._log.propose([entry], timeout_s=timeout_s)
        return applied.outcome


class StateReader(Protocol):
    def state_get(self, key: bytes) -> bytes | None: ...


class _View:
    def __init__(self, store: StateReader) -> None:
        self._store = store

    def get(self, key: bytes) -> bytes | None:
        return self._store.state_get(key)


class _Signed(Protocol):
    raw: bytes
    tx_hash: bytes
    nonce: int


class ChainPort(Protocol):
    """What the service uses of :class:`~node.anchoring.chain.AnchorChain` (blocking calls)."""

    def chain_id(self) -> int: ...

    def account_nonce(self) -> int: ...

    def simulate_anchor(self, batch_id: int, tree_size: int, root: bytes) -> None: ...

    def sign_anchor(self, batch_id: int, tree_size: int, root: bytes, nonce: int) -> Any: ...

    def broadcast(self, raw: bytes) -> str: ...

    def inclusion(self, tx_hash: bytes) -> TxInclusion | None: ...

    def head_block(self) -> tuple[int, bytes]: ...

    def block_hash(self, number: int) -> bytes | None: ...


def open_chain(settings: AnchoringSettings) -> tuple[Any, bytes | None]:
    """The node's :class:`AnchorChain` and its 20-byte sender address, or ``(None, None)``
    for a node that does not anchor (disabled, or no key file). Reads the key file; makes no
    chain call."""
    if not settings.anchors:
        return None, None
    from node.anchoring.chain import AnchorChain, connect_web3  # web3 only where it anchors
    from node.anchoring.keyfile import load_key_file

    assert settings.key_file is not None
    key = load_key_file(settings.key_file)
    w3 = connect_web3(settings.rpc_url, timeout_s=settings.rpc_timeout_s)
    return AnchorChain(w3, settings.contract, key), bytes.fromhex(key.address[2:])


def _merkle_size(view: StateView) -> int:
    from node.merkle.log import MerkleReader

    return MerkleReader(view).size


def _merkle_root_at(view: StateView, size: int) -> bytes | None:
    from node.merkle.log import root_at

    return root_at(view, size)


class AnchorService:
    def __init__(
        self,
        *,
        node_id: str,
        settings: AnchoringSettings,
        proposer: Proposer,
        store: StateReader,
        chain: ChainPort | None,
        sender: bytes | None,
        rng: random.Random | None = None,
        clock_ms: Callable[[], int] = _now_ms,
        tree_size: Callable[[StateView], int] = _merkle_size,
        root_at: RootAt = _merkle_root_at,
    ) -> None:
        if (chain is None) != (sender is None):
            raise ConfigError("anchoring needs both a chain and the key's address, or neither")
        self._settings = settings
        self._node_id = node_id
        self._proposer = proposer
        self._view = _View(store)
        self._chain = chain
        self._clock_ms = clock_ms
        self._tree_size = tree_size
        self._root_at = root_at
        self.driver = AnchorDriver(
            settings.driver_settings(node_id, sender), rng or random.Random()
        )
        self._sender = sender
        self._chain_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.ticks = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Check the chain is the configured one (a wrong chain id refuses to start; an
        unreachable chain only logs: the driver retries), then run the loop."""
        if self._chain is not None:
            chain = self._chain
            try:
                got = await asyncio.to_thread(chain.chain_id)
            except OperationFailed as exc:
                log.warning("anchoring: chain not reachable at start: %s", exc.detail)
            else:
                if got != self._settings.chain_id:
                    raise ConfigError(
                        f"anchoring.chain_id is {self._settings.chain_id}, the chain at "
                        f"{self._settings.rpc_url} says {got}"
                    )
        self._task = asyncio.create_task(self._run(), name="anchoring")

    async def stop(self) -> None:
        """Stop the loop and give the lease up if held (the next holder starts at once)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._inflight):
            task.cancel()
        for task in list(self._inflight):
            with contextlib.suppress(asyncio.CancelledError, BaasError):
                await task
        try:
            actions = self.driver.stop(self._clock_ms(), self._snapshot())
            if actions and self._proposer.can_propose():
                # Bounded: when the whole cluster stops, the leader may already be gone, and a
                # stop must not wait out the proposal timeout (the lease then simply lapses).
                async with asyncio.timeout(RELEASE_AT_STOP_S):
                    await self._do_proposals([a for a in actions if isinstance(a, _PROPOSALS)])
        except BaasError as exc:
            log.info("anchoring: lease not released at stop: %s", exc.detail)
        except TimeoutError:
            log.info("anchoring: lease not released at stop: no leader answered in time")

    async def _run(self) -> None:
        while True:
            try:
                self.tick_once()
            except Exception:  # a bug here must not stop the node; logged with its stack
                log.exception("anchoring tick failed")
            await asyncio.sleep(self._settings.tick_s)

    # ------------------------------------------------------------------ one tick

    def _snapshot(self) -> AnchorSnapshot:
        return read_snapshot(
            self._view, self._tree_size(self._view), self._settings.watch_batches_max
        )

    def tick_once(self) -> list[Action]:
        """One driver tick; its actions start as tasks (proposals in order, chain calls in
        order behind the chain lock). Returns them (for tests and logs)."""
        self.ticks += 1
        actions = self.driver.tick(
            self._clock_ms(),
            self._snapshot(),
            can_propose=self._proposer.can_propose(),
            has_key=self._chain is not None,
        )
        proposals = [a for a in actions if isinstance(a, _PROPOSALS)]
        calls = [a for a in actions if isinstance(a, _CALLS)]
        if proposals:
            self._spawn(self._do_proposals(proposals))
        if calls:
            self._spawn(self._do_calls(calls))
        return actions

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def settle(self) -> None:
        """Wait until the actions started so far are done (tests)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    # ------------------------------------------------------------------ proposals

    async def _do_proposals(self, actions: Sequence[ProposalAction]) -> None:
        for action in actions:
            code: str | None = None
            try:
                if isinstance(action, BuildIntent):
                    code = await self._build_intent(action)
                else:
                    code = await self._propose(action.proposal.to_entry())
                    _log_outcome(action, code)
            except (OperationFailed, TimeoutError) as exc:
                self.last_error = f"{type(action).__name__}: {_detail(exc)}"
                log.info("anchoring: %s", self.last_error)
            finally:
                self.driver.on_proposed(action, code)

    async def _propose(self, entry: AppEntry) -> str:
        outcome = await self._proposer.propose(entry, timeout_s=self._settings.proposal_timeout_s)
        return outcome.code

    async def _build_intent(self, action: BuildIntent) -> str | None:
        chain, sender = self._chain, self._sender
        assert chain is not None and sender is not None, "no key: the driver never builds"
        root = self._root_at(self._view, action.tree_size)
        if root is None:
            return None  # the log is smaller than the driver read a moment ago: cannot be

        def sign() -> Any:
            if action.simulate:
                chain.simulate_anchor(action.batch_id, action.tree_size, root)
            nonce = max(action.nonce_hint, chain.account_nonce())
            return chain.sign_anchor(action.batch_id, action.tree_size, root, nonce)

        try:
            signed: _Signed = await self._on_chain(sign)
        except OperationFailed as exc:
            if action.simulate and exc.code == "chain_reverted":
                log.info("anchoring: batch %d would revert (%s)", action.batch_id, exc.detail)
                return WOULD_REVERT
            raise
        proposal = action.intent(
            holder=self._node_id,
            root=root,
            sender=sender,
            nonce=signed.nonce,
            raw_tx=signed.raw,
            tx_hash=signed.tx_hash,
        )
        code = await self._propose(proposal.to_entry())
        log.info(
            "anchoring: intent for batch %d (%d leaves, %s, nonce %d): %s",
            action.batch_id,
            action.tree_size,
            action.why,
            signed.nonce,
            code,
        )
        return code

    # ------------------------------------------------------------------ chain calls

    async def _on_chain(self, call: Callable[[], Any]) -> Any:
        async with self._chain_lock:
            return await asyncio.to_thread(call)

    async def _do_calls(self, actions: Sequence[ChainAction]) -> None:
        for action in actions:
            try:
                await self._do_call(action)
            except OperationFailed as exc:
                if isinstance(action, Broadcast) and exc.code != "chain_unavailable":
                    self.last_error = f"broadcast batch {action.batch_id}: {exc.detail}"
                    self.driver.on_broadcast(action, REJECTED)
                else:
                    self.last_error = f"{type(action).__name__}: {exc.detail}"
                    self.driver.on_chain_error(action, exc.detail)
                log.info("anchoring: %s", self.last_error)
            except Exception as exc:  # a bug or an untranslated library error: count it
                self.last_error = f"{type(action).__name__}: {type(exc).__name__}"
                log.exception("anchoring: chain call failed")
                self.driver.on_chain_error(action, self.last_error)

    async def _do_call(self, action: ChainAction) -> None:
        chain = self._chain
        assert chain is not None
        if isinstance(action, Broadcast):
            outcome = await self._on_chain(lambda: chain.broadcast(action.raw_tx))
            self.driver.on_broadcast(action, str(outcome))
        elif isinstance(action, CheckInclusion):
            found = await self._on_chain(lambda: chain.inclusion(action.tx_hash))
            self.driver.on_inclusion(action, found)
        elif isinstance(action, CheckHead):
            number, block_hash = await self._on_chain(chain.head_block)
            self.driver.on_head(action, int(number), bytes(block_hash))
        elif isinstance(action, CheckBlock):
            block = await self._on_chain(lambda: chain.block_hash(action.number))
            self.driver.on_block_hash(action, block)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """For ``/internal/v1/status`` and metrics: the driver's view and the applied state."""
        view = self._view
        progress = progress_of(view)
        lease = lease_of(view)
        anchored = latest_anchored(view)
        final = latest_final(view)
        count: AnchorCounters = counters(view)
        return {
            "enabled": self._settings.enabled,
            "has_key": self._chain is not None,
            "lease_holder": lease.holder if lease is not None else None,
            "lease_expires_ms": lease.expires_ms if lease is not None else None,
            "next_batch_id": progress.next_batch_id,
            "included_through": progress.included_through,
            "final_through": progress.final_through,
            "anchored_tree_size": anchored.tree_size if anchored is not None else 0,
            "final_tree_size": final.tree_size if final is not None else 0,
            "tree_size": self._tree_size(view),
            "counters": {name: getattr(count, name) for name in count.__dataclass_fields__},
            "driver": self.driver.status(),
            # JSON-RPC requests to the chain by method (AnchorChain counts them; {} without one)
            "chain_requests": dict(getattr(self._chain, "rpc_calls", {})),
            "last_error": self.last_error,
        }


_PROPOSALS = (ProposeLease, BuildIntent, ProposeResult, ProposeFinal, ProposeReorg)
_CALLS = (Broadcast, CheckInclusion, CheckHead, CheckBlock)


def _detail(exc: BaseException) -> str:
    return exc.detail if isinstance(exc, BaasError) else type(exc).__name__


def _log_outcome(action: ProposalAction, code: str) -> None:
    if isinstance(action, ProposeLease):
        if code in ("created", "released"):
            log.info("anchoring: lease %s (%s)", code, action.proposal.node_id)
    elif isinstance(action, ProposeReorg):
        log.warning("anchoring: batch %d's block vanished: %s", action.proposal.batch_id, code)
    elif isinstance(action, ProposeResult | ProposeFinal):
        log.info(
            "anchoring: %s batch %d: %s",
            "result of" if isinstance(action, ProposeResult) else "final",
            action.proposal.batch_id,
            code,
        )
