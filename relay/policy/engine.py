"""The compiled redaction policy: applied to each batch as it is prepared for a destination.

Owns: the decisions, memoized per distinct key, value and attribute set (metric allowed?
attribute kept, hashed, masked or dropped? what do the value rules make of a text?), so the
cost follows the number of distinct values, not of data points; applying them to attribute
lists and AnyValues (map keys and bytes included); the per-point path over a whole request,
which drops the fields the installed OTLP does not know (the policy can vouch only for what
it can read); and counting every decision per rule. Which field of which signal gets which
rule is relay.policy.fields; a metric whose whole shape recurs does not reach this engine at
all when its shape alone decides the result (relay.policy.shapes copies or rewrites it as
bytes, calling back into it for what it has not seen).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
from typing import Any

from opentelemetry.proto.common.v1 import common_pb2

from relay.otlp import SIGNAL_INFO, Signal
from relay.policy import fields, logs, shapes
from relay.policy.detectors import DETECTORS, Detector, regex_detector
from relay.policy.literals import absent, required
from relay.policy.outcome import Outcome
from relay.policy.schema import KeyRule, PolicyFile, ValueRule

__all__ = ["MASK", "Outcome", "Policy"]

MASK = "***"
_SERIALIZE_KV = common_pb2.KeyValue.SerializeToString
_CACHE_LIMIT = 200_000
# A key that a glob rule lets out must look like an attribute name, so that an attacker-chosen
# suffix (`jvm.<anything>`) cannot carry data: dot-separated [a-z0-9_] segments that start with
# a letter or `_` (so no address hides as `jvm.10.1.2.3`), bounded.
_NAME_LIKE = re.compile(r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*")
NAME_MAX = 96
# Bytes cannot be scanned for what they hold: they never leave (counted under this label).
BYTES_RULE = "values.bytes"

# (new text, or None to drop the attribute; drop the whole item?; (rule, action) events)
ValueDecision = tuple[str | None, bool, tuple[tuple[str, str], ...]]


def _scope_ok(rule: KeyRule | ValueRule, signal: Signal, metric: str | None) -> bool:
    if rule.signals and signal not in rule.signals:
        return False
    return not (rule.metrics and (metric is None or not any(fnmatch.fnmatchcase(metric, g) for g in rule.metrics)))


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class Policy:
    def __init__(self, pf: PolicyFile, secret: bytes, path: str, sha256: str, loaded_at: float) -> None:
        self.file = pf
        self.secret = secret
        self.path = path
        self.sha256 = sha256
        self.loaded_at = loaded_at
        self.keep_unknown_fields = pf.unknown_fields == "keep"
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
        self.body_memo = logs.BodyMemo()  # log bodies' decisions, bounded by their length

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

    def name_like(self, key: str) -> bool:
        """Whether a key looks like an attribute name and no value rule finds anything in it."""
        return (len(key) <= NAME_MAX and _NAME_LIKE.fullmatch(key) is not None
                and not any(det.spans(key) for _, det in self._detectors))

    def key_action(self, kind: str, signal: Signal, metric: str | None, key: str) -> tuple[str, str]:
        ck = (kind, signal, metric, key)
        hit = self._key_cache.get(ck)
        if hit is None:
            ap = self.file.resource_attributes if kind == "resource" else self.file.attributes
            section = "resource_attributes" if kind == "resource" else "attributes"
            hit = (ap.default, f"{section}.default")
            for r in ap.rules:
                if not (fnmatch.fnmatchcase(key, r.key) and _scope_ok(r, signal, metric)):
                    continue
                # A glob vouches only for keys that look like names; a rule that drops vouches for nothing.
                if r.action != "drop" and _is_glob(r.key) and not self.name_like(key):
                    continue
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
        if hit is None:
            hit = self._bounded(self._value_cache)[ck] = self.decide(signal, metric, key, text)
        return hit

    def decide(self, signal: Signal, metric: str | None, key: str, text: str) -> ValueDecision:
        """value() unmemoized: for texts that seldom recur (log bodies), which would crowd the memo."""
        rules = self._value_rules(signal, metric, key)
        events: list[tuple[str, str]] = []
        out: str | None = text
        drop_item = False
        for rule, det in rules:
            if out is None:
                break
            if absent(required(det.pattern), out):  # it cannot match: skip the regex
                continue
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
        return out, drop_item, tuple(events)

    def scan(self, signal: Signal, metric: str | None, key: str, text: str, o: Outcome) -> tuple[str | None, bool]:
        """The value rules over one text, counted: (new text or None to drop it, drop the item?)."""
        new, drop_item, events = self.value(signal, metric, key, text)
        for rule, action in events:
            o.add(rule, action)
        return new, drop_item

    def scan_field(self, msg: Any, name: str, signal: Signal, metric: str | None, key: str, o: Outcome) -> bool:
        """The value rules over one string field, in place (a text to drop is blanked); True: drop the item."""
        text = getattr(msg, name)
        if not text:
            return False
        new, drop_item = self.scan(signal, metric, key, text, o)
        if not drop_item and new != text:
            setattr(msg, name, MASK if new is None else new)
        return drop_item

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
        elif signal == "logs":
            return logs.apply_logs(self, body, self.body_memo)
        return self.apply_per_point(signal, body)

    def apply_per_point(self, signal: Signal, body: bytes) -> tuple[bytes, Outcome]:
        """The full engine alone: decode, visit every item, encode. Metrics take it when the
        fast path cannot; the fast path is tested against it."""
        outcome = Outcome()
        msg = SIGNAL_INFO[signal].request()
        msg.ParseFromString(body)
        self.strip_unknown(msg)
        fields.apply_request(self, signal, msg, outcome)
        return msg.SerializeToString(), outcome

    def strip_unknown(self, msg: Any) -> None:
        """Drop the fields this OTLP version does not know, at every level (unless the policy keeps them)."""
        if not self.keep_unknown_fields:
            msg.DiscardUnknownFields()

    def attrs(self, kvs: Any, kind: str, signal: Signal, metric: str | None, o: Outcome) -> tuple[bool, bool]:
        """Apply key and value rules to a KeyValue list in place; returns (identity changed, drop
        the item). Memoized per distinct attribute set: the same series recurs in every scrape,
        so after the first one a point costs a lookup, not a walk through its attributes."""
        parts = tuple(map(_SERIALIZE_KV, kvs))
        changed_by, drop = self.apply_decision(kvs, self.attribute_set_decision(kind, signal, metric, parts), o)
        return changed_by is not None, drop

    def set_cache_for(self, kind: str, signal: Signal, metric: str | None) -> dict[tuple[bytes, ...], Any]:
        ck = (kind, signal, metric)
        sets = self._set_cache.get(ck)
        if sets is None:
            sets = self._bounded(self._set_cache)[ck] = {}
        return sets

    def attribute_set_decision(self, kind: str, signal: Signal, metric: str | None,
                               parts: tuple[bytes, ...]) -> Any:
        """(the rule that changed the identity or None, drop item, replacement attributes or None,
        events) for one attribute set."""
        sets = self.set_cache_for(kind, signal, metric)
        decision = sets.get(parts)
        if decision is None:
            scratch_list = common_pb2.KeyValueList()
            for b in parts:
                scratch_list.values.add().MergeFromString(b)
            scratch = Outcome()
            changed, drop = self._attrs_uncached(scratch_list.values, kind, signal, metric, scratch)
            new_parts = tuple(map(_SERIALIZE_KV, scratch_list.values))
            replacement = None if new_parts == parts else new_parts
            # Merges are counted under a rule that changed the identity: a label the policy bounds.
            changed_by = next((r for (r, a) in scratch.counts if a in ("dropped", "masked")),
                              next(iter(scratch.counts), ("values", ""))[0]) if changed else None
            decision = (changed_by, drop, replacement, tuple(scratch.counts.items()))
            self._bounded(sets)[parts] = decision
        return decision

    @staticmethod
    def apply_decision(kvs: Any, decision: Any, o: Outcome) -> tuple[str | None, bool]:
        changed_by, drop, replacement, events = decision
        for (rule, action), n in events:
            o.counts[(rule, action)] += n
        if replacement is not None and not drop:
            del kvs[:]
            for b in replacement:
                kvs.add().MergeFromString(b)
        return changed_by, drop

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
                continue
            # The key leaves too: the value rules read it like any other text.
            new_key, drop_item = self.scan(signal, metric, kv.key, kv.key, o)
            if drop_item:
                return True, True
            if new_key is None:
                del kvs[i]
                changed = True
                continue
            key = kv.key
            if new_key != key:
                kv.key = new_key
                changed = True
            if action == "hash":
                kv.value.string_value = self.token(_as_text(kv.value))
                o.add(rule, "hashed")
            elif action == "mask":
                kv.value.string_value = MASK
                o.add(rule, "masked")
                changed = True
            else:
                result = self.any_value(kv.value, signal, metric, key, o)
                if result == "drop_item":
                    return True, True
                if result == "drop_attribute":
                    del kvs[i]
                    changed = True
                elif result == "masked":
                    changed = True
        return changed, False

    def any_value(self, av: Any, signal: Signal, metric: str | None, key: str, o: Outcome) -> str:
        """Value rules over an AnyValue's strings and map keys (nested arrays and maps included);
        bytes are dropped. Returns kept, masked, drop_attribute or drop_item."""
        kind = av.WhichOneof("value")
        if kind == "string_value":
            new, drop_item = self.scan(signal, metric, key, av.string_value, o)
            if drop_item:
                return "drop_item"
            if new is None:
                return "drop_attribute"
            if new != av.string_value:
                av.string_value = new
                return "masked"
            return "kept"
        if kind == "bytes_value":
            o.add(BYTES_RULE, "dropped")
            return "drop_attribute"
        result = "kept"
        if kind == "array_value":
            children = list(av.array_value.values)
        elif kind == "kvlist_value":
            entries = av.kvlist_value.values
            for i in range(len(entries) - 1, -1, -1):
                new_key, drop_item = self.scan(signal, metric, key, entries[i].key, o)
                if drop_item:
                    return "drop_item"
                if new_key is None:
                    del entries[i]
                    result = "masked"
                elif new_key != entries[i].key:
                    entries[i].key = new_key
                    result = "masked"
            children = [kv.value for kv in entries]
        else:
            return result
        for child in children:
            v = self.any_value(child, signal, metric, key, o)
            if v == "drop_item":
                return v
            if v == "drop_attribute":  # inside a structure: blank the leaf rather than reshape it
                child.string_value = MASK
                result = "masked"
            elif v == "masked":
                result = "masked"
        return result

    # -- the steps the metrics fast path calls back into (shapes.PerPointEngine) -------------------

    def apply_envelope(self, env: Any, signal: Signal, o: Outcome) -> bool:
        """A ResourceX or ScopeX's own fields (resource, scope, schema_url), not its items, in
        place; False when a rule drops it with all its items."""
        return fields.apply_envelope(self, env, signal, o)

    def apply_metric(self, m: Any, o: Outcome, exemplars: bool = True) -> tuple[bool, bool]:
        """Apply the policy to one Metric in place: (keep it?, changed?). `exemplars=False`
        promises that no point has any (looking costs a third of a microsecond a point)."""
        return fields.apply_metric(self, m, o, exemplars)


def _as_text(av: Any) -> str:
    kind = av.WhichOneof("value")
    return "" if kind is None else str(getattr(av, kind)) if kind != "string_value" else av.string_value
