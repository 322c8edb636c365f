"""The deposit watcher's web3 adapter: read headers and ``Deposited`` logs, feed the tracker.

:class:`Web3DepositReader` is the :class:`~node.chain.deposits.DepositReader` over a web3
provider (``eth_blockNumber``, ``eth_getBlockByNumber``, ``eth_getLogs`` on the vault's
address and ``Deposited`` topic, at most ``log_range_blocks_max`` blocks per request). What
web3, eth-tester and ``requests`` raise is translated at the anchoring border
(:func:`node.anchoring.chain.border`): ``ChainUnavailable`` (retry on the next poll) or
``ChainRejected``. A provider on another chain id than configured is refused at start with
:class:`~node.anchoring.chain.ChainMisconfigured`.

:class:`DepositWatcher` is the short asyncio loop: every ``poll_interval_s`` it runs polling
rounds (:func:`~node.chain.deposits.poll_round`, in a worker thread because web3 here is
synchronous) until the tracker has caught up, ticks the tracker, and hands every decision to
the ``sink`` coroutine (the node's :mod:`node.chain.deposit_service` proposes each
:class:`~node.chain.deposits.CreditDeposit` through the log). Alarms are also logged at ERROR
and counted, and :meth:`DepositWatcher.status` / :meth:`DepositWatcher.stat_families` expose
the counters for ``/status`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from eth_utils.crypto import keccak
from web3 import Web3
from web3.exceptions import BlockNotFound

from node.anchoring.chain import ChainMisconfigured, border
from node.chain.contracts import vault_errors
from node.chain.deposits import (
    Alarm,
    BlockHeader,
    Decision,
    DepositLog,
    DepositReader,
    DepositSettings,
    DepositTracker,
    Refused,
    poll_round,
)
from node.errors import InvariantViolation, OperationFailed
from node.metrics import StatFamily

__all__ = ["DEPOSITED_TOPIC", "DepositWatcher", "Web3DepositReader", "decode_deposit"]

DEPOSITED_TOPIC = keccak(text="Deposited(address,address,bytes16,uint256)")
"""``Deposited(address indexed token, address indexed from, bytes16 indexed wallet,
uint256 amount)``: topic 0 of every deposit log."""

log = logging.getLogger(__name__)

Sink = Callable[[list[Decision]], Awaitable[None]]


def _b(value: Any) -> bytes:
    return bytes(value) if not isinstance(value, str) else bytes.fromhex(value.removeprefix("0x"))


def decode_deposit(chain_id: int, raw: Any) -> DepositLog:
    """A ``Deposited`` log from ``eth_getLogs`` as the tracker's :class:`DepositLog`. Indexed
    ``address`` topics are right-aligned in 32 bytes; an indexed ``bytes16`` is left-aligned."""
    topics = [_b(t) for t in raw["topics"]]
    if len(topics) != 4 or topics[0] != DEPOSITED_TOPIC:
        raise OperationFailed("not a Deposited log", code="chain_bad_log")
    data = _b(raw["data"])
    return DepositLog(
        chain_id=chain_id,
        vault=_b(raw["address"]),
        block_number=int(raw["blockNumber"]),
        block_hash=_b(raw["blockHash"]),
        tx_hash=_b(raw["transactionHash"]),
        log_index=int(raw["logIndex"]),
        token=topics[1][12:],
        sender=topics[2][12:],
        wallet=topics[3][:16],
        amount=int.from_bytes(data[:32], "big") if len(data) == 32 else -1,
    )


class Web3DepositReader:
    """The tracker's chain reads over one (synchronous) Web3; one thread at a time."""

    def __init__(self, w3: Web3, settings: DepositSettings) -> None:
        self._w3 = w3
        self._settings = settings
        self._vault = Web3.to_checksum_address(settings.vault)
        with border("eth_chainId"):
            chain_id = int(w3.eth.chain_id)
        if chain_id != settings.chain_id:
            raise ChainMisconfigured(
                f"the provider is on chain {chain_id}, deposits.chain_id is {settings.chain_id}"
            )

    def head(self) -> int:
        with border("eth_blockNumber"):
            return int(self._w3.eth.block_number)

    def header(self, number: int) -> BlockHeader | None:
        try:
            with border("eth_getBlockByNumber"):
                block = self._w3.eth.get_block(number)
        except OperationFailed as exc:
            if isinstance(exc.__cause__, BlockNotFound):
                return None
            raise
        return BlockHeader(int(block["number"]), _b(block["hash"]), _b(block["parentHash"]))

    def deposit_logs(self, first: int, last: int) -> list[DepositLog]:
        if not 0 <= last - first < self._settings.log_range_blocks_max:
            raise InvariantViolation(f"log range {first}..{last} beyond log_range_blocks_max")
        with border("eth_getLogs", vault_errors()):
            raw = self._w3.eth.get_logs(
                {
                    "address": self._vault,
                    "fromBlock": first,
                    "toBlock": last,
                    "topics": ["0x" + DEPOSITED_TOPIC.hex()],
                }
            )
        return [decode_deposit(self._settings.chain_id, x) for x in raw if not x.get("removed")]


