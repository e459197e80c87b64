"""Prometheus source: scrapes text exposition or OpenMetrics (the JMX exporter's /metrics, say).

Owns: the scrape (a capped body, parsed and mapped in a worker thread under a time bound)
and the mapping to OTLP by the OpenTelemetry Prometheus compatibility spec
(https://opentelemetry.io/docs/specs/otel/compatibility/prometheus_and_openmetrics/):
- names as exposed (a counter keeps `_total`; `trim_metric_suffixes` removes type and
  unit suffixes), HELP as description, UNIT in OpenMetrics words turned into UCUM, TYPE
  in the metric's metadata as `prometheus.type`;
- counter -> monotonic cumulative sum; gauge and unknown -> gauge; info and stateset ->
  non-monotonic sum; histogram -> histogram with de-cumulated buckets; summary -> summary;
  gaugehistogram (and native histograms) dropped;
- a histogram or summary point without `_count` is dropped; a histogram without `_sum`
  leaves sum unset, a summary's is 0;
- exemplars (OpenMetrics) on counters and buckets become OTLP exemplars;
- `target_info` becomes resource attributes and is not sent as a metric;
- start time from `_created` where present, else the first scrape of the target;
- service.name / service.instance.id from the target.
Series named in the mapping rules become the same OTLP metrics the Jolokia source
produces; the rest pass through. Malformed exposition, or one past a limit, fails that
scrape with a short error naming the target; the relay keeps running.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from typing import Any, cast

import aiohttp
from google.protobuf.message import Message

from relay import __version__, wire
from relay.mapping import Mappings
from relay.otlp import MetricsBuilder, cumulative_buckets, set_attributes
from relay.source_settings import PrometheusSettings, ScrapeTargetSettings
from relay.sources.base import ScrapeSource
from relay.sources.exposition import ExpositionError, ExpositionLimits, parse_families
from relay.sources.scrape_bounds import Deadline, ScrapeLimitExceeded, read_body, short
from relay.sources.scrape_memo import ScrapeMemo, ScrapeReading, Trace

__all__ = ["ExpositionError", "PrometheusSource", "ScrapeReading", "map_exposition"]

SCOPE = "telemetry-relay/prometheus"
# The text format first: prometheus_client's text parser takes what exporters really emit.
# (client_java, the JMX exporter's library, answers OpenMetrics whenever it is named at all.)
ACCEPT = "text/plain;version=0.0.4;q=1.0,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1"
TARGET_INFO = "target_info"
_U64 = 2**64


def _ns(seconds: Any) -> int | None:
    """Seconds (float, or OpenMetrics' Timestamp) as OTLP nanoseconds; None if OTLP cannot
    carry it (not finite, before 1970 or past 2554)."""
    if hasattr(seconds, "sec"):
        ns = int(seconds.sec) * 1_000_000_000 + int(seconds.nsec)
    else:
        f = float(seconds)
        if not math.isfinite(f):
            return None
        ns = int(f * 1e9)
    return ns if 0 <= ns < _U64 else None


def _ts_ns(ts: Any, default: int) -> int:
    return default if ts is None else (_ns(ts) or default)


def _count(value: Any) -> int | None:
    """A histogram/summary count as OTLP's uint64, or None (NaN, infinite, negative)."""
    f = float(value)
    return int(f) if math.isfinite(f) and 0 <= f < _U64 else None


def _labels_key(labels: dict[str, str], drop: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != drop))


# OpenMetrics UNIT words -> UCUM, as the spec asks ("seconds" -> "s", "ratio" -> "1", "a_per_b" -> "a/b").
_UNIT_WORDS = {
    "seconds": "s", "milliseconds": "ms", "microseconds": "us", "nanoseconds": "ns", "minutes": "min",
    "hours": "h", "days": "d", "bytes": "By", "kilobytes": "kBy", "megabytes": "MBy", "gigabytes": "GBy",
    "terabytes": "TBy", "kibibytes": "KiBy", "mebibytes": "MiBy", "gibibytes": "GiBy", "tebibytes": "TiBy",
    "bits": "bit", "meters": "m", "volts": "V", "amperes": "A", "joules": "J", "watts": "W", "grams": "g",
    "celsius": "Cel", "hertz": "Hz", "percent": "%", "ratio": "1",
}
_PER_WORDS = {"second": "s", "minute": "min", "hour": "h", "day": "d", "week": "wk", "month": "mo", "year": "a"}


