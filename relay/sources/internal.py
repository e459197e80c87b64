"""The relay's own metrics as OTLP (`relay.*`), shipped like any other source.

Owns: converting the self-metrics registry (relay.selfmetrics) to one OTLP request per run,
under the OTLP names and units of relay.selfmetrics.SELF_METRICS: counters become monotonic
cumulative sums, gauges stay gauges, histograms become OTLP histograms with de-cumulated
bucket counts. It reads the registry, not the plain copies, so it ships what /metrics shows.
"""

from __future__ import annotations

import time
from typing import Any

import psutil
from google.protobuf.message import Message

from relay import __version__
from relay.otlp import MetricsBuilder, cumulative_buckets
from relay.selfmetrics import BY_PROM_NAME, SelfMetrics
from relay.sources.base import Source

SCOPE = "telemetry-relay/self"


class InternalSource(Source):
    name = "internal"

    def __init__(self, interval: float, resource: dict[str, Any], stats: SelfMetrics) -> None:
        self.interval = interval
        self.resource = resource
        self.stats = stats
        self.process = psutil.Process()
        self.start_ns = int(self.process.create_time() * 1e9)

    async def collect(self) -> list[Message]:
        # One cheap syscall; not worth a thread hop.
        self.stats.process_rss.set(self.process.memory_info().rss)
        return [self.build()]

    def build(self) -> Message:
        b = MetricsBuilder(self.resource, SCOPE, __version__)
        now = time.time_ns()
        for family in self.stats.registry.collect():
            meta = BY_PROM_NAME.get(family.name)
            if meta is None or not family.samples:
                continue
            if family.type == "counter":
                m = b.sum(meta.otlp_name, meta.unit, meta.help)
                for s in family.samples:
                    if s.name.endswith("_total"):
                        b.point(m, int(s.value), now, self.start_ns, s.labels)
            elif family.type == "gauge":
                m = b.gauge(meta.otlp_name, meta.unit, meta.help)
                for s in family.samples:
                    b.point(m, float(s.value), now, attrs=s.labels)
            elif family.type == "histogram":
                self._histogram(b, family, meta.otlp_name, meta.unit, now)
        return b.finish()

    def _histogram(self, b: MetricsBuilder, family: Any, name: str, unit: str, now: int) -> None:
        series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k != "le"}
            key = tuple(sorted(labels.items()))
            entry = series.setdefault(key, {"labels": labels, "buckets": [], "sum": 0.0, "count": 0})
            if s.name.endswith("_bucket"):
                entry["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_sum"):
                entry["sum"] = s.value
            elif s.name.endswith("_count"):
                entry["count"] = int(s.value)
        if not series:
            return
        m = b.histogram(name, unit)
        for entry in series.values():
            bounds, counts = cumulative_buckets(entry["buckets"], entry["count"])
            b.histogram_point(m, now, self.start_ns, count=entry["count"], sum=entry["sum"], bounds=bounds,
                              bucket_counts=counts, attrs=entry["labels"])
