"""``baas-chaos``'s ledger traffic: transfers between a few test accounts of one onboarded partner
while the faults run, and the history that the conservation check compares balances with.

Each account is funded once from the test faucet; then transfers of small random amounts go
between random pairs at ``--ledger-rate``, each sent once with its own idempotency key (the
faults are on: no retry). An answer 200/201 is *applied*, a 4xx other than 429 *refused* (the
ledger or the edge decided: nothing moved), anything else -- a timeout, a 503, a dropped
connection -- *unknown*. After the heal every unknown one is sent again with the SAME key and
body: the ledger answers a retry with the first outcome, so each ends applied or refused. The
expected balance of every account is then its funding plus what applied transfers moved; every
account must hold exactly that (``check_ledger_history``), and the ledgers' totals must balance
on every node (``check_ledgers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp

from node.errors import OperationFailed
from tools.client import PartnerClient, Response
from tools.ledger_client import LedgerClient

__all__ = ["LedgerTraffic", "TransferSent"]

ACCOUNTS = 4
FUNDING = 1_000_000  # minor units per account, once
AMOUNT_MAX = 1_000
ACCOUNT_CODE = 1
TRANSFER_CODE = 7
SETUP_WAIT_S = 120.0  # a new partner's key reaches the gateway at its next keyring reload
RESOLVE_ATTEMPTS_MAX = 8


@dataclass(frozen=True, slots=True)
class TransferSent:
    key: str
    debit: str
    credit: str
    amount: int
    outcome: str  # applied, refused, unknown


class LedgerTraffic:
    def __init__(self, http: PartnerClient, rng: random.Random, timeout_s: float) -> None:
        self._ledger = LedgerClient(http, attempts_max=1)
        self._resolver = LedgerClient(http, attempts_max=RESOLVE_ATTEMPTS_MAX, wait_s_max=2.0)
        self._rng = rng
        self._timeout_s = timeout_s
        self._seq = 0
        self.accounts: list[str] = []
        self.sent: list[TransferSent] = []

    async def setup(self) -> None:
        """The accounts, each funded once (retried until the partner and the ledger are ready)."""
        deadline = time.monotonic() + SETUP_WAIT_S
        for i in range(ACCOUNTS):
            made = await self._until_done(
                partial(self._resolver.create_account, code=ACCOUNT_CODE, key=f"acct-{i}"),
                deadline,
            )
            self.accounts.append(str(made["id"]))
        for i, account in enumerate(self.accounts):
            fund = partial(self._resolver.faucet, account, str(FUNDING), key=f"fund-{i}")
            await self._until_done(fund, deadline)

    async def _until_done(
        self, call: Callable[[], Awaitable[Response]], deadline: float
    ) -> dict[str, Any]:
        while True:
            answer = await call()
            if answer.status in (200, 201) and isinstance(answer.body, dict):
                return answer.body
            if time.monotonic() > deadline or answer.status not in (401, 429, 503, 504):
                raise OperationFailed(f"ledger setup: {answer.status} {answer.body}")
            await asyncio.sleep(1.0)

    def _body(self, sent: TransferSent) -> dict[str, Any]:
        return LedgerClient.transfer_body(
            sent.debit, sent.credit, str(sent.amount), code=TRANSFER_CODE
        )

    async def transfer_one(self) -> None:
        debit, credit = self._rng.sample(self.accounts, 2)
        amount = self._rng.randint(1, AMOUNT_MAX)
        self._seq += 1
        sent = TransferSent(f"chaos-tr-{self._seq}", debit, credit, amount, "unknown")
        try:
            answer = await asyncio.wait_for(
                self._ledger.call("POST", "/v1/ledger/transfers", self._body(sent), key=sent.key),
                self._timeout_s,
            )
            outcome = _outcome(answer.status)
        except (TimeoutError, aiohttp.ClientError):
            outcome = "unknown"
        self.sent.append(TransferSent(sent.key, debit, credit, amount, outcome))

    async def paced(self, rate: float, stop: asyncio.Event) -> None:
        """One transfer every 1/rate s, each awaited (a slow one delays the next)."""
        while not stop.is_set():
            started = time.monotonic()
            await self.transfer_one()
            rest_s = 1.0 / rate - (time.monotonic() - started)
            if rest_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), rest_s)

    async def resolve(self) -> None:
        """Every unknown transfer sent again with its key: answered with its first outcome."""
        for i, sent in enumerate(self.sent):
            if sent.outcome != "unknown":
                continue
            try:
                answer = await self._resolver.call(
                    "POST", "/v1/ledger/transfers", self._body(sent), key=sent.key
                )
                outcome = _outcome(answer.status)
            except (TimeoutError, aiohttp.ClientError):
                outcome = "unknown"
            self.sent[i] = TransferSent(sent.key, sent.debit, sent.credit, sent.amount, outcome)

    def expected(self) -> dict[str, int]:
        balances = dict.fromkeys(self.accounts, FUNDING)
        for sent in self.sent:
            if sent.outcome == "applied":
                balances[sent.debit] -= sent.amount
                balances[sent.credit] += sent.amount
        return balances

    async def observed(self) -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        for account in self.accounts:
            answer = await self._resolver.account(account)
            ok = answer.status == 200 and isinstance(answer.body, dict)
            found[account] = int(answer.body["balance"]["posted"]) if ok else None
        return found

    def counts(self) -> dict[str, int]:
        return {
            o: sum(1 for s in self.sent if s.outcome == o)
            for o in ("applied", "refused", "unknown")
        }


def _outcome(status: int) -> str:
    if status in (200, 201):
        return "applied"
    if 400 <= status < 500 and status != 429:
        return "refused"
    return "unknown"
