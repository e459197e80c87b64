"""The compiled redaction policy: applied to each batch as it is prepared for a destination.

Owns: deciding, for every metric, attribute, string value, log body and span name, whether
it leaves as is, hashed, masked or not at all; merging data points whose identities
collide once an attribute is gone (sums add, gauges keep the latest, histograms merge
buckets, summaries keep the latest); and counting every decision per rule. Decisions are
memoized per distinct key, value and attribute set, so the cost follows the number of
distinct values, not of data points; and a metric whose whole shape recurs unchanged does
not reach this engine at all (relay.policy.shapes copies it as bytes, calling back into
apply_metric and apply_resource for what it has not seen).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from typing import Any

from opentelemetry.proto.common.v1 import common_pb2

from relay.otlp import SIGNAL_INFO, Signal
from relay.policy import shapes
from relay.policy.detectors import DETECTORS, Detector, regex_detector
from relay.policy.outcome import Outcome
from relay.policy.schema import KeyRule, PolicyFile, ValueRule

__all__ = ["MASK", "Outcome", "Policy"]

MASK = "***"
_SERIALIZE_KV = common_pb2.KeyValue.SerializeToString
_CACHE_LIMIT = 200_000

# (new text, or None to drop the attribute; drop the whole item?; (rule, action) events)
ValueDecision = tuple[str | None, bool, tuple[tuple[str, str], ...]]


def _scope_ok(rule: KeyRule | ValueRule, signal: Signal, metric: str | None) -> bool:
    if rule.signals and signal not in rule.signals:
        return False
    return not (rule.metrics and (metric is None or not any(fnmatch.fnmatchcase(metric, g) for g in rule.metrics)))


class Policy:
    def __init__(self, pf: PolicyFile, secret: bytes, path: str, sha256: str, loaded_at: float) -> None:
        self.file = pf
        self.secret = secret
        self.path = path
        self.sha256 = sha256
        self.loaded_at = loaded_at
        self._detectors: list[tuple[ValueRule, Detector]] = [
            (r, DETECTORS[r.detector] if r.detector else regex_detector(r.regex or "")) for r in pf.values
        ]
        self._metric_cache: dict[str, tuple[bool, str]] = {}
        self._key_cache: dict[tuple[str, Signal, str | None, str], tuple[str, str]] = {}
        self._rules_cache: dict[tuple[Signal, str | None, str], list[tuple[ValueRule, Detector]]] = {}
        self._value_cache: dict[tuple[Signal, str | None, str, str], ValueDecision] = {}
        self._set_cache: dict[tuple[str, Signal, str | None], dict[tuple[bytes, ...], Any]] = {}
        # What the metrics fast path remembers under this policy, and only this one.
        self.shape_memo = shapes.ShapeMemo(release=self._forget_attribute_sets)

    # -- decisions (memoized) ----------------------------------------------------------------------

    def token(self, value: str) -> str:
        """The deterministic stand-in for a hashed value: HMAC-SHA256 with this installation's secret."""
        return "h:" + hmac.new(self.secret, value.encode(), hashlib.sha256).hexdigest()[:16]

    def hash_candidates(self, text: str) -> list[str]:
        """The substrings of text that a `hash` value rule would replace by a token."""
        return [text[s:e] for rule, det in self._detectors if rule.action == "hash" for s, e in det.spans(text)]

    def metric_allowed(self, name: str) -> tuple[bool, str]:
        hit = self._metric_cache.get(name)
        if hit is None:
            mp = self.file.metrics
            if any(fnmatch.fnmatchcase(name, g) for g in mp.deny):
                hit = (False, "metrics.deny")
            elif any(fnmatch.fnmatchcase(name, g) for g in mp.allow):
                hit = (True, "metrics.allow")
            else:
                hit = (mp.default == "allow", "metrics.default")
            self._bounded(self._metric_cache)[name] = hit
        return hit

    def key_action(self, kind: str, signal: Signal, metric: str | None, key: str) -> tuple[str, str]:
        ck = (kind, signal, metric, key)
        hit = self._key_cache.get(ck)
        if hit is None:
            ap = self.file.resource_attributes if kind == "resource" else self.file.attributes
            section = "resource_attributes" if kind == "resource" else "attributes"
            hit = (ap.default, f"{section}.default")
            for r in ap.rules:
                if fnmatch.fnmatchcase(key, r.key) and _scope_ok(r, signal, metric):
                    hit = (r.action, r.name or f"{section}:{r.key}")
                    break
            self._bounded(self._key_cache)[ck] = hit
        return hit

    def _value_rules(self, signal: Signal, metric: str | None, key: str) -> list[tuple[ValueRule, Detector]]:
        ck = (signal, metric, key)
        rules = self._rules_cache.get(ck)
        if rules is None:
            rules = [(r, d) for r, d in self._detectors if _scope_ok(r, signal, metric)
                     and (not r.keys or any(fnmatch.fnmatchcase(key, g) for g in r.keys))]
            self._bounded(self._rules_cache)[ck] = rules
        return rules

    def value(self, signal: Signal, metric: str | None, key: str, text: str) -> ValueDecision:
        """(new text or None to drop the attribute, drop the whole item?, (rule, action) events)."""
        ck = (signal, metric, key, text)
        hit = self._value_cache.get(ck)
        if hit is not None:
            return hit
        rules = self._value_rules(signal, metric, key)
        events: list[tuple[str, str]] = []
        out: str | None = text
        drop_item = False
        for rule, det in rules:
            if out is None:
                break
            spans = det.spans(out)
            if not spans:
                continue
            if rule.action == "drop_item":
                events.append((rule.label, "dropped_item"))
                out, drop_item = None, True
                break
            if rule.action == "drop_attribute":
                events.append((rule.label, "dropped"))
                out = None
                break
            for start, end in reversed(spans):
                repl = MASK if rule.action == "mask" else self.token(out[start:end])
                out = out[:start] + repl + out[end:]
            events.append((rule.label, "masked" if rule.action == "mask" else "hashed"))
        hit = (out, drop_item, tuple(events))
        self._bounded(self._value_cache)[ck] = hit
        return hit

    def _forget_attribute_sets(self, metric: str) -> None:
        """The fast path now answers for this metric's whole shape (ShapeMemo.remember_shape)."""
        self._set_cache.pop(("attributes", "metrics", metric), None)

    @staticmethod
    def _bounded(cache: dict[Any, Any]) -> dict[Any, Any]:
        if len(cache) >= _CACHE_LIMIT:  # a flood of distinct values must not grow memory without bound
            cache.clear()
        return cache

    # -- applying ----------------------------------------------------------------------------------

    def apply(self, signal: Signal, body: bytes) -> tuple[bytes, Outcome]:
        if signal == "metrics":
            try:
                outcome = Outcome()
                return shapes.apply_metrics(self, self.shape_memo, body, outcome), outcome
            except shapes.Fallback:
                pass
        return self.apply_per_point(signal, body)

    def apply_per_point(self, signal: Signal, body: bytes) -> tuple[bytes, Outcome]:
        """The full engine alone: decode, visit every item, encode. Metrics take it when the
        fast path cannot; the fast path is tested against it."""
        outcome = Outcome()
        msg = SIGNAL_INFO[signal].request()
        msg.ParseFromString(body)
        if signal == "metrics":
            self._metrics(msg, outcome)
        elif signal == "logs":
            self._logs(msg, outcome)
        else:
            self._traces(msg, outcome)
        return msg.SerializeToString(), outcome

    def _attrs(self, kvs: Any, kind: str, signal: Signal, metric: str | None, o: Outcome) -> tuple[bool, bool]:
        """Apply key and value rules to a KeyValue list in place; returns (identity changed, drop
        the item). Memoized per distinct attribute set: the same series recurs in every scrape,
        so after the first one a point costs a lookup, not a walk through its attributes."""
        parts = tuple(map(_SERIALIZE_KV, kvs))
        return self._apply_decision(kvs, self._attribute_set_decision(kind, signal, metric, parts), o)

    def _set_cache_for(self, kind: str, signal: Signal, metric: str | None) -> dict[tuple[bytes, ...], Any]:
        ck = (kind, signal, metric)
        sets = self._set_cache.get(ck)
        if sets is None:
            sets = self._bounded(self._set_cache)[ck] = {}
        return sets

    def _attribute_set_decision(self, kind: str, signal: Signal, metric: str | None,
                                parts: tuple[bytes, ...]) -> Any:
        """(identity changed, drop item, replacement attributes or None, events) for one attribute set."""
        sets = self._set_cache_for(kind, signal, metric)
        decision = sets.get(parts)
        if decision is None:
            scratch_list = common_pb2.KeyValueList()
            for b in parts:
                scratch_list.values.add().MergeFromString(b)
            scratch = Outcome()
            changed, drop = self._attrs_uncached(scratch_list.values, kind, signal, metric, scratch)
            new_parts = tuple(map(_SERIALIZE_KV, scratch_list.values))
            replacement = None if new_parts == parts else new_parts
            decision = (changed, drop, replacement, tuple(scratch.counts.items()))
            self._bounded(sets)[parts] = decision
        return decision

    @staticmethod
    def _apply_decision(kvs: Any, decision: Any, o: Outcome) -> tuple[bool, bool]:
        changed, drop, replacement, events = decision
        for (rule, action), n in events:
            o.counts[(rule, action)] += n
        if replacement is not None and not drop:
            del kvs[:]
            for b in replacement:
                kvs.add().MergeFromString(b)
        return changed, drop

    def _attrs_uncached(self, kvs: Any, kind: str, signal: Signal, metric: str | None,
                        o: Outcome) -> tuple[bool, bool]:
        changed = False
        for i in range(len(kvs) - 1, -1, -1):
            kv = kvs[i]
            action, rule = self.key_action(kind, signal, metric, kv.key)
            if action == "drop":
                o.add(rule, "dropped")
                del kvs[i]
                changed = True
            elif action == "hash":
                kv.value.string_value = self.token(_as_text(kv.value))
                o.add(rule, "hashed")
            elif action == "mask":
                kv.value.string_value = MASK
                o.add(rule, "masked")
                changed = True
            else:
                result = self._any_value(kv.value, signal, metric, kv.key, o)
                if result == "drop_item":
                    return True, True
                if result == "drop_attribute":
                    del kvs[i]
                    changed = True
                elif result == "masked":
                    changed = True
        return changed, False

    def _any_value(self, av: Any, signal: Signal, metric: str | None, key: str, o: Outcome) -> str:
        """Value rules over an AnyValue's strings (nested arrays and maps included)."""
        kind = av.WhichOneof("value")
        if kind == "string_value":
            new, drop_item, events = self.value(signal, metric, key, av.string_value)
            for rule, action in events:
                o.add(rule, action)
            if drop_item:
                return "drop_item"
            if new is None:
                return "drop_attribute"
            if new != av.string_value:
                av.string_value = new
                return "masked"
            return "kept"
        result = "kept"
        if kind == "array_value":
            children = list(av.array_value.values)
        elif kind == "kvlist_value":
            children = [kv.value for kv in av.kvlist_value.values]
        else:
            return result
        for child in children:
            v = self._any_value(child, signal, metric, key, o)
            if v == "drop_item":
                return v
            if v == "drop_attribute":  # inside a structure: blank the leaf rather than reshape it
                child.string_value = MASK
                result = "masked"
            elif v == "masked":
                result = "masked"
        return result

    def apply_resource(self, res: Any, signal: Signal, o: Outcome) -> None:
        self._attrs(res.attributes, "resource", signal, None, o)

    def _metrics(self, msg: Any, o: Outcome) -> None:
        for rm in msg.resource_metrics:
            self.apply_resource(rm.resource, "metrics", o)
            for sm in rm.scope_metrics:
                for mi in range(len(sm.metrics) - 1, -1, -1):
                    if not self.apply_metric(sm.metrics[mi], o)[0]:
                        del sm.metrics[mi]
        _prune(msg.resource_metrics, "scope_metrics", "metrics")

    def apply_metric(self, m: Any, o: Outcome, exemplars: bool = True) -> tuple[bool, bool]:
        """Apply the policy to one Metric in place: (keep it?, changed?). `exemplars=False`
        promises that no point has any (looking costs a third of a microsecond a point)."""
        kind = m.WhichOneof("data")
        points = getattr(m, kind).data_points if kind else []
        o.items_in += len(points)
        allowed, rule = self.metric_allowed(m.name)
        if not allowed:
            o.add(rule, "dropped_item", len(points))
            return False, True
        exemplars = exemplars and kind != "summary"  # summaries have none
        changed = collided = False
        doomed = []
        sets = self._set_cache_for("attributes", "metrics", m.name)
        for pi, dp in enumerate(points):
            # One lookup per point for an attribute set seen before.
            kvs = dp.attributes
            parts = tuple(map(_SERIALIZE_KV, kvs))
            decision = sets.get(parts) or self._attribute_set_decision("attributes", "metrics", m.name, parts)
            if decision[3] or decision[2] is not None:
                self._apply_decision(kvs, decision, o)
                changed = changed or decision[2] is not None
            if decision[1]:
                doomed.append(pi)
            collided = collided or decision[0]
            # Exemplars carry attributes of their own (those filtered from the point's): the same
            # rules apply, and an exemplar whose attributes would drop the item is dropped. A point
            # with exemplars is always re-encoded (its shape holds their values, so it never recurs).
            if exemplars and self._exemplars(dp.exemplars, m.name, o):
                changed = True
        for pi in reversed(doomed):
            del points[pi]
        if collided and len(points) > 1:
            merged = _merge_points(kind or "", m, points)
            if merged:
                o.add(f"merge:{m.name}", "merged", merged)
        changed = changed or bool(doomed) or collided
        if not len(points):
            return False, True
        o.items_out += len(points)
        return True, changed

    def _exemplars(self, exemplars: Any, metric: str, o: Outcome) -> bool:
        """Apply the attribute rules to a point's exemplars; an exemplar whose attributes would
        drop the item is dropped. True if there were any (they are then always re-encoded)."""
        count = len(exemplars)
        for ei in range(count - 1, -1, -1):
            if self._attrs(exemplars[ei].filtered_attributes, "attributes", "metrics", metric, o)[1]:
                del exemplars[ei]
        return count > 0

    def _logs(self, msg: Any, o: Outcome) -> None:
        for rl in msg.resource_logs:
            self.apply_resource(rl.resource, "logs", o)
            for sl in rl.scope_logs:
                records = sl.log_records
                o.items_in += len(records)
                for i in range(len(records) - 1, -1, -1):
                    lr = records[i]
                    _, drop = self._attrs(lr.attributes, "attributes", "logs", None, o)
                    if not drop and lr.HasField("body"):
                        drop = self._any_value(lr.body, "logs", None, "body", o) == "drop_item"
                    if drop:
                        del records[i]
                o.items_out += len(records)
        _prune(msg.resource_logs, "scope_logs", "log_records")

    def _traces(self, msg: Any, o: Outcome) -> None:
        for rs in msg.resource_spans:
            self.apply_resource(rs.resource, "traces", o)
            for ss in rs.scope_spans:
                spans = ss.spans
                o.items_in += len(spans)
                for i in range(len(spans) - 1, -1, -1):
                    sp = spans[i]
                    _, drop = self._attrs(sp.attributes, "attributes", "traces", None, o)
                    if not drop:
                        new, drop, events = self.value("traces", None, "span.name", sp.name)
                        for rule, action in events:
                            o.add(rule, action)
                        if not drop:
                            sp.name = new if new is not None else MASK
                    for ev in sp.events:
                        if not drop:
                            drop = self._attrs(ev.attributes, "attributes", "traces", None, o)[1]
                    for link in sp.links:
                        if not drop:
                            drop = self._attrs(link.attributes, "attributes", "traces", None, o)[1]
                    if drop:
                        del spans[i]
                o.items_out += len(spans)
        _prune(msg.resource_spans, "scope_spans", "spans")


