"""Committed transfers/s through the gateway's ledger API, beside the record rate of the same run.

Starts a local cluster (5 nodes and a gateway, no chain) in ``--dir``, onboards one partner on
the log (the state machine refuses ledger operations of a partner it does not know), opens
``--accounts`` test accounts for it and funds each from the faucet, then runs three phases of
``--seconds`` each with ``--concurrency`` clients: plain records (``POST /v1/records``), single
transfers (``POST /v1/ledger/transfers``) and batches of ``--batch`` transfers
(``POST /v1/ledger/transfers/batch``). A transfer or record counts once acknowledged (201).
Writes JSON: the rates, their ratio to the record rate, and the load average before and after
(the machine may be shared: note it with every number).

    python -m tools.bench_ledger_api --seconds 10 --out ledger-api.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

from tools.client import PartnerClient
from tools.cluster_init import ClusterLayout, init_cluster, set_toml_keys
from tools.ledger_client import LedgerClient, UserWallet
from tools.local_cluster import LocalCluster
from tools.local_partners import onboard_partner

FUND_EACH = str(10**30)
RELOAD_POLLS_MAX = 120  # 0.5 s apart: the gateway reloads its keyring every few seconds


STATUSES: dict[int, int] = {}  # every answer's status, for the report


async def _phase(seconds: float, workers: int, one: Any) -> int:
    done = 0
    end = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        rng = random.Random(w)
        while time.monotonic() < end:
            done += await one(rng)

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return done


async def _run(url: str, key: str, secret: bytes, args: argparse.Namespace) -> dict[str, Any]:
    async with PartnerClient(url, key, secret, connections_max=args.concurrency * 2) as http:
        ledger = LedgerClient(http, attempts_max=30, wait_s_max=1.0)
        accounts = []
        for _ in range(RELOAD_POLLS_MAX):  # 401 until the gateway reloads its keyring
            if (await ledger.account("acct_" + "1" * 32)).status != 401:
                break
            await asyncio.sleep(0.5)
        for i in range(args.accounts):
            got = await ledger.create_account(code=1, key=f"bench-acct-{i}")
            assert got.status in (200, 201), got
            accounts.append(got.body["id"])
            funded = await ledger.faucet(got.body["id"], FUND_EACH, key=f"bench-fund-{i}")
            assert funded.status in (200, 201), funded

        async def record(rng: random.Random) -> int:
            got = await http.put_record({"type": "bench", "n": rng.randrange(1 << 30)})
            return _count(got.status, 201)

        def body(rng: random.Random) -> dict[str, Any]:
            debit, credit = rng.sample(accounts, 2)
            return LedgerClient.transfer_body(debit, credit, "1", code=1)

        async def single(rng: random.Random) -> int:
            got = await ledger.call("POST", "/v1/ledger/transfers", body(rng))
            return _count(got.status, 201)

        async def batch(rng: random.Random) -> int:
            items = [
                {"idempotency_key": secrets.token_hex(12), **body(rng)} for _ in range(args.batch)
            ]
            got = await ledger.batch(items)
            if got.status != 200:
                return _count(got.status, 201)
            return sum(_count(r["status"], 201) for r in got.body["results"])

        records = await _phase(args.seconds, args.concurrency, record)
        singles = await _phase(args.seconds, args.concurrency, single)
        batched = await _phase(args.seconds, max(1, args.concurrency // 4), batch)
    rate = {
        "records_per_s": records / args.seconds,
        "transfers_single_per_s": singles / args.seconds,
        "transfers_batched_per_s": batched / args.seconds,
    }
    base = rate["records_per_s"] or 1.0
    rate["single_vs_records"] = rate["transfers_single_per_s"] / base
    rate["batched_vs_records"] = rate["transfers_batched_per_s"] / base
    return rate


def bench_users(partner: str, users: int) -> list[tuple[str, UserWallet, dict[str, Any]]]:
    """``users`` users of ``partner``, each with their own key (the same in every run), and
    each one's ``POST /v1/wallets/links`` body."""
    made = []
    for i in range(users):
        user, user_id = UserWallet(random.Random(i).randbytes(31) + b"\x01"), f"user-{i}"
        link = user.link(partner, livemode=False, user_id=user_id, deadline=int(time.time()) + 600)
        made.append((user_id, user, link))
    return made


async def post_steps(ledger: LedgerClient, steps: list[tuple[str, dict[str, Any], str]]) -> None:
    """Set-up writes (path, body, key) in order; any refusal ends the bench."""
    for path, body, key in steps:
        got = await ledger.call("POST", path, body, key=key)
        if got.status not in (200, 201):
            raise SystemExit(f"setup: {path} answered {got.status} {got.body}")


def _count(status: int, wanted: int) -> int:
    STATUSES[status] = STATUSES.get(status, 0) + 1
    return 1 if status == wanted else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench-ledger-api", description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--accounts", type=int, default=16)
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    return run_on_local_cluster(args, _run, partner="bench", prefix="bench-ledger-api-")


RunPhases = Callable[[str, str, bytes, argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]


@contextlib.contextmanager
def local_partner_cluster(
    directory: Path,
    partner: str,
    gateway: Mapping[str, Mapping[str, object]] | None = None,
    log_level: str = "INFO",
) -> Iterator[tuple[ClusterLayout, str, bytes]]:
    """A local cluster (5 nodes and a gateway, no chain) in ``directory/cluster``, with
    ``gateway``'s tables of keys set in the gateway's config before it starts (e.g.
    ``{"webhooks": {...}}``), and ``partner`` onboarded on the log: yields the layout and the
    partner's test-mode credential (401 until the gateway's next keyring reload)."""
    layout = init_cluster(directory / "cluster", partners=(), chain="none")
    config = Path(layout.gateway_config_path)
    for table, values in (gateway or {}).items():
        config.write_text(set_toml_keys(config.read_text(), table, values))
    with LocalCluster(layout, log_level=log_level) as local:
        local.start()
        key, secret = onboard_partner(layout, partner)["test"]
        yield layout, key, secret


def write_report(report: dict[str, Any], out: Path | None) -> None:
    """Print the JSON report, and write it to ``out`` when given."""
    text = json.dumps(report, indent=2)
    if out is not None:
        out.write_text(text + "\n")
    print(text)


def run_on_local_cluster(
    args: argparse.Namespace, run: RunPhases, *, partner: str, prefix: str
) -> int:
    """Starts a local cluster (no chain) in ``args.dir`` (or a temporary directory), onboards
    ``partner`` on the log, runs ``run(gateway url, key id, secret, args)`` with its test-mode
    credential and prints (and writes to ``args.out``) the JSON report: the phases' results, the
    run's shape and the load average before and after. Shared by the API benchmarks."""
    directory = args.dir or Path(tempfile.mkdtemp(prefix=prefix))
    load_before = os.getloadavg()
    with local_partner_cluster(directory, partner) as (layout, key, secret):
        result = asyncio.run(run(layout.gateway_url, key, secret, args))
    report = {
        **result,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "batch": args.batch,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "statuses": {str(k): v for k, v in sorted(STATUSES.items())},
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
