"""The metrics fast path of the policy: memoized per metric *shape*, copied as bytes.

A broker sends the same series in every scrape: the same metric names with the same attribute
sets; only values and timestamps change. Everything the policy does to a metric is decided by
its shape: its name, description, unit, metadata, and the attributes and exemplars of each
data point, in order. So a request is taken apart as bytes only down to its metrics (a few
fields per request, walked here); each metric's shape is read by protobuf's C parser with a
shadow schema that keeps the attributes and skips the values; and a metric whose shape was
seen before and left untouched by this policy is copied as it came, with no Python-level visit
per data point. A new shape and a metric the policy changes go through the full per-point
engine, which records the shape when it changed nothing. An encoding this walk does not
expect (a resource or scope split over two fields, which protobuf would merge; groups; a
truncated field) sends the whole request to the full engine.

Owns: the walk above, and its memo (ShapeMemo, with every bound it keeps). One memo belongs
to one Policy object: a reloaded policy starts with an empty one, so it never trusts a decision
taken under the previous policy. It holds each shape's bytes (no digest, so no collision can
pass a changed shape as a known one). The full engine is reached only through PerPointEngine,
and the bytes are taken apart with relay.wire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from relay import wire
from relay.otlp import Signal
from relay.policy.outcome import Events, Outcome

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "relay.shadow"
_KINDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")
_POINT_TYPES: dict[str, Any] = {
    "gauge": metrics_pb2.NumberDataPoint, "sum": metrics_pb2.NumberDataPoint,
    "histogram": metrics_pb2.HistogramDataPoint,
    "exponential_histogram": metrics_pb2.ExponentialHistogramDataPoint, "summary": metrics_pb2.SummaryDataPoint,
}


class Fallback(Exception):
    """This request needs the full engine (an encoding the fast path does not take apart)."""


class PerPointEngine(Protocol):
    """The full engine's per-item steps, which the fast path hands what it has not seen."""

    def apply_metric(self, m: Any, o: Outcome, exemplars: bool = True) -> tuple[bool, bool]: ...

    def apply_resource(self, res: Any, signal: Signal, o: Outcome) -> None: ...


# The shapes of about 100,000 series; a flood of new shapes restarts the memo, never grows it.
_SHAPE_MEMO_BYTES = 4 << 20
# Resources and scope contexts are a handful per scrape target; more than this is a flood.
_RESOURCES_LIMIT = 1_000
_VALIDATED_LIMIT = 1_000


class ShapeMemo:
    """What the fast path remembers under one policy, each part bounded.

    `shapes`: metric shapes the policy leaves as they are -> the rule events they cause.
    `resources`: a resource's bytes -> (its bytes after the policy, the rule events).
    `validated_context`: the bytes copied around the metrics (scopes, schema URLs, unknown
    fields) that a full parse has already accepted.
    """

    __slots__ = ("_release", "_shape_bytes", "resources", "shapes", "validated_context")

    def __init__(self, release: Callable[[str], None]) -> None:
        # Called with a metric's name once its shape is remembered: the shape then answers for
        # the whole metric, so the engine can let go of what it memoized per attribute set
        # (keeping both would cost about 1 MiB more per 5,000 series).
        self._release = release
        self.shapes: dict[bytes, Events] = {}
        self._shape_bytes = 0
        self.resources: dict[bytes, tuple[bytes, Events]] = {}
        self.validated_context: set[bytes] = set()

    def remember_shape(self, metric: str, shape: bytes, events: Events) -> None:
        if self._shape_bytes + len(shape) > _SHAPE_MEMO_BYTES:
            self.shapes.clear()
            self._shape_bytes = 0
        self.shapes[shape] = events
        self._shape_bytes += len(shape)
        self._release(metric)

    def remember_resource(self, raw: bytes, after: bytes, events: Events) -> None:
        if len(self.resources) >= _RESOURCES_LIMIT:
            self.resources.clear()
        self.resources[raw] = (after, events)

    def remember_validated(self, raw: bytes) -> None:
        if len(self.validated_context) >= _VALIDATED_LIMIT:
            self.validated_context.clear()
        self.validated_context.add(raw)


