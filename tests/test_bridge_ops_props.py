"""A property of the Bridge on the log (feature 8): for any sequence of issues, swaps both ways,
redemptions, reversals, top-ups, policy changes and days passing (ticks), grouped into
``ledger.ops`` entries at random, on the node's dispatcher over a real LevelDB:

* every ledger stays balanced (each asset's total conserved, issuance accounts included), no
  reserve, liquidity or wallet account below zero;
* each user's lots sum to their points balance, the partner's supply is what users hold, and
  after any entry no user holds a lot whose expiry day has come (the sweep runs first);
* a second replica applying the same committed log in other batches (as a node applies what
  commits together) ends with exactly the same state, key for key.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bridgeopskit import (
    ALICE,
    ALICE_REF,
    BAAS,
    BAAS_UNIT,
    CAROL,
    CAROL_REF,
    DAY_MS,
    POINTS,
    Node,
    policy,
    replica_in_batches,
    rid,
    wallet_account,
    wallet_of,
    world,
)
from eth_account.signers.local import LocalAccount
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from identitykit import SHOP

from business.bridge import (
    DefinePoints,
    Direction,
    FundLiquidity,
    IssuePoints,
    Quote,
    RedeemPoints,
    ReversePoints,
    Swap,
    TopUpReserve,
    points_supply,
    reserve_level,
    role_account,
    user_lots,
)
from business.ledger.views import get_account
from node.consensus.ledger_ops import LEDGER_TICK, Operation
from node.consensus.state_machine import AppEntry, LogPosition

USERS: dict[str, tuple[LocalAccount, bytes]] = {
    "alice": (ALICE, ALICE_REF),
    "carol": (CAROL, CAROL_REF),
}
ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(
            ["issue", "swap_in", "swap_out", "redeem", "reverse", "top_up", "fund", "policy", "day"]
        ),
        st.sampled_from(sorted(USERS)),
        st.integers(1, 700),
        st.booleans(),  # close the entry after this operation
    ),
    min_size=1,
    max_size=24,
)


class Run:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.n = 1000
        self.issued: list[int] = []  # op numbers of issuances
        self.batch: list[Operation] = []

    def op(self, request: Any, **kw: Any) -> None:
        self.batch.append(self.node.bridge_op(request, **kw))

    def flush(self) -> None:
        if self.batch:
            self.node.ops(*self.batch)
            self.batch = []
            check(self.node)

    def quote(self, user: str, amount: int, direction: Direction) -> Quote | None:
        q = self.node.ops_machine.bridge.quote(
            self.node.view, SHOP, POINTS, _wallet(user), direction, amount, self.node.now_ms
        )
        return q if isinstance(q, Quote) else None

    def act(self, kind: str, user: str, amount: int) -> None:
        self.n += 1
        n, (account, ref) = self.n, USERS[user]
        points = wallet_account(account, POINTS)
        if kind == "issue":
            self.op(IssuePoints(rid(n), SHOP, POINTS, points, amount), refs=(ref,))
            self.issued.append(n)
        elif kind in ("swap_in", "swap_out"):
            direction = Direction.IN if kind == "swap_in" else Direction.OUT
            size = amount % 150 + 1 if direction == Direction.IN else amount * BAAS_UNIT // 2000
            self.flush()  # the quote reads the applied state, as the gateway's would
            q = self.quote(user, size, direction)
            if q is not None:
                swap = Swap(rid(n), SHOP, POINTS, q.wallet, q, q.digest())
                self.op(swap, refs=(ref,), signers=(account,))
        elif kind == "redeem":
            self.op(RedeemPoints(rid(n), SHOP, POINTS, points, amount), signers=(account,))
        elif kind == "reverse" and self.issued:
            issuance = self.issued[amount % len(self.issued)]
            self.op(ReversePoints(rid(n), SHOP, POINTS, rid(issuance), amount // 2 + 1))
        elif kind == "top_up":
            self.op(TopUpReserve(rid(n), SHOP, BAAS, amount * BAAS_UNIT // 100))
        elif kind == "fund":
            self.op(FundLiquidity(rid(n), SHOP, POINTS, amount))
        elif kind == "policy":
            self.op(policy(n, user_window_max=amount * 3, fee_bps=amount % 300))
        elif kind == "day":
            self.flush()
            later = self.node.now_ms + (amount % 9 + 1) * DAY_MS // 3
            self.node.apply(AppEntry(LEDGER_TICK, {}), now_ms=later)
            check(self.node)


def _wallet(user: str) -> bytes:
    return wallet_of(USERS[user][0])


def check(node: Node) -> None:
    assert node.balanced()
    today = node.now_ms // DAY_MS
    held = 0
    for account, _ in USERS.values():
        points = wallet_account(account, POINTS)
        lots = user_lots(node.view, POINTS, points)
        assert sum(lot.amount for lot in lots) == node.balance(points)
        assert all(lot.expiry_day > today for lot in lots), "an expired lot is still held"
        held += node.balance(points)
        baas = get_account(node.view, wallet_account(account, BAAS))
        assert baas is None or baas.debits_posted + baas.debits_pending <= baas.credits_posted
    assert points_supply(node.view, SHOP, POINTS) == held
    assert reserve_level(node.view, SHOP, BAAS) >= 0
    liquidity = get_account(node.view, role_account(SHOP, POINTS, "liquidity"))
    assert liquidity is not None and liquidity.debits_posted <= liquidity.credits_posted


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(actions=ACTIONS, groups=st.lists(st.integers(1, 4), min_size=1, max_size=40))
def test_any_bridge_history_conserves_expires_and_replays_alike(
    actions: list[tuple[str, str, int, bool]], groups: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        node = world(Path(tmp) / "a")
        run = Run(node)
        run.op(DefinePoints(rid(1), SHOP, POINTS, "SHOP", 0, 8))
        run.op(FundLiquidity(rid(2), SHOP, POINTS, 5_000))
        run.op(TopUpReserve(rid(3), SHOP, BAAS, 3 * BAAS_UNIT))
        run.op(policy(4))
        run.flush()
        for kind, user, amount, close in actions:
            run.act(kind, user, amount)
            if close:
                run.flush()
        run.flush()
        # Another replica: the same committed log, applied in other batches.
        other = replica_in_batches(node, Path(tmp) / "b", groups)
        assert other.items() == node.items()
        assert isinstance(node.positions[0], LogPosition)
        other.close()
        node.close()
