"""The BaaS ledger: a pure double-entry state machine modelled on TigerBeetle.

See :mod:`business.ledger.core` for the theory of operation. Public surface:

* :class:`Ledger` with :meth:`Ledger.apply` ``(events, now_ms, view) -> (results, writes)``;
* the events (:class:`CreateAsset`, :class:`CreateAccount`, :class:`CreateTransfer`), result
  enums, stored records and :class:`LedgerConfig` (:mod:`business.ledger.model`);
* the msgpack wire form of events (:mod:`business.ledger.wire`);
* strings of digits for JSON (:mod:`business.ledger.amounts`);
* reads, the digest and views (:mod:`business.ledger.views`).
"""

from business.ledger.amounts import format_amount, parse_amount
from business.ledger.core import Ledger
from business.ledger.model import (
    AMOUNT_MAX,
    Account,
    AccountBalance,
    AccountFlags,
    AccountResult,
    Asset,
    AssetKind,
    AssetResult,
    CreateAccount,
    CreateAsset,
    CreateTransfer,
    Event,
    LedgerConfig,
    LedgerTotals,
    PendingStatus,
    Result,
    Transfer,
    TransferFlags,
    TransferResult,
)
from business.ledger.views import MemoryView, RangeView, state_digest
from business.ledger.wire import decode_events, encode_events

__all__ = [
    "AMOUNT_MAX",
    "Account",
    "AccountBalance",
    "AccountFlags",
    "AccountResult",
    "Asset",
    "AssetKind",
    "AssetResult",
    "CreateAccount",
    "CreateAsset",
    "CreateTransfer",
    "Event",
    "Ledger",
    "LedgerConfig",
    "LedgerTotals",
    "MemoryView",
    "PendingStatus",
    "RangeView",
    "Result",
    "Transfer",
    "TransferFlags",
    "TransferResult",
    "decode_events",
    "encode_events",
    "format_amount",
    "parse_amount",
    "state_digest",
]
