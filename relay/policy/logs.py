"""The policy over a logs request: the per-point visit of relay.policy.fields, made cheap for log records.

Owns: walking ExportLogsServiceRequest with the engine's own decisions, and a memo of log
bodies bounded by their length. A body seldom recurs (offsets, ids and times are in it), so
the engine's value memo, bounded by count, would fill with them (200,000 bodies of a few
hundred bytes each); here a broker's repeated lines still cost a lookup, and a flood of
distinct ones costs at most BODY_MEMO_CHARS characters. Everything else (envelopes, attribute sets,
severity texts, event names, bodies that are not text) is decided by the engine exactly as
on the per-point path, which tests/unit/test_log_policy_fast.py holds this one to.
"""

from __future__ import annotations

from typing import Any, Protocol

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from relay.otlp import Signal
from relay.policy import fields
from relay.policy.outcome import Outcome

# relay.policy.engine's: (new text, or None to drop it; drop the whole item?; (rule, action) events)
ValueDecision = tuple[str | None, bool, tuple[tuple[str, str], ...]]


class Policy(fields.Policy, Protocol):
    """The engine's decisions this path applies (relay.policy.engine.Policy, which calls it)."""

    def strip_unknown(self, msg: Any) -> None: ...

    def decide(self, signal: Signal, metric: str | None, key: str, text: str) -> ValueDecision: ...

BODY_MEMO_CHARS = 4 << 20
_SERIALIZE_KV = common_pb2.KeyValue.SerializeToString


class BodyMemo:
    """Body text -> the engine's decision on it, dropped whole past BODY_MEMO_CHARS. The engine
    keeps one per policy, so a reloaded policy decides afresh."""

    def __init__(self) -> None:
        self.decisions: dict[str, ValueDecision] = {}
        self.size = 0

    def decision(self, p: Policy, text: str) -> ValueDecision:
        hit = self.decisions.get(text)
        if hit is None:
            hit = p.decide("logs", None, "body", text)
            if self.size + len(text) > BODY_MEMO_CHARS:
                self.decisions.clear()
                self.size = 0
            self.decisions[text] = hit
            self.size += len(text)
        return hit


def apply_logs(p: Policy, body: bytes, memo: BodyMemo) -> tuple[bytes, Outcome]:
    """Policy.apply_per_point("logs", body), the same bytes and the same outcome."""
    o = Outcome()
    msg = logs_service_pb2.ExportLogsServiceRequest()
    msg.ParseFromString(body)
    p.strip_unknown(msg)
    resources = msg.resource_logs
    for ri in range(len(resources) - 1, -1, -1):
        rx = resources[ri]
        if not fields.apply_envelope(p, rx, "logs", o):
            _dropped(o, sum(len(sx.log_records) for sx in rx.scope_logs))
            del resources[ri]
            continue
        scopes = rx.scope_logs
        for si in range(len(scopes) - 1, -1, -1):
            sx = scopes[si]
            if not fields.apply_envelope(p, sx, "logs", o):
                _dropped(o, len(sx.log_records))
                del scopes[si]
                continue
            items = sx.log_records
            o.items_in += len(items)
            _records(p, items, o, memo)
            o.items_out += len(items)
            if not len(items):
                del scopes[si]
        if not len(scopes):
            del resources[ri]
    return msg.SerializeToString(), o


def _dropped(o: Outcome, n: int) -> None:
    o.items_in += n
    o.add(fields.ENVELOPE_RULE, "dropped_item", n)


def _records(p: Policy, items: Any, o: Outcome, memo: BodyMemo) -> None:
    """fields._log_record over each record, in place; the ones it drops are deleted."""
    sets = p.set_cache_for("attributes", "logs", None)
    counts = o.counts
    for i in range(len(items) - 1, -1, -1):
        lr = items[i]
        kvs = lr.attributes
        parts = tuple(map(_SERIALIZE_KV, kvs))
        decision = sets.get(parts)
        if decision is None:
            decision = p.attribute_set_decision("attributes", "logs", None, parts)
        if p.apply_decision(kvs, decision, o)[1]:
            del items[i]
            continue
        if lr.HasField("body"):
            av = lr.body
            if av.WhichOneof("value") == "string_value":
                text = av.string_value
                new, drop_item, events = memo.decision(p, text)
                for event in events:
                    counts[event] += 1
                if drop_item:
                    del items[i]
                    continue
                if new is None:
                    lr.ClearField("body")
                elif new != text:
                    av.string_value = new
            else:
                result = p.any_value(av, "logs", None, "body", o)
                if result == "drop_item":
                    del items[i]
                    continue
                if result == "drop_attribute":
                    lr.ClearField("body")
        if (lr.severity_text and p.scan_field(lr, "severity_text", "logs", None, "log.severity_text", o)) \
                or (lr.event_name and p.scan_field(lr, "event_name", "logs", None, "log.event_name", o)):
            del items[i]