def ucum_unit(word: str) -> str:
    if not word:
        return ""
    if "_per_" in word:
        top, _, per = word.partition("_per_")
        return f"{_UNIT_WORDS.get(top, top)}/{_PER_WORDS.get(per, _UNIT_WORDS.get(per, per))}"
    return _UNIT_WORDS.get(word, word)


def otlp_name(exposed: str, kind: str, unit: str, trim: bool) -> str:
    """The OTLP name: as exposed by default; trimmed of `_total` (counters) and the UNIT suffix."""
    if not trim:
        return exposed
    name = exposed
    if kind == "counter" and name.endswith("_total"):
        name = name[: -len("_total")]
    if unit and name.endswith(f"_{unit}") and len(name) > len(unit) + 1:
        name = name[: -len(unit) - 1]
    return name


def map_exposition(
    text: str, openmetrics: bool, mappings: Mappings | None, resource: dict[str, Any],
    now_ns: int | None = None, start_ns: int = 0, passthrough: bool = True, *,
    limits: ExpositionLimits | None = None, trim_suffixes: bool = False, trace: Trace | None = None,
) -> ScrapeReading:
    """Parse and map one scrape. Raises ExpositionError or ScrapeLimitExceeded.
    A trace, if given, records where each point came from (for the scrape memo)."""
    now_ns = now_ns or time.time_ns()
    b = trace.builder(resource, SCOPE, __version__) if trace else MetricsBuilder(resource, SCOPE, __version__)
    out = _Passthrough(b, now_ns, start_ns, trim_suffixes, trace)
    deadline = limits.deadline if limits else None
    rules = mappings.prometheus if mappings else {}
    target: dict[str, str] = {}
    mapped = families = 0
    for fam, exposed in parse_families(text, openmetrics, limits):
        families += 1
        if deadline is not None:
            deadline.check()
        if trace:
            for s in fam.samples:
                trace.sample(s, fam)
        if _is_target_info(fam):
            for s in fam.samples:
                target.update(s.labels)
            continue
        rest = []
        for s in fam.samples:
            compiled = rules.get(s.name)
            if not compiled or s.value is None:
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
                if trace:
                    trace.value_from(s, rule.scale)
                b.point(m, float(s.value) * rule.scale, _ts_ns(s.timestamp, now_ns),
                        start_ns if rule.type != "gauge" else 0, attrs)
                used = True
            if used:
                mapped += 1
            else:
                rest.append(s)
        if rest and passthrough:
            out.family(fam, exposed, rest)
    request = b.finish()
    if target:
        # The spec: target_info's labels, unaltered, on the resource. The target's own
        # identity (service.name, service.instance.id, host.name) is not overridden.
        set_attributes(request.resource_metrics[0].resource.attributes,
                       {k: v for k, v in target.items() if k not in resource})
    return ScrapeReading(request, b.points, families, mapped, out.dropped)


def map_family(fam: Any, samples: list[Any], now_ns: int, start_ns: int, trim_suffixes: bool) -> tuple[bytes, int, int]:
    """One histogram or summary family mapped alone, as map_exposition maps it: its metric as
    encoded inside a request's scope (nothing if no point is left), its points, what it dropped."""
    b = MetricsBuilder({}, SCOPE, __version__)
    out = _Passthrough(b, now_ns, start_ns, trim_suffixes)
    out.family(fam, fam.exposed, samples)
    encoded: list[bytes | memoryview] = []
    for m in b.finish().resource_metrics[0].scope_metrics[0].metrics:
        wire.emit(encoded, 2, [m.SerializeToString()])
    return b"".join(encoded), b.points, out.dropped


