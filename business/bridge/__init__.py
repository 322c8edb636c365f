"""The Bridge: partners' point assets and tokens, BAAS reserves, swap policies, quotes, swaps.

See :mod:`business.bridge.core` for the theory of operation. Public surface:

* :class:`Bridge` with :meth:`Bridge.prepare` / :meth:`Bridge.settle` (around the ledger and
  the approval check) and :meth:`Bridge.apply` (both, around ``Ledger.apply``),
  :meth:`Bridge.quote` and :meth:`Bridge.cap` (identity's ``DebitRules``);
* the requests, :class:`BridgeResult`, :class:`Quote`, :class:`ReserveLow` and
  :class:`BridgeConfig` (:mod:`business.bridge.model`);
* reads: :func:`reserve_level`, :func:`points_supply`, and the stored records
  (:mod:`business.bridge.views`).
"""

from business.bridge.core import (
    Bridge,
    BridgeOutcome,
    Prepared,
    faucet_account,
    points_supply,
    reserve_level,
)
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
    "faucet_account",
    "points_supply",
    "reserve_level",
]
