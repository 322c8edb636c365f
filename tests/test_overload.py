"""Overload at about twice capacity, on a real cluster (5 node processes + gateway).

The cluster runs with small queues so the bounds are reached quickly. The test first measures
what the cluster sustains (closed loop), then offers about twice that open-loop and checks:
admitted requests keep a bounded p99, refused ones get 429/503 with a Retry-After, memory
stays flat, nothing else fails, and every acknowledged record reads back afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tools.client import PartnerClient, Response
from tools.cluster_init import ClusterLayout, init_cluster
from tools.local_cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

GATEWAY_LIMITS = {
    "queue_records_max": 64,
    "node_batch_records_max": 64,
    "node_calls_inflight_max": 4,
    "partner_inflight_records_max": 400,
}
NODE_LIMITS = {"coordinator_queue_records_max": 128}
# The gateway sheds new writes once its node calls hold records back this long: what keeps an
# admitted request's wait bounded when the cluster's rate drops mid-run (a bound on records
# alone does not: a CI run once saw p99 6.6 s with the same record bounds).
GATEWAY_TIMEOUTS = {"queue_wait_s_max": 2.0}
# Bounded means it does not grow while the overload lasts (unbounded queues would make the
# wait grow with every second of it): the later half's p99 stays near the earlier half's, and
# everything stays well inside the request deadline (10 s). Latency is measured by this
# client, on the same saturated 2 cores, so the absolute bound is generous.
ADMITTED_P99_MAX_S = 5.0
RSS_GROWTH_MAX = 64 * 1024 * 1024


def _add_settings(path: Path, section: str, settings: dict[str, int] | dict[str, float]) -> None:
    text = path.read_text()
    lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
    if f"[{section}]\n" in text:
        path.write_text(text.replace(f"[{section}]\n", f"[{section}]\n{lines}", 1))
    else:
        path.write_text(f"{text.rstrip()}\n\n[{section}]\n{lines}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # No chain: this measures the gateway's and nodes' overload handling, and the anchoring
    # service's background work (polls, lease renewals) would add noise to its latency drift.
    layout = init_cluster(tmp_path_factory.mktemp("overload"), partners=("shop-a",), chain="none")
    root = Path(layout.directory)
    _add_settings(root / "gateway.toml", "limits", GATEWAY_LIMITS)
    _add_settings(root / "gateway.toml", "timeouts", GATEWAY_TIMEOUTS)
    for node in layout.nodes:
        _add_settings(root / node.name / "node.toml", "limits", NODE_LIMITS)
    local = LocalCluster(layout)
    local.start()
    try:
        yield local
    finally:
        local.stop()


def _client(layout: ClusterLayout) -> PartnerClient:
    credentials = layout.partners["shop-a"]
    return PartnerClient(
        layout.gateway_url,
        credentials["api_key"],
        bytes.fromhex(credentials["secret_hex"]),
        connections_max=1024,
    )


def _rss(cluster: LocalCluster) -> dict[str, int]:
    names = [n.name for n in cluster.layout.nodes] + ["gateway"]
    return {name: psutil.Process(cluster.pid(name)).memory_info().rss for name in names}


async def _closed_loop_rate(client: PartnerClient, seconds: float, workers: int) -> float:
    done = 0
    end = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        while time.monotonic() < end:
            response = await client.put_record({"type": "warmup", "worker": w, "n": done})
            if response.status in (429, 503):  # saturated: that is what we are measuring
                await asyncio.sleep(0.01)
                continue
            assert response.status == 201, response
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    return done / (time.monotonic() - started)


async def test_twice_capacity_is_refused_with_retry_after_and_loses_nothing(
    cluster: LocalCluster,
) -> None:
    async with _client(cluster.layout) as client:
        # Enough concurrent clients to load it well (32 mostly measure latency; with hundreds
        # the open-loop client itself cannot send twice that rate from one process). On a
        # loaded box (load 10-15) a closed loop of 64 measured about half of what the open
        # loop then got through, and twice that was refused nothing: run it on a quiet box.
        capacity = await _closed_loop_rate(client, 3.0, 64)
        rss_before = _rss(cluster)
        rate = 2 * capacity
        duration_s = 6.0
        admitted: list[tuple[str, int, float]] = []  # record id, seq, latency
        sent_at: list[float] = []
        refused: list[Response] = []
        other: Counter[int] = Counter()

        async def one(seq: int) -> None:
            started = time.monotonic()
            response = await client.put_record({"type": "overload", "seq": seq})
            latency = time.monotonic() - started
            if response.status == 201:
                admitted.append((response.body["record_id"], seq, latency))
                sent_at.append(started)
            elif response.status in (429, 503):
                refused.append(response)
            else:
                other[response.status] += 1

        tasks: list[asyncio.Task[None]] = []
        start = time.monotonic()
        seq = 0
        while (elapsed := time.monotonic() - start) < duration_s:
            due = int(elapsed * rate)  # open loop: send on schedule, whatever the answers
            while seq < due:
                tasks.append(asyncio.create_task(one(seq)))
                seq += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
        rss_after = _rss(cluster)

        latencies = sorted(latency for _, _, latency in admitted)
        assert latencies, f"nothing admitted at {rate:.0f}/s offered ({capacity:.0f}/s capacity)"
        p99 = latencies[int(len(latencies) * 0.99)]
        middle = start + duration_s / 2
        halves = [
            sorted(
                lat
                for (_, _, lat), at in zip(admitted, sent_at, strict=True)
                if early == (at < middle)
            )
            for early in (True, False)
        ]
        first_p99, second_p99 = (h[int(len(h) * 0.99)] if h else 0.0 for h in halves)
        # Printed before the checks, so a failed run says what it measured.
        print(
            f"capacity {capacity:.0f}/s, offered {rate:.0f}/s: admitted {len(admitted)}, "
            f"refused {len(refused)}, admitted p50 {latencies[len(latencies) // 2] * 1000:.0f} ms "
            f"p99 {p99 * 1000:.0f} ms (halves {first_p99 * 1000:.0f} / {second_p99 * 1000:.0f} ms)"
        )
        assert not other, f"unexpected statuses: {dict(other)}"
        assert refused, f"no refusals at {rate:.0f}/s offered ({capacity:.0f}/s capacity)"
        assert len(admitted) > capacity * duration_s * 0.3  # still serving while overloaded
        for response in refused:
            retry_after = int(response.headers["Retry-After"])
            assert 1 <= retry_after <= 30
            assert response.body["code"] in {
                "overloaded",
                "cluster_overloaded",
                "too_many_requests",
            }
        assert p99 <= ADMITTED_P99_MAX_S, f"admitted p99 {p99:.3f} s"
        assert second_p99 <= 2 * first_p99 + 0.5, (first_p99, second_p99)
        for name, before in rss_before.items():
            assert rss_after[name] - before < RSS_GROWTH_MAX, (name, before, rss_after[name])

        # Nothing acknowledged is lost: every admitted record reads back, identical.
        async def check(record_id: str, seq: int) -> None:
            response = await client.get_record(record_id)
            assert response.status == 200, response
            assert response.body["record"] == {"type": "overload", "seq": seq}

        for start_at in range(0, len(admitted), 32):  # within the small queue
            chunk = admitted[start_at : start_at + 32]
            await asyncio.gather(*(check(rid, s) for rid, s, _ in chunk))
