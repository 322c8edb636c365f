"""The node's deposit service: the configured vaults watched by the Raft leader, each
confirmed deposit credited through the log (issue 15, item 2).

For each vault of ``[deposits]`` (one per mode, node/chain/deposit_config.py) a runner polls
every ``poll_interval_s``. It acts only while this node leads and the log has enabled feature
10 (:data:`~node.consensus.deposit_ops.DEPOSIT_FEATURE_VERSION`): the same rule as anchoring's
lease proposer (:class:`node.anchoring.service.LeaderProposer`: the leader, so one node at a
time; a former leader that still polls proposes only credits that are idempotent anyway).

* **Start and resume.** On becoming the watcher it builds a fresh
  :class:`~node.chain.deposits.DepositTracker` from the replicated state: the vault's cursor
  (``lg/dk/``, the highest *safe* cursor a committed credit carried: every deposit at or
  below it is credited) or, with none yet, the block below ``start_block``; the credited set
  (``lg/dp/``) tells it which confirmed deposits to skip. So a leader change, a restart or a
  ``kill -9`` between seeing a deposit and crediting it re-reads the blocks above the cursor
  and proposes again exactly what the state lacks; a credit proposed twice is one credit (its
  record id is the deposit's key).
* **Credits.** Each :class:`~node.chain.deposits.CreditDeposit` becomes a platform record
  written through this node's coordinator -- shards, then the index entry through the one
  "propose through the leader" path (node/replication/index_client.py over
  :class:`~node.replication.leader_route.LeaderRoute`) -- carrying the ``dp`` credit. Its blob
  is the deposit's chain facts (deterministic, so a second proposal is ``existing``); the
  credit names the wallet's address when this node's state maps the on-chain wallet id to a
  registered wallet (a hint the state machine checks), else the state machine holds it in
  suspense. At most ``credits_per_write_max`` per write.
* **Alarms.** A credited deposit whose block is reorganised away, and a reorganisation deeper
  than the window, are logged at ERROR, counted (``baas_node_deposits_alarms_total``) and
  kept in :meth:`DepositService.status`; nothing is reversed (docs/vault.md, runbook).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgpack
from aiohttp import web

from business.identity.ids import Mode, wallet_id
from business.identity.model import WALLET_PREFIX
from business.identity.scope import PLATFORM
from node.chain.deposit_config import DepositsConfig, DepositVault
from node.chain.deposits import (
    Alarm,
    CreditDeposit,
    Cursor,
    Decision,
    DepositKey,
    DepositLog,
    DepositReader,
    DepositSettings,
    DepositTracker,
    Refused,
    deposit_record_id,
)
from node.consensus.deposit_ops import (
    CREDITED_PREFIX,
    SUSPENSE_PREFIX,
    CreditedDeposit,
    DepositCreditBody,
    credited_key,
    read_cursor,
)
from node.coordinator import WriteRequest, WriteResult
from node.errors import BaasError, InvalidRequest, OperationFailed
from node.metrics import Metrics, StatFamily
from node.periodic import Periodic

__all__ = [
    "PLATFORM_OWNER",
    "SUSPENSE_PATH",
    "DepositService",
    "StateStore",
    "add_deposit_routes",
    "deposit_blob",
    "suspense_list",
]

if TYPE_CHECKING:  # web3 costs ~2 s of CPU to import: only a node that watches pays it
    from node.chain.deposit_watch import DepositWatcher

log = logging.getLogger("baas.node.deposits")

PLATFORM_OWNER = "baas:platform"  # the owner of deposit records (no partner name has a colon)
BLOB_TAG = b"baas-deposit-record/v1"
SUSPENSE_PATH = "/internal/v1/deposits/suspense"
SUSPENSE_LIMIT_MAX = 1000  # deposits listed in one answer

Writer = Callable[[Sequence[WriteRequest]], Awaitable[list[WriteResult | BaasError]]]
ReaderFactory = Callable[[DepositSettings, DepositVault], DepositReader]


class StateStore(Protocol):
    """What the service reads of the applied state (DurableRaftStorage)."""

    def state_get(self, key: bytes) -> bytes | None: ...

    def state_items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]: ...


class _Credited:
    """The tracker's view of the replicated credited set (``lg/dp/``)."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def is_credited(self, key: DepositKey) -> bool:
        return self._store.state_get(credited_key(deposit_record_id(key))) is not None


