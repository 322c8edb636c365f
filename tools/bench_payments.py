"""``baas-bench-payments``: payments through the gateway's Payment API and their webhooks,
beside the committed single-record rate of ``baas-bench`` in the same run (issue 14's
benchmark). Writes one JSON file.

Starts a local cluster (5 nodes and a gateway, no chain) whose gateway delivers webhooks
(``[webhooks] deliver = true``, loopback on its allow-list), onboards one partner on the log,
funds a float account from the faucet, links ``--users`` users (each with their own key) and
credits their wallets, and registers a webhook endpoint (``payment.authorised``,
``payment.captured``) at a receiver in its own process that notes each event's arrival time.
Then, in order:

1. ``records-closed``: ``--records`` single records, ``--clients`` concurrent, closed loop
   (``baas-bench``'s single-write worker, :mod:`tools.bench_load`);
2. ``payments-closed``: ``--payments`` payments, ``--clients`` concurrent, closed loop, each as
   a partner's platform does it: preview, the user's EIP-712 signature, authorise
   (``POST /v1/payments``), capture in full; one per request. A payment counts once captured;
   the webhooks are then drained (every event in, or ``--drain-wait-s``);
3. ``records-paced``: an open loop at half the records-closed rate for ``--duration-s``
   (``baas-bench``'s paced-write worker: latency from the scheduled send);
4. ``payments-paced``: an open loop at half the payments-closed rate for ``--duration-s``; the
   authorise latency counts from the scheduled time to the 201 (preview, signature and
   authorise: what the partner waits for; ``steps_ms.authorise`` is the request alone); then
   the capture; then the webhooks are drained. Each event's lag is its arrival at the
   receiver (:mod:`tools.bench_webhook_receiver`, its own process) minus the client's receipt
   of the 201 of the step that caused it.

The ``targets`` block judges issue 14's targets (payments captured >= 0.4x the record rate;
authorise p99 at half the sustained rate <= 2x the record p99 at half its rate; webhook lag
p99 <= 2 s at half the sustained payment rate). Everything runs on one machine; the JSON holds
the load average before and after (note it with every number).

    baas-bench-payments --out payments.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from business.payments.webhooks import WebhookConfig, verify_signature
from node.errors import BaasError
from tools.bench_ledger_api import bench_users, local_partner_cluster, post_steps, write_report
from tools.bench_load import (
    TRANSPORT_ERRORS,
    Recorder,
    WorkerResult,
    WorkerSpec,
    closed_loop,
    run_paced,
    run_worker_async,
)
from tools.bench_report import machine_info
from tools.bench_stats import Target, latency_summary_ms, percentile, verdict
from tools.bench_webhook_receiver import ARRIVALS_PAGE_MAX, webhook_receiver
from tools.client import PartnerClient, Response
from tools.ledger_client import LedgerClient, UserWallet
from tools.payments_client import PaymentsClient

__all__ = ["TARGETS", "main", "payments_targets", "webhook_lags"]

FORMAT_VERSION = 1
PARTNER = "bench"
REPO = Path(__file__).resolve().parent.parent
EVENTS = ("payment.authorised", "payment.captured")
AMOUNT = "1000000"  # each payment, in BAAS's smallest unit; captured in full
FLOAT_FUNDS = str(10**27)  # the faucet's amount_max
USER_FUNDS = str(10**24)
SETUP_WAIT_S = 120.0  # 401 until the gateway reloads its keyring, 503 until the log runs ledger
START_DELAY_S = 0.05
DRAIN_POLL_S = 0.2
ACHIEVED_RATE_MIN_FRACTION = 0.95  # below, an open loop measured a queue, not the rate
WEBHOOKS = {
    "deliver": True,
    "data_dir": "gateway-webhooks",
    "allow_hosts": ["127.0.0.1"],  # the receiver; every other [webhooks] key at its default
}
GATEWAY = {"webhooks": WEBHOOKS}  # the cluster logs at WARNING, as baas-bench's does

TARGETS = (
    Target(
        "payments_vs_records", "payments-closed", "payments_vs_records", ">=", 0.4, "x",
        "payments captured per second (authorise + capture, one per request, closed loop) over "
        "the committed single-record rate of the same run", issue=14,
    ),
    Target(
        "authorise_p99_vs_record_p99", "payments-paced", "authorise_p99_vs_record_p99", "<=",
        2.0, "x",
        "authorise p99 at half the sustained payment rate over the record p99 at half the "
        "record rate", issue=14,
    ),
    Target(
        "webhook_lag_p99", "payments-paced", "webhooks.p99", "<=", 2.0, "s",
        "webhook delivery lag p99 (arrival at the receiver after the acknowledgement of the "
        "step that caused the event) at half the sustained payment rate", issue=14,
    ),
)  # fmt: skip


# ---------------------------------------------------------------- the pure arithmetic


def webhook_lags(
    acked: dict[tuple[str, str], float], arrived: dict[tuple[str, str], float]
) -> dict[str, Any]:
    """Lag per expected event: ``acked`` maps (payment id, event type) to when the client got
    the step's 201, ``arrived`` to the event's first arrival. An event that never arrived
    counts as infinitely late, so a p99 over too many missing events is None; one that arrived
    before its 201 reached the client counts 0."""
    lags = sorted(
        max(0.0, arrived[k] - t) if k in arrived else float("inf") for k, t in acked.items()
    )

    def seconds(q: float) -> float | None:
        value = percentile(lags, q)
        return None if value is None or value == float("inf") else round(value, 4)

    return {
        "events_expected": len(acked),
        "events_missing": sum(1 for k in acked if k not in arrived),
        "p50": seconds(50),
        "p99": seconds(99),
        "max": seconds(100),
    }


def rate_per_s(count: int, start_s: float, end_s: float) -> float:
    return round(count / max(end_s - start_s, 1e-6), 2)


def payments_targets(phases: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per target of issue 14 (``pass`` always a bool); a note says why a run
    cannot settle one (errors, or an open loop that fell behind its rate)."""
    rows = []
    for target in TARGETS:
        result = phases.get(target.phase, {})
        value: Any = result
        for part in target.metric.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        measured = float(value) if isinstance(value, int | float) else None
        rows.append(verdict(target, measured, _target_note(target, phases)))
    return rows


