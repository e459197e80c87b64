"""The relay's own counters and gauges: one table, read by /metrics, /status and the self source.

Owns: SELF_METRICS, the one declaration of every self-metric (Prometheus name, OTLP name,
unit, kind, help, labels, buckets), from which the prometheus_client registry, the names the
`internal` source ships under and docs/metrics.md are all made; and the plain in-process
copy of every counter's and gauge's values, so /status reads numbers without walking the
registry. Components only increment and set.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# The *_created series double /metrics for no use here: start times travel in OTLP.
disable_created_metrics()  # type: ignore[no-untyped-call]

Kind = Literal["counter", "gauge", "histogram"]
LabelValues = tuple[str, ...]


@dataclass(frozen=True)
class MetricDef:
    """One self-metric. `attr` is its attribute on SelfMetrics; `prom_name` has no `_total` suffix."""

    attr: str
    prom_name: str
    otlp_name: str
    unit: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


# In the order /metrics lists them.
SELF_METRICS: tuple[MetricDef, ...] = (
    MetricDef("points_collected", "relay_points_collected", "relay.points.collected", "{point}", "counter",
              "Data points collected or received, by source.", ("source",)),
    MetricDef("points_spooled", "relay_points_spooled", "relay.points.spooled", "{point}", "counter",
              "Data points durably written to the spool, by signal.", ("signal",)),
    MetricDef("spool_append_errors", "relay_spool_append_errors", "relay.spool.append.errors", "{error}",
              "counter", "Spool writes that failed (data not acknowledged), by reason.", ("reason",)),
    MetricDef("spool_quarantined", "relay_spool_quarantined", "relay.spool.quarantined", "{queue}", "counter",
              "Damaged spool queues moved to the quarantine at start, by outcome (salvaged, salvage_failed).",
              ("outcome",)),
    MetricDef("points_shipped", "relay_points_shipped", "relay.points.shipped", "{point}", "counter",
              "Data points accepted by a destination.", ("destination",)),
    MetricDef("requests_shipped", "relay_requests_shipped", "relay.requests.shipped", "{request}", "counter",
              "Requests accepted by a destination.", ("destination",)),
    MetricDef("bytes_shipped", "relay_bytes_shipped", "relay.bytes.shipped", "By", "counter",
              "Compressed body bytes accepted by a destination.", ("destination",)),
    MetricDef("points_dropped", "relay_points_dropped", "relay.points.dropped", "{point}", "counter",
              "Data points that left the spool undelivered, by destination and reason "
              "(max_bytes, max_age, dead_letter).", ("destination", "reason")),
    MetricDef("entries_dropped", "relay_entries_dropped", "relay.entries.dropped", "{entry}", "counter",
              "Spool entries that left the spool undelivered, by destination and reason.",
              ("destination", "reason")),
    MetricDef("points_rejected", "relay_points_rejected", "relay.points.rejected", "{point}", "counter",
              "Data points a destination reported as rejected in an OTLP partial_success.", ("destination",)),
    MetricDef("export_retries", "relay_export_retries", "relay.export.retries", "{retry}", "counter",
              "Export attempts that will be retried, by destination and reason.", ("destination", "reason")),
    MetricDef("export_latency", "relay_export_latency_seconds", "relay.export.latency", "s", "histogram",
              "Time from sending a request to its answer.", ("destination",),
              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
    MetricDef("source_runs", "relay_source_runs", "relay.source.runs", "{run}", "counter",
              "Collection runs, by source.", ("source",)),
    MetricDef("source_errors", "relay_source_errors", "relay.source.errors", "{error}", "counter",
              "Collection runs that failed, by source.", ("source",)),
    MetricDef("spool_bytes", "relay_spool_bytes", "relay.spool.bytes", "By", "gauge", "Bytes held in the spool."),
    MetricDef("spool_entries", "relay_spool_entries", "relay.spool.entries", "{entry}", "gauge",
              "Entries held in the spool."),
    MetricDef("spool_oldest_age", "relay_spool_oldest_age_seconds", "relay.spool.oldest_age", "s", "gauge",
              "Age of the oldest entry in the spool."),
    MetricDef("backlog_bytes", "relay_backlog_bytes", "relay.destination.backlog", "By", "gauge",
              "Spooled bytes a destination has not yet accepted.", ("destination",)),
    MetricDef("process_rss", "relay_process_rss_bytes", "relay.process.rss", "By", "gauge",
              "Resident memory of the relay."),
    MetricDef("redactions", "relay_redactions", "relay.redactions", "{item}", "counter",
              "Items and attributes the redaction policy dropped, hashed, masked or merged, by destination and rule.",
              ("destination", "rule", "action")),
    MetricDef("receiver_requests", "relay_receiver_requests", "relay.receiver.requests", "{request}", "counter",
              "OTLP requests received, by signal.", ("signal",)),
    MetricDef("receiver_items", "relay_receiver_items", "relay.receiver.items", "{item}", "counter",
              "Points, log records or spans accepted by the OTLP receiver.", ("signal",)),
    MetricDef("receiver_bytes", "relay_receiver_bytes", "relay.receiver.bytes", "By", "counter",
              "OTLP request body bytes received (as sent).", ("signal",)),
    MetricDef("receiver_rejected", "relay_receiver_rejected", "relay.receiver.rejected", "{request}", "counter",
              "OTLP requests refused, by signal and reason.", ("signal", "reason")),
    MetricDef("http_refused", "relay_http_refused", "relay.http.refused", "{connection}", "counter",
              "Connections a listener (otlp, status) closed or requests it refused before any handler: reason "
              "connections (at its connection cap) or host (a Host header not its own, as DNS rebinding sends).",
              ("listener", "reason")),
)
BY_PROM_NAME: Mapping[str, MetricDef] = {d.prom_name: d for d in SELF_METRICS}


class _Mirrored:
    """A counter's or gauge's values by label values, kept beside prometheus_client's own.

    Each change goes to both under one lock, so the two never disagree, and the readers
    (value, total, by) see plain numbers without collect(). A series exists from its first
    `labels(...)` call, at 0, as it does in prometheus_client (and so in /metrics).
    """

    def __init__(self, definition: MetricDef, prom: Counter | Gauge) -> None:
        self.definition = definition
        self._prom = prom
        self._lock = threading.Lock()
        # An unlabelled metric has its one series from the start, as in prometheus_client.
        self._values: dict[LabelValues, float] = {} if definition.labels else {(): 0.0}

    def _series_for(self, values: tuple[str, ...], by_name: dict[str, str]) -> tuple[LabelValues, Any]:
        """The key of a series and its prometheus_client child, which checks the labels as /metrics will."""
        child = self._prom.labels(*values, **by_name)
        names = self.definition.labels
        key = tuple(str(by_name[n]) for n in names) if by_name else tuple(str(v) for v in values)
        with self._lock:
            self._values.setdefault(key, 0.0)
        return key, child

    def _series(self) -> list[tuple[dict[str, str], float]]:
        with self._lock:  # copied: the spool thread may add a series while the loop reads
            items = list(self._values.items())
        names = self.definition.labels
        return [(dict(zip(names, key, strict=True)), v) for key, v in items]

    def value(self, **labels: str) -> float:
        """The value of the one series with exactly these labels (0 if it was never touched)."""
        if set(labels) != set(self.definition.labels):
            raise ValueError(f"{self.definition.prom_name} has labels {self.definition.labels}, got {tuple(labels)}")
        key = tuple(labels[n] for n in self.definition.labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def total(self, **match: str) -> float:
        """The sum over the series whose labels include `match`."""
        return sum((v for labels, v in self._series() if _matches(labels, match)), 0.0)

    def by(self, *labels: str, **match: str) -> dict[LabelValues, float]:
        """Sums over the series whose labels include `match`, by the values of `labels` (in series order)."""
        out: dict[LabelValues, float] = {}
        for series, v in self._series():
            if _matches(series, match):
                key = tuple(series.get(name, "") for name in labels)
                out[key] = out.get(key, 0.0) + v
        return out

    def by_label(self, label: str, **match: str) -> dict[str, float]:
        """`by` for one label: {value of `label`: sum}, over the series whose labels include `match`."""
        return {key[0]: v for key, v in self.by(label, **match).items()}

    def remove(self, **labels: str) -> None:
        """Forget the one series with exactly these labels, here and in /metrics."""
        key = tuple(labels[n] for n in self.definition.labels)
        with self._lock:
            if self._values.pop(key, None) is not None:
                self._prom.remove(*key)

    def collect(self) -> Any:
        """prometheus_client's own samples, as /metrics exposes them (the tests hold the mirror to them)."""
        return self._prom.collect()


