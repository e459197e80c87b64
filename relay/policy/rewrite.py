"""What the policy made of a metric shape it changes, remembered and applied again as bytes.

Most metrics a policy touches are changed by their shape alone: an attribute dropped, hashed
or renamed, the Prometheus type in the metadata dropped, a name masked. For such a shape the
engine's result differs from its input only in the metric's header (name, description, unit,
metadata) and in each point's attributes; values, timestamps, flags and buckets pass through.
A Plan holds exactly those parts of the engine's output; `apply` puts them into the next
metric of the same shape: the metric is read by protobuf's C parser with a schema (Rewrite)
that is OTLP's own Metric, except that attributes, metadata and exemplars stay bytes, so the
remembered attribute entries replace a point's entries without a Python-level visit of the
rest. Encoded again, the result is byte for byte what the engine gives for the same input:
the schema has the same field numbers, types, oneofs and presence (copied from the installed
descriptors; enums as int32, which encodes the same), so the C encoder writes the same bytes.

A plan is made only when nothing in the result depends on more than the shape (`plan_for`):
no point was dropped or merged, and no two points' attributes now collide (so no later
timestamp can make them merge), and no point has exemplars (they carry values and their own
attributes). A plan is checked once on the metric it was made from: unless it reproduces the
engine's bytes exactly, there is none. Anything else stays on the per-point engine.

Owns: the Rewrite schema, Plan, making one (plan_for) and applying one (apply).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory
from opentelemetry.proto.metrics.v1 import metrics_pb2

from relay.policy.merge import attribute_identity

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "relay.shadow.rewrite"
# What the plan replaces whole, or what excludes a plan (exemplars): kept as their bytes.
_OPAQUE = ("opentelemetry.proto.common.", "opentelemetry.proto.metrics.v1.Exemplar")


def _build() -> Any:
    """Rewrite: OTLP's Metric with the same fields, its opaque messages as bytes."""
    fdp = descriptor_pb2.FileDescriptorProto(name="relay/shadow_rewrite.proto", package=_PACKAGE, syntax="proto3")
    names: dict[str, str] = {}

    def add(desc: Any) -> str:
        if desc.full_name in names:
            return names[desc.full_name]
        name = "R_" + str(desc.full_name).replace(".", "_")
        names[desc.full_name] = name
        msg = fdp.message_type.add()
        desc.CopyToProto(msg)  # fields, oneofs and proto3 `optional` presence, as installed
        msg.name = name
        del msg.nested_type[:]
        del msg.enum_type[:]
        subs = []
        for f in msg.field:
            if f.type == _F.TYPE_ENUM:
                f.type = _F.TYPE_INT32  # an open enum is an int32 on the wire
                f.ClearField("type_name")
            elif f.type == _F.TYPE_MESSAGE:
                sub = desc.fields_by_name[f.name].message_type
                if sub.full_name.startswith(_OPAQUE):
                    f.type = _F.TYPE_BYTES
                    f.ClearField("type_name")
                else:
                    subs.append((f, sub))
        for f, sub in subs:
            f.type_name = f".{_PACKAGE}.{add(sub)}"
        return name

    root = add(metrics_pb2.Metric.DESCRIPTOR)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{root}"))


Rewrite = _build()


@dataclass(frozen=True, slots=True)
class Plan:
    """The engine's output for one shape, less what passes through: `drop` if it drops the
    metric; else the new header and, per point whose attributes change, their new entries."""

    drop: bool
    points: int
    name: str = ""
    description: str = ""
    unit: str = ""
    metadata: tuple[bytes, ...] = ()
    changes: tuple[tuple[int, tuple[bytes, ...]], ...] = ()
    kind: str = ""

    def size(self) -> int:
        """Roughly what it holds, in bytes, for the memo's bound."""
        return (len(self.name) + len(self.description) + len(self.unit) + sum(map(len, self.metadata))
                + sum(16 + sum(map(len, a)) for _, a in self.changes) + 64)


def dropped(points: int) -> Plan:
    return Plan(drop=True, points=points)


def plan_for(raw: bytes, shape: Any, encoded: bytes, strip: Callable[[Any], None],
             intern: dict[Any, Any]) -> Plan | None:
    """A plan that turns `raw` (with this MetricShape) into `encoded`, the engine's output for
    it, or None if the output depends on more than the shape or the plan does not reproduce it.

    `intern` shares equal attribute entries between plans (the same label on many series)."""
    kind = shape.WhichOneof("data")
    if kind is None:
        return None
    before = getattr(shape, kind).data_points
    if any(len(p.exemplars) for p in before if "exemplars" in p.DESCRIPTOR.fields_by_name):
        return None
    out = metrics_pb2.Metric.FromString(encoded)
    if out.WhichOneof("data") != kind:
        return None
    out_points = getattr(out, kind).data_points
    if len(out_points) != len(before):
        return None  # points dropped or merged
    if len(out_points) > 1 and len({attribute_identity(p) for p in out_points}) != len(out_points):
        return None  # colliding identities: whether they merge depends on their timestamps
    after = Rewrite.FromString(encoded)
    changes = []
    for i, (b, a) in enumerate(zip(before, getattr(after, kind).data_points, strict=True)):
        new = tuple(a.attributes)
        if new != tuple(b.attributes):
            changes.append((i, intern.setdefault(new, tuple(intern.setdefault(x, x) for x in new))))
    plan = Plan(drop=False, points=len(before), name=after.name, description=after.description, unit=after.unit,
                metadata=tuple(after.metadata), changes=tuple(changes), kind=kind)
    return plan if apply(plan, raw, strip) == encoded else None


def apply(plan: Plan, raw: bytes | memoryview, strip: Callable[[Any], None]) -> bytes | None:
    """The engine's output for a metric of the plan's shape, or None if the C parser refuses
    it (the engine then decides, and raises what it raises). `strip` is the engine's own
    treatment of unknown fields (Policy.strip_unknown), so both drop or keep the same."""
    try:
        msg = Rewrite.FromString(raw)
    except message.DecodeError:
        return None
    strip(msg)
    msg.name, msg.description, msg.unit = plan.name, plan.description, plan.unit
    msg.metadata[:] = plan.metadata
    points = getattr(msg, plan.kind).data_points
    for i, attrs in plan.changes:
        points[i].attributes[:] = attrs
    return bytes(msg.SerializeToString())
