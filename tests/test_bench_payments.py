"""``baas-bench-payments``: its arithmetic (webhook lags, the targets), the webhook receiver
(its own process, signatures checked, duplicates counted), and a smoke run on a real local
cluster in a tiny configuration that checks the JSON's shape and that its counts add up -- not
the speed: benchmarks are commands that write results, not timed tests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from business.identity import eip712
from business.identity.ids import Mode
from business.payments.webhooks import signature_header
from gateway.webhook_deliverer import SIGNATURE_HEADER
from tools import bench_webhook_receiver
from tools.bench_payments import (
    TARGETS,
    Arrivals,
    PaymentLoad,
    _payments_closed,
    _payments_paced,
    main,
    payments_targets,
    webhook_lags,
)
from tools.bench_webhook_receiver import webhook_receiver
from tools.client import PartnerClient
from tools.ledger_client import LedgerClient, UserWallet
from tools.payments_client import PaymentsClient

SECRET = b"w" * 32
ALICE = UserWallet(b"\x07" * 32)
APPROVE = eip712.Approve(int(Mode.TEST), b"\x01" * 32, bytes.fromhex(ALICE.address[2:]), 2**40)
A, C = "payment.authorised", "payment.captured"


def test_webhook_lags_per_expected_event() -> None:
    acked = {(f"pay_{i}", A): 100.0 + i for i in range(100)}
    arrived = {k: t + 0.01 * (int(k[0][4:]) + 1) for k, t in acked.items()}  # 0.01 .. 1.0 s
    arrived[("pay_x", A)] = 50.0  # not an event of this phase: ignored
    lags = webhook_lags(acked, arrived)
    assert lags == {"events_expected": 100, "events_missing": 0, "p50": 0.5, "p99": 0.99,
                    "max": 1.0}  # fmt: skip
    del arrived[("pay_7", A)]
    lags = webhook_lags(acked, arrived)
    assert lags["events_missing"] == 1 and lags["p99"] == 1.0 and lags["max"] is None
    for i in range(8, 10):  # 3 of 100 missing: the p99 is one of them, not a number
        del arrived[(f"pay_{i}", A)]
    assert webhook_lags(acked, arrived)["p99"] is None
    early = webhook_lags({("pay_1", C): 10.0}, {("pay_1", C): 9.5})  # before the 201 arrived
    assert early["p50"] == 0.0
    assert webhook_lags({}, {})["p99"] is None


def _phases(**changes: Any) -> dict[str, dict[str, Any]]:
    phases: dict[str, dict[str, Any]] = {
        "records-closed": {"records_per_s": 100.0, "errors": {}},
        "payments-closed": {"payments_per_s": 45.0, "payments_vs_records": 0.45, "errors": {}},
        "records-paced": {"rate_target_per_s": 50.0, "achieved_per_s": 50.0, "errors": {}},
        "payments-paced": {
            "rate_target_per_s": 22.5, "achieved_per_s": 22.4, "errors": {},
            "authorise_p99_vs_record_p99": 1.5,
            "webhooks": {"p99": 0.8, "events_missing": 0},
        },
    }  # fmt: skip
    for path, value in changes.items():
        phase, key = path.split(":")
        phases[phase][key] = value
    return phases


def _verdicts(phases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rows = payments_targets(phases)
    assert [r["name"] for r in rows] == [t.name for t in TARGETS]
    assert all(isinstance(r["pass"], bool) and r["issue"] == 14 for r in rows)
    return {r["name"]: r for r in rows}


def test_targets_pass_fail_and_say_why_a_run_cannot_settle_them() -> None:
    ok = _verdicts(_phases())
    assert all(v["pass"] and v["conclusive"] for v in ok.values()), ok
    assert ok["webhook_lag_p99"]["measured"] == 0.8
    slow = _verdicts(_phases(**{"payments-closed:payments_vs_records": 0.39}))
    assert slow["payments_vs_records"]["pass"] is False
    assert slow["payments_vs_records"]["conclusive"] is True  # measured, and it failed
    late = _verdicts(_phases(**{"payments-paced:webhooks": {"p99": None, "events_missing": 9}}))
    lag = late["webhook_lag_p99"]
    assert lag["pass"] is False and lag["measured"] is None and "9 events" in lag["note"]
    behind = _verdicts(_phases(**{"records-paced:achieved_per_s": 40.0}))
    ratio = behind["authorise_p99_vs_record_p99"]
    assert ratio["pass"] is True and ratio["conclusive"] is False and "behind" in ratio["note"]
    errors = _verdicts(_phases(**{"payments-closed:errors": {"authorise http_503": 2}}))
    assert "had errors" in errors["payments_vs_records"]["note"]
    (none,) = [v for v in payments_targets({}) if v["name"] == "payments_vs_records"]
    assert none["pass"] is False and none["note"] == "records-closed not run"


def _event(payment: str, kind: str, sequence: int) -> str:
    return json.dumps({"id": f"evt_{sequence}", "type": kind, "sequence": sequence,
                       "data": {"object": {"id": payment}}})  # fmt: skip


async def test_the_receiver_process_notes_signed_arrivals_once() -> None:
    assert bench_webhook_receiver.SIGNATURE_HEADER == SIGNATURE_HEADER
    with webhook_receiver() as port:
        url = f"http://127.0.0.1:{port}/hooks"
        arrivals = Arrivals(port, SECRET)
        sent = time.time()
        async with aiohttp.ClientSession() as session:
            for payment, kind, secret in [
                ("pay_1", A, SECRET),
                ("pay_1", C, SECRET),
                ("pay_1", A, SECRET),  # delivered again: at least once
                ("pay_2", A, b"x" * 32),  # not ours
            ]:
                body = _event(payment, kind, 1).encode()
                header = signature_header(secret, int(time.time()), body)
                async with session.post(url, data=body, headers={SIGNATURE_HEADER: header}) as r:
                    assert r.status == 200
            await arrivals.drain(session, {("pay_1", A), ("pay_1", C)}, 5.0)
    assert set(arrivals.first) == {("pay_1", A), ("pay_1", C)}
    assert all(sent <= t <= time.time() for t in arrivals.first.values())
    assert arrivals.rows == 4 and arrivals.duplicates == 1
    assert dict(arrivals.refused) == {"signature_mismatch": 1}


async def _fake_gateway(request: web.Request) -> web.Response:
    """The Payment API's answers, without a cluster: every preview asks alice's approval,
    every authorise is 201, a capture of an odd-numbered payment is refused."""
    key = request.headers["Idempotency-Key"]
    if request.path == "/v1/payments/preview":
        required = [{"wallet": ALICE.address, "typed_data": eip712.typed_data(APPROVE, 31337)}]
        return web.json_response({"approvals_required": required})
    if request.path == "/v1/payments":
        assert (await request.json())["approvals"][0]["wallet"] == ALICE.address
        return web.json_response({"id": f"pay_{key}"}, status=201)
    if int(request.path.split("-")[1].split("/")[0]) % 2:
        return web.json_response({"code": "payment_expired"}, status=409)
    return web.json_response({"id": "pay_x"}, status=201)


async def test_the_payment_loops_count_every_step() -> None:
    app = web.Application()
    app.router.add_post("/{tail:.*}", _fake_gateway)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with PartnerClient(f"http://127.0.0.1:{server.port}", "k", b"s" * 32) as http:
            payments = PaymentsClient(LedgerClient(http, attempts_max=1))
            closed = PaymentLoad(payments, [("alice", ALICE)], "closed")
            result = await _payments_closed(closed, 3, 10)
            paced = PaymentLoad(payments, [("alice", ALICE)], "paced")
            open_loop = await _payments_paced(paced, 20.0, 0.5)
    finally:
        await server.close()
    assert (result["payments"], result["authorised"], result["captured"]) == (10, 10, 5)
    assert result["statuses"] == {"preview 200": 10, "authorise 201": 10, "capture 201": 5,
                                  "capture 409": 5}  # fmt: skip
    assert result["errors"] == {"capture payment_expired": 5}
    assert len(closed.acked) == 15  # 10 authorised, 5 captured: the events to wait for
    assert result["payments_per_s"] > 0 and result["steps_ms"]["sign"]["p50"] > 0
    assert (open_loop["payments"], open_loop["captured"]) == (10, 5)  # 20/s for 0.5 s
    assert open_loop["rate_target_per_s"] == 20.0 and open_loop["authorise_ms"]["p99"] > 0
    assert ("pay_paced-0", "payment.captured") in paced.acked


# ---------------------------------------------------------------- a smoke run on a real cluster

TINY = ["--clients", "2", "--records", "20", "--payments", "8", "--duration-s", "2",
        "--users", "2", "--drain-wait-s", "30"]  # fmt: skip


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_smoke_run_writes_one_json_whose_counts_add_up(tmp_path: Path) -> None:
    out = tmp_path / "payments.json"
    assert main([*TINY, "--dir", str(tmp_path), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == 1 and doc["tool"] == "baas-bench-payments"
    assert doc["machine"]["load_average_start"] and doc["machine"]["load_average_end"]
    phases = doc["phases"]
    assert list(phases) == ["records-closed", "payments-closed", "records-paced", "payments-paced"]
    for name, result in phases.items():
        assert result["errors"] == {}, (name, result["errors"])
    records = phases["records-closed"]
    assert records["requests"] == records["records_ok"] == 20 and records["records_per_s"] > 0
    closed, paced = phases["payments-closed"], phases["payments-paced"]
    assert closed["payments"] == closed["authorised"] == closed["captured"] == 8
    assert paced["rate_target_per_s"] == pytest.approx(closed["payments_per_s"] / 2, abs=0.01)
    assert paced["payments"] == paced["authorised"] == paced["captured"] >= 1
    for result in (closed, paced):
        n = result["payments"]
        for step in ("preview", "authorise", "capture"):
            assert result["statuses"][f"{step} {201 if step != 'preview' else 200}"] == n
        assert result["steps_ms"]["sign"]["p99"] > 0
        hooks = result["webhooks"]
        assert hooks["events_expected"] == 2 * n and hooks["events_missing"] == 0
        assert hooks["events_delivered"] == 2 * n and hooks["p99"] is not None
    expected = closed["payments_vs_records"]
    assert expected == round(closed["payments_per_s"] / records["records_per_s"], 3)
    assert paced["authorise_p99_vs_record_p99"] == round(
        paced["authorise_ms"]["p99"] / phases["records-paced"]["latency_ms"]["p99"], 3
    )
    assert doc["receiver"]["signatures_refused"] == {}
    assert doc["receiver"]["posts"] >= 2 * (closed["payments"] + paced["payments"])
    verdicts = {t["name"]: t for t in doc["targets"]}
    assert set(verdicts) == {t.name for t in TARGETS}
    assert all(isinstance(t["pass"], bool) and t["measured"] is not None for t in verdicts.values())
