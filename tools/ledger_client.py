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

The user's side (:class:`UserWallet`) is what a wallet app does with the user's Ethereum key:
sign the EIP-712 ``Link`` / ``Unlink`` of a partner's user id, the ``Approve`` of a debit a
preview shows (``LedgerClient.preview``), and the ``CodeIssue`` of a one-time code. It needs
only ``eth-account`` and ``hashlib``: the ids it derives (partner id, user reference, code hash)
follow ``business/identity/ids.py`` (tests/test_ledger_client.py checks they agree).

>>> user = UserWallet(private_key)                                  # the user's device
>>> link = user.link("demo-shop", livemode=False, user_id="user-42", deadline=now + 600)
>>> await ledger.call("POST", "/v1/wallets/links", link, key="link-42")
>>> body = {"debit_user": "user-42", "credit_account": shop_id, "amount": "50", "code": 3}
>>> preview = (await ledger.preview(body, key="order-77")).body     # shown to the user
>>> await ledger.call("POST", "/v1/ledger/transfers",
...                   {**body, "approvals": user.approve(preview)}, key="order-77")
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from typing import Any

import aiohttp
from eth_account import Account

from tools.client import PartnerClient, Response

__all__ = ["RETRY_STATUSES", "BridgeClient", "LedgerClient", "UserWallet"]

RETRY_STATUSES = frozenset({429, 503, 504})  # nothing was decided: the same request again
CHAIN_ID = 31337  # the EIP-712 domain's chainId the network verifies (IdentityConfig.chain_id)
DOMAIN = {"name": "BaaS B&P network", "version": "1"}
BAAS_LEDGER = {False: 2, True: 3}  # BAAS's ledger number in test / live mode
CODE_BYTES = 32  # a one-time code: a bearer secret of 256 bits (16..64 bytes accepted)
_LINK_FIELDS = [
    ("partner", "bytes16"),
    ("mode", "uint8"),
    ("userRef", "bytes32"),
    ("wallet", "address"),
    ("deadline", "uint64"),
    ("nonce", "bytes32"),
]
_CODE_FIELDS = [
    ("mode", "uint8"),
    ("codeHash", "bytes32"),
    ("ledger", "uint32"),
    ("amountLimit", "uint128"),
    ("expiry", "uint64"),
    ("wallet", "address"),
]


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

    async def preview(self, body: dict[str, Any], *, key: str) -> Response:
        """What ``POST /v1/ledger/transfers`` with ``body`` and ``key`` will be, and what its
        debited users sign: send the transfer later with the SAME key and body."""
        return await self.call("POST", "/v1/ledger/transfers/preview", body, key=key)

    async def approved(
        self, path: str, body: dict[str, Any], user: UserWallet, *, key: str
    ) -> Response:
        """``POST path/preview`` then ``POST path`` with ``user``'s approvals, under ``key``
        (the digest derives from it: both steps use the same key and body). Every debit of a
        user's wallet goes this way: a swap, a redemption, a payment, an order."""
        preview = await self.call("POST", path + "/preview", body, key=key)
        if preview.status != 200:
            return preview
        # A real wallet app shows what the preview names (the swap, the payment, ...) first.
        approvals = user.approve(preview.body)
        return await self.call("POST", path, {**body, "approvals": approvals}, key=key)

    async def unlink(
        self, user_id: str, signed: dict[str, Any] | None = None, *, key: str | None = None
    ) -> Response:
        """Unlink ``user_id``: with your authority, or the user's (``UserWallet.unlink``)."""
        path = f"/v1/wallets/links/{user_id}/unlink"
        return await self.call("POST", path, signed or {}, key=key)


def _derive(tag: bytes, *fields: bytes) -> bytes:
    """business/identity/ids.py's one construction: SHA-256 over length-prefixed fields."""
    h = hashlib.sha256(len(tag).to_bytes(4, "big") + tag)
    for f in fields:
        h.update(len(f).to_bytes(4, "big") + f)
    return h.digest()


def partner_ref(partner: str) -> bytes:
    return _derive(b"baas/partner/v1", partner.encode())[:16]


def user_ref(partner: str, livemode: bool, user_id: str) -> bytes:
    mode = bytes((int(livemode),))
    return _derive(b"baas/user-ref/v1", partner_ref(partner), mode, user_id.encode())


def code_hash(code: bytes) -> bytes:
    return _derive(b"baas/one-time-code/v1", code)


def _typed(
    primary: str, fields: list[tuple[str, str]], message: dict[str, Any], chain_id: int
) -> dict[str, Any]:
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
            ],
            primary: [{"name": n, "type": t} for n, t in fields],
        },
        "primaryType": primary,
        "domain": {**DOMAIN, "chainId": chain_id},
        "message": message,
    }


