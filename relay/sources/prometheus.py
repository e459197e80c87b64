"""Prometheus source: scrapes text exposition or OpenMetrics (the JMX exporter's /metrics, say).

Owns: the scrape, parsing with prometheus_client's own parsers, and the mapping to OTLP as
the OpenTelemetry Prometheus compatibility spec says: counter -> monotonic cumulative sum,
gauge and unknown -> gauge, histogram -> histogram with de-cumulated buckets, summary ->
summary, start time from `_created` where present (else the first scrape of the target),
service.name / service.instance.id from the target. Series named in the mapping rules
become the same OTLP metrics the Jolokia source produces; the rest pass through.
Malformed exposition fails that scrape with a clear error; the relay keeps running.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from google.protobuf.message import Message
from prometheus_client import parser as text_parser
from prometheus_client.openmetrics import parser as om_parser

from relay import __version__
from relay.config import PrometheusSettings, ScrapeTargetSettings
from relay.mapping import Mappings
from relay.otlp import MetricsBuilder, cumulative_buckets
from relay.sources.base import ScrapeSource

SCOPE = "telemetry-relay/prometheus"
# The text format first: prometheus_client's text parser takes what exporters really emit.
ACCEPT = "text/plain;version=0.0.4;q=1.0,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1"


class ExpositionError(Exception):
    """The scraped text is not valid exposition format."""


@dataclass
class ScrapeReading:
    request: Message
    points: int
    families: int
    mapped_samples: int


def _ts_ns(ts: Any, default: int) -> int:
    if ts is None:
        return default
    # OpenMetrics gives a Timestamp (sec, nsec); the text parser float seconds.
    ns = int(ts.sec) * 1_000_000_000 + int(ts.nsec) if hasattr(ts, "sec") else int(float(ts) * 1e9)
    # A timestamp OTLP cannot carry (before 1970 or past 2554) is replaced by the scrape time.
    return ns if 0 <= ns < 2**64 else default


def parse(text: str, openmetrics: bool) -> list[Any]:
    parser = om_parser if openmetrics else text_parser
    try:
        return list(parser.text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError, KeyError) as e:
        fmt = "OpenMetrics" if openmetrics else "Prometheus text"
        raise ExpositionError(f"malformed {fmt} exposition: {e}") from None


def _labels_key(labels: dict[str, str], drop: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != drop))


def map_exposition(
    text: str, openmetrics: bool, mappings: Mappings | None, resource: dict[str, Any],
    now_ns: int | None = None, start_ns: int = 0, passthrough: bool = True,
) -> ScrapeReading:
    families = parse(text, openmetrics)
    now_ns = now_ns or time.time_ns()
    b = MetricsBuilder(resource, SCOPE, __version__)
    rules = mappings.prometheus if mappings else {}
    mapped = 0
    for fam in families:
        rest = []
        for s in fam.samples:
            compiled = rules.get(s.name)
            if not compiled:
                rest.append(s)
                continue
            used = False
            for rule in compiled:
                if any(s.labels.get(k) != v for k, v in rule.match):
                    continue
                ctx = {"labels": s.labels}
                attrs = {}
                for key, expr in rule.attrs:
                    v = expr(ctx)
                    if v is not None:
                        attrs[key] = v
                m = b.metric(rule.metric, rule.type, rule.unit, rule.desc)
                b.point(m, float(s.value) * rule.scale, _ts_ns(s.timestamp, now_ns),
                        start_ns if rule.type != "gauge" else 0, attrs)
                used = True
            if used:
                mapped += 1
            else:
                rest.append(s)
        if rest and passthrough:
            _passthrough(b, fam, rest, now_ns, start_ns)
    return ScrapeReading(b.finish(), b.points, len(families), mapped)


def _passthrough(b: MetricsBuilder, fam: Any, samples: list[Any], now_ns: int, start_ns: int) -> None:
    kind = fam.type
    unit = fam.unit or ""
    if kind == "counter":
        created = {_labels_key(s.labels, ""): s.value for s in samples if s.name.endswith("_created")}
        m = b.metric(fam.name, "counter", unit, fam.documentation)
        for s in samples:
            if s.name.endswith("_created"):
                continue
            st = created.get(_labels_key(s.labels, ""))
            b.point(m, float(s.value), _ts_ns(s.timestamp, now_ns), int(st * 1e9) if st else start_ns, s.labels)
    elif kind in ("histogram", "gaugehistogram"):
        _histograms(b, fam, samples, now_ns, start_ns)
    elif kind == "summary":
        _summaries(b, fam, samples, now_ns, start_ns)
    else:  # gauge, unknown/untyped, info, stateset: one gauge per sample name
        for s in samples:
            m = b.metric(s.name, "gauge", unit, fam.documentation)
            b.point(m, float(s.value), _ts_ns(s.timestamp, now_ns), 0, s.labels)


def _group(samples: Iterable[Any], drop: str) -> dict[tuple[tuple[str, str], ...], dict[str, Any]]:
    groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in samples:
        key = _labels_key(s.labels, drop)
        g = groups.setdefault(key, {"labels": dict(key), "items": [], "count": 0.0, "sum": None, "created": None,
                                    "ts": s.timestamp})
        if s.name.endswith("_count"):
            g["count"] = s.value
        elif s.name.endswith("_sum"):
            g["sum"] = s.value
        elif s.name.endswith("_created"):
            g["created"] = s.value
        elif drop in s.labels:
            g["items"].append((s.labels[drop], s.value))
    return groups


def _start_ns(g: dict[str, Any], start_ns: int) -> int:
    return int(g["created"] * 1e9) if g["created"] else start_ns


def _histograms(b: MetricsBuilder, fam: Any, samples: list[Any], now_ns: int, start_ns: int) -> None:
    m = b.histogram(fam.name, fam.unit or "", fam.documentation)
    for g in _group(samples, "le").values():
        bounds, counts = cumulative_buckets(((float(le), v) for le, v in g["items"]), g["count"])
        b.histogram_point(m, _ts_ns(g["ts"], now_ns), _start_ns(g, start_ns), count=int(g["count"]),
                          sum=None if g["sum"] is None else float(g["sum"]), bounds=bounds, bucket_counts=counts,
                          attrs=g["labels"])


def _summaries(b: MetricsBuilder, fam: Any, samples: list[Any], now_ns: int, start_ns: int) -> None:
    m = b.summary(fam.name, fam.unit or "", fam.documentation)
    for g in _group(samples, "quantile").values():
        quantiles = [(q, float(v)) for q, v in sorted((float(q), v) for q, v in g["items"])]
        b.summary_point(m, _ts_ns(g["ts"], now_ns), _start_ns(g, start_ns), count=int(g["count"]),
                        sum=float(g["sum"] or 0.0), quantiles=quantiles, attrs=g["labels"])


class PrometheusSource(ScrapeSource):
    def __init__(self, target: ScrapeTargetSettings, password: str | None, mappings: Mappings | None,
                 settings: PrometheusSettings, base_resource: dict[str, Any], name: str | None = None) -> None:
        super().__init__("prometheus", target, password, settings.interval, settings.timeout, base_resource, name)
        self.mappings = mappings
        self.passthrough = settings.passthrough_unmapped
        host = self.url_parts.hostname
        service = target.service_name or (mappings.service_name if mappings else host or "prometheus")
        self.resource = {
            "service.name": service, "service.instance.id": f"{host}:{self.url_parts.port}",
            "host.name": self.host_name,
        }
        self.first_scrape_ns = 0
        self.last_families = 0

    async def collect(self) -> list[Message]:
        session = self._http.get()
        try:
            async with session.get(self.target.url, headers={"Accept": ACCEPT}) as resp:
                if resp.status != 200:
                    raise ExpositionError(f"HTTP {resp.status} from {self.target.url}")
                openmetrics = "openmetrics" in resp.headers.get("Content-Type", "")
                text = await resp.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise ExpositionError(
                f"cannot scrape {self.target.url}: {e.__class__.__name__}: {e or 'timed out'}") from None
        now = time.time_ns()
        # Without _created, cumulative series start at the first scrape this relay made.
        self.first_scrape_ns = self.first_scrape_ns or now
        result = map_exposition(text, openmetrics, self.mappings, self.resource, now, self.first_scrape_ns,
                                self.passthrough)
        self.last_families = result.families
        return [result.request]

    def details(self) -> dict[str, Any]:
        return {"url": self.target.url, "mappings": list(self.mappings.names) if self.mappings else [],
                "families": self.last_families}