def _add_field(msg: Any, name: str, number: int, ftype: int, label: int = _F.LABEL_OPTIONAL,
               type_name: str = "", oneof: int | None = None) -> None:
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = f".{_PACKAGE}.{type_name}"
    if oneof is not None:
        f.oneof_index = oneof


def _field_number(message: Any, name: str) -> int:
    return int(message.DESCRIPTOR.fields_by_name[name].number)


def _build() -> dict[str, Any]:
    """The shadow schemas, with field numbers taken from the real OTLP descriptors."""
    fdp = descriptor_pb2.FileDescriptorProto(name="relay/shadow_metrics.proto", package=_PACKAGE, syntax="proto3")
    rep, b, s, m = _F.LABEL_REPEATED, _F.TYPE_BYTES, _F.TYPE_STRING, _F.TYPE_MESSAGE

    # The shape of one metric: everything but values and timestamps.
    shape = fdp.message_type.add(name="Shape")
    shape.oneof_decl.add(name="data")
    for name in ("name", "description", "unit"):
        _add_field(shape, name, _field_number(metrics_pb2.Metric, name), s)
    _add_field(shape, "metadata", _field_number(metrics_pb2.Metric, "metadata"), b, rep)
    for kind in _KINDS:
        point_type = _POINT_TYPES[kind]
        pname = f"{point_type.DESCRIPTOR.name}Shape"
        if pname not in [t.name for t in fdp.message_type]:
            point = fdp.message_type.add(name=pname)
            for fname in ("attributes", "exemplars"):
                if fname in point_type.DESCRIPTOR.fields_by_name:
                    _add_field(point, fname, _field_number(point_type, fname), b, rep)
        data = fdp.message_type.add(name=f"{kind.title().replace('_', '')}Shape")
        _add_field(data, "data_points", 1, m, rep, pname)
        _add_field(shape, kind, _field_number(metrics_pb2.Metric, kind), m, type_name=data.name, oneof=0)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {t.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{t.name}"))
            for t in fdp.message_type}


_SHADOW = _build()
MetricShape = _SHADOW["Shape"]
_RM_RESOURCE = _field_number(metrics_pb2.ResourceMetrics, "resource")
_RM_SCOPES = _field_number(metrics_pb2.ResourceMetrics, "scope_metrics")
_SM_SCOPE = _field_number(metrics_pb2.ScopeMetrics, "scope")
_SM_METRICS = _field_number(metrics_pb2.ScopeMetrics, "metrics")
_EXEMPLAR_TAGS = {kind: bytes([_field_number(point, "exemplars") << 3 | 2]) for kind, point in _POINT_TYPES.items()
                  if "exemplars" in point.DESCRIPTOR.fields_by_name}
assert all(len(t) == 1 and t[0] < 0x80 for t in _EXEMPLAR_TAGS.values()), "one-byte tags"
assert (_RM_RESOURCE, _RM_SCOPES, _SM_SCOPE, _SM_METRICS) == (1, 2, 1, 2), "the walk below assumes these"
# At every level taken apart here, fields 1 and 2 are messages (resource_metrics; resource and
# scope_metrics; scope and metrics): with another wire type they are left to the full parser.
_MESSAGES = (1, 2)


def apply_metrics(engine: PerPointEngine, memo: ShapeMemo, body: bytes, o: Outcome) -> bytes:
    """The redacted request, or raises Fallback when the full engine must take it.

    The request, its resources and scopes are taken apart and put back together as bytes
    (a handful of fields per request); only a metric the policy changes is re-encoded."""
    view = memoryview(body)
    out: list[bytes | memoryview] = []
    try:
        for field, whole, value in wire.fields(view, _MESSAGES):
            if field != 1:  # not resource_metrics: an unknown field, kept as it came
                out.append(whole)
                continue
            rm = _resource_metrics(engine, memo, value, o)
            if rm:
                wire.emit(out, 1, rm)
    except wire.Malformed:
        raise Fallback() from None
    return b"".join(out)