class BridgeClient:
    """The Bridge API (docs/bridge-guide.md) over a :class:`LedgerClient`: quotes, and what
    debits a user (a swap, a redemption) through :meth:`LedgerClient.approved`: preview under
    your key, the user signs the ``Approve`` it shows, then the same body and key with the
    approvals.

    >>> bridge = BridgeClient(ledger)
    >>> quote = (await bridge.quote("PTS", "user-42", "in", "1000")).body
    >>> swap = await bridge.swap(user, "user-42", quote, key="swap-order-9")
    """

    def __init__(self, ledger: LedgerClient) -> None:
        self.ledger = ledger

    async def quote(self, asset: str, user_id: str, direction: str, amount_in: str) -> Response:
        body = {"asset": asset, "user": user_id, "direction": direction, "amount_in": amount_in}
        return await self.ledger.call("POST", "/v1/bridge/quotes", body)

    async def swap(
        self, user: UserWallet, user_id: str, quote: dict[str, Any], *, key: str
    ) -> Response:
        return await self.ledger.approved(
            "/v1/bridge/swaps", {"user": user_id, "quote": quote}, user, key=key
        )

    async def redeem(
        self, user: UserWallet, asset: str, user_id: str, amount: str, *, key: str
    ) -> Response:
        body = {"user": user_id, "amount": amount}
        path = f"/v1/bridge/points/{asset}/redeem"
        return await self.ledger.approved(path, body, user, key=key)


class UserWallet:
    """The user's side: what a wallet app signs with the user's key (never the partner's)."""

    def __init__(self, private_key: bytes, chain_id: int = CHAIN_ID) -> None:
        self._account = Account.from_key(private_key)
        self.chain_id = chain_id
        self.address = self._account.address.lower()

    def sign(self, typed_data: dict[str, Any]) -> str:
        """The 65-byte EIP-712 signature of ``typed_data`` (eth-account's full_message)."""
        signed = self._account.sign_typed_data(full_message=typed_data)
        return "0x" + bytes(signed.signature).hex()

    def approve(self, preview: dict[str, Any]) -> list[dict[str, Any]]:
        """The approvals of this wallet for a previewed transfer. A real wallet app shows
        ``preview["transfer"]`` (amount, asset, accounts) before it signs."""
        return [
            {
                "wallet": self.address,
                "deadline": wanted["typed_data"]["message"]["deadline"],
                "signature": self.sign(wanted["typed_data"]),
            }
            for wanted in preview["approvals_required"]
            if wanted["wallet"] == self.address
        ]

    def _link_fields(
        self,
        primary: str,
        partner: str,
        livemode: bool,
        user_id: str,
        deadline: int,
        nonce: bytes | None,
    ) -> dict[str, Any]:
        nonce = secrets.token_bytes(32) if nonce is None else nonce
        message = {
            "partner": "0x" + partner_ref(partner).hex(),
            "mode": int(livemode),
            "userRef": "0x" + user_ref(partner, livemode, user_id).hex(),
            "wallet": self.address,
            "deadline": deadline,
            "nonce": "0x" + nonce.hex(),
        }
        signature = self.sign(_typed(primary, _LINK_FIELDS, message, self.chain_id))
        return {
            "wallet": self.address,
            "deadline": deadline,
            "nonce": message["nonce"],
            "signature": signature,
        }

    def link(
        self,
        partner: str,
        *,
        livemode: bool,
        user_id: str,
        deadline: int,
        nonce: bytes | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/wallets/links``'s body: this wallet agrees to ``partner``'s user id."""
        fields = self._link_fields("Link", partner, livemode, user_id, deadline, nonce)
        return {"user_id": user_id, **fields}

    def unlink(
        self,
        partner: str,
        *,
        livemode: bool,
        user_id: str,
        deadline: int,
        nonce: bytes | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/wallets/links/{user_id}/unlink``'s body with the user's authority."""
        return self._link_fields("Unlink", partner, livemode, user_id, deadline, nonce)

    def issue_code(
        self,
        *,
        livemode: bool,
        amount_limit: str,
        expiry: int,
        asset: str = "baas",
        code: bytes | None = None,
    ) -> tuple[bytes, dict[str, Any]]:
        """A new one-time code (the user's secret: shown at the till, sent once in a debit's
        ``approvals`` as ``{"code": code.hex()}``) and ``POST /v1/wallets/codes``'s body,
        which carries only its hash."""
        code = secrets.token_bytes(CODE_BYTES) if code is None else code
        hashed = "0x" + code_hash(code).hex()
        message = {
            "mode": int(livemode),
            "codeHash": hashed,
            "ledger": BAAS_LEDGER[livemode],
            "amountLimit": int(amount_limit),
            "expiry": expiry,
            "wallet": self.address,
        }
        signature = self.sign(_typed("CodeIssue", _CODE_FIELDS, message, self.chain_id))
        body = {
            "wallet": self.address,
            "code_hash": hashed,
            "asset": asset,
            "amount_limit": amount_limit,
            "expiry": expiry,
            "signature": signature,
        }
        return code, body
