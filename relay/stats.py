"""The relay's own counters and gauges: one set, read by /metrics, /status and the self source.

Owns: the prometheus_client registry and every self-metric's definition, including the
OTLP name under which the `internal` source ships it. Components only increment.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# The *_created series double /metrics for no use here: start times travel in OTLP.
disable_created_metrics()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class SelfMetric:
    otlp_name: str
    unit: str


# Prometheus family name -> how the internal source names it in OTLP.
OTLP_NAMES: dict[str, SelfMetric] = {
    "relay_points_collected": SelfMetric("relay.points.collected", "{point}"),
    "relay_points_spooled": SelfMetric("relay.points.spooled", "{point}"),
    "relay_spool_append_errors": SelfMetric("relay.spool.append.errors", "{error}"),
    "relay_points_shipped": SelfMetric("relay.points.shipped", "{point}"),
    "relay_requests_shipped": SelfMetric("relay.requests.shipped", "{request}"),
    "relay_bytes_shipped": SelfMetric("relay.bytes.shipped", "By"),
    "relay_points_dropped": SelfMetric("relay.points.dropped", "{point}"),
    "relay_entries_dropped": SelfMetric("relay.entries.dropped", "{entry}"),
    "relay_points_rejected": SelfMetric("relay.points.rejected", "{point}"),
    "relay_export_retries": SelfMetric("relay.export.retries", "{retry}"),
    "relay_export_latency_seconds": SelfMetric("relay.export.latency", "s"),
    "relay_source_runs": SelfMetric("relay.source.runs", "{run}"),
    "relay_source_errors": SelfMetric("relay.source.errors", "{error}"),
    "relay_spool_bytes": SelfMetric("relay.spool.bytes", "By"),
    "relay_spool_entries": SelfMetric("relay.spool.entries", "{entry}"),
    "relay_spool_oldest_age_seconds": SelfMetric("relay.spool.oldest_age", "s"),
    "relay_backlog_bytes": SelfMetric("relay.destination.backlog", "By"),
    "relay_process_rss_bytes": SelfMetric("relay.process.rss", "By"),
    "relay_receiver_requests": SelfMetric("relay.receiver.requests", "{request}"),
    "relay_redactions": SelfMetric("relay.redactions", "{item}"),
    "relay_receiver_items": SelfMetric("relay.receiver.items", "{item}"),
    "relay_receiver_bytes": SelfMetric("relay.receiver.bytes", "By"),
    "relay_receiver_rejected": SelfMetric("relay.receiver.rejected", "{request}"),
}


class Stats:
    """All self-metrics, in a registry of their own (so tests can run several relays)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.points_collected = Counter(
            "relay_points_collected", "Data points collected or received, by source.", ["source"], registry=r
        )
        self.points_spooled = Counter(
            "relay_points_spooled", "Data points durably written to the spool, by signal.", ["signal"],
            registry=r,
        )
        self.spool_append_errors = Counter(
            "relay_spool_append_errors", "Spool writes that failed (data not acknowledged), by reason.",
            ["reason"], registry=r,
        )
        self.points_shipped = Counter(
            "relay_points_shipped", "Data points accepted by a destination.", ["destination"], registry=r
        )
        self.requests_shipped = Counter(
            "relay_requests_shipped", "Requests accepted by a destination.", ["destination"], registry=r
        )
        self.bytes_shipped = Counter(
            "relay_bytes_shipped", "Compressed body bytes accepted by a destination.", ["destination"],
            registry=r,
        )
        self.points_dropped = Counter(
            "relay_points_dropped",
            "Data points that left the spool undelivered, by destination and reason "
            "(max_bytes, max_age, dead_letter).",
            ["destination", "reason"], registry=r,
        )
        self.entries_dropped = Counter(
            "relay_entries_dropped", "Spool entries that left the spool undelivered, by destination and reason.",
            ["destination", "reason"], registry=r,
        )
        self.points_rejected = Counter(
            "relay_points_rejected",
            "Data points a destination reported as rejected in an OTLP partial_success.",
            ["destination"], registry=r,
        )
        self.export_retries = Counter(
            "relay_export_retries", "Export attempts that will be retried, by destination and reason.",
            ["destination", "reason"], registry=r,
        )
        self.export_latency = Histogram(
            "relay_export_latency_seconds", "Time from sending a request to its answer.", ["destination"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r,
        )
        self.source_runs = Counter("relay_source_runs", "Collection runs, by source.", ["source"], registry=r)
        self.source_errors = Counter(
            "relay_source_errors", "Collection runs that failed, by source.", ["source"], registry=r
        )
        self.spool_bytes = Gauge("relay_spool_bytes", "Bytes held in the spool.", registry=r)
        self.spool_entries = Gauge("relay_spool_entries", "Entries held in the spool.", registry=r)
        self.spool_oldest_age = Gauge(
            "relay_spool_oldest_age_seconds", "Age of the oldest entry in the spool.", registry=r
        )
        self.backlog_bytes = Gauge(
            "relay_backlog_bytes", "Spooled bytes a destination has not yet accepted.", ["destination"],
            registry=r,
        )
        self.process_rss = Gauge("relay_process_rss_bytes", "Resident memory of the relay.", registry=r)
        self.redactions = Counter(
            "relay_redactions",
            "Items and attributes the redaction policy dropped, hashed, masked or merged, by destination and rule.",
            ["destination", "rule", "action"], registry=r,
        )
        self.receiver_requests = Counter(
            "relay_receiver_requests", "OTLP requests received, by signal.", ["signal"], registry=r
        )
        self.receiver_items = Counter(
            "relay_receiver_items", "Points, log records or spans accepted by the OTLP receiver.", ["signal"],
            registry=r,
        )
        self.receiver_bytes = Counter(
            "relay_receiver_bytes", "OTLP request body bytes received (as sent).", ["signal"], registry=r
        )
        self.receiver_rejected = Counter(
            "relay_receiver_rejected", "OTLP requests refused, by signal and reason.", ["signal", "reason"],
            registry=r,
        )

    @staticmethod
    def total(counter: Counter, **match: str) -> float:
        """Sum of a labelled counter's children whose labels include `match`."""
        total = 0.0
        for metric in counter.collect():
            for s in metric.samples:
                if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in match.items()):
                    total += s.value
        return total

    @staticmethod
    def by_label(counter: Counter, label: str, **match: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric in counter.collect():
            for s in metric.samples:
                if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in match.items()):
                    key = s.labels.get(label, "")
                    out[key] = out.get(key, 0.0) + s.value
        return out
