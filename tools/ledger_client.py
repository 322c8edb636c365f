"""A small client of the ledger API, for a partner to copy (docs/ledger-guide.md; tests use it).

It signs through :class:`tools.client.PartnerClient`, gives every POST an ``Idempotency-Key``
(a new random one unless you pass yours: pass yours, stored with your own order or payout, so
that a retry after *your* crash is the same operation), and retries only what is safe to
retry: the same request with the same key, after an answer that says nothing was decided
(429, 503, 504, a connection error), waiting ``Retry-After`` when the gateway names it. A retry
of an operation that was applied is answered with its first outcome (200), never applied again.

>>> async with PartnerClient(url, api_key, secret) as http:
...     ledger = LedgerClient(http)
...     shop = await ledger.create_account(code=1, key="acct-shop")
...     await ledger.faucet(shop.body["id"], "1000", key="fund-1")   # test mode only
...     user = await ledger.create_account(code=2, key="acct-user-42")
...     await ledger.transfer(shop.body["id"], user.body["id"], "250", code=7, key="order-9")
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aiohttp

from tools.client import PartnerClient, Response

__all__ = ["RETRY_STATUSES", "LedgerClient"]

RETRY_STATUSES = frozenset({429, 503, 504})  # nothing was decided: the same request again


class LedgerClient:
    def __init__(self, http: PartnerClient, *, attempts_max: int = 5, wait_s_max: float = 5.0):
        self.http = http
        self.attempts_max = attempts_max
        self.wait_s_max = wait_s_max

    async def call(
        self, method: str, path: str, payload: Any = None, *, key: str | None = None
    ) -> Response:
        """One request, retried with the same key while the answer says "try again"."""
        if method == "POST" and key is None:
            key = secrets.token_hex(16)
        answer: Response | None = None
        for attempt in range(self.attempts_max):
            try:
                answer = await self.http.request(method, path, payload, idempotency_key=key)
            except (aiohttp.ClientError, TimeoutError):
                if attempt + 1 == self.attempts_max:
                    raise
                await asyncio.sleep(min(self.wait_s_max, 0.2 * 2**attempt))
                continue
            if answer.status not in RETRY_STATUSES:
                return answer
            wait = answer.headers.get("Retry-After")
            await asyncio.sleep(
                min(self.wait_s_max, float(wait) if wait and wait.isdigit() else 0.2 * 2**attempt)
            )
        assert answer is not None
        return answer

    # --- accounts ---

    async def create_account(
        self,
        *,
        code: int,
        asset: str = "baas",
        flags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> Response:
        body: dict[str, Any] = {"asset": asset, "code": code}
        if flags is not None:
            body["flags"] = flags
        if metadata is not None:
            body["metadata"] = metadata
        return await self.call("POST", "/v1/ledger/accounts", body, key=key)

    async def account(self, account_id: str) -> Response:
        return await self.call("GET", f"/v1/ledger/accounts/{account_id}")

    # --- transfers ---

    @staticmethod
    def transfer_body(
        debit: str,
        credit: str,
        amount: str,
        *,
        code: int,
        pending: bool = False,
        timeout_s: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "debit_account": debit,
            "credit_account": credit,
            "amount": amount,
            "code": code,
        }
        if pending:
            body["pending"] = True
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        if metadata is not None:
            body["metadata"] = metadata
        return body

    async def transfer(
        self, debit: str, credit: str, amount: str, *, code: int, key: str | None = None, **kw: Any
    ) -> Response:
        body = self.transfer_body(debit, credit, amount, code=code, **kw)
        return await self.call("POST", "/v1/ledger/transfers", body, key=key)

    async def post(
        self, transfer_id: str, amount: str | None = None, *, key: str | None = None
    ) -> Response:
        body = {} if amount is None else {"amount": amount}
        return await self.call("POST", f"/v1/ledger/transfers/{transfer_id}/post", body, key=key)

    async def void(self, transfer_id: str, *, key: str | None = None) -> Response:
        return await self.call("POST", f"/v1/ledger/transfers/{transfer_id}/void", {}, key=key)

    async def linked(self, transfers: list[dict[str, Any]], *, key: str | None = None) -> Response:
        body = {"transfers": transfers}
        return await self.call("POST", "/v1/ledger/transfers/linked", body, key=key)

    async def batch(self, transfers: list[dict[str, Any]]) -> Response:
        """Each item needs its own ``idempotency_key``; one result per item, in order. Retry
        the whole batch as it was: applied items answer their first outcome."""
        return await self.call("POST", "/v1/ledger/transfers/batch", {"transfers": transfers})

    async def get_transfer(self, transfer_id: str) -> Response:
        return await self.call("GET", f"/v1/ledger/transfers/{transfer_id}")

    async def faucet(self, account_id: str, amount: str, *, key: str | None = None) -> Response:
        body = {"account": account_id, "amount": amount}
        return await self.call("POST", "/v1/test/faucet", body, key=key)