def _matches(labels: dict[str, str], match: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in match.items())


class SelfCounter(_Mirrored):
    """A counter: `stats.x.labels(...).inc(n)`, as with prometheus_client."""

    def __init__(self, definition: MetricDef, registry: CollectorRegistry) -> None:
        super().__init__(definition, Counter(definition.prom_name, definition.help, definition.labels,
                                             registry=registry))

    def labels(self, *values: str, **by_name: str) -> _CounterSeries:
        return _CounterSeries(self, *self._series_for(values, by_name))

    def _inc(self, key: LabelValues, child: Any, amount: float) -> None:
        with self._lock:
            child.inc(amount)  # first: it refuses a negative amount before the copy moves
            self._values[key] += amount


class _CounterSeries:
    __slots__ = ("_child", "_counter", "_key")

    def __init__(self, counter: SelfCounter, key: LabelValues, child: Any) -> None:
        self._counter, self._key, self._child = counter, key, child

    def inc(self, amount: float = 1) -> None:
        self._counter._inc(self._key, self._child, amount)


class SelfGauge(_Mirrored):
    """A gauge: `stats.x.set(v)` or `stats.x.labels(...).set(v)`, as with prometheus_client."""

    def __init__(self, definition: MetricDef, registry: CollectorRegistry) -> None:
        super().__init__(definition, Gauge(definition.prom_name, definition.help, definition.labels,
                                           registry=registry))

    def labels(self, *values: str, **by_name: str) -> _GaugeSeries:
        return _GaugeSeries(self, *self._series_for(values, by_name))

    def set(self, value: float) -> None:
        """Set the unlabelled gauge."""
        self._set((), self._prom, value)

    def _set(self, key: LabelValues, child: Any, value: float) -> None:
        with self._lock:
            child.set(value)
            self._values[key] = float(value)