def deposit_blob(deposit: DepositLog) -> bytes:
    """The record of a deposit's credit: its chain facts only (no block: a transaction mined
    again elsewhere keeps its key and its record), so every proposal of it is the same."""
    packed: bytes = msgpack.packb(
        [
            BLOB_TAG,
            deposit.chain_id,
            deposit.vault,
            deposit.tx_hash,
            deposit.log_index,
            deposit.token,
            deposit.wallet,
            deposit.amount.to_bytes(16, "big"),
        ],
        use_bin_type=True,
    )
    return packed


def suspense_list(store: StateStore, limit: int) -> list[dict[str, Any]]:
    """Deposits held in suspense (in record id order), at most ``limit``: for the operator
    (``GET /internal/v1/deposits/suspense``, ``baas-cluster deposits``)."""
    out: list[dict[str, Any]] = []
    if limit <= 0:
        return out
    for key, _ in store.state_items(SUSPENSE_PREFIX):
        record_id = key[len(SUSPENSE_PREFIX) :]
        raw = store.state_get(CREDITED_PREFIX + record_id)
        if raw is None:
            continue
        c = CreditedDeposit.decode(raw)
        out.append(
            {
                "record_id": record_id.hex(),
                "chain_id": c.chain_id,
                "tx_hash": "0x" + c.tx_hash.hex(),
                "log_index": c.log_index,
                "block_number": c.block_number,
                "token": "0x" + c.token.hex(),
                "ledger": c.ledger,
                "wallet": c.wallet.hex(),
                "amount": str(c.amount),
                "log_time_ms": c.log_time_ms,
            }
        )
        if len(out) >= limit:
            break
    return out


@dataclass(slots=True)
class _Counts:
    credited: int = 0
    held: int = 0
    refused: int = 0  # credits the state machine refused (deposit_refused)
    existing: int = 0  # credits already in the log (a retry, another leader's)
    write_failures: int = 0
    chain_errors: int = 0


