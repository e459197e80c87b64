"""Which OTLP field gets which rule: the per-point visit of a request, for all three signals.

Owns: the list of every field that can carry text, and what covers it (docs/privacy.md shows
the same list to the reviewer; tests/unit/test_policy_coverage.py plants a secret in each):

- attribute lists (resource, scope, data point, exemplar, metric metadata, log record, span,
  event, link): the key rules, then the value rules over the key and every string inside the
  value (map keys included; bytes never leave);
- resource entity refs: a key survives only if it names an attribute the resource still has;
  their type and schema URL are scanned by the value rules;
- every other string (schema URLs, scope name and version, metric name, description and unit,
  log body, severity text and event name, span name, status message and trace state, event
  name, link trace state): the value rules, under the key names in TEXT_KEYS.

A resource or scope that a rule drops takes all its items with it. Unknown fields were dropped
before this visit (Policy.strip_unknown).
"""

from __future__ import annotations

from typing import Any, Protocol

from opentelemetry.proto.common.v1 import common_pb2

from relay.otlp import Signal
from relay.policy.merge import merge_points
from relay.policy.outcome import Outcome


class Policy(Protocol):
    """The engine's decisions this visit applies (relay.policy.engine.Policy)."""

    def metric_allowed(self, name: str) -> tuple[bool, str]: ...

    def attrs(self, kvs: Any, kind: str, signal: Signal, metric: str | None, o: Outcome) -> tuple[bool, bool]: ...

    def any_value(self, av: Any, signal: Signal, metric: str | None, key: str, o: Outcome) -> str: ...

    def scan_field(self, msg: Any, name: str, signal: Signal, metric: str | None, key: str, o: Outcome) -> bool: ...

    def set_cache_for(self, kind: str, signal: Signal, metric: str | None) -> dict[tuple[bytes, ...], Any]: ...

    def attribute_set_decision(self, kind: str, signal: Signal, metric: str | None,
                               parts: tuple[bytes, ...]) -> Any: ...

    def apply_decision(self, kvs: Any, decision: Any, o: Outcome) -> tuple[str | None, bool]: ...

# The key a value rule's `keys:` globs see for each text field outside attributes.
TEXT_KEYS = (
    "schema_url", "entity_ref.type", "scope.name", "scope.version",
    "metric.name", "metric.description", "metric.unit",
    "body", "log.severity_text", "log.event_name",
    "span.name", "span.status.message", "span.trace_state", "span.event.name", "span.link.trace_state",
)
# Per signal: (resource-level list, scope-level list, item list).
_LAYOUT = {
    "metrics": ("resource_metrics", "scope_metrics", "metrics"),
    "logs": ("resource_logs", "scope_logs", "log_records"),
    "traces": ("resource_spans", "scope_spans", "spans"),
}
ENVELOPE_RULE = "envelope"
_SERIALIZE_KV = common_pb2.KeyValue.SerializeToString


def apply_request(p: Policy, signal: Signal, msg: Any, o: Outcome) -> None:
    resources_field, scopes_field, items_field = _LAYOUT[signal]
    resources = getattr(msg, resources_field)
    for ri in range(len(resources) - 1, -1, -1):
        rx = resources[ri]
        if not apply_envelope(p, rx, signal, o):
            _drop_envelope(rx, scopes_field, items_field, o)
            del resources[ri]
            continue
        scopes = getattr(rx, scopes_field)
        for si in range(len(scopes) - 1, -1, -1):
            sx = scopes[si]
            if not apply_envelope(p, sx, signal, o):
                _drop_envelope(sx, None, items_field, o)
                del scopes[si]
                continue
            items = getattr(sx, items_field)
            if signal == "metrics":
                for mi in range(len(items) - 1, -1, -1):
                    if not apply_metric(p, items[mi], o)[0]:
                        del items[mi]
            else:
                visit = _log_record if signal == "logs" else _span
                o.items_in += len(items)
                for i in range(len(items) - 1, -1, -1):
                    if visit(p, items[i], o):
                        del items[i]
                o.items_out += len(items)
            if not len(items):  # left empty by the policy
                del scopes[si]
        if not len(scopes):
            del resources[ri]


def _drop_envelope(env: Any, scopes_field: str | None, items_field: str, o: Outcome) -> None:
    """Count the items of a resource or scope that a rule dropped whole."""
    scopes = getattr(env, scopes_field) if scopes_field else [env]
    n = 0
    for sx in scopes:
        for item in getattr(sx, items_field):
            if items_field == "metrics":
                kind = item.WhichOneof("data")
                n += len(getattr(item, kind).data_points) if kind else 0
            else:
                n += 1
    o.items_in += n
    o.add(ENVELOPE_RULE, "dropped_item", n)


def apply_envelope(p: Policy, env: Any, signal: Signal, o: Outcome) -> bool:
    """A ResourceX or ScopeX's own fields in place; False when a rule drops it whole."""
    names = env.DESCRIPTOR.fields_by_name
    if "resource" in names and not _resource(p, env.resource, signal, o):
        return False
    if "scope" in names and not _scope(p, env.scope, signal, o):
        return False
    return not p.scan_field(env, "schema_url", signal, None, "schema_url", o)