def _is_target_info(fam: Any) -> bool:
    return fam.type in ("info", "gauge", "unknown", "untyped") and any(s.name == TARGET_INFO for s in fam.samples)


class _Passthrough:
    """Series no mapping rule took, converted by the compatibility spec's rules."""

    def __init__(self, b: MetricsBuilder, now_ns: int, start_ns: int, trim: bool, trace: Trace | None = None) -> None:
        self.b = b
        self.trace = trace
        self.now_ns = now_ns
        self.start_ns = start_ns
        self.trim = trim
        self.kinds: dict[str, str] = {}  # OTLP name -> kind, so two families never share a name
        self.dropped = 0

    def family(self, fam: Any, exposed: str, samples: list[Any]) -> None:
        kind = fam.type
        # Native histograms carry no value; the spec drops them where unsupported.
        samples = [s for s in samples if s.value is not None]
        if kind == "gaugehistogram" or not samples:
            self.dropped += 1  # the spec: GaugeHistogram MUST be dropped
            return
        if kind == "counter":
            self._counter(fam, exposed, samples)
        elif kind in ("info", "stateset"):
            self._numbers(fam, self._metric(fam, exposed, "updowncounter"), samples, self.start_ns)
        elif kind in ("histogram", "summary"):
            if self.trace:
                self.trace.family(fam, exposed, samples)
            if kind == "histogram":
                self._histograms(fam, exposed, samples)
            else:
                self._summaries(fam, exposed, samples)
            if self.trace:
                self.trace.family_done()
        else:  # gauge, unknown/untyped and any type the text format lets through: gauges by sample name
            for s in samples:
                m = self._metric(fam, s.name, "gauge")
                if m is not None:
                    if self.trace:
                        self.trace.value_from(s)
                    self.b.point(m, float(s.value), _ts_ns(s.timestamp, self.now_ns), 0, s.labels)

    def _metric(self, fam: Any, exposed: str, kind: str) -> Any:
        unit = ucum_unit(fam.unit or "")
        name = otlp_name(exposed, fam.type, fam.unit or "", self.trim)
        have = self.kinds.setdefault(name, kind)
        if have != kind:
            self.dropped += 1  # two families under one OTLP name with different types: keep the first
            return None
        m = self.b.metric(name, kind, unit, fam.documentation)
        if not m.metadata:
            set_attributes(m.metadata, {"prometheus.type": "unknown" if fam.type == "untyped" else fam.type})
        return m

    def _numbers(self, fam: Any, m: Any, samples: Iterable[Any], start_ns: int) -> None:
        if m is None:
            return
        for s in samples:
            if self.trace:
                self.trace.value_from(s)
            self.b.point(m, float(s.value), _ts_ns(s.timestamp, self.now_ns), start_ns, s.labels)

    def _counter(self, fam: Any, exposed: str, samples: list[Any]) -> None:
        m = self._metric(fam, exposed, "counter")
        if m is None:
            return
        created = {_labels_key(s.labels, ""): s.value for s in samples if s.name.endswith("_created")}
        for s in samples:
            if s.name.endswith("_created"):
                continue
            st = created.get(_labels_key(s.labels, ""))
            start = (_ns(st) if st is not None else None) or self.start_ns
            time_ns = _ts_ns(s.timestamp, self.now_ns)
            if self.trace:
                self.trace.value_from(s)
            self.b.point(m, float(s.value), time_ns, start, s.labels)
            if s.exemplar:
                _exemplar(m.sum.data_points[-1], s.exemplar, time_ns)

    def _histograms(self, fam: Any, exposed: str, samples: list[Any]) -> None:
        m = self._new(fam, exposed, "histogram")
        if m is None:
            return
        for g in _group(samples, "le").values():
            count = None if g["count"] is None else _count(g["count"])
            buckets = _buckets(g["items"])
            if count is None or buckets is None:
                self.dropped += 1  # the spec: no _count, no point; nor for counts OTLP cannot hold
                continue
            bounds, counts = cumulative_buckets(buckets, count)
            time_ns = _ts_ns(g["ts"], self.now_ns)
            self.b.histogram_point(m, time_ns, self._start(g), count=count,
                                   sum=None if g["sum"] is None else float(g["sum"]), bounds=bounds,
                                   bucket_counts=counts, attrs=g["labels"])
            dp = m.histogram.data_points[-1]
            for ex in g["exemplars"]:
                _exemplar(dp, ex, time_ns)

    def _summaries(self, fam: Any, exposed: str, samples: list[Any]) -> None:
        m = self._new(fam, exposed, "summary")
        if m is None:
            return
        for g in _group(samples, "quantile").values():
            count = None if g["count"] is None else _count(g["count"])
            quantiles = _quantiles(g["items"])
            if count is None or quantiles is None:
                self.dropped += 1  # the spec: no _count, no point
                continue
            self.b.summary_point(m, _ts_ns(g["ts"], self.now_ns), self._start(g), count=count,
                                 sum=float(g["sum"] or 0.0), quantiles=quantiles, attrs=g["labels"])

    def _new(self, fam: Any, exposed: str, kind: str) -> Any:
        """A histogram or summary metric: these never merge, so a second family under the
        same OTLP name is dropped rather than sent as a second metric of that name."""
        name = otlp_name(exposed, fam.type, fam.unit or "", self.trim)
        if name in self.kinds:
            self.dropped += 1
            return None
        self.kinds[name] = kind
        unit = ucum_unit(fam.unit or "")
        m = self.b.histogram(name, unit, fam.documentation) if kind == "histogram" else \
            self.b.summary(name, unit, fam.documentation)
        set_attributes(m.metadata, {"prometheus.type": fam.type})
        return m

    def _start(self, g: dict[str, Any]) -> int:
        return (_ns(g["created"]) if g["created"] is not None else None) or self.start_ns