class _Runner:
    """One vault, one mode: the tracker while this node watches, and its counters."""

    def __init__(self, service: DepositService, mode: Mode, vault: DepositVault) -> None:
        self.service = service
        self.mode = mode
        self.vault = vault
        self.settings = service.config.tracker_settings(mode, vault)
        self.watcher: DepositWatcher | None = None
        self.counts = _Counts()
        self.alarms: deque[dict[str, Any]] = deque(maxlen=service.config.alarms_kept_max)
        self.alarms_total = 0
        self.wallets: dict[bytes, bytes] = {}  # wallet id -> address, from the state

    async def step(self) -> None:
        if not self.service.acting():
            if self.watcher is not None:
                log.info("deposits (%s): no longer the leader, watcher stopped", self.mode.name)
            self.watcher = None
            return
        if self.watcher is None:
            self.watcher = await self._open()
        await self.watcher.poll()
        await self.watcher.tick()

    async def _open(self) -> DepositWatcher:
        reader = await asyncio.to_thread(self.service.open_reader, self.settings, self.vault)
        known = read_cursor(_View(self.service.store), self.vault.chain_id, self.settings.vault)
        if known is not None:
            cursor = Cursor(*known)
        else:
            start = self.vault.start_block - 1
            header = await asyncio.to_thread(reader.header, start)
            if header is None:
                raise OperationFailed(f"deposits: block {start} not found", code="chain_behind")
            cursor = Cursor(start, header.hash)
        tracker = DepositTracker(self.settings, cursor, _Credited(self.service.store))
        log.info(
            "deposits (%s): watching vault 0x%s on chain %d from block %d",
            self.mode.name,
            self.settings.vault.hex(),
            self.vault.chain_id,
            cursor.number,
        )
        from node.chain.deposit_watch import DepositWatcher  # web3: imported on use

        return DepositWatcher(
            tracker,
            reader,
            self._sink,
            poll_interval_s=self.service.config.poll_interval_s,
            rounds_max=self.service.config.rounds_per_poll_max,
        )

    async def _sink(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Alarm):
                self.alarms_total += 1
                self.alarms.append(
                    {
                        "kind": d.kind.value,
                        "block_number": d.block_number,
                        "block_hash": "0x" + d.block_hash.hex(),
                        "tx_hash": None if d.deposit is None else "0x" + d.deposit.tx_hash.hex(),
                        "log_index": None if d.deposit is None else d.deposit.log_index,
                        "at_ms": time.time_ns() // 1_000_000,
                    }
                )
            elif isinstance(d, Refused):
                pass  # logged and counted by the watcher
        credits = [d.deposit for d in decisions if isinstance(d, CreditDeposit)]
        step = self.service.config.credits_per_write_max
        for first in range(0, len(credits), step):
            await self._credit(credits[first : first + step])

    async def _credit(self, deposits: list[DepositLog]) -> None:
        assert self.watcher is not None
        cursor = self.watcher.tracker.safe_cursor()
        missing = [d.wallet for d in deposits if d.wallet not in self.wallets]
        if missing:
            self.wallets = await asyncio.to_thread(self._scan_wallets)
        requests = [self._request(d, cursor) for d in deposits]
        asked = time.monotonic()
        try:
            results = await asyncio.wait_for(
                self.service.write(requests), self.service.config.credit_timeout_s
            )
        except (BaasError, TimeoutError) as exc:
            # The tracker asks again after credit_retry_polls; the record id keeps it once.
            self.counts.write_failures += len(requests)
            log.warning("deposits (%s): credits not written: %s", self.mode.name, exc)
            return
        lag_s = time.monotonic() - asked
        for result in results:
            if isinstance(result, BaasError):
                self.counts.write_failures += 1
                log.warning("deposits (%s): a credit failed: %s", self.mode.name, result)
                continue
            self.service.credit_lag.observe(lag_s)
            outcome = result.outcome or {}
            if result.replayed:
                self.counts.existing += 1
            elif outcome.get("result") == "credited":
                self.counts.credited += 1
            elif outcome.get("result") == "held_in_suspense":
                self.counts.held += 1
            else:
                self.counts.refused += 1
                log.error("deposits (%s): credit refused: %s", self.mode.name, outcome)

    def _request(self, deposit: DepositLog, cursor: Cursor) -> WriteRequest:
        ledger = self.settings.tokens[deposit.token]
        body = DepositCreditBody(
            chain_id=deposit.chain_id,
            vault=deposit.vault,
            tx_hash=deposit.tx_hash,
            log_index=deposit.log_index,
            block_number=deposit.block_number,
            block_hash=deposit.block_hash,
            token=deposit.token,
            ledger=ledger,
            wallet=deposit.wallet,
            amount=deposit.amount,
            address=self.wallets.get(deposit.wallet),
            cursor_number=cursor.number,
            cursor_hash=cursor.hash,
        )
        blob = deposit_blob(deposit)
        return WriteRequest(
            record_id=deposit_record_id(deposit.key),
            blob=blob,
            partner_id=PLATFORM_OWNER,
            body_fingerprint=hashlib.sha256(blob).digest(),
            request_id=f"deposit-{deposit.tx_hash.hex()[:16]}-{deposit.log_index}",
            proposer=PLATFORM,
            mode=int(self.mode),
            deposit=body.encode(),
        )

    def _scan_wallets(self) -> dict[bytes, bytes]:
        """Wallet id -> address of the mode's registered wallets (at most wallets_scan_max)."""
        prefix = WALLET_PREFIX + bytes((self.mode,))
        found: dict[bytes, bytes] = {}
        for key, _ in self.service.store.state_items(prefix):
            address = key[len(prefix) :]
            found[wallet_id(address, self.mode)] = address
            if len(found) >= self.service.config.wallets_scan_max:
                log.warning("deposits: more than wallets_scan_max wallets; the rest to suspense")
                break
        return found

    def status(self) -> dict[str, Any]:
        watching = self.watcher.status() if self.watcher is not None else None
        return {
            "chain_id": self.vault.chain_id,
            "vault": self.vault.vault,
            "watching": watching,
            "credited": self.counts.credited,
            "held_in_suspense": self.counts.held,
            "refused": self.counts.refused,
            "existing": self.counts.existing,
            "write_failures": self.counts.write_failures,
            "chain_errors": self.counts.chain_errors,
            "alarms": self.alarms_total,
            "recent_alarms": list(self.alarms),
        }


class _View:
    def __init__(self, store: StateStore) -> None:
        self._store = store

    def get(self, key: bytes) -> bytes | None:
        return self._store.state_get(key)


