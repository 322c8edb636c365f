"""Committed swaps/s through the gateway's Bridge API, beside the record rate of the same run.

Starts a local cluster (5 nodes and a gateway, no chain) in ``--dir``, onboards one partner on
the log, defines its points, sets a policy without window limits, funds its reserve from the
faucet and links ``--users`` users (each with their own key) holding points, then runs three
phases of ``--seconds`` each with ``--concurrency`` clients: plain records
(``POST /v1/records``), single swaps and batches of ``--batch`` swaps
(``POST /v1/bridge/swaps/batch``). A swap is what a partner's platform does for a user: a quote,
the preview under the swap's key, the user's EIP-712 signature, then the swap (alone, or as one
item of a batch); it counts once acknowledged (201). Writes JSON: the rates, their ratio to the
record rate, and the load average before and after (the machine may be shared: note it with
every number).

    python -m tools.bench_bridge_api --seconds 10 --out bridge-api.json
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import time
from pathlib import Path
from typing import Any

from tools.bench_ledger_api import _count, _phase, bench_users, post_steps, run_on_local_cluster
from tools.client import PartnerClient
from tools.ledger_client import BridgeClient, LedgerClient, UserWallet

PARTNER = "bench"
ASSET = "BENCH"
POLICY: dict[str, Any] = {
    "rate_num": str(10**16), "rate_den": "1", "swap_min": "1", "swap_max": str(10**12),
    "window_s": 3600, "user_window_max": "0", "partner_window_max": "0", "fee_bps": 10,
    "fee_min": "0", "enabled": True,
}  # fmt: skip
RELOAD_WAIT_S = 120.0  # the gateway reloads its keyring every few seconds; log feature 8 after


async def _setup(ledger: LedgerClient, users: int) -> list[tuple[str, UserWallet]]:
    deadline = time.monotonic() + RELOAD_WAIT_S
    while True:  # 401 until the keyring reload, 503 until the log runs feature 8
        got = await ledger.call("POST", "/v1/bridge/points", {"code": ASSET, "scale": 2}, key="d")
        if got.status in (200, 201):
            break
        if got.status not in (401, 503) or time.monotonic() > deadline:
            raise SystemExit(f"setup: define points answered {got.status} {got.body}")
        await asyncio.sleep(0.5)
    steps: list[tuple[str, dict[str, Any], str]] = [
        (f"/v1/bridge/points/{ASSET}/policy", POLICY, "policy"),
        ("/v1/bridge/reserve/top_up", {"amount": str(10**27)}, "top-up"),  # faucet_amount_max
    ]
    linked = []
    for i, (user_id, user, link) in enumerate(bench_users(PARTNER, users)):
        steps.append(("/v1/wallets/links", link, f"link-{i}"))
        issue = {"user": user_id, "amount": str(10**15)}
        steps.append((f"/v1/bridge/points/{ASSET}/issue", issue, f"issue-{i}"))
        linked.append((user_id, user))
    await post_steps(ledger, steps)
    return linked


async def _approved_item(
    bridge: BridgeClient, user_id: str, user: UserWallet
) -> dict[str, Any] | None:
    """One swap of 10 points, quoted and approved by its user: a batch item (None: refused)."""
    quote = await bridge.quote(ASSET, user_id, "in", "10")
    if quote.status != 200:
        _count(quote.status, 200)
        return None
    key = secrets.token_hex(12)
    body = {"user": user_id, "quote": quote.body}
    shown = await bridge.ledger.call("POST", "/v1/bridge/swaps/preview", body, key=key)
    if shown.status != 200:
        _count(shown.status, 200)
        return None
    return {"idempotency_key": key, **body, "approvals": user.approve(shown.body)}


async def _run(url: str, key: str, secret: bytes, args: argparse.Namespace) -> dict[str, Any]:
    async with PartnerClient(url, key, secret, connections_max=args.concurrency * 2) as http:
        ledger = LedgerClient(http, attempts_max=30, wait_s_max=1.0)
        bridge = BridgeClient(ledger)
        users = await _setup(ledger, args.users)

        async def record(rng: random.Random) -> int:
            got = await http.put_record({"type": "bench", "n": rng.randrange(1 << 30)})
            return _count(got.status, 201)

        async def single(rng: random.Random) -> int:
            user_id, user = rng.choice(users)
            quote = await bridge.quote(ASSET, user_id, "in", "10")
            if quote.status != 200:
                _count(quote.status, 200)
                return 0
            got = await bridge.swap(user, user_id, quote.body, key=secrets.token_hex(12))
            return _count(got.status, 201)

        async def batch(rng: random.Random) -> int:
            made = [await _approved_item(bridge, *rng.choice(users)) for _ in range(args.batch)]
            items = [m for m in made if m is not None]
            if not items:
                return 0
            got = await ledger.call("POST", "/v1/bridge/swaps/batch", {"swaps": items})
            if got.status != 200:
                return _count(got.status, 201)
            return sum(_count(r["status"], 201) for r in got.body["results"])

        records = await _phase(args.seconds, args.concurrency, record)
        singles = await _phase(args.seconds, args.concurrency, single)
        batched = await _phase(args.seconds, args.concurrency, batch)
    rate = {
        "records_per_s": records / args.seconds,
        "swaps_single_per_s": singles / args.seconds,
        "swaps_batched_per_s": batched / args.seconds,
    }
    base = rate["records_per_s"] or 1.0
    rate["single_vs_records"] = rate["swaps_single_per_s"] / base
    rate["batched_vs_records"] = rate["swaps_batched_per_s"] / base
    return rate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench-bridge-api", description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    return run_on_local_cluster(args, _run, partner=PARTNER, prefix="bench-bridge-api-")


if __name__ == "__main__":
    raise SystemExit(main())
