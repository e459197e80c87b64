"""Small helpers over the OTLP protobuf messages: the one data model of the relay.

Owns: the signal table (request/response classes and URL paths), attribute and
metric builders used by the sources (sums, gauges, histograms, summaries, and the one
conversion of Prometheus cumulative buckets), item counting, and the OTLP JSON encoding.
Requests are merged by concatenating their serialized bytes: protobuf's rule for
repeated fields makes that a valid merge, with no decode.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

Signal = Literal["metrics", "logs", "traces"]
SIGNALS: tuple[Signal, ...] = ("metrics", "logs", "traces")

AGGREGATION_TEMPORALITY_CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE


@dataclass(frozen=True)
class SignalInfo:
    path: str
    request: type[Message]
    response: type[Message]


SIGNAL_INFO: dict[Signal, SignalInfo] = {
    "metrics": SignalInfo(
        "/v1/metrics", metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "logs": SignalInfo(
        "/v1/logs", logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse
    ),
    "traces": SignalInfo(
        "/v1/traces", trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse
    ),
}

def set_attributes(target: Any, attrs: Mapping[str, Any]) -> None:
    """Append key/values to a repeated KeyValue field (resource, point, log or span attributes)."""
    for key, value in attrs.items():
        kv = target.add()
        kv.key = key
        set_any_value(kv.value, value)


def set_any_value(av: common_pb2.AnyValue, value: Any) -> None:
    if isinstance(value, bool):
        av.bool_value = value
    elif isinstance(value, int):
        av.int_value = value
    elif isinstance(value, float):
        av.double_value = value
    elif isinstance(value, bytes):
        av.bytes_value = value
    elif isinstance(value, list | tuple):
        for v in value:
            set_any_value(av.array_value.values.add(), v)
    elif isinstance(value, Mapping):
        set_attributes(av.kvlist_value.values, value)
    else:
        av.string_value = str(value)


def any_value_to_python(av: common_pb2.AnyValue) -> Any:
    kind = av.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value_to_python(v) for v in av.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value_to_python(kv.value) for kv in av.kvlist_value.values}
    return getattr(av, kind)


def attributes_dict(kvs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: any_value_to_python(kv.value) for kv in kvs}


MetricKind = Literal["counter", "updowncounter", "gauge"]


@dataclass(frozen=True)
class MetricSpec:
    """What a source declares about a metric it emits; its code and docs/metrics.md both read it.

    kind: counter (monotonic cumulative sum), updowncounter (non-monotonic sum) or gauge;
    attributes: the keys every point of it carries."""

    name: str
    kind: MetricKind
    unit: str
    attributes: tuple[str, ...]
    description: str


class MetricsBuilder:
    """Builds one ExportMetricsServiceRequest with one resource and one scope."""

    def __init__(self, resource: Mapping[str, Any], scope_name: str, scope_version: str = "") -> None:
        self.request = metrics_service_pb2.ExportMetricsServiceRequest()
        rm = self.request.resource_metrics.add()
        set_attributes(rm.resource.attributes, resource)
        self._scope = rm.scope_metrics.add()
        self._scope.scope.name = scope_name
        self._scope.scope.version = scope_version
        self.points = 0
        self._by_name: dict[str, Any] = {}

    def metric(self, name: str, kind: str, unit: str = "", description: str = "") -> Any:
        """The metric of that name in this request, created on first use.
        kind: counter (monotonic cumulative sum), updowncounter (non-monotonic sum) or gauge."""
        m = self._by_name.get(name)
        if m is None:
            if kind == "gauge":
                m = self.gauge(name, unit, description)
            else:
                m = self.sum(name, unit, description, monotonic=kind == "counter")
            self._by_name[name] = m
        return m

    def metric_for(self, spec: MetricSpec) -> Any:
        """The metric a source declared, created on first use."""
        return self.metric(spec.name, spec.kind, spec.unit, spec.description)

    def sum(self, name: str, unit: str, description: str = "", monotonic: bool = True) -> Any:
        m = self._scope.metrics.add()
        m.name, m.unit, m.description = name, unit, description
        m.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
        m.sum.is_monotonic = monotonic
        return m

    def gauge(self, name: str, unit: str, description: str = "") -> Any:
        m = self._scope.metrics.add()
        m.name, m.unit, m.description = name, unit, description
        m.gauge.SetInParent()
        return m

    def point(
        self, metric: metrics_pb2.Metric, value: float | int, time_ns: int, start_ns: int = 0,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        container = metric.sum if metric.WhichOneof("data") == "sum" else metric.gauge
        dp = container.data_points.add()
        dp.time_unix_nano = time_ns
        if start_ns:
            dp.start_time_unix_nano = start_ns
        if isinstance(value, int) and not isinstance(value, bool):
            dp.as_int = value
        else:
            dp.as_double = float(value)
        if attrs:
            set_attributes(dp.attributes, attrs)
        self.points += 1

    def histogram(self, name: str, unit: str, description: str = "") -> Any:
        """A cumulative explicit-bucket histogram; add its points with histogram_point."""
        m = self._scope.metrics.add()
        m.name, m.unit, m.description = name, unit, description
        m.histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
        return m

    def histogram_point(
        self, metric: metrics_pb2.Metric, time_ns: int, start_ns: int = 0, *, count: int, sum: float | None,
        bounds: Iterable[float], bucket_counts: Iterable[int], attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """One histogram point. `sum` is optional in OTLP: None leaves it unset (not 0)."""
        dp = metric.histogram.data_points.add()
        dp.time_unix_nano = time_ns
        if start_ns:
            dp.start_time_unix_nano = start_ns
        dp.count = count
        if sum is not None:
            dp.sum = sum
        dp.explicit_bounds.extend(bounds)
        dp.bucket_counts.extend(bucket_counts)
        if attrs:
            set_attributes(dp.attributes, attrs)
        self.points += 1

    def summary(self, name: str, unit: str, description: str = "") -> Any:
        """A summary (quantiles over a window); add its points with summary_point."""
        m = self._scope.metrics.add()
        m.name, m.unit, m.description = name, unit, description
        m.summary.SetInParent()
        return m

    def summary_point(
        self, metric: metrics_pb2.Metric, time_ns: int, start_ns: int = 0, *, count: int, sum: float,
        quantiles: Iterable[tuple[float, float]], attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """One summary point; `quantiles` are (quantile, value) pairs, kept in the order given."""
        dp = metric.summary.data_points.add()
        dp.time_unix_nano = time_ns
        if start_ns:
            dp.start_time_unix_nano = start_ns
        dp.count, dp.sum = count, sum
        for q, v in quantiles:
            qv = dp.quantile_values.add()
            qv.quantile, qv.value = q, v
        if attrs:
            set_attributes(dp.attributes, attrs)
        self.points += 1

    def finish(self) -> metrics_service_pb2.ExportMetricsServiceRequest:
        """Drop metrics that got no points (empty metrics are invalid OTLP) and return the request."""
        keep = [m for m in self._scope.metrics if len(getattr(m, m.WhichOneof("data") or "gauge").data_points)]
        if len(keep) != len(self._scope.metrics):
            kept = [m.SerializeToString() for m in keep]
            del self._scope.metrics[:]
            for raw in kept:
                self._scope.metrics.add().ParseFromString(raw)
        return self.request


def cumulative_buckets(buckets: Iterable[tuple[float, float]], count: float) -> tuple[list[float], list[int]]:
    """OTLP explicit bounds and per-bucket counts from Prometheus cumulative (`le`, count) buckets.

    The one rule for scraped histograms and the relay's own:
    - buckets are taken in order of their bound; +Inf is no bound in OTLP, only the last bucket;
    - a missing +Inf bucket is implied and holds `count` minus the last cumulative count: the
      text format lets exporters leave it out, and OTLP needs one more count than bounds;
    - a count that goes down (malformed exposition) gives 0 for that bucket, as OTLP counts
      are unsigned; the next bucket is still taken relative to the count as written.
    prometheus_client always writes +Inf and never goes down, so for the relay's own
    histograms the last two rules change nothing.
    """
    ordered = sorted(buckets)
    bounds: list[float] = []
    counts: list[int] = []
    prev = 0.0
    for le, cumulative in ordered:
        if not math.isinf(le):
            bounds.append(le)
        counts.append(max(0, int(cumulative - prev)))
        prev = cumulative
    if not ordered or not math.isinf(ordered[-1][0]):
        counts.append(max(0, int(count - prev)))
    return bounds, counts


class EncodedRequest:
    """An ExportMetricsServiceRequest built as bytes (the scrape memo builds them), kept encoded:
    SerializeToString gives the bytes as they are and count_items takes `points`, so a source
    runner spools it without a decode and an encode; any other use of the Message API decodes
    it once."""

    __slots__ = ("_decoded", "data", "points")

    def __init__(self, data: bytes, points: int) -> None:
        self.data = data
        self.points = points
        self._decoded: Message | None = None

    def SerializeToString(self, **_: Any) -> bytes:
        return self.data

    def ByteSize(self) -> int:
        return len(self.data)

    def decoded(self) -> Message:
        if self._decoded is None:
            self._decoded = metrics_service_pb2.ExportMetricsServiceRequest.FromString(self.data)
        return self._decoded

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not the Message API (and _decoded before __init__, as copy asks)
            raise AttributeError(name)
        return getattr(self.decoded(), name)


def count_items(signal: Signal, message: Message | EncodedRequest) -> int:
    """Data points, log records or spans in a request."""
    if isinstance(message, EncodedRequest):
        return message.points
    n = 0
    if signal == "metrics":
        for rm in message.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    if kind:
                        n += len(getattr(m, kind).data_points)
    elif signal == "logs":
        for rl in message.resource_logs:
            for sl in rl.scope_logs:
                n += len(sl.log_records)
    else:
        for rs in message.resource_spans:
            for ss in rs.scope_spans:
                n += len(ss.spans)
    return n


def parse_request(signal: Signal, body: bytes) -> Message:
    msg = SIGNAL_INFO[signal].request()
    msg.ParseFromString(body)
    return msg


_HEX_ID_FIELDS = {"traceId", "spanId", "parentSpanId"}


def _convert_ids(node: Any, convert: Callable[[str, str], str]) -> Any:
    """Rewrite, in place, every trace/span id string of a decoded OTLP JSON document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in _HEX_ID_FIELDS and isinstance(v, str):
                node[k] = convert(k, v)
            else:
                _convert_ids(v, convert)
    elif isinstance(node, list):
        for v in node:
            _convert_ids(v, convert)
    return node