def _as_text(av: Any) -> str:
    kind = av.WhichOneof("value")
    return "" if kind is None else str(getattr(av, kind)) if kind != "string_value" else av.string_value


def _identity(dp: Any) -> tuple[Any, ...]:
    attrs = tuple(sorted((kv.key, kv.value.SerializeToString()) for kv in dp.attributes))
    return attrs, dp.start_time_unix_nano, dp.time_unix_nano


def _merge_points(kind: str, metric: Any, points: Any) -> int:
    """Merge data points whose identity now collides; returns how many were merged away."""
    first: dict[tuple[Any, ...], Any] = {}
    doomed: list[int] = []
    for i, dp in enumerate(points):
        ident = _identity(dp)
        keep = first.get(ident)
        if keep is None:
            first[ident] = dp
            continue
        if kind == "sum":
            if keep.WhichOneof("value") == "as_int" and dp.WhichOneof("value") == "as_int":
                keep.as_int += dp.as_int
            else:
                total = _num(keep) + _num(dp)
                keep.as_double = total
        elif kind == "histogram" and list(keep.explicit_bounds) == list(dp.explicit_bounds):
            keep.count += dp.count
            keep.sum += dp.sum
            for b in range(len(keep.bucket_counts)):
                keep.bucket_counts[b] += dp.bucket_counts[b]
        else:  # gauges and summaries (and unmergeable histograms): the latest point stands
            if dp.time_unix_nano >= keep.time_unix_nano:
                keep.CopyFrom(dp)
        doomed.append(i)
    for i in reversed(doomed):
        del points[i]
    return len(doomed)


def _num(dp: Any) -> float:
    return float(dp.as_int) if dp.WhichOneof("value") == "as_int" else float(dp.as_double)


def _prune(resources: Any, scopes_field: str, items_field: str) -> None:
    """Drop scopes and resources left empty by the policy."""
    for ri in range(len(resources) - 1, -1, -1):
        scopes = getattr(resources[ri], scopes_field)
        for si in range(len(scopes) - 1, -1, -1):
            if not len(getattr(scopes[si], items_field)):
                del scopes[si]
        if not len(scopes):
            del resources[ri]
