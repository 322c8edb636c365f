"""JSON problem responses (RFC 9457) and the middleware that turns every error into one.

Every error leaves as ``{"type", "title", "status", "code", "detail"}`` with a stable ``code``;
a :class:`~node.errors.BaasError` maps by its class, aiohttp's own HTTP errors (413, 404, 405)
map by status, and anything unexpected becomes a generic 500 problem with no stack trace in the
body (it is logged with a request id instead). Shared by the node API and the gateway.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from node.errors import BaasError, Overloaded

__all__ = ["problem_middleware", "problem_response"]

log = logging.getLogger("baas.http")

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def problem_response(
    status: int, code: str, detail: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {
        "type": f"https://baas.example/problems/{code}",
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
    }
    return web.json_response(
        body, status=status, headers=headers, content_type="application/problem+json"
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BaasError as exc:
        headers = None
        if isinstance(exc, Overloaded):
            headers = {"Retry-After": str(exc.retry_after_s)}
        elif exc.http_status == 503:
            headers = {"Retry-After": "1"}
        return problem_response(exc.http_status, exc.code, exc.detail, headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return problem_response(exc.status, code, exc.reason)
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception(
            "unhandled error (incident %s) on %s %s", incident, request.method, request.path
        )
        return problem_response(500, "internal_error", f"internal error, incident {incident}")