def _group(samples: Iterable[Any], drop: str) -> dict[tuple[tuple[str, str], ...], dict[str, Any]]:
    groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in samples:
        key = _labels_key(s.labels, drop)
        g = groups.setdefault(key, {"labels": dict(key), "items": [], "count": None, "sum": None, "created": None,
                                    "ts": s.timestamp, "exemplars": []})
        if s.name.endswith("_count"):
            g["count"] = s.value
        elif s.name.endswith("_sum"):
            g["sum"] = s.value
        elif s.name.endswith("_created"):
            g["created"] = s.value
        elif drop in s.labels:
            g["items"].append((s.labels[drop], s.value))
            if s.exemplar:
                g["exemplars"].append(s.exemplar)
    return groups


def _buckets(items: list[tuple[str, Any]]) -> list[tuple[float, float]] | None:
    """(bound, cumulative count) pairs, or None if a bound or count is not a number OTLP can hold."""
    out = []
    for le, v in items:
        try:
            bound = float(le)
        except ValueError:
            return None
        if math.isnan(bound) or _count(v) is None:
            return None
        out.append((bound, float(v)))
    return out


def _quantiles(items: list[tuple[str, Any]]) -> list[tuple[float, float]] | None:
    out = []
    for q, v in items:
        try:
            quantile = float(q)
        except ValueError:
            return None
        if math.isnan(quantile):
            return None
        out.append((quantile, float(v)))
    return sorted(out)


def _exemplar(dp: Any, ex: Any, point_ns: int) -> None:
    """The spec: trace_id and span_id labels become the exemplar's ids (when they are
    ids), all other labels its filtered attributes, its timestamp is kept if present."""
    e = dp.exemplars.add()
    e.as_double = float(ex.value)
    e.time_unix_nano = _ts_ns(ex.timestamp, point_ns)
    rest = {}
    for k, v in ex.labels.items():
        if k == "trace_id" and _hex_id(v, 16):
            e.trace_id = bytes.fromhex(v)
        elif k == "span_id" and _hex_id(v, 8):
            e.span_id = bytes.fromhex(v)
        elif v != "":
            rest[k] = v
    set_attributes(e.filtered_attributes, rest)


