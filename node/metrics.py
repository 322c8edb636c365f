"""Prometheus metrics for nodes and gateways (``GET /metrics``, text exposition format).

Each process has its own :class:`Metrics` (its own registry, no global state):

* ``<prefix>_http_requests_total{route,method,status}`` and
  ``<prefix>_http_request_seconds{route,method}`` from an aiohttp middleware; ``route`` is the
  matched route template (``/v1/records/{record_id}``), so label values stay bounded;
* histograms the process observes itself (e.g. a node's fsync latency);
* everything else is read at scrape time from the process's own stats callbacks (queue depths,
  shard counts, peers, stream pool use, coalescing), so there is one source of truth and
  nothing to keep in sync: a callback returns ``{name: value}`` or
  ``{name: {label_value: value}}`` and each name becomes a gauge or counter family.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["Metrics", "StatFamily"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class StatFamily:
    """One metric family read at scrape time: a value, or values by one label."""

    name: str
    help: str
    read: Callable[[], float | Mapping[str, float]]
    counter: bool = False
    label: str = ""


class _StatsCollector(Collector):
    def __init__(self, prefix: str, families: list[StatFamily]) -> None:
        self._prefix = prefix
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            name = f"{self._prefix}_{family.name}"
            labels = [family.label] if family.label else []
            metric: GaugeMetricFamily | CounterMetricFamily = (
                CounterMetricFamily(name, family.help, labels=labels)
                if family.counter
                else GaugeMetricFamily(name, family.help, labels=labels)
            )
            value = family.read()
            if isinstance(value, Mapping):
                for label_value, number in sorted(value.items()):
                    metric.add_metric([label_value], float(number))
            else:
                metric.add_metric([], float(value))
            yield metric


class Metrics:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.registry = CollectorRegistry(auto_describe=False)
        self.http_requests = Counter(
            f"{prefix}_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            f"{prefix}_http_request_seconds",
            "HTTP request latency, by route template and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def histogram(self, name: str, help_text: str) -> Histogram:
        return Histogram(
            f"{self.prefix}_{name}", help_text, buckets=LATENCY_BUCKETS, registry=self.registry
        )

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(f"{self.prefix}_{name}", help_text, list(labels), registry=self.registry)

    def add_stats(self, families: list[StatFamily]) -> None:
        self.registry.register(_StatsCollector(self.prefix, families))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count and time every request; the outermost middleware, so problems count too."""
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            self.http_requests.labels(route, request.method, str(status)).inc()
            self.http_seconds.labels(route, request.method).observe(time.perf_counter() - started)

    async def handle(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.exposition())
        response.content_type = "text/plain"
        response.headers["Content-Type"] = CONTENT_TYPE
        return response
