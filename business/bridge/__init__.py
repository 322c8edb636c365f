"""The Bridge: partners' point assets and tokens, BAAS reserves, swap policies, quotes, swaps.

See :mod:`business.bridge.core` for the theory of operation. Public surface:

* :class:`Bridge` with :meth:`Bridge.prepare` / :meth:`Bridge.settle` (around the ledger and
  the approval check) and :meth:`Bridge.apply` (both, around ``Ledger.apply``),
  :meth:`Bridge.quote` and :meth:`Bridge.cap` (identity's ``DebitRules``);
* the requests, :class:`BridgeResult`, :class:`Quote`, :class:`ReserveLow` and
  :class:`BridgeConfig` (:mod:`business.bridge.model`);
* the msgpack wire form of requests for log entries (:mod:`business.bridge.wire`:
  :func:`encode_request`, :func:`decode_request`);
* reads (:mod:`business.bridge.views`): assets, policies and their audited changes, a user's
  lots and spendable points, reserve level and history, a point asset's supply.
"""

from business.bridge.core import Bridge, BridgeOutcome, Prepared, faucet_account, role_account
from business.bridge.model import (
    AccountCode,
    BridgeConfig,
    BridgeResult,
    DefinePoints,
    Direction,
    ExpirePoints,
    FundLiquidity,
    IssuePoints,
    LotOrigin,
    Quote,
    RedeemPoints,
    RegisterToken,
    ReserveLow,
    ReversePoints,
    SetPolicy,
    SetReserveThreshold,
    Swap,
    TopUpReserve,
    TransferCode,
)
from business.bridge.views import (
    bridge_state_digest,
    get_asset,
    get_policy,
    points_supply,
    policy_change,
    reserve_history,
    reserve_level,
    sorted_bridge_digest,
    spendable_points,
    token_by_address,
    tokens_of,
    user_lots,
)
from business.bridge.wire import decode_request, encode_request

__all__ = [
    "AccountCode",
    "Bridge",
    "BridgeConfig",
    "BridgeOutcome",
    "BridgeResult",
    "DefinePoints",
    "Direction",
    "ExpirePoints",
    "FundLiquidity",
    "IssuePoints",
    "LotOrigin",
    "Prepared",
    "Quote",
    "RedeemPoints",
    "RegisterToken",
    "ReserveLow",
    "ReversePoints",
    "SetPolicy",
    "SetReserveThreshold",
    "Swap",
    "TopUpReserve",
    "TransferCode",
    "bridge_state_digest",
    "decode_request",
    "encode_request",
    "faucet_account",
    "get_asset",
    "get_policy",
    "points_supply",
    "policy_change",
    "reserve_history",
    "reserve_level",
    "role_account",
    "sorted_bridge_digest",
    "spendable_points",
    "token_by_address",
    "tokens_of",
    "user_lots",
]
