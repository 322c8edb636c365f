"""Reading payments state: a payment or order with its state at a log time, and listing search.

Point reads (``get`` only) for the node's payments reads (node/api/payments_routes.py), the
Payment API (next) and the tests; :func:`payments_state_digest` for replica and replay
checks. The state a read reports is the state machine's own
(:func:`business.payments.core.payment_state` / :func:`~business.payments.core.order_state`),
so an authorised payment past its capture window reads ``expired`` before the ledger's sweep
has run. Another partner's payment or order reads
as absent: a partner learns nothing of another's.

:func:`search_listings` searches the Market over a :class:`~business.ledger.views.RangeView`:
listings in id order (ids are hashes, so the order mixes partners), filtered by text (a
case-insensitive substring of title or description), partner, ledger (the asset), price range
and stock. One call reads at most ``search_scan_max`` listings whatever it finds, and returns
at most ``limit``; ``resume_after`` is the last listing id read when the scan stopped early
(pass it back as ``after``; None: the end was reached). A search never costs more than the
bound, however few listings match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from business.ledger.views import RangeView
from business.payments.core import order_state, payment_state
from business.payments.model import (
    LISTING_PREFIX,
    PREFIX,
    Listing,
    OrderRecord,
    OrderState,
    PaymentRecord,
    PaymentsConfig,
    PaymentState,
    decode_listing,
    decode_order,
    decode_payment,
    listing_key,
    order_key,
    payment_key,
)
from node.consensus.state_machine import StateView
from node.errors import InvalidRequest

__all__ = [
    "ListingQuery",
    "SearchPage",
    "get_listing",
    "get_order",
    "get_payment",
    "payments_state_digest",
    "search_listings",
]


def get_payment(
    view: StateView, partner: bytes, payment: bytes, now_ms: int
) -> tuple[PaymentRecord, PaymentState] | None:
    raw = view.get(payment_key(payment))
    if raw is None:
        return None
    p = decode_payment(raw)
    return (p, payment_state(view, p, now_ms)) if p.partner == partner else None


def get_order(
    view: StateView, partner: bytes, order: bytes, now_ms: int
) -> tuple[OrderRecord, OrderState] | None:
    raw = view.get(order_key(order))
    if raw is None:
        return None
    o = decode_order(raw)
    raw_payment = view.get(payment_key(order))
    if o.merchant != partner or raw_payment is None:
        return None
    return o, order_state(view, o, decode_payment(raw_payment), now_ms)


def get_listing(view: StateView, listing: bytes) -> Listing | None:
    raw = view.get(listing_key(listing))
    return None if raw is None else decode_listing(raw)


@dataclass(frozen=True, slots=True)
class ListingQuery:
    text: str = ""
    partner: bytes | None = None
    ledger: int | None = None
    price_min: int = 0
    price_max: int | None = None
    in_stock: bool = False
    active_only: bool = True
    after: bytes | None = None  # the previous page's ``resume_after`` or last id
    limit: int = 10

    def matches(self, x: Listing) -> bool:
        needle = self.text.casefold()
        return (
            (not self.active_only or x.active)
            and (self.partner is None or x.partner == self.partner)
            and (self.ledger is None or x.ledger == self.ledger)
            and self.price_min <= x.price
            and (self.price_max is None or x.price <= self.price_max)
            and (not self.in_stock or x.stock > 0)
            and (not needle or needle in x.title.casefold() or needle in x.description.casefold())
        )


@dataclass(frozen=True, slots=True)
class SearchPage:
    listings: tuple[tuple[bytes, Listing], ...]  # (listing id, listing) in id order
    resume_after: bytes | None  # where the next page starts; None: nothing after


def search_listings(view: RangeView, query: ListingQuery, config: PaymentsConfig) -> SearchPage:
    if not 1 <= query.limit <= config.search_limit_max:
        raise InvalidRequest(
            f"limit must be 1..{config.search_limit_max}", code="limit_invalid", param="limit"
        )
    if query.after is not None and len(query.after) != 16:
        raise InvalidRequest("after is a listing id", code="field_invalid", param="after")
    start = LISTING_PREFIX if query.after is None else listing_key(query.after) + b"\x00"
    stop = LISTING_PREFIX[:-1] + bytes([LISTING_PREFIX[-1] + 1])
    found: list[tuple[bytes, Listing]] = []
    last: bytes | None = None
    for read, (key, raw) in enumerate(view.scan(start, stop)):
        if read == config.search_scan_max:
            return SearchPage(tuple(found), last)
        last = key[len(LISTING_PREFIX) :]
        listing = decode_listing(raw)
        if query.matches(listing):
            found.append((last, listing))
            if len(found) == query.limit:
                return SearchPage(tuple(found), last)
    return SearchPage(tuple(found), None)


def payments_state_digest(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """SHA-256 over every ``pm/`` item in key order (payments, orders, listings, codes'
    guesses, the expiry queue and the outbox: replica and replay checks); ``items`` may hold
    other keys, and need not be sorted. The ledger's and the Bridge's digests' form."""
    digest = hashlib.sha256(b"baas-payments-state-v1")
    for key, value in sorted((k, v) for k, v in items if k.startswith(PREFIX)):
        digest.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
    return digest.digest()
