"""The simulator's Bridge workload (log feature 8 and up, with identity): two partners' market.

The world enables the newest feature in its log (so swaps are also listed in the swap index
of feature 11, checked against the ledger); its leader proposes the identity entries of
:meth:`BridgeWorkload.setup_entries` one at a time until the committed state holds each (two
partners onboarded by the operator with ``ONBOARDING_ROLES``, every user's wallet linked with
the user's own EIP-712 ``Link`` signature; keys drawn from the seed). One Bridge client then
sends, as ``ledger.ops`` operations carrying a Bridge request (``br``) with the partner as the
proposer, the market's set-up -- per partner: its points defined (partner A's valid
:data:`VALIDITY_DAYS` day, so they expire when the log clock crosses the day boundary the
world starts just before; partner B's never), liquidity funded, the reserve topped up from the
test faucet, a policy set, points issued to each of its users -- each step sent again under a
new id until it answers ``ok`` (a step sent before onboarding committed is refused, stickily).

Then it draws, per operation, a partner, one of its users and one of: a swap of points for
BAAS or back (the quote read from the committed state at its log time, the user's approval
over the exact request; a small reserve and a small per-user window limit make
``reserve_exhausted`` and ``user_window_limit`` frequent, and users' swaps of BAAS they lack
``insufficient_funds``), a swap with a quote
older than its time to live (``quote_expired``), a redemption (approved), an issuance, a
reserve top-up, or the same policy set again (its version moves: a quote in flight is
refused). The client also resends acknowledged operations (a retry must
get the first outcome, checked by :class:`~node.sim.checkers.Checker`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount

from business.bridge import (
    Bridge,
    DefinePoints,
    Direction,
    FundLiquidity,
    IssuePoints,
    Quote,
    RedeemPoints,
    SetPolicy,
    Swap,
    TopUpReserve,
    encode_request,
    role_account,
)
from business.bridge.model import Request
from business.identity import (
    ONBOARDING_ROLES,
    Actor,
    ActorKind,
    LinkEntry,
    Mode,
    PartnerPut,
    PartnerStatus,
    eip712,
)
from business.identity.approvals import SignedApproval, encode_approvals, operation_digest
from business.identity.core import decode_partner
from business.identity.ids import (
    ASSET_INDEX_BAAS,
    ledger_number,
    partner_id,
    user_ref,
    wallet_account_id,
    wallet_id,
)
from business.identity.model import PARTNER_PREFIX, link_key
from business.ledger.core import Ledger
from business.ledger.views import get_account
from node.consensus.bridge_ops import BRIDGE_CONFIG
from node.consensus.ledger_ops import LEDGER_CONFIG
from node.consensus.state_machine import AppEntry
from node.sim.ledger_load import CommittedView, OpFields
from node.sim.machine import IDENTITY_SIM
from node.sim.rng import SimRng

__all__ = [
    "BAAS_UNIT",
    "PARTNERS",
    "USERS_PER_PARTNER",
    "VALIDITY_DAYS",
    "BridgeWorkload",
    "SimPartner",
    "SimUser",
    "approve",
    "sign_typed",
]

T = Mode.TEST
BAAS = ledger_number(T, ASSET_INDEX_BAAS)
BAAS_UNIT = 10**18
PARTNERS = ("sim-shop-a", "sim-shop-b")
POINT_INDEX_FIRST = 16  # identity allocates a partner's point ledger index in onboarding order
USERS_PER_PARTNER = 2
VALIDITY_DAYS = 1  # partner A's points: issued before the day boundary, they expire after it
ISSUED = 1_000
RESERVE = 2 * BAAS_UNIT  # small: swaps of points for BAAS exhaust it
OPERATOR = Actor(ActorKind.OPERATOR, b"\x0f" * 16)
SECP256K1_KEY_MAX = 2**255  # below the curve order: every draw is a valid key


def sign_typed(account: LocalAccount, message: Any) -> bytes:
    """``account``'s EIP-712 signature of ``message``, made by eth-account itself."""
    signable = encode_typed_data(full_message=eip712.typed_data(message, IDENTITY_SIM.chain_id))
    return bytes(account.sign_message(signable).signature)


def approve(signer: SimUser, record_id: bytes, raw: bytes, deadline_s: int) -> bytes:
    """The approvals blob of an operation debiting ``signer``'s wallet: their EIP-712
    ``Approve`` over ``operation_digest(record id, request bytes)``, as their app signs it."""
    message = eip712.Approve(T, operation_digest(record_id, raw), signer.address, deadline_s)
    signed = SignedApproval(signer.address, deadline_s, sign_typed(signer.key, message))
    return encode_approvals([signed])


