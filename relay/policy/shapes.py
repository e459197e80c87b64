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

The memo lives on one Policy object: a reloaded policy starts with an empty one, so it never
trusts a decision taken under the previous policy. It holds each shape's bytes (no digest, so
no collision can pass a changed shape as a known one), bounded in bytes by the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

if TYPE_CHECKING:
    from relay.policy.engine import Outcome, Policy

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
assert (_RM_RESOURCE, _RM_SCOPES, _SM_SCOPE, _SM_METRICS) == (1, 2, 1, 2), "the walk in _fields assumes these"


def apply_metrics(policy: Policy, body: bytes, o: Outcome) -> bytes:
    """The redacted request, or raises Fallback when the full engine must take it.

    The request, its resources and scopes are taken apart and put back together as bytes
    (a handful of fields per request); only a metric the policy changes is re-encoded."""
    view = memoryview(body)
    out: list[bytes | memoryview] = []
    for field, whole, value in _fields(view):
        if field != 1:  # not resource_metrics: an unknown field, kept as it came
            out.append(whole)
            continue
        rm = _resource_metrics(policy, value, o)
        if rm:
            _emit(out, 1, rm)
    return b"".join(out)


def _resource_metrics(policy: Policy, view: memoryview, o: Outcome) -> list[bytes | memoryview]:
    """One ResourceMetrics' content after the policy; empty when nothing of it is left."""
    head: list[bytes | memoryview] = []
    scopes: list[bytes | memoryview] = []
    seen_resource = False
    for field, whole, value in _fields(view):
        if field == _RM_RESOURCE:
            if seen_resource:  # protobuf would merge two: leave that to the full parser
                raise Fallback()
            seen_resource = True
            _emit(head, field, [_resource(policy, bytes(value), o)])
        elif field == _RM_SCOPES:
            sm = _scope_metrics(policy, value, o)
            if sm:
                _emit(scopes, field, sm)
        else:
            head.append(whole)
    _check(policy, metrics_pb2.ResourceMetrics, head)
    return head + scopes if scopes else []


def _scope_metrics(policy: Policy, view: memoryview, o: Outcome) -> list[bytes | memoryview]:
    """One ScopeMetrics' content after the policy; empty when none of its metrics is left."""
    head: list[bytes | memoryview] = []
    metrics: list[bytes | memoryview] = []
    seen_scope = False
    shapes = policy.shape_memo
    for field, whole, value in _fields(view):
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
        new, events = _slow_metric(policy, raw, o)
        if new is raw:
            policy.remember_shape(shape.name, key, events)
        if new is not None:
            _emit(metrics, field, [new])
    _check(policy, metrics_pb2.ScopeMetrics, head)
    return head + metrics if metrics else []


def _check(policy: Policy, message: Any, fields: list[bytes | memoryview]) -> None:
    """Decode what is copied around the metrics (scope, schema URLs, fields of a newer OTLP)
    once per distinct content, so that what the full parser would refuse (a string that is
    not UTF-8, say) is refused here too, with the same DecodeError."""
    raw = b"".join(fields)
    if raw in policy.checked:
        return
    message.FromString(raw)
    if len(policy.checked) >= 1_000:
        policy.checked.clear()
    policy.checked.add(raw)


def _fields(view: memoryview) -> Iterator[tuple[int, memoryview, memoryview]]:
    """(field number, the whole field with its tag, its value) for each field of a message.
    Only fields 1 and 2 matter at the levels taken apart here, and both are length-delimited:
    either with another wire type is left to the full parser."""
    pos, end = 0, len(view)
    while pos < end:
        start = pos
        tag, pos = _varint(view, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0:  # not a field number: garbage, which the full parser refuses
            raise Fallback()
        if wire == 2:
            length, pos = _varint(view, pos)
            value_start, pos = pos, pos + length
        elif field in (1, 2):
            raise Fallback()
        elif wire == 0:
            value_start = pos
            _, pos = _varint(view, pos)
        elif wire == 1:
            value_start, pos = pos, pos + 8
        elif wire == 5:
            value_start, pos = pos, pos + 4
        else:  # groups, or garbage
            raise Fallback()
        if pos > end:
            raise Fallback()
        yield field, view[start:pos], view[value_start:pos]


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise Fallback()
        b = view[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _emit(out: list[bytes | memoryview], field: int, content: list[bytes | memoryview]) -> None:
    """Append field `field` (length-delimited) holding the concatenation of `content`."""
    out.append(_encode_varint(field << 3 | 2))
    out.append(_encode_varint(sum(len(c) for c in content)))
    out.extend(content)


def _resource(policy: Policy, raw: bytes, o: Outcome) -> bytes:
    """The resource after the policy, memoized on its bytes (it recurs in every request)."""
    memo = policy.resource_memo
    hit = memo.get(raw)
    if hit is None:
        res = resource_pb2.Resource.FromString(raw)
        scratch = type(o)()
        policy.apply_resource(res, "metrics", scratch)
        hit = (bytes(res.SerializeToString()), tuple(scratch.counts.items()))
        if len(memo) >= 1_000:
            memo.clear()
        memo[raw] = hit
    for event, n in hit[1]:
        o.counts[event] += n
    return hit[0]


def _slow_metric(policy: Policy, raw: bytes, o: Outcome) -> tuple[bytes | None, tuple[Any, ...]]:
    """One metric through the per-point engine: (None if it is dropped, `raw` itself if the
    policy left it as it was, else its new bytes; the rule events it caused)."""
    m = metrics_pb2.Metric.FromString(raw)
    scratch = type(o)()
    # An exemplar starts with its field's tag byte: without that byte anywhere, there is none.
    kind = m.WhichOneof("data")
    tag = _EXEMPLAR_TAGS.get(kind or "")
    keep, changed = policy.apply_metric(m, scratch, exemplars=tag is not None and tag in raw)
    o.items_in += scratch.items_in
    o.items_out += scratch.items_out
    for event, n in scratch.counts.items():
        o.counts[event] += n
    if not keep:
        return None, ()
    return (bytes(m.SerializeToString()) if changed else raw), tuple(scratch.counts.items())
