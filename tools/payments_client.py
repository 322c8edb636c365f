"""A small client of the Payment and Market API, for a partner to copy (docs/payments-guide.md;
``baas-bench-payments`` and the tests use it).

Typed methods over :class:`tools.ledger_client.LedgerClient` (which signs, gives every POST an
``Idempotency-Key`` and retries only what is safe to retry): merchant QR intents, payments
(authorise with the user's approval, or from a consumer code; capture, void, refund, read,
list), the Market's listings and orders, and the partner's webhook endpoints. Pass your own
``key`` to each write, stored with your own order, so that a retry after your crash is the same
operation.

A debit of a user's wallet (an authorisation, an order) takes the user's approval: preview
under your key, the user's wallet app signs the ``Approve`` the preview shows
(:meth:`tools.ledger_client.UserWallet.approve`), then the same body and key with the
``approvals``: :meth:`PaymentsClient.authorise` and :meth:`PaymentsClient.order` do the three
steps (:meth:`tools.ledger_client.LedgerClient.approved`, as a swap does); ``preview`` and
``authorise_approved`` are the steps one by one, for a platform whose user signs on another
device (and for the benchmark, which times them apart).

>>> pay = PaymentsClient(LedgerClient(PartnerClient(url, api_key, secret)))
>>> paid = await pay.authorise(user, {"user": "user-42", "amount": "1000"}, key="order-9")
>>> await pay.capture(paid.body["id"], "600", key="order-9-capture")   # the rest released
>>> await pay.refund(paid.body["id"], "100", key="order-9-refund-1")
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from tools.client import Response
from tools.ledger_client import LedgerClient, UserWallet

__all__ = ["PaymentsClient"]


def _optional(**fields: Any) -> dict[str, Any]:
    """The fields given (not None): the API's defaults apply to the others."""
    return {name: value for name, value in fields.items() if value is not None}


