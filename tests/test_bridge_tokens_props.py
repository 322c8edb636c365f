"""A property of tokens on the log (feature 12): for any sequence of token registrations (some
of an address already taken), test-mode liquidity, policy changes and swaps token <-> BAAS
both ways, grouped into ``ledger.ops`` entries at random, on the node's dispatcher over a real
LevelDB:

* every ledger stays balanced (each asset's total conserved, issuance accounts included), no
  reserve, liquidity or wallet account below zero;
* every registered address resolves to exactly one token ledger holding that address, every
  token has a ledger of its own, none shared with a point asset, and the partner's list stays
  within ``tokens_per_partner_max``;
* a second replica applying the same committed log in other batches ends with exactly the
  same state, key for key.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bridgeopskit import (
    BAAS,
    BAAS_UNIT,
    IDENTITY,
    POINTS,
    TOKEN,
    TOKEN_UNIT,
    Node,
    market,
    replica_in_batches,
    rid,
    swap_of,
    token_market,
    token_policy,
    wallet_account,
    wallet_of,
    world,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from identitykit import SHOP
from test_bridge_ops_props import USERS
from test_bridge_ops_props import Run as PointsRun

from business.bridge import (
    Direction,
    FundLiquidity,
    Quote,
    RegisterToken,
    reserve_level,
    role_account,
    token_by_address,
    tokens_of,
)
from business.identity.ids import Mode
from business.ledger.views import get_account
from node.consensus.bridge_ops import BRIDGE_CONFIG, TOKEN_FEATURE_VERSION

ADDRESSES = [bytes([i]) * 20 for i in (0x21, 0x22, 0x23)]
ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["register", "earn", "swap_in", "swap_out", "fund", "policy"]),
        st.sampled_from(sorted(USERS)),
        st.integers(1, 700),
        st.booleans(),  # close the entry after this operation
    ),
    min_size=1,
    max_size=20,
)


class Run(PointsRun):
    """The points property's run (its ``op``, and ``flush`` with the points' checks: the
    users' lots, the supply), plus the token checks after every entry."""

    def flush(self) -> None:
        applied = bool(self.batch)
        super().flush()
        if applied:
            check(self.node)

    def swap(self, user: str, ledger: int, amount: int, direction: Direction) -> None:
        account, ref = USERS[user]
        self.flush()  # the quote reads the applied state, as the gateway's would
        q = self.node.ops_machine.bridge.quote(
            self.node.view, SHOP, ledger, wallet_of(account), direction, amount,
            self.node.now_ms,
        )  # fmt: skip
        if isinstance(q, Quote):
            self.op(swap_of(self.n, q), refs=(ref,), signers=(account,))

    def act(self, kind: str, user: str, amount: int) -> None:
        self.n += 1
        n = self.n
        if kind == "register":
            address = ADDRESSES[amount % len(ADDRESSES)]
            self.op(RegisterToken(rid(n), SHOP, BAAS, f"T{amount}", amount % 19, address))
        elif kind == "earn":  # points -> BAAS, so users hold BAAS to buy tokens with
            self.swap(user, POINTS, amount % 150 + 1, Direction.IN)
        elif kind == "swap_in":
            self.swap(user, TOKEN, amount * TOKEN_UNIT // 700, Direction.IN)
        elif kind == "swap_out":
            self.swap(user, TOKEN, amount * BAAS_UNIT // 700, Direction.OUT)
        elif kind == "fund":
            self.op(FundLiquidity(rid(n), SHOP, TOKEN, amount * TOKEN_UNIT // 100))
        elif kind == "policy":
            self.op(token_policy(n, fee_bps=amount % 300, user_window_max=amount * TOKEN_UNIT))


def check(node: Node) -> None:
    assert node.balanced()
    assert reserve_level(node.view, SHOP, BAAS) >= 0
    tokens = tokens_of(node.view, SHOP, Mode.TEST)
    assert 1 <= len(tokens) <= BRIDGE_CONFIG.tokens_per_partner_max
    ledgers = [ledger for ledger, _ in tokens]
    assert len(set(ledgers)) == len(ledgers) and POINTS not in ledgers
    for ledger, asset in tokens:
        assert token_by_address(node.view, Mode.TEST, IDENTITY.chain_id, asset.address) == (
            ledger,
            SHOP,
        )
        liquidity = get_account(node.view, role_account(SHOP, ledger, "liquidity"))
        assert liquidity is not None and liquidity.debits_posted <= liquidity.credits_posted
    registered = {asset.address for _, asset in tokens}
    for address in ADDRESSES:
        found = token_by_address(node.view, Mode.TEST, IDENTITY.chain_id, address)
        assert (found is not None) == (address in registered)
    for account, _ in USERS.values():
        for ledger in (BAAS, TOKEN):
            held = get_account(node.view, wallet_account(account, ledger))
            assert held is None or held.debits_posted + held.debits_pending <= held.credits_posted


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(actions=ACTIONS, groups=st.lists(st.integers(1, 4), min_size=1, max_size=40))
def test_any_token_history_conserves_and_replays_alike(
    actions: list[tuple[str, str, int, bool]], groups: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        node = world(Path(tmp) / "a", feature=TOKEN_FEATURE_VERSION)
        market(node)
        token_market(node)
        run = Run(node)
        for kind, user, amount, close in actions:
            run.act(kind, user, amount)
            if close:
                run.flush()
        run.flush()
        other = replica_in_batches(node, Path(tmp) / "b", groups, feature_max=TOKEN_FEATURE_VERSION)
        assert other.items() == node.items()
        other.close()
        node.close()
