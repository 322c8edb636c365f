"""The Bridge on the real ledger core over a MemoryView, for the Bridge tests.

Plain helpers (``from bridgekit import Market``). :class:`Market` applies every request
through :meth:`Bridge.apply` (which runs the real :class:`~business.ledger.core.Ledger`),
applies all writes, and after each request checks what must always hold (:meth:`check`):
every ledger balanced (the sums over its accounts of debits and credits are equal, posted and
pending, so each asset's total is conserved, issuance accounts included), no reserve or
wallet below zero, every user's lots summing to their ledger balance, no lot spendable past
its expiry day, and each partner's point supply equal to what its users hold.
"""

from __future__ import annotations

import hashlib
from typing import Any

from business.bridge import (
    AccountCode,
    Bridge,
    BridgeConfig,
    BridgeOutcome,
    DefinePoints,
    Direction,
    IssuePoints,
    Quote,
    SetPolicy,
    Swap,
    TopUpReserve,
    points_supply,
    reserve_level,
)
from business.bridge.model import LOTS_PREFIX, PREFIX, Request, decode_lots
from business.identity.ids import Mode, partner_id, wallet_account_id, wallet_id
from business.ledger import AssetKind, CreateAsset, Ledger, LedgerConfig, MemoryView
from business.ledger.views import iter_accounts

T0_MS = 1_800_000_000_000  # a log time in 2027
DAY_MS = 86_400_000
SHOP = partner_id("demo-shop")
OTHER = partner_id("other-shop")
BAAS = 2  # ledger_number(TEST, 1)
BAAS_LIVE = 3
SHOP_PTS = 32  # ledger_number(TEST, 16): the first partner's point ledger
OTHER_PTS = 34
SHOP_TOKEN = 36
SHOP_PTS_LIVE = 33
BAAS_UNIT = 10**18


def op(name: str) -> bytes:
    return hashlib.sha256(b"bridge-test/" + name.encode()).digest()


def wallet(name: str, mode: Mode = Mode.TEST) -> bytes:
    address = hashlib.sha256(b"addr/" + name.encode()).digest()[:20]
    return wallet_id(address, mode)


def account(name: str, ledger: int) -> int:
    return wallet_account_id(wallet(name, Mode(ledger & 1)), Mode(ledger & 1), ledger)


def policy(**fields: Any) -> SetPolicy:
    """SHOP's policy on its points: 1 point = 0.01 BAAS, fee 1% (min 10^15), no limits."""
    base: dict[str, Any] = {
        "op": op("policy"),
        "partner": SHOP,
        "ledger": SHOP_PTS,
        "baas_ledger": BAAS,
        "rate_num": BAAS_UNIT // 100,
        "rate_den": 1,
        "swap_min": 1,
        "swap_max": 10**9,
        "window_s": 3600,
        "user_window_max": 0,
        "partner_window_max": 0,
        "fee_bps": 100,
        "fee_min": 10**15,
        "enabled": True,
        "actor": b"\x0a" * 16,
    }
    base.update(fields)
    return SetPolicy(**base)