class DepositWatcher:
    """The asyncio loop around one tracker and one reader (see the module docstring)."""

    def __init__(
        self,
        tracker: DepositTracker,
        reader: DepositReader,
        sink: Sink,
        *,
        poll_interval_s: float,
        rounds_max: int,
    ) -> None:
        self.tracker = tracker
        self._reader = reader
        self._sink = sink
        self._poll_interval_s = poll_interval_s
        self._rounds_max = rounds_max  # rounds per poll: a long catch-up yields in between
        self.chain_errors = 0
        self.last_poll_s = 0.0  # time.monotonic() of the last poll that caught up

    async def poll(self) -> list[Decision]:
        """Rounds until the tracker caught up (or ``rounds_max``); every decision is handed
        to the sink before the next round runs."""
        decisions: list[Decision] = []
        for _ in range(self._rounds_max):
            got, caught_up = await asyncio.to_thread(poll_round, self.tracker, self._reader)
            await self._hand_over(got)
            decisions += got
            if caught_up:
                self.last_poll_s = time.monotonic()
                break
        return decisions

    async def tick(self) -> list[Decision]:
        got = self.tracker.tick()
        await self._hand_over(got)
        return got

    async def run(self) -> None:
        """Poll and tick until cancelled; chain errors are counted and retried next period."""
        while True:
            try:
                await self.poll()
            except OperationFailed as exc:
                self.chain_errors += 1
                log.warning("deposit watcher: %s", exc)
            await self.tick()
            await asyncio.sleep(self._poll_interval_s)

    async def _hand_over(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Alarm):
                log.error(
                    "deposit alarm %s at block %d %s: %s",
                    d.kind.value,
                    d.block_number,
                    d.block_hash.hex(),
                    d.deposit,
                )
            elif isinstance(d, Refused):
                log.warning("deposit refused (%s): %s", d.reason.value, d.deposit)
        if decisions:
            await self._sink(decisions)

    def status(self) -> dict[str, Any]:
        s = self.tracker.stats
        cursor = self.tracker.cursor()
        return {
            "halted": self.tracker.halted,
            "tip": self.tracker.tip.number,
            "cursor": cursor.number,
            "seen": s.seen,
            "credits_asked": s.credits_asked,
            "credit_retries": s.credit_retries,
            "orphaned_unconfirmed": s.orphaned_unconfirmed,
            "blocks_orphaned": s.blocks_orphaned,
            "alarms": s.alarms,
            "refused": s.refused,
            "chain_errors": self.chain_errors,
        }

    def stat_families(self) -> list[StatFamily]:
        """The counters for :class:`node.metrics.Metrics` (``<prefix>_deposits_*``)."""
        s = self.tracker.stats
        return [
            StatFamily("deposits_seen_total", "Deposits seen", lambda: s.seen, counter=True),
            StatFamily(
                "deposits_credits_asked_total",
                "Deposit credits asked for",
                lambda: s.credits_asked,
                counter=True,
            ),
            StatFamily("deposits_alarms_total", "Deposit alarms", lambda: s.alarms, counter=True),
            StatFamily(
                "deposits_refused_total", "Deposit logs refused", lambda: s.refused, counter=True
            ),
            StatFamily("deposits_pending", "Deposits awaiting credit", self.tracker.pending),
            StatFamily(
                "deposits_halted",
                "1 when a too-deep reorg halted the watcher",
                lambda: int(self.tracker.halted),
            ),
        ]