def web3_reader(settings: DepositSettings, vault: DepositVault, timeout_s: float) -> DepositReader:
    """The web3 reader of one vault (blocking: call it on a worker thread)."""
    from node.anchoring.chain import connect_web3  # web3: imported on use
    from node.chain.deposit_watch import Web3DepositReader

    return Web3DepositReader(connect_web3(vault.rpc_url, timeout_s=timeout_s), settings)


class DepositService:
    """Every configured vault's runner, driven by one task (see the module docstring)."""

    def __init__(
        self,
        *,
        config: DepositsConfig,
        store: StateStore,
        is_leader: Callable[[], bool],
        feature_enabled: Callable[[], bool],
        write: Writer,
        metrics: Metrics,
        open_reader: ReaderFactory | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self._is_leader = is_leader
        self._feature_enabled = feature_enabled
        self.write = write
        self.open_reader: ReaderFactory = open_reader or (
            lambda s, v: web3_reader(s, v, config.rpc_timeout_s)
        )
        self.runners = [_Runner(self, mode, vault) for mode, vault in config.vaults()]
        self.credit_lag = metrics.histogram(
            "deposits_credit_lag_seconds",
            "from a deposit's confirmation seen to its credit applied",
        )
        metrics.add_stats(self.stat_families())
        self._periodic = Periodic("deposits", config.poll_interval_s, self._pass)

    def acting(self) -> bool:
        try:
            return self._is_leader() and self._feature_enabled()
        except OperationFailed:
            return False

    async def start(self) -> None:
        if self.runners:
            await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def _pass(self) -> None:
        """One poll of every vault; a vault's failure is counted and retried next pass."""
        for runner in self.runners:
            try:
                await runner.step()
            except OperationFailed as exc:
                runner.counts.chain_errors += 1
                log.warning("deposits (%s): %s", runner.mode.name, exc)
            except BaasError as exc:  # a misconfigured chain: retried, loudly
                runner.counts.chain_errors += 1
                log.error("deposits (%s): %s", runner.mode.name, exc)

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.config.enabled,
            "acting": self.acting(),
            **{r.mode.name.lower(): r.status() for r in self.runners},
        }

    def _by_mode(self, read: Callable[[_Runner], float]) -> Callable[[], dict[str, float]]:
        return lambda: {r.mode.name.lower(): float(read(r)) for r in self.runners}

    def stat_families(self) -> list[StatFamily]:
        def seen(r: _Runner) -> float:
            return 0 if r.watcher is None else r.watcher.tracker.stats.seen

        def pending(r: _Runner) -> float:
            return 0 if r.watcher is None else r.watcher.tracker.pending()

        def lag_blocks(r: _Runner) -> float:
            if r.watcher is None:
                return 0
            return r.watcher.tracker.tip.number - r.watcher.tracker.safe_cursor().number

        specs: list[tuple[str, str, Callable[[_Runner], float], bool]] = [
            ("deposits_seen_total", "Deposits seen (by the current watcher)", seen, True),
            ("deposits_credited_total", "Deposits credited", lambda r: r.counts.credited, True),
            (
                "deposits_held_total",
                "Deposits held in suspense",
                lambda r: r.counts.held,
                True,
            ),
            ("deposits_alarms_total", "Deposit alarms", lambda r: r.alarms_total, True),
            ("deposits_pending", "Deposits awaiting their credit", pending, False),
            (
                "deposits_lag_blocks",
                "Blocks between the tip and the safe cursor",
                lag_blocks,
                False,
            ),
        ]
        return [
            StatFamily(name, text, self._by_mode(read), counter=counter, label="mode")
            for name, text, read, counter in specs
        ]


SERVICE = web.AppKey("deposit_service_store", StateStore)


async def get_suspense(request: web.Request) -> web.Response:
    """``GET /internal/v1/deposits/suspense?limit=N``: this node's applied state's suspense
    list, ``{"object": "list", "data": [...], "has_more": bool}``."""
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        limit = -1
    if not 0 < limit <= SUSPENSE_LIMIT_MAX:
        raise InvalidRequest(f"limit must be 1..{SUSPENSE_LIMIT_MAX}", param="limit")
    found = await asyncio.to_thread(suspense_list, request.app[SERVICE], limit + 1)
    return web.json_response(
        {"object": "list", "data": found[:limit], "has_more": len(found) > limit}
    )


def add_deposit_routes(app: web.Application, store: StateStore) -> None:
    app[SERVICE] = store
    app.router.add_get(SUSPENSE_PATH, get_suspense)
