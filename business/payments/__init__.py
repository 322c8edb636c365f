"""Payments (issue 14): the pure cores of paying partners by QR code and barcode.

* :mod:`business.payments.core` -- the theory of operation and :class:`Payments`, with
  :meth:`~Payments.prepare` / :meth:`~Payments.settle` around the approval check and
  ``Ledger.apply`` (and :meth:`~Payments.apply` for both): two-phase payments (authorise,
  capture with a linked platform fee, void, refunds, expiry on log time) as one state machine
  (:data:`PAYMENT_TABLE`), consumer-presented code redemption with a per-merchant guess
  lockout, and the Market's listings and orders (:data:`ORDER_TABLE`);
* :mod:`business.payments.model` -- requests, :class:`PaymentResult`, states, records and
  :class:`PaymentsConfig`;
* :mod:`business.payments.wire` -- the msgpack wire form of requests for log entries;
* :mod:`business.payments.views` -- reads of payments and orders, and the listing search;
* :mod:`business.payments.webhooks` -- the webhook retry schedule and ``t=,v1=`` signature;
* :mod:`business.payments.codes` -- the payment codes themselves (EMVCo merchant-presented QR
  payloads and consumer-presented one-time codes, with their images).
"""

from business.payments.core import ORDER_TABLE, PAYMENT_TABLE, PaymentOutcome, Payments, Prepared
from business.payments.model import (
    Authorise,
    CancelOrder,
    Capture,
    ExpireOrder,
    FulfilOrder,
    OrderState,
    PaymentResult,
    PaymentsConfig,
    PaymentState,
    PlaceOrder,
    PutListing,
    RedeemCode,
    Refund,
    RefundOrder,
    SetFee,
    Void,
)
from business.payments.wire import decode_request, encode_request

__all__ = [
    "ORDER_TABLE",
    "PAYMENT_TABLE",
    "Authorise",
    "CancelOrder",
    "Capture",
    "ExpireOrder",
    "FulfilOrder",
    "OrderState",
    "PaymentOutcome",
    "PaymentResult",
    "PaymentState",
    "Payments",
    "PaymentsConfig",
    "PlaceOrder",
    "Prepared",
    "PutListing",
    "RedeemCode",
    "Refund",
    "RefundOrder",
    "SetFee",
    "Void",
    "decode_request",
    "encode_request",
]
