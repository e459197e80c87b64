"""The relay's own metrics as OTLP (`relay.*`), shipped like any other source.

Owns: converting the self-metrics registry (relay.stats) to one OTLP request per run:
counters become monotonic cumulative sums, gauges stay gauges, histograms become
OTLP histograms with de-cumulated bucket counts.
"""

from __future__ import annotations

import time
from typing import Any

import psutil
from google.protobuf.message import Message

from relay import __version__
from relay.otlp import AGGREGATION_TEMPORALITY_CUMULATIVE, MetricsBuilder, set_attributes
from relay.sources.base import Source
from relay.stats import OTLP_NAMES, Stats

SCOPE = "telemetry-relay/self"


class InternalSource(Source):
    name = "internal"

    def __init__(self, interval: float, resource: dict[str, Any], stats: Stats) -> None:
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
            meta = OTLP_NAMES.get(family.name)
            if meta is None or not family.samples:
                continue
            if family.type == "counter":
                m = b.sum(meta.otlp_name, meta.unit, family.documentation)
                for s in family.samples:
                    if s.name.endswith("_total"):
                        b.point(m, int(s.value), now, self.start_ns, s.labels)
            elif family.type == "gauge":
                m = b.gauge(meta.otlp_name, meta.unit, family.documentation)
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
        m = b.request.resource_metrics[0].scope_metrics[0].metrics.add()
        m.name, m.unit = name, unit
        m.histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
        for entry in series.values():
            dp = m.histogram.data_points.add()
            dp.start_time_unix_nano, dp.time_unix_nano = self.start_ns, now
            dp.count, dp.sum = entry["count"], entry["sum"]
            buckets = sorted(entry["buckets"])
            prev = 0.0
            for le, cumulative in buckets:
                if le != float("inf"):
                    dp.explicit_bounds.append(le)
                dp.bucket_counts.append(int(cumulative - prev))
                prev = cumulative
            set_attributes(dp.attributes, entry["labels"])
            b.points += 1