# The phases whose errors, or an open loop's falling behind, keep a target from being settled.
_JUDGED_PHASES = {
    "payments_vs_records": ("records-closed", "payments-closed"),
    "authorise_p99_vs_record_p99": ("records-paced", "payments-paced"),
    "webhook_lag_p99": ("payments-paced",),
}


def _target_note(target: Target, phases: dict[str, dict[str, Any]]) -> str | None:
    for name in _JUDGED_PHASES[target.name]:
        result = phases.get(name)
        if result is None:
            return f"{name} not run"
        if result.get("errors"):
            return f"{name} had errors"
        offered = result.get("rate_target_per_s")
        if offered and result["achieved_per_s"] < ACHIEVED_RATE_MIN_FRACTION * offered:
            return f"{name} fell behind its rate ({result['achieved_per_s']} of {offered}/s)"
    missing = phases[target.phase].get("webhooks", {}).get("events_missing")
    if target.name == "webhook_lag_p99" and missing:
        return f"{missing} events not delivered within the drain wait"
    return None


# ---------------------------------------------------------------- the webhook receiver


@dataclass(slots=True)
class Arrivals:
    """The receiver's rows read so far (:mod:`tools.bench_webhook_receiver`), each signature
    checked: the first arrival per (payment id, event type)."""

    port: int
    secret: bytes
    first: dict[tuple[str, str], float] = field(default_factory=dict)
    rows: int = 0
    duplicates: int = 0
    refused: Counter[str] = field(default_factory=Counter)

    async def read(self, session: aiohttp.ClientSession) -> None:
        while True:
            url = f"http://127.0.0.1:{self.port}/arrivals?start={self.rows}"
            async with session.get(url) as response:
                page = await response.json()
            for arrived_s, header, body in page:
                self._note(float(arrived_s), header, body)
            self.rows += len(page)
            if len(page) < ARRIVALS_PAGE_MAX:
                return

    def _note(self, arrived_s: float, header: str, body: str) -> None:
        try:
            verify_signature([self.secret], header, body.encode(), int(arrived_s), WebhookConfig())
        except BaasError as exc:
            self.refused[exc.code] += 1
            return
        event = json.loads(body)
        key = (str(event["data"]["object"]["id"]), str(event["type"]))
        if key in self.first:
            self.duplicates += 1  # at least once: receivers deduplicate on the event id
        else:
            self.first[key] = arrived_s

    async def drain(
        self, session: aiohttp.ClientSession, expected: set[tuple[str, str]], wait_s: float
    ) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            await self.read(session)
            if expected <= self.first.keys() or time.monotonic() > deadline:
                return
            await asyncio.sleep(DRAIN_POLL_S)


