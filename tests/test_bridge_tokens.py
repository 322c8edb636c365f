"""Partner tokens on the log (feature 12) through the node's own dispatcher on a real LevelDB:
a RegisterToken allocates the token's ledger from the asset-index counter, opens its role
accounts, is findable by (mode, chain, ERC-20 address); each refusal is a sticky code that
moves and allocates nothing; test-mode liquidity from the faucet (live mode refused); swaps
token <-> BAAS both ways under the partner's policy with every ledger balanced.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from bridgeopskit import (
    ALICE,
    ALICE_REF,
    BAAS,
    BAAS_UNIT,
    IDENTITY,
    TOKEN,
    TOKEN_ADDRESS,
    TOKEN_UNIT,
    Node,
    market,
    rid,
    swap_of,
    token_market,
    token_policy,
    wallet_account,
    world,
)
from identitykit import OTHER_SHOP, SHOP
from test_index_batch import prop

from business.bridge import (
    BridgeConfig,
    Direction,
    FundLiquidity,
    RegisterToken,
    role_account,
    token_by_address,
    tokens_of,
)
from business.bridge.model import AssetKindRef
from business.identity.ids import Mode, ledger_number
from business.identity.model import META_KEY, decode_owner, owner_key
from business.ledger.views import get_account
from node.consensus.bridge_ops import BRIDGE_CONFIG, TOKEN_FEATURE_VERSION
from node.consensus.ledger_ops import Operation

T, L = Mode.TEST, Mode.LIVE
SIGNED = {"refs": (ALICE_REF,), "signers": (ALICE,)}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = world(tmp_path / "db", feature=TOKEN_FEATURE_VERSION)
    yield n
    n.close()


def token(n: int, address: bytes = TOKEN_ADDRESS, **kw: object) -> RegisterToken:
    fields: dict[str, object] = {"symbol": "SHOPT", "decimals": 6, "ledger": BAAS}
    fields.update(kw)
    return RegisterToken(rid(n), SHOP, address=address, **fields)  # type: ignore[arg-type]


def value_state(node: Node) -> dict[bytes, bytes]:
    """Everything a refusal must leave alone: accounts, assets, owners, the index counter and
    the token registries (not the sticky outcome of the refused operation itself)."""
    keep = (b"lg/a/", b"br/as/", b"br/ta/", b"br/tl/", b"id/o/", META_KEY)
    return {k: v for k, v in node.items() if k.startswith(keep)}


def test_a_token_gets_the_next_asset_index_its_accounts_and_its_address(node: Node) -> None:
    before = node.view.get(META_KEY)
    outcome = node.run(token(1))
    assert outcome.result == "ok" and outcome.succeeded
    assert node.view.get(META_KEY) != before  # the counter moved on: 18 is taken
    ((ledger, asset),) = tokens_of(node.view, SHOP, T)
    assert ledger == TOKEN == ledger_number(T, 18)  # one ledger, in the mode (its parity)
    assert (asset.kind, asset.scale, asset.code) == (AssetKindRef.TOKEN, 6, "SHOPT")
    assert asset.address == TOKEN_ADDRESS and asset.partner == SHOP
    # findable by (mode, chain, address): what a chain deposit of the token will resolve
    assert token_by_address(node.view, T, IDENTITY.chain_id, TOKEN_ADDRESS) == (TOKEN, SHOP)
    assert token_by_address(node.view, L, IDENTITY.chain_id, TOKEN_ADDRESS) is None
    assert token_by_address(node.view, T, IDENTITY.chain_id + 1, TOKEN_ADDRESS) is None
    for role in ("issuance", "liquidity", "breakage"):
        account = role_account(SHOP, TOKEN, role)
        assert get_account(node.view, account) is not None
        raw = node.view.get(owner_key(account))
        assert raw is not None and decode_owner(raw).owner == SHOP
    # a second token takes the next index; the same token in live mode its own live ledger
    assert node.code(token(2, b"\x02" * 20, symbol="TWO")) == "ok"
    live = token(3, ledger=ledger_number(L, 1))
    assert node.code(live, mode=L) == "ok"  # the same contract is another asset in live mode
    assert [lg for lg, _ in tokens_of(node.view, SHOP, T)] == [TOKEN, ledger_number(T, 19)]
    assert [lg for lg, _ in tokens_of(node.view, SHOP, L)] == [ledger_number(L, 20)]
    assert tokens_of(node.view, OTHER_SHOP, T) == []
    assert node.balanced()


def _malformed_decimals(node: Node) -> Operation:
    """A RegisterToken with 19 decimals, built past the model's own check (which refuses it
    before anything is sent)."""
    raw = msgpack.packb([1, 2, [rid(40), SHOP, BAAS, "BIG", 19, TOKEN_ADDRESS]])
    return Operation(prop(40), None, None, SHOP, T, (), bridge=raw)


def test_every_refusal_is_sticky_and_allocates_nothing(node: Node) -> None:
    assert node.code(token(1)) == "ok"
    before = value_state(node)
    table = [
        (token(10), {}, "token_address_taken"),  # the same contract again, same partner
        (token(11, symbol="OTHER"), {}, "token_address_taken"),  # whatever its symbol
        (
            RegisterToken(rid(12), OTHER_SHOP, BAAS, "OTH", 6, TOKEN_ADDRESS),
            {"partner": OTHER_SHOP},
            "token_address_taken",  # another partner's registration of it
        ),
        (token(13, b"\x03" * 20, symbol="X" * 17), {}, "bound_exceeded"),
        (token(14, b"\x03" * 20, ledger=ledger_number(L, 1)), {}, "ledger_not_found"),
        (RegisterToken(rid(15), OTHER_SHOP, BAAS, "OTH", 6, b"\x03" * 20), {}, "account_not_found"),
        # other-shop lacks the liquidity role: the token's accounts would have no owner
        (
            RegisterToken(rid(16), OTHER_SHOP, BAAS, "OTH", 6, b"\x04" * 20),
            {"partner": OTHER_SHOP},
            "role_missing",
        ),
        (token(17, b"\x05" * 20), {"partner": None, "mode": None}, "proposer_missing"),
    ]
    for request, kw, code in table:
        outcome = node.run(request, **kw)
        assert outcome.result == code, (request, outcome)
        assert value_state(node) == before, code  # no index, account, owner or registry
        (again,) = node.ops(node.bridge_op(request, **kw))  # type: ignore[arg-type]
        assert again.code == "existing" and again.detail["outcome"] == outcome
    (result,) = node.ops(_malformed_decimals(node))
    assert result.code == "malformed" and value_state(node) == before
    with pytest.raises(Exception, match="decimals"):
        token(41, decimals=19)  # the model refuses it before the log
    assert node.balanced()


def test_tokens_per_partner_are_bounded(node: Node) -> None:
    bound = BRIDGE_CONFIG.tokens_per_partner_max
    assert bound == BridgeConfig().tokens_per_partner_max
    for i in range(bound):
        assert node.code(token(1 + i, bytes([i + 1]) * 20, symbol=f"T{i}")) == "ok"
    before = value_state(node)
    assert node.code(token(1 + bound, b"\xee" * 20)) == "bound_exceeded"
    assert value_state(node) == before
    assert len(tokens_of(node.view, SHOP, T)) == bound


def test_register_token_stays_refused_before_feature_12(tmp_path: Path) -> None:
    node = world(tmp_path / "db11", feature=11)
    before = value_state(node)
    assert node.code(token(1)) == "asset_not_allowed"
    assert value_state(node) == before
    node.close()


def test_liquidity_from_the_faucet_in_test_mode_only(node: Node) -> None:
    token_market(node)  # 1000 tokens of liquidity
    liquidity = role_account(SHOP, TOKEN, "liquidity")
    issuance = role_account(SHOP, TOKEN, "issuance")
    assert node.balance(liquidity) == 1000 * TOKEN_UNIT
    assert node.balance(issuance) == -1000 * TOKEN_UNIT  # the mint, the token's "@world"
    over = FundLiquidity(rid(20), SHOP, TOKEN, BRIDGE_CONFIG.faucet_amount_max + 1)
    assert node.code(over) == "faucet_amount_exceeded"
    live_token = ledger_number(L, 19)
    assert node.code(token(21, ledger=ledger_number(L, 1)), mode=L) == "ok"
    assert node.code(FundLiquidity(rid(22), SHOP, live_token, 5), mode=L) == "faucet_live_mode"
    assert node.balance(role_account(SHOP, live_token, "liquidity")) == 0
    assert node.balanced()


def test_swaps_token_to_baas_and_back_under_the_policy(node: Node) -> None:
    market(node)
    token_market(node)
    alice_token, alice_baas = wallet_account(ALICE, TOKEN), wallet_account(ALICE, BAAS)
    reserve = role_account(SHOP, BAAS, "reserve")
    # alice earns 3 BAAS from her points first (test mode holds no other way for a user)
    assert node.code(swap_of(10, node.quote(ALICE, 300)), **SIGNED) == "ok"
    baas = node.balance(alice_baas)
    # BAAS -> token: 2 BAAS, fee 1%: 1.98 tokens out of the liquidity
    out = node.quote(ALICE, 2 * BAAS_UNIT, Direction.OUT, ledger=TOKEN)
    assert out.amount_out == 198 * TOKEN_UNIT // 100
    assert node.code(swap_of(11, out), **SIGNED) == "ok"
    assert node.balance(alice_token) == out.amount_out
    assert node.balance(alice_baas) == baas - 2 * BAAS_UNIT
    # token -> BAAS: 1 token = 1 BAAS gross, 1% fee; the reserve pays
    level = node.balance(reserve)
    back = node.quote(ALICE, TOKEN_UNIT, Direction.IN, ledger=TOKEN)
    assert node.code(swap_of(12, back), **SIGNED) == "ok"
    assert node.balance(alice_token) == out.amount_out - TOKEN_UNIT
    assert node.balance(reserve) == level - BAAS_UNIT
    assert node.balance(alice_baas) == baas - 2 * BAAS_UNIT + back.amount_out
    # more tokens than the liquidity holds: the chain fails whole
    assert node.code(token_policy(13, rate_num=1, swap_max=10**30)) == "ok"  # 1 unit per unit
    huge = node.quote(ALICE, node.balance(alice_baas), Direction.OUT, ledger=TOKEN)
    before = node.ledger_items()
    assert node.code(swap_of(14, huge), **SIGNED) == "liquidity_exhausted"
    assert node.ledger_items() == before
    assert node.balanced()  # every ledger sums to zero: BAAS, points, the token
