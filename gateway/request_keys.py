"""What the gateway's middleware attaches to each request, for the route modules to read."""

from __future__ import annotations

from aiohttp import web

from business.identity.ids import Mode
from gateway.keyring import PartnerKeys, Principal

__all__ = ["DEADLINE", "MODE", "PARTNER_KEYS", "PRINCIPAL", "REQUEST_ID"]

PARTNER_KEYS = web.RequestKey("partner", PartnerKeys)  # the authenticated partner
PRINCIPAL = web.RequestKey("principal", Principal)  # who signed: a partner or an operator
MODE = web.RequestKey("mode", Mode)  # test or live: the signing credential's
REQUEST_ID = web.RequestKey("request_id", str)
DEADLINE = web.RequestKey("deadline", float)  # loop time by which the answer is due
API_VERSION = web.RequestKey("api_version", str)  # the dated API version the caller asked for