# ---------------------------------------------------------------- set-up


async def _until_served(ledger: LedgerClient) -> str:
    """The partner's float account: 401 until the gateway reloads its keyring, 503 until the
    log runs the ledger."""
    deadline = time.monotonic() + SETUP_WAIT_S
    while True:
        got = await ledger.create_account(code=1, key="bench-float")
        if got.status in (200, 201):
            return str(got.body["id"])
        if got.status not in (401, 503) or time.monotonic() > deadline:
            raise SystemExit(f"setup: the float account answered {got.status} {got.body}")
        await asyncio.sleep(0.5)


async def _setup(ledger: LedgerClient, users: int) -> list[tuple[str, UserWallet]]:
    account = await _until_served(ledger)
    steps: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/test/faucet", {"account": account, "amount": FLOAT_FUNDS}, "bench-fund"),
    ]
    linked = []
    for i, (user_id, user, link) in enumerate(bench_users(PARTNER, users)):
        steps.append(("/v1/wallets/links", link, f"link-{i}"))
        credit = {"debit_account": account, "credit_user": user_id, "amount": USER_FUNDS,
                  "code": 4}  # fmt: skip
        steps.append(("/v1/ledger/transfers", credit, f"credit-{i}"))
        linked.append((user_id, user))
    await post_steps(ledger, steps)
    return linked


async def _subscribe(payments: PaymentsClient, port: int) -> bytes:
    """The receiver's endpoint, known to the delivering gateway: its signing secret."""
    made = await payments.add_webhook_endpoint(f"http://127.0.0.1:{port}/hooks", list(EVENTS))
    if made.status != 201:
        raise SystemExit(f"setup: the webhook endpoint answered {made.status} {made.body}")
    deadline = time.monotonic() + SETUP_WAIT_S
    while True:  # the deliverer matches events to the endpoints its keyring holds
        listed = await payments.webhook_endpoints()
        if listed.status == 200 and made.body["id"] in {e["id"] for e in listed.body["data"]}:
            return bytes.fromhex(str(made.body["secret"]).removeprefix("whsec_"))
        if time.monotonic() > deadline:
            raise SystemExit("setup: the gateway never loaded the webhook endpoint")
        await asyncio.sleep(0.5)


# ---------------------------------------------------------------- one payment


@dataclass(slots=True)
class PaymentLoad:
    """What the payment phases send and note: per-step latencies, statuses, and when each
    step's 201 reached the client (for the webhook lag)."""

    payments: PaymentsClient
    users: list[tuple[str, UserWallet]]
    run: str  # the phase's name: its payments' keys
    steps_s: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    acked: dict[tuple[str, str], float] = field(default_factory=dict)
    captured: int = 0
    ended_s: float = 0.0  # when the last payment's last step ended

    def note(self, step: str, started: float, answer: Response, wanted: int) -> bool:
        self.steps_s.setdefault(step, []).append(time.perf_counter() - started)
        self.statuses[f"{step} {answer.status}"] += 1
        if answer.status == wanted:
            return True
        body = answer.body if isinstance(answer.body, dict) else {}
        self.errors[f"{step} {body.get('code') or answer.status}"] += 1
        return False

    async def one(self, index: int, due: float, rec: Recorder) -> None:
        """Preview, sign, authorise (``rec`` notes its latency from ``due``), capture."""
        try:
            await self._steps(index, due, rec)
        except TRANSPORT_ERRORS as exc:
            self.errors[type(exc).__name__] += 1
            rec.done(due, 0, 1)
        self.ended_s = max(self.ended_s, time.time())

    async def _steps(self, index: int, due: float, rec: Recorder) -> None:
        user_id, user = self.users[index % len(self.users)]
        key, body = f"{self.run}-{index}", {"user": user_id, "amount": AMOUNT}
        started = time.perf_counter()
        shown = await self.payments.preview(body, key=key)
        if not self.note("preview", started, shown, 200):
            rec.done(due, 0, 1)
            return
        started = time.perf_counter()
        approvals = user.approve(shown.body)
        self.steps_s.setdefault("sign", []).append(time.perf_counter() - started)
        started = time.perf_counter()
        paid = await self.payments.authorise_approved(body, approvals, key=key)
        ok = self.note("authorise", started, paid, 201)
        rec.done(due, int(ok), 1)
        if not ok:
            return
        payment = str(paid.body["id"])
        self.acked[(payment, "payment.authorised")] = time.time()
        started = time.perf_counter()
        got = await self.payments.capture(payment, AMOUNT, key=f"{key}-capture")
        if self.note("capture", started, got, 201):
            self.acked[(payment, "payment.captured")] = time.time()
            self.captured += 1


