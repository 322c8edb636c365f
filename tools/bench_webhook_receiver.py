"""A webhook receiver for ``baas-bench-payments``, in its own process: the bench's client work
would otherwise delay the arrival times it notes.

It notes (arrival time, signature header, body) of every ``POST /hooks`` and answers 200;
``GET /arrivals?start=n`` answers the rows from the n-th on (at most ``ARRIVALS_PAGE_MAX``).
The bench checks the signatures and matches the events. ``python -m tools.bench_webhook_receiver``
imports only aiohttp, so the process starts in about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

__all__ = ["ARRIVALS_PAGE_MAX", "webhook_receiver"]

ARRIVALS_PAGE_MAX = 5000  # rows per read
REPO = Path(__file__).resolve().parent.parent
SIGNATURE_HEADER = "Baas-Signature"  # gateway.webhook_deliverer's (a test checks they agree)


def main() -> None:
    """Serve on an ephemeral port of 127.0.0.1; the port is the first line on stdout."""
    rows: list[tuple[float, str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        rows.append((time.time(), request.headers.get(SIGNATURE_HEADER, ""), body.decode()))
        return web.Response(status=200)

    async def arrivals(request: web.Request) -> web.Response:
        start = int(request.query.get("start", "0"))
        return web.json_response(rows[start : start + ARRIVALS_PAGE_MAX])

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/hooks", hook)
        app.router.add_get("/arrivals", arrivals)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()  # until terminated

    asyncio.run(serve())


@contextlib.contextmanager
def webhook_receiver() -> Iterator[int]:
    """The receiver's process, running while in the block: yields its port on 127.0.0.1."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.bench_webhook_receiver"], cwd=REPO, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # empty if it exited
        if not line.strip().isdigit():
            raise RuntimeError(f"the webhook receiver did not start (exit {process.poll()})")
        yield int(line)
    finally:
        process.terminate()
        process.wait(10)


if __name__ == "__main__":
    main()