def _resource(p: Policy, res: Any, signal: Signal, o: Outcome) -> bool:
    if p.attrs(res.attributes, "resource", signal, None, o)[1]:
        return False
    present = {kv.key for kv in res.attributes}
    refs = res.entity_refs
    for i in range(len(refs) - 1, -1, -1):
        ref = refs[i]
        for keys in (ref.id_keys, ref.description_keys):
            kept = [k for k in keys if k in present]
            if len(kept) != len(keys):
                o.add("resource.entity_refs", "dropped", len(keys) - len(kept))
                del keys[:]
                keys.extend(kept)
        if not ref.id_keys:  # it identifies nothing that is left
            del refs[i]
            continue
        if (p.scan_field(ref, "type", signal, None, "entity_ref.type", o)
                or p.scan_field(ref, "schema_url", signal, None, "schema_url", o)):
            return False
    return True


def _scope(p: Policy, scope: Any, signal: Signal, o: Outcome) -> bool:
    if p.attrs(scope.attributes, "attributes", signal, None, o)[1]:
        return False
    return not (p.scan_field(scope, "name", signal, None, "scope.name", o)
                or p.scan_field(scope, "version", signal, None, "scope.version", o))


def apply_metric(p: Policy, m: Any, o: Outcome, exemplars: bool = True) -> tuple[bool, bool]:
    """Apply the policy to one Metric in place: (keep it?, changed?)."""
    kind = m.WhichOneof("data")
    points = getattr(m, kind).data_points if kind else []
    o.items_in += len(points)
    name = m.name
    allowed, rule = p.metric_allowed(name)
    if not allowed:
        o.add(rule, "dropped_item", len(points))
        return False, True
    texts = (m.name, m.description, m.unit)
    if (p.scan_field(m, "name", "metrics", name, "metric.name", o)
            or p.scan_field(m, "description", "metrics", name, "metric.description", o)
            or p.scan_field(m, "unit", "metrics", name, "metric.unit", o)):
        return False, True
    changed = texts != (m.name, m.description, m.unit)
    if len(m.metadata):
        meta_changed, drop = p.attrs(m.metadata, "attributes", "metrics", name, o)
        if drop:
            return False, True
        changed = changed or meta_changed
    exemplars = exemplars and kind != "summary"  # summaries have none
    merge_rule: str | None = None
    doomed = []
    sets = p.set_cache_for("attributes", "metrics", name)
    for pi, dp in enumerate(points):
        # One lookup per point for an attribute set seen before.
        kvs = dp.attributes
        parts = tuple(map(_SERIALIZE_KV, kvs))
        decision = sets.get(parts) or p.attribute_set_decision("attributes", "metrics", name, parts)
        if decision[3] or decision[2] is not None:
            p.apply_decision(kvs, decision, o)
            changed = changed or decision[2] is not None
        if decision[1]:
            doomed.append(pi)
        merge_rule = merge_rule or decision[0]
        # Exemplars carry attributes of their own (those filtered from the point's): the same
        # rules apply, and an exemplar whose attributes would drop the item is dropped. A point
        # with exemplars is always re-encoded (its shape holds their values, so it never recurs).
        if exemplars and _exemplars(p, dp.exemplars, name, o):
            changed = True
    for pi in reversed(doomed):
        del points[pi]
    if merge_rule is not None and len(points) > 1:
        merged = merge_points(kind or "", points)
        if merged:
            o.add(merge_rule, "merged", merged)
    changed = changed or bool(doomed) or merge_rule is not None
    if not len(points):
        return False, True
    o.items_out += len(points)
    return True, changed


def _exemplars(p: Policy, exemplars: Any, metric: str, o: Outcome) -> bool:
    """Apply the attribute rules to a point's exemplars; an exemplar whose attributes would
    drop the item is dropped. True if there were any (they are then always re-encoded)."""
    count = len(exemplars)
    for ei in range(count - 1, -1, -1):
        if p.attrs(exemplars[ei].filtered_attributes, "attributes", "metrics", metric, o)[1]:
            del exemplars[ei]
    return count > 0


def _log_record(p: Policy, lr: Any, o: Outcome) -> bool:
    """The policy over one log record in place; True: drop it."""
    if p.attrs(lr.attributes, "attributes", "logs", None, o)[1]:
        return True
    if lr.HasField("body"):
        result = p.any_value(lr.body, "logs", None, "body", o)
        if result == "drop_item":
            return True
        if result == "drop_attribute":
            lr.ClearField("body")
    return (p.scan_field(lr, "severity_text", "logs", None, "log.severity_text", o)
            or p.scan_field(lr, "event_name", "logs", None, "log.event_name", o))


def _span(p: Policy, sp: Any, o: Outcome) -> bool:
    """The policy over one span, its events and links in place; True: drop it."""
    if p.attrs(sp.attributes, "attributes", "traces", None, o)[1]:
        return True
    if (p.scan_field(sp, "name", "traces", None, "span.name", o)
            or p.scan_field(sp, "trace_state", "traces", None, "span.trace_state", o)
            or p.scan_field(sp.status, "message", "traces", None, "span.status.message", o)):
        return True
    for ev in sp.events:
        if (p.attrs(ev.attributes, "attributes", "traces", None, o)[1]
                or p.scan_field(ev, "name", "traces", None, "span.event.name", o)):
            return True
    for link in sp.links:
        if (p.attrs(link.attributes, "attributes", "traces", None, o)[1]
                or p.scan_field(link, "trace_state", "traces", None, "span.link.trace_state", o)):
            return True
    return False