class SetupPhased(Protocol):
    """A workload that runs its set-up steps in order, then draws at random."""

    step: int  # the next set-up step (all done: the random phase)
    waiting: dict[int, int]  # seq -> its set-up step
    results: dict[str, int]  # first outcomes, by result code
    seen: set[int]


def count_first_outcome(w: SetupPhased, seq: int, outcome: Mapping[str, Any] | None) -> str | None:
    """Count operation ``seq``'s first outcome and move past its set-up step if it took;
    its result code, or None for a retry (the same sticky outcome, counted once)."""
    if seq in w.seen:
        return None
    w.seen.add(seq)
    result = str((outcome or {}).get("result"))
    w.results[result] = w.results.get(result, 0) + 1
    step = w.waiting.pop(seq, None)
    if step == w.step and result == "ok":
        w.step += 1
    return result


@dataclass(frozen=True, slots=True)
class SimUser:
    key: LocalAccount
    ref: bytes  # user_ref(partner, mode, "user-<i>")

    @property
    def address(self) -> bytes:
        return bytes.fromhex(self.key.address[2:])

    @property
    def wallet(self) -> bytes:
        return wallet_id(self.address, T)

    def account(self, ledger: int) -> int:
        return wallet_account_id(self.wallet, T, ledger)


@dataclass(frozen=True, slots=True)
class SimPartner:
    name: str
    index: int  # onboarding order
    validity_days: int
    users: tuple[SimUser, ...]

    @property
    def id(self) -> bytes:
        return partner_id(self.name)

    def points(self, view: CommittedView) -> int:
        """The partner's point ledger: the index identity allocated it, once onboarded."""
        raw = view.get(PARTNER_PREFIX + self.id)
        index = POINT_INDEX_FIRST + self.index if raw is None else decode_partner(raw)[1]
        return ledger_number(T, index)


