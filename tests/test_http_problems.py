"""What aiohttp refuses before any middleware runs is still a JSON problem (node/api/problem.py).

A real server on loopback (ProblemAppRunner + TCPSite, as the node and gateway run), fed raw
bytes over a socket: an over-long header line, a malformed header, a JSON body nested past the
parser's recursion limit. The same checks run against the real processes in test_cluster.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from node.api.problem import (
    JSON_DEPTH_MAX,
    ProblemAppRunner,
    json_nesting_within,
    parse_json_body,
    problem_middleware,
)
from node.errors import InvalidRequest


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"type": type(parse_json_body(await request.read())).__name__})


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int]]:
    app = web.Application(middlewares=[problem_middleware])
    app.router.add_post("/echo", _echo)
    runner = ProblemAppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield "127.0.0.1", port
    finally:
        await runner.cleanup()


async def _exchange(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=5)  # the server closes the connection
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}
    return int(status_line.split()[1]), headers, body


def _post(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


@pytest.mark.parametrize(
    ("extra", "status", "code"),
    [
        (b"X-Long: " + b"a" * 20_000 + b"\r\n", 431, "request_header_too_large"),
        (b"A" * 20_000 + b": x\r\n", 431, "request_header_too_large"),
        (b"Header Without Colon\r\n", 400, "malformed_http_request"),
    ],
)
async def test_parser_refusals_are_json_problems(
    server: tuple[str, int], extra: bytes, status: int, code: str
) -> None:
    got, headers, body = await _exchange(server, _post(b"{}", extra))
    assert got == status
    assert headers["content-type"].startswith("application/problem+json")
    problem = json.loads(body)
    assert problem["code"] == code and problem["status"] == status
    # the server is still serving
    ok, _, answer = await _exchange(server, _post(b"[1]"))
    assert ok == 200 and json.loads(answer) == {"type": "list"}


async def test_json_nested_past_the_recursion_limit_is_invalid_json(
    server: tuple[str, int],
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    status, headers, body = await _exchange(server, _post(deep))
    assert status == 400 and json.loads(body)["code"] == "invalid_json"
    assert headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("raw", [b"", b"{", b"[" * 100_000, b'{"a": NaNx}', b"\xff\xfe"])
def test_parse_json_body_raises_only_the_typed_error(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_json_body(raw)
    assert caught.value.code == "invalid_json"


@pytest.mark.parametrize(
    ("raw", "depth_max", "within"),
    [
        (b'{"a": [1, {"b": [2]}]}', 4, True),
        (b'{"a": [1, {"b": [2]}]}', 3, False),
        (b"[" * 64 + b"]" * 64, 64, True),
        (b"[" * 65 + b"]" * 65, 64, False),
        (b"{" * 10 + b"[" * 10 + b"]" * 10 + b"}" * 10, 20, True),
        (b"{" * 10 + b"[" * 11 + b"]" * 11 + b"}" * 10, 20, False),
        # brackets inside strings (escaped quotes too) do not count
        (b'{"k": "[[[[[[[[[[\\"{{{{{{{{{{"}', 1, True),
        (b"[" * 5, 64, False),  # do not pair up
        (b"[}", 64, False),
        (b"", 1, True),
    ],
)
def test_json_nesting_bound(raw: bytes, depth_max: int, within: bool) -> None:
    assert json_nesting_within(raw, depth_max) is within


def test_parse_json_body_at_and_past_the_depth_bound() -> None:
    assert parse_json_body(b"[" * JSON_DEPTH_MAX + b"]" * JSON_DEPTH_MAX) is not None
    with pytest.raises(InvalidRequest):
        parse_json_body(b"[" * (JSON_DEPTH_MAX + 1) + b"]" * (JSON_DEPTH_MAX + 1))


def test_parse_json_body_survives_a_raised_recursion_limit() -> None:
    # Where something raised the interpreter's limit, the C decoder would overflow the C
    # stack at this depth instead of raising RecursionError; the bound refuses it first.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1_000_000)
    try:
        with pytest.raises(InvalidRequest):
            parse_json_body(b"[" * 1_000_000 + b"]" * 1_000_000)
    finally:
        sys.setrecursionlimit(limit)
