"""What the gateway's middleware attaches to each request, for the route modules to read."""

from __future__ import annotations

from aiohttp import web

from gateway.keyring import PartnerKeys

__all__ = ["DEADLINE", "PARTNER_KEYS", "REQUEST_ID"]

PARTNER_KEYS = web.RequestKey("partner", PartnerKeys)  # the authenticated partner
REQUEST_ID = web.RequestKey("request_id", str)
DEADLINE = web.RequestKey("deadline", float)  # loop time by which the answer is due
API_VERSION = web.RequestKey("api_version", str)  # the dated API version the caller asked for