class Market:
    def __init__(self, config: BridgeConfig | None = None, view: MemoryView | None = None) -> None:
        self.bridge = Bridge(config or BridgeConfig(), Ledger(LedgerConfig()))
        self.view = view if view is not None else MemoryView()
        self.now_ms = T0_MS
        self.wallets: set[tuple[int, int]] = set()  # (ledger, account) the tests credited
        self.partners: dict[int, bytes] = {}  # point ledger -> partner
        self.count = 0

    def platform(self) -> None:
        for ledger in (BAAS, BAAS_LIVE):
            results, writes = self.bridge.ledger.apply(
                [CreateAsset(ledger, AssetKind.BAAS, 18)], self.now_ms, self.view
            )
            assert results[0].code.value == "ok"
            self.view.apply(writes)

    @classmethod
    def standard(cls, **kwargs: Any) -> Market:
        """BAAS in both modes; SHOP's points (validity 30 days) with a funded reserve and
        liquidity and the default policy; OTHER's points."""
        m = cls(**kwargs)
        m.platform()
        assert m.code(DefinePoints(op("def"), SHOP, SHOP_PTS, "SHOP", 0, 30)) == "ok"
        assert m.code(DefinePoints(op("def-o"), OTHER, OTHER_PTS, "OTHER", 2, 0)) == "ok"
        assert m.code(TopUpReserve(op("top"), SHOP, BAAS, 1000 * BAAS_UNIT)) == "ok"
        assert m.code(policy()) == "ok"
        return m

    def apply(self, request: Request, now_ms: int | None = None) -> BridgeOutcome:
        if now_ms is not None:
            self.now_ms = now_ms
        outcome = self.bridge.apply(request, self.now_ms, self.view)
        assert all(k.startswith((PREFIX, b"lg/")) for k, _ in outcome.writes)
        self.view.apply(outcome.writes)
        if isinstance(request, DefinePoints) and outcome.code.value == "ok":
            self.partners[request.ledger] = request.partner
        self.count += 1
        self.check()
        return outcome

    def code(self, request: Request, now_ms: int | None = None) -> str:
        return self.apply(request, now_ms).code.value

    def issue(self, user: str, amount: int, name: str, now_ms: int | None = None) -> None:
        """SHOP issues ``amount`` points to ``user`` (op id from ``name``); it must succeed."""
        request = IssuePoints(op(name), SHOP, SHOP_PTS, account(user, SHOP_PTS), amount)
        assert self.code(request, now_ms) == "ok"

    def quote(
        self,
        user: str,
        amount_in: int,
        direction: Direction = Direction.IN,
        ledger: int = SHOP_PTS,
        partner: bytes = SHOP,
    ) -> Quote:
        q = self.bridge.quote(
            self.view, partner, ledger, wallet(user), direction, amount_in, self.now_ms
        )
        assert isinstance(q, Quote), q
        return q

    def swap(
        self,
        user: str,
        q: Quote,
        *,
        name: str | None = None,
        partner: bytes = SHOP,
        digest: bytes | None = None,
    ) -> BridgeOutcome:
        self.count += 1
        request = Swap(
            op(name or f"swap-{self.count}"),
            partner,
            q.ledger,
            wallet(user),
            q,
            digest if digest is not None else q.digest(),
        )
        return self.apply(request)

    # --- reads ---------------------------------------------------------------------------

    def balance(self, account_id: int) -> int:
        for a in iter_accounts(self.view):
            if a.id == account_id:
                return a.credits_posted - a.debits_posted
        return 0

    def bridge_state(self) -> dict[bytes, bytes]:
        """Everything but the sticky operation results: what a refusal must not change."""
        return {k: v for k, v in self.view.data.items() if not k.startswith((b"br/op/", b"lg/t/"))}

    # --- the invariants ------------------------------------------------------------------

    def check(self) -> None:
        sums: dict[int, list[int]] = {}
        balances: dict[tuple[int, int], int] = {}
        for a in iter_accounts(self.view):
            s = sums.setdefault(a.ledger, [0, 0, 0, 0])
            s[0] += a.debits_posted
            s[1] += a.credits_posted
            s[2] += a.debits_pending
            s[3] += a.credits_pending
            if a.code in (AccountCode.WALLET, AccountCode.RESERVE, AccountCode.LIQUIDITY):
                assert a.debits_posted + a.debits_pending <= a.credits_posted
            if a.code == AccountCode.WALLET:
                balances[(a.ledger, a.id)] = a.credits_posted - a.debits_posted
        for ledger, (dpo, cpo, dp, cp) in sums.items():
            assert dpo == cpo and dp == cp, f"ledger {ledger} unbalanced"
        today = self.now_ms // DAY_MS
        lots_held: dict[int, int] = {}
        for key, raw in self.view.scan(LOTS_PREFIX, LOTS_PREFIX[:-1] + b"0"):
            ledger = int.from_bytes(key[len(LOTS_PREFIX) : len(LOTS_PREFIX) + 4], "big")
            acc = int.from_bytes(key[len(LOTS_PREFIX) + 4 :], "big")
            lots = decode_lots(raw)
            assert lots and all(lot.amount > 0 for lot in lots)
            assert sum(lot.amount for lot in lots) == balances.get((ledger, acc), 0)
            lots_held[ledger] = lots_held.get(ledger, 0) + sum(lot.amount for lot in lots)
        for ledger, partner in self.partners.items():
            held = sum(b for (lg, _), b in balances.items() if lg == ledger)
            assert held == lots_held.get(ledger, 0)
            assert points_supply(self.view, partner, ledger) == held
        assert today >= 0
        for partner in (SHOP, OTHER):
            assert reserve_level(self.view, partner, BAAS) >= 0