# ---------------------------------------------------------------- the phases


def _spec(url: str, key: str, secret: bytes, phase: str, **shape: Any) -> WorkerSpec:
    return WorkerSpec(phase, url, key, secret.hex(), time.time() + START_DELAY_S, **shape)


def _records_summary(result: WorkerResult, spec: WorkerSpec) -> dict[str, Any]:
    ok = sum(row[2] for row in result.completions)
    end = max((row[0] for row in result.completions), default=spec.start_at_s)
    summary = {
        "requests": len(result.completions),
        "records_ok": ok,
        "records_per_s": rate_per_s(ok, spec.start_at_s, end),
        "latency_ms": latency_summary_ms([row[1] for row in result.completions]),
        "errors": dict(sorted(result.errors.items())),
    }
    if spec.rate_per_s:
        summary["rate_target_per_s"] = round(spec.rate_per_s, 2)
        summary["achieved_per_s"] = rate_per_s(ok, spec.start_at_s, end)
        summary["send_lag_ms"] = latency_summary_ms(result.send_lag_s)
    return summary


async def _records(url: str, key: str, secret: bytes, **shape: Any) -> dict[str, Any]:
    phase = "paced-write" if "rate_per_s" in shape else "single-write"
    spec = _spec(url, key, secret, phase, **shape)
    return _records_summary(await run_worker_async(spec, lambda n: None), spec)


def _payments_summary(load: PaymentLoad, rec: Recorder, start_s: float) -> dict[str, Any]:
    rows = rec.result.completions
    end = max(load.ended_s, start_s)  # the last capture, not the last authorise
    authorised = sum(row[2] for row in rows)
    return {
        "payments": len(rows),
        "authorised": authorised,
        "captured": load.captured,
        "authorised_per_s": rate_per_s(authorised, start_s, end),
        "payments_per_s": rate_per_s(load.captured, start_s, end),
        "authorise_ms": latency_summary_ms([row[1] for row in rows]),
        "steps_ms": {step: latency_summary_ms(v) for step, v in sorted(load.steps_s.items())},
        "statuses": dict(sorted(load.statuses.items())),
        "errors": dict(sorted(load.errors.items())),
    }


async def _payments_closed(load: PaymentLoad, clients: int, count: int) -> dict[str, Any]:
    rec = Recorder(0, lambda n: None)
    spec = WorkerSpec("payments-closed", "", "", "", time.time() + START_DELAY_S)

    async def send(index: int) -> None:
        await load.one(index, time.perf_counter(), rec)

    await closed_loop(spec, send, clients, count)
    result = _payments_summary(load, rec, spec.start_at_s)
    result["authorise_ms"] = result["steps_ms"].get("authorise")  # closed: from its send
    return result


async def _payments_paced(load: PaymentLoad, rate: float, duration_s: float) -> dict[str, Any]:
    rec = Recorder(0, lambda n: None)
    spec = WorkerSpec(
        "payments-paced", "", "", "", time.time() + START_DELAY_S,
        rate_per_s=rate, duration_s=duration_s,
    )  # fmt: skip

    async def send_one(index: int, due: float) -> None:
        await load.one(index, due, rec)

    await run_paced(spec, rec, send_one)
    result = _payments_summary(load, rec, spec.start_at_s)
    result["rate_target_per_s"] = round(rate, 2)
    result["achieved_per_s"] = result["authorised_per_s"]
    result["send_lag_ms"] = latency_summary_ms(rec.result.send_lag_s)
    return result


def _webhooks(load: PaymentLoad, arrivals: Arrivals, start_s: float) -> dict[str, Any]:
    """The webhook figures of one payment phase: its events' lags and their delivery rate."""
    acked = load.acked
    firsts = [arrivals.first[k] for k in acked if k in arrivals.first]
    return {
        **webhook_lags(acked, arrivals.first),
        "events_delivered": len(firsts),
        "events_per_s": rate_per_s(len(firsts), start_s, max(firsts, default=start_s)),
    }


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else round(num / den, 3)