class PaymentsClient:
    def __init__(self, ledger: LedgerClient) -> None:
        self.ledger = ledger

    # --- merchant QR intents -------------------------------------------------------------

    async def create_intent(
        self,
        amount: str,
        reference: str,
        expires_at: int,
        name: str,
        city: str,
        *,
        asset: str | None = None,
        country: str | None = None,
        category: str | None = None,
        key: str | None = None,
    ) -> Response:
        """A dynamic merchant QR (its EMVCo ``payload``, ``qr_svg`` and ``qr_png`` paths)."""
        body = {"amount": amount, "reference": reference, "expires_at": expires_at,
                "name": name, "city": city,
                **_optional(asset=asset, country=country, category=category)}  # fmt: skip
        return await self.ledger.call("POST", "/v1/payment_intents", body, key=key)

    async def intent(self, intent_id: str) -> Response:
        return await self.ledger.call("GET", f"/v1/payment_intents/{intent_id}")

    # --- payments ------------------------------------------------------------------------

    async def preview(self, body: dict[str, Any], *, key: str) -> Response:
        """What ``POST /v1/payments`` with ``body`` and ``key`` will be, and the
        ``approvals_required`` its user signs. ``body`` is ``{"user", "amount", "asset"?}``
        (server side) or ``{"qr", "user", "amount"?}`` (a scanned merchant QR of yours)."""
        return await self.ledger.call("POST", "/v1/payments/preview", body, key=key)

    async def authorise_approved(
        self, body: dict[str, Any], approvals: list[dict[str, Any]], *, key: str
    ) -> Response:
        """The authorisation with the user's approvals of its preview (same body and key)."""
        signed = {**body, "approvals": approvals}
        return await self.ledger.call("POST", "/v1/payments", signed, key=key)

    async def authorise(self, user: UserWallet, body: dict[str, Any], *, key: str) -> Response:
        """Preview, ``user`` signs, authorise: 201 the payment ``authorised`` (a preview's
        refusal is answered as it is)."""
        return await self.ledger.approved("/v1/payments", body, user, key=key)

    async def pay_code(
        self,
        code: str,
        amount: str,
        *,
        asset: str | None = None,
        capture: bool | None = None,
        key: str | None = None,
    ) -> Response:
        """A consumer one-time code the till scanned (its digits): the code is the approval;
        ``capture=True`` captures at once."""
        body = {"code": code, "amount": amount, **_optional(asset=asset, capture=capture)}
        return await self.ledger.call("POST", "/v1/payments", body, key=key)

    async def capture(self, payment_id: str, amount: str, *, key: str | None = None) -> Response:
        """Capture ``amount`` (at most the authorised; the rest is released)."""
        path = f"/v1/payments/{payment_id}/capture"
        return await self.ledger.call("POST", path, {"amount": amount}, key=key)

    async def void(self, payment_id: str, *, key: str | None = None) -> Response:
        return await self.ledger.call("POST", f"/v1/payments/{payment_id}/void", {}, key=key)

    async def refund(self, payment_id: str, amount: str, *, key: str | None = None) -> Response:
        """One refund (the refunds' sum never above the captured amount)."""
        path = f"/v1/payments/{payment_id}/refunds"
        return await self.ledger.call("POST", path, {"amount": amount}, key=key)

    async def payment(self, payment_id: str) -> Response:
        return await self.ledger.call("GET", f"/v1/payments/{payment_id}")

    async def payments(self, *, limit: int = 10, starting_after: str | None = None) -> Response:
        """A page of your payments in the credential's mode, newest first."""
        query = urlencode({"limit": limit, **_optional(starting_after=starting_after)})
        return await self.ledger.call("GET", f"/v1/payments?{query}")

    # --- the Market ----------------------------------------------------------------------

    async def put_listing(
        self,
        title: str,
        price: str,
        stock: int,
        *,
        listing_id: str | None = None,
        description: str | None = None,
        asset: str | None = None,
        active: bool | None = None,
        key: str | None = None,
    ) -> Response:
        """A new listing, or (``listing_id``) a replacement of one of yours."""
        body = {"title": title, "price": price, "stock": stock,
                **_optional(description=description, asset=asset, active=active)}  # fmt: skip
        path = "/v1/market/listings" + ("" if listing_id is None else f"/{listing_id}")
        return await self.ledger.call("POST", path, body, key=key)

    async def listing(self, listing_id: str) -> Response:
        return await self.ledger.call("GET", f"/v1/market/listings/{listing_id}")

    async def search(self, **filters: str | int | bool) -> Response:
        """A page of the Market search: ``text``, ``partner``, ``asset``, ``price_min``,
        ``price_max``, ``in_stock``, ``limit``, ``page`` (the previous ``next_page``)."""
        query = urlencode(
            {k: str(v).lower() if isinstance(v, bool) else v for k, v in filters.items()}
        )
        return await self.ledger.call("GET", "/v1/market/listings" + (f"?{query}" if query else ""))

    async def order(
        self,
        user: UserWallet,
        user_id: str,
        listing_id: str,
        quantity: int,
        *,
        capture_window_s: int | None = None,
        key: str,
    ) -> Response:
        """A user's order (stock reserved, its payment authorised): preview, ``user`` signs,
        order."""
        body = {"listing": listing_id, "quantity": quantity, "user": user_id,
                **_optional(capture_window_s=capture_window_s)}  # fmt: skip
        return await self.ledger.approved("/v1/market/orders", body, user, key=key)

    async def get_order(self, order_id: str) -> Response:
        return await self.ledger.call("GET", f"/v1/market/orders/{order_id}")

    async def fulfil(self, order_id: str, *, key: str | None = None) -> Response:
        """Capture the order's payment in full."""
        path = f"/v1/market/orders/{order_id}/fulfil"
        return await self.ledger.call("POST", path, {}, key=key)

    async def cancel(self, order_id: str, *, key: str | None = None) -> Response:
        """Void the order's payment; its stock comes back."""
        path = f"/v1/market/orders/{order_id}/cancel"
        return await self.ledger.call("POST", path, {}, key=key)

    async def refund_order(self, order_id: str, amount: str, *, key: str | None = None) -> Response:
        path = f"/v1/market/orders/{order_id}/refunds"
        return await self.ledger.call("POST", path, {"amount": amount}, key=key)

    # --- webhook endpoints (docs/webhooks.md) --------------------------------------------

    async def add_webhook_endpoint(self, url: str, events: list[str]) -> Response:
        """201 the endpoint with its signing ``secret`` (``whsec_...``), shown this once."""
        body = {"url": url, "enabled_events": events}
        return await self.ledger.call("POST", "/v1/webhook_endpoints", body)

    async def webhook_endpoints(self) -> Response:
        return await self.ledger.call("GET", "/v1/webhook_endpoints")
