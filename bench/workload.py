"""Kafka-broker-shaped workload for the benchmarks, as OTLP requests and as the OTel SDK's
MetricsData with the very same points (so the baseline sends identical data).

One request is one broker scrape: about 5,000 series (per-topic traffic, per-partition
offsets and ISR, request latencies per API, JVM memory and GC), 30 s apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.otlp import MetricsBuilder

TOPICS = 100
PARTITIONS = 12
REQUEST_TYPES = ("Produce", "FetchConsumer", "FetchFollower", "Metadata", "OffsetCommit", "JoinGroup",
                 "Heartbeat", "ListOffsets", "ApiVersions", "SyncGroup")
START_NS = 1_790_000_000_000_000_000
STEP_NS = 30_000_000_000

RESOURCE = {
    "service.name": "kafka", "service.instance.id": "broker-1.kafka.example.internal:9092",
    "host.name": "broker-1", "kafka.cluster.id": "lkc-7q2x9m", "kafka.broker.id": "1",
}


@dataclass(frozen=True)
class Series:
    name: str
    unit: str
    kind: str  # "sum" or "gauge"
    attrs: dict[str, Any]
    base: float
    rate: float


def series() -> list[Series]:
    out: list[Series] = []
    for t in range(TOPICS):
        topic = f"orders.events.v{t % 7}.{t:03d}"
        out.append(Series("kafka.message.count", "{message}", "sum", {"topic": topic}, 1e6 * t, 950.0 + t))
        for direction in ("in", "out"):
            out.append(Series("kafka.network.io", "By", "sum", {"topic": topic, "direction": direction},
                              1e9 * t, 4.2e5 + 10 * t))
        for kind in ("produce", "fetch"):
            out.append(Series("kafka.request.failed", "{request}", "sum", {"topic": topic, "type": kind}, t, 0.01))
        for p in range(PARTITIONS):
            attrs = {"topic": topic, "partition": p}
            out.append(Series("kafka.partition.current_offset", "{offset}", "gauge", attrs, 5e6 * t + p, 80.0))
            out.append(Series("kafka.partition.oldest_offset", "{offset}", "gauge", attrs, 1e5 * t + p, 2.0))
            out.append(Series("kafka.partition.replicas_in_sync", "{replica}", "gauge", attrs, 3, 0.0))
    for rt in REQUEST_TYPES:
        out.append(Series("kafka.request.count", "{request}", "sum", {"type": rt}, 1e7, 1200.0))
        for q in ("50p", "99p", "avg"):
            out.append(Series(f"kafka.request.time.{q}", "ms", "gauge", {"type": rt}, 2.5, 0.0))
        out.append(Series("kafka.request.time.total", "ms", "sum", {"type": rt}, 4e6, 3000.0))
    for pool in ("G1 Eden Space", "G1 Old Gen", "G1 Survivor Space", "Metaspace", "CodeHeap 'non-nmethods'"):
        for name in ("jvm.memory.used", "jvm.memory.committed", "jvm.memory.limit"):
            out.append(Series(name, "By", "gauge", {"jvm.memory.pool.name": pool, "jvm.memory.type": "heap"},
                              2.1e8, 0.0))
    for gc in ("G1 Young Generation", "G1 Old Generation"):
        out.append(Series("jvm.gc.collections.count", "{collection}", "sum", {"jvm.gc.name": gc}, 1e4, 0.3))
        out.append(Series("jvm.gc.collections.elapsed", "s", "sum", {"jvm.gc.name": gc}, 120.0, 0.01))
    out.append(Series("jvm.thread.count", "{thread}", "gauge", {}, 180, 0.0))
    out.append(Series("jvm.class.loaded", "{class}", "gauge", {}, 9000, 0.0))
    return out


def _value(s: Series, i: int) -> int | float:
    v = s.base + s.rate * i * 30
    return int(v) if s.kind == "sum" or s.unit.startswith("{") else float(v)


def otlp_requests(count: int) -> list[bytes]:
    """`count` serialized ExportMetricsServiceRequests, one per scrape."""
    all_series = series()
    out = []
    for i in range(count):
        b = MetricsBuilder(RESOURCE, "telemetry-relay/jolokia", "0.1.0")
        now = START_NS + i * STEP_NS
        metrics: dict[str, Any] = {}
        for s in all_series:
            m = metrics.get(s.name)
            if m is None:
                m = metrics[s.name] = b.sum(s.name, s.unit) if s.kind == "sum" else b.gauge(s.name, s.unit)
            b.point(m, _value(s, i), now, START_NS if s.kind == "sum" else 0, s.attrs)
        out.append(b.finish().SerializeToString())
    return out


def otlp_batches(count: int, points: int = 100) -> list[bytes]:
    """`count` ExportMetricsServiceRequests of `points` points each, walking through the broker's
    series in order (the shape of the OTel Collector's load test: 100-point batches)."""
    all_series = series()
    out = []
    for i in range(count):
        b = MetricsBuilder(RESOURCE, "telemetry-relay/bench", "0.1.0")
        metrics: dict[str, Any] = {}
        now = START_NS + i * 10_000_000
        for k in range(points):
            n = i * points + k
            s = all_series[n % len(all_series)]
            m = metrics.get(s.name)
            if m is None:
                m = metrics[s.name] = b.sum(s.name, s.unit) if s.kind == "sum" else b.gauge(s.name, s.unit)
            b.point(m, _value(s, n // len(all_series)), now, START_NS if s.kind == "sum" else 0, s.attrs)
        out.append(b.finish().SerializeToString())
    return out


def sdk_metrics_data(count: int) -> list[Any]:
    """The same points as otlp_requests(count), as the OTel SDK's MetricsData objects."""
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    all_series = series()
    resource = Resource(RESOURCE)
    scope = InstrumentationScope("telemetry-relay/jolokia", "0.1.0")
    out = []
    for i in range(count):
        now = START_NS + i * STEP_NS
        grouped: dict[str, list[Series]] = {}
        for s in all_series:
            grouped.setdefault(s.name, []).append(s)
        metrics = []
        for name, group in grouped.items():
            kind = group[0].kind
            points = [NumberDataPoint(s.attrs, START_NS if kind == "sum" else 0, now, _value(s, i)) for s in group]
            data: Any = (Sum(points, AggregationTemporality.CUMULATIVE, True) if kind == "sum" else Gauge(points))
            metrics.append(Metric(name, "", group[0].unit, data))
        out.append(MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, metrics, "")], "")]))
    return out


def points_per_request() -> int:
    return len(series())
