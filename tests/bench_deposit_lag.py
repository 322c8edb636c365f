"""Credit lag of the deposit watcher on a real anvil with 1 s blocks (issue 15's target: p99
<= 2 s from a deposit's final confirmation to its credit decision). Prints JSON.

Run from the worktree root (anvil from ``BAAS_ANVIL`` or contracts/node_modules):
``PYTHONPATH=$PWD:$PWD/tests python tests/bench_deposit_lag.py --deposits 30``.

The final confirmation is the block ``b + confirmations - 1`` for a deposit in block ``b``; its
time is when a side thread polling ``eth_blockNumber`` every 10 ms first saw it (so the lag
includes the watcher's poll period and its reads, not anvil's mining). The credit's time is
when the watcher handed the :class:`CreditDeposit` to its sink.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import threading
import time
from typing import Any

import chains
from vaults import vault_world
from web3 import Web3

from business.identity.ids import Mode
from node.anchoring.chain import connect_web3
from node.chain.contracts import send
from node.chain.deposit_watch import DepositWatcher, Web3DepositReader
from node.chain.deposits import CreditDeposit, Cursor, Decision, DepositKey, DepositSettings
from node.chain.deposits import DepositTracker as Tracker


class Committed:
    """Stands for the replicated state: a credit counts as committed once handed over."""

    def __init__(self) -> None:
        self.keys: set[DepositKey] = set()

    def is_credited(self, key: DepositKey) -> bool:
        return key in self.keys


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with chains.running_anvil(block_time_s=1) as node:
        w3 = connect_web3(node.url)
        world = vault_world(w3)
        settings = DepositSettings(
            chain_id=int(w3.eth.chain_id),
            vault=bytes.fromhex(world.vault.address[2:]),
            mode=Mode.TEST,
            tokens={bytes.fromhex(world.token.address[2:]): 2},
            confirmations=args.confirmations,
        )
        seen: dict[int, float] = {}
        stop = threading.Event()
        spy = connect_web3(node.url)

        def watch_heads() -> None:
            while not stop.is_set():
                seen.setdefault(int(spy.eth.block_number), time.monotonic())
                time.sleep(0.01)

        spy_thread = threading.Thread(target=watch_heads, daemon=True)
        spy_thread.start()
        credited_at: dict[DepositKey, tuple[float, int]] = {}
        committed = Committed()

        async def sink(decisions: list[Decision]) -> None:
            now = time.monotonic()
            for d in decisions:
                if isinstance(d, CreditDeposit):
                    credited_at.setdefault(d.deposit.key, (now, d.deposit.block_number))
                    committed.keys.add(d.deposit.key)

        latest = w3.eth.get_block("latest")
        tracker = Tracker(settings, Cursor(int(latest["number"]), bytes(latest["hash"])), committed)
        watcher = DepositWatcher(
            tracker,
            Web3DepositReader(connect_web3(node.url), settings),  # its own connection
            sink,
            poll_interval_s=args.poll_interval_s,
            rounds_max=64,
        )
        task = asyncio.create_task(watcher.run())
        total = args.deposits * 10
        await asyncio.to_thread(
            send, world.token.functions.approve(world.vault.address, total), world.depositor
        )
        wallet = bytes.fromhex("42" * 16)
        for n in range(args.deposits):
            call = world.vault.functions.deposit(world.token.address, 10, wallet)
            # one deposit per block or two: sent without waiting, the gas fixed
            await asyncio.to_thread(
                call.transact, {"from": Web3.to_checksum_address(world.depositor), "gas": 200_000}
            )
            await asyncio.sleep(0.5 if n % 2 else 0.7)
        deadline = time.monotonic() + args.confirmations + 10
        while len(credited_at) < args.deposits and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        task.cancel()
        chain_errors = watcher.chain_errors
        retries = tracker.stats.credit_retries
        stop.set()
        lags = [
            at - seen[block + args.confirmations - 1]
            for at, block in credited_at.values()
            if block + args.confirmations - 1 in seen
        ]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {
        "chain": "anvil --block-time 1",
        "deposits": args.deposits,
        "credited": len(credited_at),
        "confirmations": args.confirmations,
        "poll_interval_s": args.poll_interval_s,
        "credit_lag_s_p50": round(p(lags, 0.5), 3),
        "credit_lag_s_p99": round(p(lags, 0.99), 3),
        "credit_lag_s_max": round(max(lags), 3),
        "chain_errors": chain_errors,
        "credit_retries": retries,
        "loadavg": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deposits", type=int, default=30)
    parser.add_argument("--confirmations", type=int, default=3)
    parser.add_argument("--poll-interval-s", type=float, default=0.25)
    print(json.dumps(asyncio.run(measure(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
