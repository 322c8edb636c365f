"""JSON problem responses (RFC 9457) and the middleware that turns every error into one.

Every error leaves as ``{"type", "title", "status", "code", "detail"}`` with a stable ``code``
(and ``param``, the offending parameter, where the error names one);
a :class:`~node.errors.BaasError` maps by its class, aiohttp's own HTTP errors (413, 404, 405)
map by status, and anything unexpected becomes a generic 500 problem with no stack trace in the
body (it is logged with a request id instead). Shared by the node API and the gateway.

Two kinds of error never reach a middleware, so they are handled here too:

* a request the HTTP parser refuses (a header line over ``max_line_size``, too many headers,
  a malformed request line): aiohttp answers those from its protocol handler with plain text;
  :class:`ProblemAppRunner` serves the app with a handler that answers a JSON problem instead
  (431 ``request_header_too_large`` for over-long headers, 400 ``malformed_http_request``
  otherwise), still closing the connection as aiohttp does;
* a JSON body nested deeper than the parser can take: :func:`parse_json_body` bounds the
  nesting (``JSON_DEPTH_MAX``) before parsing, so it is the same typed ``invalid_json`` as any
  other bad JSON, never a ``RecursionError`` (a 500) or a C stack overflow (a dead process).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import http_exceptions, web, web_protocol

from node.errors import BaasError, InvalidRequest, Overloaded

__all__ = [
    "JSON_DEPTH_MAX",
    "ProblemAppRunner",
    "json_nesting_within",
    "parse_json_body",
    "problem_middleware",
    "problem_response",
]

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
    431: "request_header_too_large",
}


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> web.Response:
    body: dict[str, Any] = {
        "type": f"https://baas.example/problems/{code}",
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
    }
    if param is not None:
        body["param"] = param
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
        return problem_response(
            exc.http_status, exc.code, exc.detail, headers=headers, param=exc.param
        )
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


JSON_DEPTH_MAX = 64  # records may nest 32 deep (gateway.record_codec); requests wrap them
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)  # linear: no nested repetition
_INNERMOST_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_nesting_within(raw: bytes, depth_max: int) -> bool:
    """Whether the arrays and objects of ``raw`` nest at most ``depth_max`` deep (False also
    for brackets that do not pair up). Strings are taken out first, then each pass removes
    the innermost pairs: at most ``depth_max`` passes over the brackets alone, in C."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_A_BRACKET)
    for _ in range(depth_max):
        if not brackets:
            return True
        brackets = _INNERMOST_PAIR.sub(b"", brackets)
    return not brackets


def parse_json_body(raw: bytes) -> Any:
    """Decode a JSON request body; anything malformed is a typed 400 ``invalid_json``.

    The nesting is bounded before the parser runs: CPython's C decoder recurses once per
    level, and past the interpreter's recursion limit it raises ``RecursionError`` -- or, where
    something raised that limit, overflows the C stack and kills the process (seen in a test
    run at 100,000 levels)."""
    if not json_nesting_within(raw, JSON_DEPTH_MAX):
        raise InvalidRequest(
            f"body is not valid JSON or nests deeper than {JSON_DEPTH_MAX}", code="invalid_json"
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest("body is not valid JSON", code="invalid_json") from exc


class _ProblemRequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering what it refuses itself as a JSON problem."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: an answer has begun, cannot replace it
            raise ConnectionError("response already sent, cannot send the error")
        if isinstance(exc, http_exceptions.BadHttpMessage):
            # The client's fault: one line, not aiohttp's stack trace at ERROR for every probe.
            log.info("refused a malformed request from %s: %s", request.remote, exc.message)
        else:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        if isinstance(exc, http_exceptions.LineTooLong):
            status, code, detail = 431, "request_header_too_large", "a header line is too long"
        elif isinstance(exc, http_exceptions.BadHttpMessage):
            status, code = exc.code, _HTTP_CODES.get(exc.code, "malformed_http_request")
            if status == 400:
                code = "malformed_http_request"
            detail = "the request is not valid HTTP/1.1"
        elif status == 500:
            code, detail = "internal_error", "internal error"
        else:
            code, detail = _HTTP_CODES.get(status, "http_error"), "request failed"
        response = problem_response(status, code, detail)
        response.force_close()
        return response


class _ProblemServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class ProblemAppRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose connections answer parser errors as problems."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp has no hook for the class of its connection handler: the app's server is
        # built by web.Application._make_handler; only its factory method differs here.
        server.__class__ = _ProblemServer
        return server