def _hex_id(value: str, size: int) -> bool:
    if len(value) != 2 * size:
        return False
    try:
        return any(bytes.fromhex(value))  # all zeros means no id
    except ValueError:
        return False


class PrometheusSource(ScrapeSource):
    def __init__(self, target: ScrapeTargetSettings, password: str | None, mappings: Mappings | None,
                 settings: PrometheusSettings, base_resource: dict[str, Any], name: str | None = None) -> None:
        super().__init__("prometheus", target, password, settings.interval, settings.timeout, base_resource, name)
        self.mappings = mappings
        self.passthrough = settings.passthrough_unmapped
        self.settings = settings
        host = self.url_parts.hostname
        service = target.service_name or (mappings.service_name if mappings else host or "prometheus")
        self.resource = {
            "service.name": service, "service.instance.id": f"{host}:{self.url_parts.port}",
            "host.name": self.host_name,
        }
        self.first_scrape_ns = 0
        self.memo = ScrapeMemo()
        self.last_families = 0
        self.last_dropped = 0

    async def collect(self) -> list[Message]:
        url = self.target.url
        session = self._http.get()
        try:
            async with session.get(url, headers={"Accept": ACCEPT}) as resp:
                if resp.status != 200:
                    raise ExpositionError(f"HTTP {resp.status} from {url}")
                openmetrics = "openmetrics" in resp.headers.get("Content-Type", "")
                body = await read_body(resp, url, self.settings.max_body_bytes, "sources.prometheus.max_body_bytes")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise ExpositionError(f"cannot scrape {url}: {e.__class__.__name__}: {e or 'timed out'}") from None
        now = time.time_ns()
        # Without _created, cumulative series start at the first scrape this relay made.
        self.first_scrape_ns = self.first_scrape_ns or now
        s = self.settings
        limits = ExpositionLimits(url, s.max_line_length, s.max_labels_per_series, s.max_series,
                                  Deadline(url, s.parse_timeout, "sources.prometheus.parse_timeout"))
        # Parsing is pure Python and can take seconds: off the loop, so nothing else waits.
        result = await asyncio.to_thread(self._map, body, openmetrics, now, limits)
        self.last_families = result.families
        self.last_dropped = result.dropped
        # A memo hit is an EncodedRequest: it has what the runner uses of a Message
        # (SerializeToString, and count_items takes its count) without the round trip.
        return [cast(Message, result.request)]

    def _map(self, body: bytes, openmetrics: bool, now: int, limits: ExpositionLimits) -> ScrapeReading:
        start, trim = self.first_scrape_ns, self.settings.trim_metric_suffixes

        def full(text: str, trace: Trace | None) -> ScrapeReading:
            return map_exposition(text, openmetrics, self.mappings, self.resource, now, start, self.passthrough,
                                  limits=limits, trim_suffixes=trim, trace=trace)

        try:
            key = (start, limits.max_line_length, limits.max_labels_per_series, limits.max_series)
            return self.memo.map(body, key, now, limits.deadline, limits.max_line_length, full,
                                 lambda fam, samples, now_ns: map_family(fam, samples, now_ns, start, trim),
                                 openmetrics)
        except ScrapeLimitExceeded:
            raise  # already names the target and the limit
        except ExpositionError as e:
            raise ExpositionError(f"{limits.source}: {e}") from None
        except Exception as e:  # a mapping bug on hostile input is this target's error, kept short
            detail = short(f"{e.__class__.__name__}: {e}")
            raise ExpositionError(f"{limits.source}: cannot map the scrape: {detail}") from None

    def details(self) -> dict[str, Any]:
        return {"url": self.target.url, "mappings": list(self.mappings.names) if self.mappings else [],
                "families": self.last_families, "dropped": self.last_dropped, "memo": self.memo.stats.as_dict()}