def _resource_metrics(engine: PerPointEngine, memo: ShapeMemo, view: memoryview,
                      o: Outcome) -> list[bytes | memoryview]:
    """One ResourceMetrics' content after the policy; empty when nothing of it is left."""
    head: list[bytes | memoryview] = []
    scopes: list[bytes | memoryview] = []
    seen_resource = False
    for field, whole, value in wire.fields(view, _MESSAGES):
        if field == _RM_RESOURCE:
            if seen_resource:  # protobuf would merge two: leave that to the full parser
                raise Fallback()
            seen_resource = True
            wire.emit(head, field, [_resource(engine, memo, bytes(value), o)])
        elif field == _RM_SCOPES:
            sm = _scope_metrics(engine, memo, value, o)
            if sm:
                wire.emit(scopes, field, sm)
        else:
            head.append(whole)
    _validate_context(memo, metrics_pb2.ResourceMetrics, head)
    return head + scopes if scopes else []


def _scope_metrics(engine: PerPointEngine, memo: ShapeMemo, view: memoryview,
                   o: Outcome) -> list[bytes | memoryview]:
    """One ScopeMetrics' content after the policy; empty when none of its metrics is left."""
    head: list[bytes | memoryview] = []
    metrics: list[bytes | memoryview] = []
    seen_scope = False
    shapes = memo.shapes
    for field, whole, value in wire.fields(view, _MESSAGES):
        if field != _SM_METRICS:
            if field == _SM_SCOPE:
                if seen_scope:
                    raise Fallback()
                seen_scope = True
            head.append(whole)
            continue
        shape = MetricShape.FromString(value)
        kind = shape.WhichOneof("data")
        points = len(getattr(shape, kind).data_points) if kind else 0
        shape.DiscardUnknownFields()
        key = shape.SerializeToString()
        known = shapes.get(key)
        if known is not None:  # seen before, and the policy changed nothing in it
            o.items_in += points
            o.items_out += points
            for event, n in known:
                o.counts[event] += n
            metrics.append(whole)
            continue
        raw = bytes(value)
        new, events = _slow_metric(engine, raw, o)
        if new is raw:
            memo.remember_shape(shape.name, key, events)
        if new is not None:
            wire.emit(metrics, field, [new])
    _validate_context(memo, metrics_pb2.ScopeMetrics, head)
    return head + metrics if metrics else []


def _validate_context(memo: ShapeMemo, message: Any, fields: list[bytes | memoryview]) -> None:
    """Decode what is copied around the metrics (scope, schema URLs, fields of a newer OTLP)
    once per distinct content, so that what the full parser would refuse (a string that is
    not UTF-8, say) is refused here too, with the same DecodeError."""
    raw = b"".join(fields)
    if raw in memo.validated_context:
        return
    message.FromString(raw)
    memo.remember_validated(raw)


def _resource(engine: PerPointEngine, memo: ShapeMemo, raw: bytes, o: Outcome) -> bytes:
    """The resource after the policy, memoized on its bytes (it recurs in every request)."""
    hit = memo.resources.get(raw)
    if hit is None:
        res = resource_pb2.Resource.FromString(raw)
        scratch = type(o)()
        engine.apply_resource(res, "metrics", scratch)
        hit = (bytes(res.SerializeToString()), tuple(scratch.counts.items()))
        memo.remember_resource(raw, *hit)
    for event, n in hit[1]:
        o.counts[event] += n
    return hit[0]


def _slow_metric(engine: PerPointEngine, raw: bytes, o: Outcome) -> tuple[bytes | None, Events]:
    """One metric through the per-point engine: (None if it is dropped, `raw` itself if the
    policy left it as it was, else its new bytes; the rule events it caused)."""
    m = metrics_pb2.Metric.FromString(raw)
    scratch = type(o)()
    # An exemplar starts with its field's tag byte: without that byte anywhere, there is none.
    kind = m.WhichOneof("data")
    tag = _EXEMPLAR_TAGS.get(kind or "")
    keep, changed = engine.apply_metric(m, scratch, exemplars=tag is not None and tag in raw)
    o.items_in += scratch.items_in
    o.items_out += scratch.items_out
    for event, n in scratch.counts.items():
        o.counts[event] += n
    if not keep:
        return None, ()
    return (bytes(m.SerializeToString()) if changed else raw), tuple(scratch.counts.items())