@dataclass
class BridgeWorkload:
    partners: tuple[SimPartner, ...]
    deadline_s: int  # the users' link and approval signatures hold until then (Unix s)
    bridge: Bridge = field(default_factory=lambda: Bridge(BRIDGE_CONFIG, Ledger(LEDGER_CONFIG)))
    step: int = 0  # the next set-up step (all done: the random phase)
    waiting: dict[int, int] = field(default_factory=dict)  # seq -> its set-up step
    results: dict[str, int] = field(default_factory=dict)  # first outcomes, by result code
    seen: set[int] = field(default_factory=set)
    swaps: list[bytes] = field(default_factory=list)  # the op ids of the swaps sent

    @classmethod
    def draw(cls, rng: SimRng, epoch_ms: int) -> BridgeWorkload:
        partners = []
        for index, name in enumerate(PARTNERS):
            users = tuple(
                SimUser(
                    Account.from_key(rng.randrange(1, SECP256K1_KEY_MAX).to_bytes(32, "big")),
                    user_ref(partner_id(name), T, f"user-{i}"),
                )
                for i in range(USERS_PER_PARTNER)
            )
            validity = VALIDITY_DAYS if index == 0 else 0
            partners.append(SimPartner(name, index, validity, users))
        return cls(tuple(partners), epoch_ms // 1000 + 3 * 86_400)

    # -- identity, proposed by the leader

    def setup_entries(self) -> list[tuple[bytes, AppEntry]]:
        entries: list[tuple[bytes, AppEntry]] = []
        for p in self.partners:
            put = PartnerPut(p.id, PartnerStatus.ACTIVE, ONBOARDING_ROLES, OPERATOR)
            entries.append((PARTNER_PREFIX + p.id, AppEntry("partner.put", put.to_body())))
        for p in self.partners:
            for i, u in enumerate(p.users):
                fields: dict[str, Any] = {
                    "partner": p.id,
                    "mode": T,
                    "user_ref": u.ref,
                    "wallet": u.address,
                    "deadline": self.deadline_s,
                    "nonce": bytes([p.index, i]) * 16,
                }
                signature = sign_typed(u.key, eip712.Link(**fields))
                actor = Actor(ActorKind.PARTNER, p.id, p.id)
                link = LinkEntry(**fields, signature=signature, actor=actor)
                entries.append((link_key(p.id, T, u.ref), AppEntry("wallet.link", link.to_body())))
        return entries

    def points_expired(self, view: CommittedView) -> int:
        """Points moved to the partners' breakage accounts (by the expiry sweep)."""
        total = 0
        for p in self.partners:
            found = get_account(view, role_account(p.id, p.points(view), "breakage"))
            total += 0 if found is None else found.credits_posted
        return total

    # -- the Bridge client's operations

    def _setup_steps(self) -> list[tuple[str, SimPartner, SimUser | None]]:
        steps: list[tuple[str, SimPartner, SimUser | None]] = []
        for p in self.partners:
            steps += [("define", p, None), ("fund", p, None), ("topup", p, None)]
            steps += [("policy", p, None), *(("issue", p, u) for u in p.users)]
        return steps

    def operation(self, seq: int, record_id: bytes, rng: SimRng, view: CommittedView) -> OpFields:
        steps = self._setup_steps()
        if self.step < len(steps):
            self.waiting[seq] = self.step
            kind, p, u = steps[self.step]
            return self._op(kind, p, u, record_id, rng, view)
        p = rng.choice(self.partners)
        u = rng.choice(p.users)
        roll = rng.random()
        for kind, chance in (
            ("swap_in", 0.3),
            ("swap_out", 0.15),
            ("stale", 0.07),
            ("redeem", 0.15),
            ("issue", 0.13),
            ("topup", 0.12),
        ):
            if roll < chance:
                return self._op(kind, p, u, record_id, rng, view)
            roll -= chance
        return self._op("policy", p, u, record_id, rng, view)

    def on_outcome(self, seq: int, outcome: Mapping[str, Any] | None) -> None:
        count_first_outcome(self, seq, outcome)

    def _op(
        self,
        kind: str,
        p: SimPartner,
        u: SimUser | None,
        record_id: bytes,
        rng: SimRng,
        view: CommittedView,
    ) -> OpFields:
        points = p.points(view)
        request: Request
        signer: SimUser | None = None
        refs: tuple[bytes, ...] = ()
        if kind == "define":
            request = DefinePoints(record_id, p.id, points, f"PTS{p.index}", 2, p.validity_days)
        elif kind == "fund":
            request = FundLiquidity(record_id, p.id, points, 5_000)
        elif kind == "topup":
            request = TopUpReserve(record_id, p.id, BAAS, rng.randint(1, 2) * RESERVE // 2)
        elif kind == "policy":  # during the set-up 1%; later changed (or set the same again)
            fee_bps = 100 if self.step < len(self._setup_steps()) else rng.choice((90, 100, 110))
            request = _policy(record_id, p.id, points, fee_bps)
        elif kind == "issue":
            assert u is not None
            amount = ISSUED if self.step < len(self._setup_steps()) else rng.randint(50, 500)
            request = IssuePoints(record_id, p.id, points, u.account(points), amount)
            refs = (u.ref,)
        elif kind == "redeem":
            assert u is not None
            request = RedeemPoints(record_id, p.id, points, u.account(points), rng.randint(1, 150))
            signer = u
        else:
            assert u is not None
            quote = self._quote(kind, p, u, points, rng, view)
            if quote is None:  # refused (no policy committed yet, ...): top up instead
                return self._op("topup", p, None, record_id, rng, view)
            request = Swap(record_id, p.id, points, u.wallet, quote, quote.digest())
            self.swaps.append(record_id)
            signer, refs = u, (u.ref,)
        raw = encode_request(request)
        approvals = None if signer is None else approve(signer, record_id, raw, self.deadline_s)
        return OpFields(approvals=approvals, partner=p.id, mode=T, user_refs=refs, bridge=raw)

    def _quote(
        self,
        kind: str,
        p: SimPartner,
        u: SimUser,
        points: int,
        rng: SimRng,
        view: CommittedView,
    ) -> Quote | None:
        """A quote read from the committed state (a stale one: quoted longer ago than a quote
        lives)."""
        now_ms = view.log_time_ms
        if kind == "stale":
            now_ms -= BRIDGE_CONFIG.quote_ttl_ms_max + rng.randint(1, 60_000)
        if kind == "swap_out":
            held = get_account(view, u.account(BAAS))
            top = 0 if held is None else held.credits_posted - held.debits_posted
            amount = rng.randint(1, max(1, top // 2 or BAAS_UNIT))
            direction = Direction.OUT
        else:
            amount, direction = rng.randint(10, 300), Direction.IN
        quote = self.bridge.quote(view, p.id, points, u.wallet, direction, amount, max(0, now_ms))
        return quote if isinstance(quote, Quote) else None


def _policy(op: bytes, partner: bytes, points: int, fee_bps: int) -> SetPolicy:
    """1 point = 0.01 BAAS, fee ``fee_bps`` (at least 0.001 BAAS), at most 300 points a swap
    and 250 points per user (1,500 per partner) an hour: swaps of 10-300 points meet the
    window limit within a run."""
    return SetPolicy(
        op, partner, points, BAAS, BAAS_UNIT // 100, 1, 1, 300, 3600, 250, 1_500, fee_bps,
        10**15, True, b"\x0a" * 16,
    )  # fmt: skip