class _GaugeSeries:
    __slots__ = ("_child", "_gauge", "_key")

    def __init__(self, gauge: SelfGauge, key: LabelValues, child: Any) -> None:
        self._gauge, self._key, self._child = gauge, key, child

    def set(self, value: float) -> None:
        self._gauge._set(self._key, self._child, value)


# The class each kind of table entry becomes, as the SelfMetrics annotations below name it.
_MADE_BY_KIND = {"counter": "SelfCounter", "gauge": "SelfGauge", "histogram": "Histogram"}


class SelfMetrics:
    """All self-metrics, in a registry of their own (so tests can run several relays).

    The attributes below are the table's `attr` names, typed for the callers; a check at
    import keeps the two in step.
    """

    points_collected: SelfCounter
    points_spooled: SelfCounter
    spool_append_errors: SelfCounter
    spool_quarantined: SelfCounter
    points_shipped: SelfCounter
    requests_shipped: SelfCounter
    bytes_shipped: SelfCounter
    points_dropped: SelfCounter
    entries_dropped: SelfCounter
    points_rejected: SelfCounter
    export_retries: SelfCounter
    export_latency: Histogram
    source_runs: SelfCounter
    source_errors: SelfCounter
    spool_bytes: SelfGauge
    spool_entries: SelfGauge
    spool_oldest_age: SelfGauge
    backlog_bytes: SelfGauge
    process_rss: SelfGauge
    redactions: SelfCounter
    receiver_requests: SelfCounter
    receiver_items: SelfCounter
    receiver_bytes: SelfCounter
    receiver_rejected: SelfCounter
    http_refused: SelfCounter

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        for d in SELF_METRICS:
            metric: SelfCounter | SelfGauge | Histogram
            if d.kind == "counter":
                metric = SelfCounter(d, r)
            elif d.kind == "gauge":
                metric = SelfGauge(d, r)
            else:
                metric = Histogram(d.prom_name, d.help, d.labels, buckets=d.buckets, registry=r)
            setattr(self, d.attr, metric)

    def forget_source(self, name: str) -> None:
        """Drop a source's series (a discovered one whose process is gone: see SourceRunners.retire)."""
        for counter in (self.points_collected, self.source_runs, self.source_errors):
            counter.remove(source=name)


def _check_table_matches_attributes() -> None:
    declared = {name: kind for name, kind in SelfMetrics.__annotations__.items()}
    made = {d.attr: _MADE_BY_KIND[d.kind] for d in SELF_METRICS}
    if declared != made:
        raise RuntimeError(f"SelfMetrics attributes and SELF_METRICS disagree: {declared.items() ^ made.items()}")


_check_table_matches_attributes()