async def _phases(
    url: str, key: str, secret: bytes, args: argparse.Namespace, port: int
) -> dict[str, Any]:
    async with PartnerClient(url, key, secret, connections_max=args.clients * 2) as http:
        setup = LedgerClient(http, attempts_max=30, wait_s_max=1.0)
        users = await _setup(setup, args.users)
        arrivals = Arrivals(port, await _subscribe(PaymentsClient(setup), port))
        # Measured steps are sent once: an answer that says "try again" counts as an error.
        payments = PaymentsClient(LedgerClient(http, attempts_max=1))
        phases: dict[str, dict[str, Any]] = {}
        async with aiohttp.ClientSession() as session:
            records = await _records(
                url, key, secret, concurrency=args.clients, requests=args.records
            )
            phases["records-closed"] = records
            load = PaymentLoad(payments, users, "closed")
            start = time.time()
            closed = await _payments_closed(load, args.clients, args.payments)
            await arrivals.drain(session, set(load.acked), args.drain_wait_s)
            closed["webhooks"] = _webhooks(load, arrivals, start)
            closed["payments_vs_records"] = _ratio(
                closed["payments_per_s"], records["records_per_s"]
            )
            phases["payments-closed"] = closed
            if records["records_per_s"] > 0:
                phases["records-paced"] = await _records(
                    url, key, secret, rate_per_s=records["records_per_s"] / 2,
                    duration_s=args.duration_s,
                )  # fmt: skip
            if closed["payments_per_s"] > 0:
                load = PaymentLoad(payments, users, "paced")
                start = time.time()
                rate = closed["payments_per_s"] / 2
                paced = await _payments_paced(load, rate, args.duration_s)
                await arrivals.drain(session, set(load.acked), args.drain_wait_s)
                paced["webhooks"] = _webhooks(load, arrivals, start)
                record_p99 = phases.get("records-paced", {}).get("latency_ms", {}).get("p99")
                paced["authorise_p99_vs_record_p99"] = _ratio(
                    paced["authorise_ms"]["p99"], record_p99
                )
                # For comparison only: POST /v1/payments alone, from when it was sent.
                paced["authorise_request_p99_vs_record_p99"] = _ratio(
                    paced["steps_ms"].get("authorise", {}).get("p99"), record_p99
                )
                phases["payments-paced"] = paced
    receiver = {
        "posts": arrivals.rows,
        "duplicates": arrivals.duplicates,
        "signatures_refused": dict(arrivals.refused),
    }
    return {"phases": phases, "receiver": receiver}


def _report(
    args: argparse.Namespace, machine: dict[str, Any], measured: dict[str, Any]
) -> dict[str, Any]:
    names = ("clients", "records", "payments", "duration_s", "users", "drain_wait_s")
    return {
        "format": FORMAT_VERSION,
        "tool": "baas-bench-payments",
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "parameters": {name: getattr(args, name) for name in names},
        "webhooks_config": WEBHOOKS,
        **measured,
        "targets": payments_targets(measured["phases"]),
        "notes": [
            "Everything runs on one machine; other work on it (see load_average_*) skews results.",
            "A payment is four requests: preview, the user's EIP-712 signature (client CPU), "
            "authorise, capture; each measured step is sent once (no retry).",
            "The gateway under load also delivers the webhooks (one gateway, as deployed).",
            "Open-loop latencies count from the scheduled send (no coordinated omission); the "
            "paced authorise counts preview + signature + authorise.",
        ],
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="baas-bench-payments",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--clients", type=int, default=32, help="closed-loop concurrency")
    p.add_argument("--records", type=int, default=3000, help="records in records-closed")
    p.add_argument("--payments", type=int, default=1000, help="payments in payments-closed")
    p.add_argument("--duration-s", type=float, default=20.0, help="each open loop's length")
    p.add_argument("--users", type=int, default=16, help="linked users paying")
    p.add_argument("--drain-wait-s", type=float, default=60.0, help="wait for webhooks")
    p.add_argument("--dir", type=Path, default=None, help="where the cluster goes")
    p.add_argument("--out", type=Path, default=None, help="the JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("clients", "records", "payments", "duration_s", "users", "drain_wait_s"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive")
    directory = args.dir or Path(tempfile.mkdtemp(prefix="bench-payments-"))
    machine = machine_info(REPO)
    with (
        webhook_receiver() as port,
        local_partner_cluster(directory, PARTNER, GATEWAY, "WARNING") as (layout, key, secret),
    ):
        phases = asyncio.run(_phases(layout.gateway_url, key, secret, args, port))
    report = _report(args, machine, phases)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
