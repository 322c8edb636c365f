"""A small signing client for the partner API (an example for integrators; tests use it too).

>>> client = PartnerClient("http://127.0.0.1:8080", api_key, secret)
>>> created = await client.put_record({"type": "payment", "amount_minor": 1250})
>>> fetched = await client.get_record(created["record_id"])
"""

from __future__ import annotations

import json
import secrets
import ssl
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDict

from gateway.auth import HEADER_KEY, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, sign_request

__all__ = ["PartnerClient", "Response"]


class Response:
    def __init__(self, status: int, body: Any, headers: Mapping[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.body!r})"


class PartnerClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        secret: bytes,
        *,
        connections_max: int = 32,
        ssl_context: ssl.SSLContext | None = None,  # e.g. trusting a private CA for https
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.secret = secret
        connector = aiohttp.TCPConnector(
            limit=connections_max, ssl=ssl_context if ssl_context is not None else True
        )
        self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> PartnerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def signed_headers(
        self,
        method: str,
        path: str,
        body: bytes,
        idempotency_key: str | None = None,
        timestamp: int | None = None,
    ) -> dict[str, str]:
        ts = str(timestamp if timestamp is not None else int(time.time()))
        nonce = secrets.token_hex(12)
        headers = {
            HEADER_KEY: self.api_key,
            HEADER_TIMESTAMP: ts,
            HEADER_NONCE: nonce,
            HEADER_SIGNATURE: sign_request(
                self.secret, method, path, ts, idempotency_key or "", body, nonce
            ),
            "Content-Type": "application/json",
        }
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    async def send(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        async with self._session.request(
            method, self.base_url + path, data=body, headers=headers
        ) as response:
            raw = await response.read()
            self.received(method, path, response.status, response.headers, raw)
            try:
                decoded: Any = json.loads(raw) if raw else None
            except ValueError:
                decoded = raw
            # Case-insensitive, like HTTP: the server may send X-Request-ID for X-Request-Id.
            return Response(response.status, decoded, CIMultiDict(response.headers))

    def received(
        self, method: str, path: str, status: int, headers: Mapping[str, str], raw: bytes
    ) -> None:
        """Called with every raw answer; a subclass may log or check them (tests check each
        against the gateway's OpenAPI document)."""

    async def request(
        self, method: str, path: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> Response:
        body = json.dumps(payload).encode() if payload is not None else b""
        return await self.send(
            method, path, body, self.signed_headers(method, path, body, idempotency_key)
        )

    async def put_record(
        self, record: dict[str, Any], *, idempotency_key: str | None = None
    ) -> Response:
        return await self.request(
            "POST", "/v1/records", {"record": record}, idempotency_key=idempotency_key
        )

    async def put_records(self, items: list[dict[str, Any]]) -> Response:
        return await self.request("POST", "/v1/records/batch", {"records": items})

    async def get_record(self, record_id: str) -> Response:
        return await self.request("GET", f"/v1/records/{record_id}")