def _ids_to_hex(node: Any) -> Any:
    # OTLP JSON writes trace and span ids as hex, where proto3 JSON would use base64.
    return _convert_ids(node, lambda _k, v: base64.b64decode(v).hex())


class BadJson(ValueError):
    """A body that is not valid OTLP JSON."""


def _hex_to_base64(key: str, value: str) -> str:
    try:
        return base64.b64encode(bytes.fromhex(value)).decode()
    except ValueError:
        raise BadJson(f"{key} must be hex, got {value[:40]!r}") from None


def _ids_from_hex(node: Any) -> Any:
    # The reverse of _ids_to_hex: proto3 JSON parsing wants base64 for bytes fields.
    return _convert_ids(node, _hex_to_base64)


def from_json(signal: Signal, body: bytes) -> Message:
    """Decode an OTLP JSON request (hex ids, camelCase, int64 as strings; unknown fields ignored)."""
    import json

    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadJson(f"invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadJson("the JSON body must be an object")
    msg = SIGNAL_INFO[signal].request()
    try:
        json_format.ParseDict(_ids_from_hex(data), msg, ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise BadJson(f"not an OTLP {signal} request: {str(e)[:300]}") from None
    return msg


def to_json_dict(message: Message) -> dict[str, Any]:
    """OTLP JSON encoding: lowerCamelCase keys, enums as integers, int64 as strings, hex ids."""
    d = json_format.MessageToDict(message, use_integers_for_enums=True)
    return _ids_to_hex(d)  # type: ignore[no-any-return]
