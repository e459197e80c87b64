"""The metrics fast path of the policy: memoized per metric *shape*, copied as bytes.

A broker sends the same series in every scrape: the same metric names with the same attribute
sets; only values and timestamps change. Everything the policy does to a metric is decided by
its shape: its name, description, unit, metadata, and the attributes and exemplars of each
data point, in order. So a request is taken apart as bytes only down to its metrics (a few
fields per request, walked here); each metric's shape is read by protobuf's C parser with a
shadow schema that keeps the attributes and skips the values; and a metric whose shape was
seen before and left untouched by this policy is copied as it came, with no Python-level visit
per data point. A shape seen before that the policy changed by its shape alone (attributes
hashed, dropped or renamed, the header changed, or the whole metric dropped) is rewritten from
what the engine made of it (relay.policy.rewrite: byte for byte the engine's output). A new
shape, and one whose result depends on more than its shape (merged points, exemplars), go
through the full per-point engine, which records the shape when it changed nothing and its
encoding is exactly what came, or its rewrite when the shape alone decided it.
What surrounds the metrics (resources, scopes, schema URLs) is decoded, redacted and encoded
again by the engine, once per distinct content.

Fields this OTLP version does not know must not be copied along: the shape skips values, so
a second shadow schema (StrictMetric) knows every field of a metric down to its points, and a
known shape is copied only if that schema reads all of it (nothing unknown, nothing encoded
unusually); otherwise the metric takes the full engine, which drops what it does not know. An
encoding this walk does not expect (a request-level field other than its resources, groups, a
truncated field) and a resource or scope that a rule drops whole send the whole request to the
full engine.

Owns: the walk above, and its memo (ShapeMemo, with every bound it keeps). One memo belongs
to one Policy object: a reloaded policy starts with an empty one, so it never trusts a decision
taken under the previous policy. It holds each shape's bytes (no digest, so no collision can
pass a changed shape as a known one), for copies and rewrites alike. The full engine is reached
only through PerPointEngine, and the bytes are taken apart with relay.wire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.metrics.v1 import metrics_pb2

from relay import wire
from relay.otlp import Signal
from relay.policy import rewrite
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

    def apply_envelope(self, env: Any, signal: Signal, o: Outcome) -> bool: ...

    def strip_unknown(self, msg: Any) -> None: ...


# The shapes of about 100,000 series; a flood of new shapes restarts the memo, never grows it.
_SHAPE_MEMO_BYTES = 4 << 20
# Resources and scopes are a handful per scrape target; more than this is a flood.
_RESOURCES_LIMIT = 1_000
_SCOPES_LIMIT = 1_000

# What a resource or scope level looks like around its items, as bytes -> (the same after the
# policy, the rule events it caused).
Envelopes = dict[bytes, tuple[bytes, Events]]


class ShapeMemo:
    """What the fast path remembers under one policy, each part bounded.

    `shapes`: metric shapes the policy leaves as they are -> the rule events they cause.
    `rewrites`: metric shapes the policy changes by their shape alone -> (what it makes of them,
    a relay.policy.rewrite.Plan; the rule events they cause). Both share one byte budget: past
    it, both are emptied (counted in `evictions`).
    `resources`: a ResourceMetrics' own fields (resource, schema URL), `scopes`: a ScopeMetrics'
    own fields (scope, schema URL), each as bytes -> (its bytes after the policy, the events).
    """

    __slots__ = ("_intern", "_release", "_shape_bytes", "evictions", "resources", "rewrites", "scopes", "shapes")

    def __init__(self, release: Callable[[str], None]) -> None:
        # Called with a metric's name once its shape is remembered: the shape then answers for
        # the whole metric, so the engine can let go of what it memoized per attribute set
        # (keeping both would cost about 1 MiB more per 5,000 series).
        self._release = release
        self.shapes: dict[bytes, Events] = {}
        self.rewrites: dict[bytes, tuple[rewrite.Plan, Events]] = {}
        # Equal attribute entries (and lists of them) in plans, held once.
        self._intern: dict[Any, Any] = {}
        self._shape_bytes = 0
        self.evictions = 0
        self.resources: Envelopes = {}
        self.scopes: Envelopes = {}

    def _reserve(self, size: int) -> None:
        if self._shape_bytes + size > _SHAPE_MEMO_BYTES:
            self.shapes.clear()
            self.rewrites.clear()
            self._intern.clear()
            self._shape_bytes = 0
            self.evictions += 1
        self._shape_bytes += size

    def remember_shape(self, metric: str, shape: bytes, events: Events) -> None:
        self._reserve(len(shape))
        self.shapes[shape] = events
        self._release(metric)

    def remember_rewrite(self, shape: bytes, plan: rewrite.Plan, events: Events) -> None:
        self._reserve(len(shape) + plan.size())
        # The metric's attribute-set decisions are kept: a rewrite answers for this one shape,
        # and a metric whose attribute sets vary from request to request (pushed OTLP) meets new
        # shapes all the time, each decided from those cached decisions.
        self.rewrites[shape] = (plan, events)

    def intern(self) -> dict[Any, Any]:
        return self._intern

    def remember_resource(self, raw: bytes, after: bytes, events: Events) -> None:
        if len(self.resources) >= _RESOURCES_LIMIT:
            self.resources.clear()
        self.resources[raw] = (after, events)

    def remember_scope(self, raw: bytes, after: bytes, events: Events) -> None:
        if len(self.scopes) >= _SCOPES_LIMIT:
            self.scopes.clear()
        self.scopes[raw] = (after, events)


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


# The fields whose bytes the shape holds verbatim: the strict schema need not look inside them.
_IN_SHAPE = ("opentelemetry.proto.common.", "opentelemetry.proto.metrics.v1.Exemplar")
_VARINTS = {_F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_SINT32, _F.TYPE_SINT64,
            _F.TYPE_BOOL, _F.TYPE_ENUM}
_FIXED64 = {_F.TYPE_FIXED64, _F.TYPE_SFIXED64, _F.TYPE_DOUBLE}


def _build_strict() -> Any:
    """StrictMetric: every field of a Metric down to its points, from the installed descriptors.

    Read with it and encoded again without its unknown fields, a metric comes out exactly as
    long as it came in only if nothing in it was unknown: every type is chosen so that encoding
    again never makes a field longer (proto2, so that a zero that was sent is sent again;
    varints as uint64, so none grows; packed numbers as the bytes they are; and what the shape
    holds verbatim, attributes, exemplars and strings, as bytes)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="relay/shadow_strict.proto", package=_PACKAGE, syntax="proto2")
    names: dict[str, str] = {}

    def add(desc: Any) -> str:
        if desc.full_name not in names:
            names[desc.full_name] = name = "Strict" + desc.full_name.rsplit(".", 1)[-1]
            msg = fdp.message_type.add(name=name)
            for f in desc.fields:
                repeated = f.is_repeated
                if f.type == _F.TYPE_MESSAGE and not f.message_type.full_name.startswith(_IN_SHAPE):
                    _add_field(msg, f.name, f.number, _F.TYPE_MESSAGE,
                               _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL, add(f.message_type))
                elif f.type in (_F.TYPE_MESSAGE, _F.TYPE_STRING, _F.TYPE_BYTES) or repeated:
                    _add_field(msg, f.name, f.number, _F.TYPE_BYTES,
                               _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
                elif f.type in _VARINTS:
                    _add_field(msg, f.name, f.number, _F.TYPE_UINT64)
                else:
                    _add_field(msg, f.name, f.number, _F.TYPE_FIXED64 if f.type in _FIXED64 else _F.TYPE_FIXED32)
        return names[desc.full_name]

    root = add(metrics_pb2.Metric.DESCRIPTOR)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{root}"))


_SHADOW = _build()
MetricShape = _SHADOW["Shape"]
StrictMetric = _build_strict()
_RM_SCOPES = _field_number(metrics_pb2.ResourceMetrics, "scope_metrics")
_SM_METRICS = _field_number(metrics_pb2.ScopeMetrics, "metrics")
_EXEMPLAR_TAGS = {kind: bytes([_field_number(point, "exemplars") << 3 | 2]) for kind, point in _POINT_TYPES.items()
                  if "exemplars" in point.DESCRIPTOR.fields_by_name}
assert all(len(t) == 1 and t[0] < 0x80 for t in _EXEMPLAR_TAGS.values()), "one-byte tags"
assert (_RM_SCOPES, _SM_METRICS) == (2, 2), "the walk below assumes these"
# At every level taken apart here, fields 1 and 2 are messages (resource_metrics; resource and
# scope_metrics; scope and metrics): with another wire type they are left to the full parser.
_MESSAGES = (1, 2)


def exactly_known(raw: bytes | memoryview) -> bool:
    """Whether a metric's bytes hold only fields this OTLP version knows, encoded as usual."""
    strict = StrictMetric.FromString(raw)
    strict.DiscardUnknownFields()
    return bool(strict.ByteSize() == len(raw))


def apply_metrics(engine: PerPointEngine, memo: ShapeMemo, body: bytes, o: Outcome) -> bytes:
    """The redacted request, or raises Fallback when the full engine must take it.

    The request, its resources and scopes are taken apart and put back together as bytes
    (a handful of fields per request); only a metric the policy changes is re-encoded."""
    view = memoryview(body)
    out: list[bytes | memoryview] = []
    try:
        for field, _, value in wire.fields(view, _MESSAGES):
            if field != 1:  # not resource_metrics: unknown here, which the full engine decides on
                raise Fallback()
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
    for field, whole, value in wire.fields(view, _MESSAGES):
        if field == _RM_SCOPES:
            sm = _scope_metrics(engine, memo, value, o)
            if sm:
                wire.emit(scopes, field, sm)
        else:
            head.append(whole)
    # Decided even when no scope is left, so that its rules count the same on both paths.
    after = _envelope(engine, memo.resources, memo.remember_resource, metrics_pb2.ResourceMetrics, head, o)
    return [after, *scopes] if scopes else []


def _scope_metrics(engine: PerPointEngine, memo: ShapeMemo, view: memoryview,
                   o: Outcome) -> list[bytes | memoryview]:
    """One ScopeMetrics' content after the policy; empty when none of its metrics is left."""
    head: list[bytes | memoryview] = []
    metrics: list[bytes | memoryview] = []
    shapes, rewrites = memo.shapes, memo.rewrites
    for field, whole, value in wire.fields(view, _MESSAGES):
        if field != _SM_METRICS:
            head.append(whole)
            continue
        shape = MetricShape.FromString(value)
        kind = shape.WhichOneof("data")
        points = len(getattr(shape, kind).data_points) if kind else 0
        shape.DiscardUnknownFields()
        key = shape.SerializeToString()
        known = shapes.get(key)
        # Seen before, the policy changed nothing in it, and nothing in it is new since.
        if known is not None and exactly_known(value):
            o.items_in += points
            o.items_out += points
            for event, n in known:
                o.counts[event] += n
            metrics.append(whole)
            continue
        hit = rewrites.get(key)
        if hit is not None:
            plan, events = hit
            new = None if plan.drop else rewrite.apply(plan, value, engine.strip_unknown)
            if new is not None or plan.drop:
                o.items_in += plan.points
                o.items_out += 0 if plan.drop else plan.points
                for event, n in events:
                    o.counts[event] += n
                if new is not None:
                    wire.emit(metrics, field, [new])
                continue
        raw = bytes(value)
        new, events = _slow_metric(engine, raw, o)
        if new is None:
            memo.remember_rewrite(key, rewrite.dropped(points), events)
            continue
        if new is raw:
            memo.remember_shape(shape.name, key, events)
        else:
            # Changed: remembered when its shape alone decides what the engine makes of it.
            made = rewrite.plan_for(raw, shape, new, engine.strip_unknown, memo.intern())
            if made is not None:
                memo.remember_rewrite(key, made, events)
        wire.emit(metrics, field, [new])
    after = _envelope(engine, memo.scopes, memo.remember_scope, metrics_pb2.ScopeMetrics, head, o)
    return [after, *metrics] if metrics else []


def _envelope(engine: PerPointEngine, seen: Envelopes, remember: Callable[[bytes, bytes, Events], None],
              message: Any, fields: list[bytes | memoryview], o: Outcome) -> bytes:
    """A resource or scope level's own fields after the policy, memoized on their bytes (they
    recur in every request). Decoded by the full parser, so that what it would refuse (a string
    that is not UTF-8, say) is refused here too, with the same DecodeError."""
    raw = b"".join(fields)
    hit = seen.get(raw)
    if hit is None:
        env = message.FromString(raw)
        engine.strip_unknown(env)
        scratch = Outcome()
        if not engine.apply_envelope(env, "metrics", scratch):
            raise Fallback()  # dropped with all its items: the full engine counts them
        hit = (bytes(env.SerializeToString()), tuple(scratch.counts.items()))
        remember(raw, *hit)
    for event, n in hit[1]:
        o.counts[event] += n
    return hit[0]


def _slow_metric(engine: PerPointEngine, raw: bytes, o: Outcome) -> tuple[bytes | None, Events]:
    """One metric through the per-point engine: (None if it is dropped, `raw` itself if the
    policy left it as it was and it re-encodes to the same bytes, else its new bytes; the rule
    events it caused)."""
    m = metrics_pb2.Metric.FromString(raw)
    engine.strip_unknown(m)
    scratch = Outcome()
    # An exemplar starts with its field's tag byte: without that byte anywhere, there is none.
    kind = m.WhichOneof("data")
    tag = _EXEMPLAR_TAGS.get(kind or "")
    keep, changed = engine.apply_metric(m, scratch, exemplars=tag is not None and tag in raw)
    o.items_in += scratch.items_in
    o.items_out += scratch.items_out
    for event, n in scratch.counts.items():
        o.counts[event] += n
    events = tuple(scratch.counts.items())
    if not keep:
        return None, events
    encoded = bytes(m.SerializeToString())
    # Equal bytes: nothing changed and nothing unknown was dropped, so the shape may be remembered.
    return (raw if not changed and encoded == raw else encoded), events
