"""Structured log lines (one JSON object per line on stderr) for nodes, gateways and tools.

Secrets and plaintext record bodies are never passed to a logger; py-libp2p's noisy loggers
(some on the root logger) are set to ERROR.

A request id (``X-Request-Id``: chosen by the caller or made by the gateway) travels from the
gateway to every node it touches; while a request is handled it sits in a context variable
and every line logged on its behalf carries it as ``"request_id"``.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from contextvars import ContextVar

__all__ = [
    "REQUEST_ID_HEADER",
    "configure_logging",
    "current_request_id",
    "new_request_id",
    "request_id_or_new",
    "request_id_var",
]

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


def new_request_id() -> str:
    return secrets.token_hex(8)


def request_id_or_new(value: str | None) -> str:
    """The caller's request id if it is well-formed (1-64 of ``A-Za-z0-9._-``), else a new one."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()


def current_request_id() -> str | None:
    return request_id_var.get()


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            line["request_id"] = request_id
        request_ids = getattr(record, "request_ids", None)
        if request_ids:  # a coalesced frame serves several requests
            line["request_ids"] = list(request_ids)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"))


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("libp2p", "multiaddr", "aiohttp.access", "trio", "async_service"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
