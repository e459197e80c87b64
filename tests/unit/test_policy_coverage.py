"""What the redaction policy covers: every OTLP field that can carry text, for all three signals,
under the shipped default policy; fields unknown to this OTLP version dropped at every level on
both paths; self-metric labels bounded; and the outbox view decoded from the bytes that left.

The property test plants a secret in each field (docs/privacy.md lists the same fields) and an
unknown field at each message level, and looks for them in the bytes that would be sent."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1 import common_pb2

from relay import wire
from relay.compression import compress
from relay.export.outbox import Outbox
from relay.otlp import SIGNAL_INFO, MetricsBuilder, attributes_dict
from relay.policy import Policy
from relay.policy.engine import NAME_MAX
from relay.policy.schema import PolicyFile
from relay.strict_yaml import load_text

ROOT = Path(__file__).parents[2]
SHIPPED = ROOT / "configs" / "policy.yaml"
SECRET = b"0123456789abcdef0123456789abcdef"


def shipped(keep_unknown: bool = False) -> Policy:
    text = SHIPPED.read_text()
    if keep_unknown:
        assert "\nunknown_fields: drop\n" in text
        text = text.replace("\nunknown_fields: drop\n", "\nunknown_fields: keep\n")
    pf, _ = load_text(text, PolicyFile, str(SHIPPED))
    return Policy(pf, SECRET, str(SHIPPED), hashlib.sha256(text.encode()).hexdigest(), 0.0)


def field(number: int, payload: bytes) -> bytes:
    return wire.encode_varint(number << 3 | 2) + wire.encode_varint(len(payload)) + payload


def kv(key: str, value: Any) -> common_pb2.KeyValue:
    out = common_pb2.KeyValue(key=key)
    if isinstance(value, bytes):
        out.value.bytes_value = value
    elif isinstance(value, dict):
        out.value.kvlist_value.values.extend(kv(k, v) for k, v in value.items())
    elif isinstance(value, list):
        for v in value:
            out.value.array_value.values.add().string_value = v
    else:
        out.value.string_value = value
    return out


def parsed(signal: str, body: bytes) -> Any:
    msg = SIGNAL_INFO[signal].request()  # type: ignore[index]
    msg.ParseFromString(body)
    return msg


def attrs(text: Callable[[str], str], where: str) -> list[common_pb2.KeyValue]:
    """Attributes with a planted text in an allowlisted value, a key riding on an allowlist glob,
    a key inside a map, a map value, an array and a bytes value."""
    return [
        kv("rpc.method", text(f"{where}.value")),
        kv(f"rpc.{text(f'{where}.key')}", "1"),
        kv("rpc.request", {text(f"{where}.map.key"): "x", "inner": text(f"{where}.map.value")}),
        kv("code.stacktrace", [text(f"{where}.array")]),
        kv("code.blob", text(f"{where}.bytes").encode()),
    ]


def envelope(rx: Any, sx: Any, text: Callable[[str], str]) -> None:
    """The resource and scope levels' own text: attributes, entity refs, name, version, schema URLs."""
    rx.schema_url = text("resource.schema_url")
    rx.resource.attributes.extend([kv("service.name", text("resource.service.name")),
                                   kv(f"deployment.environment.{text('resource.key')}", "prod")])
    rx.resource.entity_refs.add(type=text("entity.type"), schema_url=text("entity.schema_url"),
                                id_keys=["service.name", text("entity.id_key")],
                                description_keys=[text("entity.description_key")])
    sx.schema_url = text("scope.schema_url")
    sx.scope.name, sx.scope.version = text("scope.name"), text("scope.version")
    sx.scope.attributes.extend(attrs(text, "scope.attr"))


def build(signal: str, text: Callable[[str], str]) -> bytes:
    """A request of `signal` with text(where) in every field that can carry text."""
    req = SIGNAL_INFO[signal].request()  # type: ignore[index]
    if signal == "metrics":
        rm = req.resource_metrics.add()
        sm = rm.scope_metrics.add()
        envelope(rm, sm, text)
        sm.metrics.append(CLEAN_METRIC)
        m = sm.metrics.add(name=f"orders.{text('metric.name')}", description=text("metric.description"),
                           unit=text("metric.unit"))
        m.metadata.extend(attrs(text, "metric.metadata"))
        dp = m.sum.data_points.add(as_int=1, time_unix_nano=2)
        dp.attributes.extend(attrs(text, "point"))
        ex = dp.exemplars.add(as_int=1)
        ex.filtered_attributes.extend(attrs(text, "exemplar"))
        h = sm.metrics.add(name="latency").histogram.data_points.add(count=1, bucket_counts=[1], time_unix_nano=2)
        h.attributes.extend(attrs(text, "histogram.point"))
    elif signal == "logs":
        rl = req.resource_logs.add()
        sl = rl.scope_logs.add()
        envelope(rl, sl, text)
        lr = sl.log_records.add(severity_text=text("log.severity_text"), event_name=text("log.event_name"))
        lr.attributes.extend(attrs(text, "log.attr"))
        lr.body.kvlist_value.values.extend([kv(text("body.map.key"), "x"), kv("msg", text("body.map.value")),
                                            kv("list", [text("body.array")]), kv("raw", text("body.bytes").encode())])
        sl.log_records.add(body=common_pb2.AnyValue(string_value=text("body.string")))
        sl.log_records.add(body=common_pb2.AnyValue(bytes_value=text("body.bytes_only").encode()))
    else:
        rs = req.resource_spans.add()
        ss = rs.scope_spans.add()
        envelope(rs, ss, text)
        sp = ss.spans.add(name=text("span.name"), trace_state=text("span.trace_state"),
                          trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
        sp.status.message = text("span.status.message")
        sp.attributes.extend(attrs(text, "span.attr"))
        ev = sp.events.add(name=text("event.name"))
        ev.attributes.extend(attrs(text, "event.attr"))
        link = sp.links.add(trace_state=text("link.trace_state"), trace_id=b"\x03" * 16, span_id=b"\x04" * 8)
        link.attributes.extend(attrs(text, "link.attr"))
    return bytes(req.SerializeToString())


# A metric the shipped policy leaves as it is: its shape is remembered, later copies are copied.
CLEAN_METRIC = MetricsBuilder({}, "clean").finish().resource_metrics[0].scope_metrics[0].metrics.add(
    name="kafka.message.count")
CLEAN_METRIC.sum.data_points.add(as_int=5, time_unix_nano=1).attributes.append(kv("topic", "orders"))


def messages(msg: Any) -> list[Any]:
    """Every message in a request, the request itself included, depth first."""
    out = [msg]
    for fd, value in msg.ListFields():
        if fd.type == fd.TYPE_MESSAGE:
            for sub in value if fd.is_repeated else [value]:
                out += messages(sub)
    return out


def inject_unknown(body: bytes, signal: str, number: int, marker: bytes, levels: Callable[[int], list[int]]) -> bytes:
    """The same request with a field `number` (unknown at every level) holding `marker` in the
    messages that `levels(how many there are)` picks."""
    msg = parsed(signal, body)
    every = messages(msg)
    for i in levels(len(every)):
        every[i].MergeFromString(field(number, marker))
    return bytes(msg.SerializeToString())


SENSITIVE = st.one_of(
    st.builds(lambda u, d: f"{u}@{d}.example.com", st.from_regex(r"[a-z]{3,8}", fullmatch=True),
              st.from_regex(r"[a-z]{3,8}", fullmatch=True)),
    st.builds(lambda a, b, c: f"10.{a}.{b}.{c}", st.integers(0, 255), st.integers(0, 255), st.integers(1, 254)),
    st.builds(lambda s: "AKIA" + s, st.from_regex(r"[A-Z0-9]{16}", fullmatch=True)),
    st.sampled_from(["4111 1111 1111 1111", "5500-0000-0000-0004"]),
    st.builds(lambda s: f"https://admin:{s}@db.internal/x", st.from_regex(r"[A-Za-z0-9]{8,12}", fullmatch=True)),
)


def needle(secret: str) -> str:
    """The part of a planted secret that must not leave."""
    return secret.split("://admin:")[1].split("@")[0] if "://admin:" in secret else secret


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signal=st.sampled_from(["metrics", "logs", "traces"]), secret=SENSITIVE,
       filler=st.text(alphabet="abcdefghij-_", min_size=1, max_size=8),
       number=st.integers(100, (1 << 29) - 1), marker=st.from_regex(r"[a-z]{12}", fullmatch=True),
       data=st.data())
def test_no_planted_secret_and_no_unknown_field_leaves_under_the_shipped_policy(
        signal: str, secret: str, filler: str, number: int, marker: str, data: st.DataObject) -> None:
    planted: dict[str, str] = {}

    def text(where: str) -> str:
        planted[where] = secret
        return f"{filler} {secret}" if "key" not in where else secret

    def levels(n: int) -> list[int]:  # every level, or a few of them (alone, a known shape may hide them)
        return data.draw(st.one_of(st.just(list(range(n))), st.lists(st.integers(0, n - 1), min_size=1, max_size=3)))

    body = inject_unknown(build(signal, text), signal, number, f"UNKNOWN-{marker}".encode(), levels)
    p = shipped()
    if signal == "metrics":  # warm the fast path: the clean metric's shape is then known
        warm = MetricsBuilder({"service.name": "x"}, "clean").finish()
        warm.resource_metrics[0].scope_metrics[0].metrics.append(CLEAN_METRIC)
        p.apply("metrics", warm.SerializeToString())
        assert p.shape_memo.shapes, "the clean metric's shape is remembered"
        # And the rewrite path: the same request without its unknown fields once, so that what the
        # policy changes by shape alone is remembered and the planted request is rewritten from it.
        p.apply("metrics", build(signal, text))
        assert p.shape_memo.rewrites, "the histogram's changed shape is remembered"
    fast, _ = p.apply(signal, body)  # type: ignore[arg-type]
    per_point, _ = shipped().apply_per_point(signal, body)  # type: ignore[arg-type]
    for out in (fast, per_point):
        assert needle(secret).encode() not in out, f"{secret!r} left in the {signal} payload"
        assert marker.encode() not in out, "an unknown field left"
        assert wire.unknown_fields(SIGNAL_INFO[signal].request.DESCRIPTOR, out) == []  # type: ignore[index]
    assert parsed(signal, fast) == parsed(signal, per_point)
    assert len(planted) >= 20  # every field of docs/privacy.md's list for this signal got one


# -- each finding on its own ---------------------------------------------------------------------------

def spans(body: bytes) -> Any:
    return parsed("traces", body).resource_spans[0].scope_spans[0].spans


def one_span(**fields_: Any) -> Any:
    req = SIGNAL_INFO["traces"].request()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", "shop"))
    sp = rs.scope_spans.add().spans.add(name="checkout", trace_id=b"\x01" * 16, span_id=b"\x02" * 8, **fields_)
    return req, sp


def test_the_status_message_of_a_span_is_scanned() -> None:
    req, sp = one_span()
    sp.status.message = "NullPointerException for user jane.doe@corp.example.com"
    p = shipped()
    out, outcome = p.apply("traces", req.SerializeToString())
    assert b"jane.doe@corp" not in out
    assert spans(out)[0].status.message == f"NullPointerException for user {p.token('jane.doe@corp.example.com')}"
    assert outcome.counts[("detector:email", "hashed")] == 1


def test_event_names_trace_states_severity_text_and_event_name_are_scanned() -> None:
    req, sp = one_span(trace_state="vendor=ann@corp.example.com")
    sp.events.add(name="login ann@corp.example.com")
    sp.links.add(trace_state="x=10.1.2.3", trace_id=b"\x03" * 16, span_id=b"\x04" * 8)
    out, _ = shipped().apply("traces", req.SerializeToString())
    assert b"ann@corp" not in out and b"10.1.2.3" not in out
    span = spans(out)[0]
    assert span.trace_state.startswith("vendor=h:") and span.events[0].name.startswith("login h:")
    assert span.links[0].trace_state.startswith("x=h:")
    logs = SIGNAL_INFO["logs"].request()
    logs.resource_logs.add().scope_logs.add().log_records.add(
        severity_text="ERROR AKIAABCDEFGHIJKLMNOP", event_name="login ann@corp.example.com")
    out, _ = shipped().apply("logs", logs.SerializeToString())
    lr = parsed("logs", out).resource_logs[0].scope_logs[0].log_records[0]
    assert lr.severity_text == "ERROR ***" and lr.event_name.startswith("login h:")


def test_keys_inside_maps_are_scanned_in_attribute_values_and_log_bodies() -> None:
    req, sp = one_span()
    sp.attributes.append(kv("rpc.request", {"ann@corp.example.com": "x", "ok": "y"}))
    out, _ = shipped().apply("traces", req.SerializeToString())
    assert b"ann@corp" not in out and b"ok" in out
    logs = SIGNAL_INFO["logs"].request()
    lr = logs.resource_logs.add().scope_logs.add().log_records.add()
    lr.body.kvlist_value.values.extend([kv("10.9.8.7", "seen"), kv("msg", "fine")])
    out, _ = shipped().apply("logs", logs.SerializeToString())
    assert b"10.9.8.7" not in out and b"fine" in out


def test_bytes_values_never_leave() -> None:
    req, sp = one_span()
    sp.attributes.extend([kv("rpc.payload", b"password=hunter2"), kv("rpc.request", {"blob": b"hunter3"})])
    logs = SIGNAL_INFO["logs"].request()
    logs.resource_logs.add().scope_logs.add().log_records.add(body=common_pb2.AnyValue(bytes_value=b"hunter4"))
    p = shipped()
    out, outcome = p.apply("traces", req.SerializeToString())
    assert b"hunter" not in out and outcome.counts[("values.bytes", "dropped")] == 2
    assert attributes_dict(spans(out)[0].attributes) == {"rpc.request": {"blob": "***"}}
    out, _ = p.apply("logs", logs.SerializeToString())
    assert b"hunter" not in out


def test_an_allowlist_glob_vouches_only_for_keys_that_look_like_names() -> None:
    p = shipped()
    assert p.key_action("attributes", "metrics", "jvm.gc", "jvm.memory.pool.name")[0] == "keep"
    for key in ("jvm.alice@example.com", "jvm.10.1.2.3", "rpc.Bearer abc", "code." + "x" * NAME_MAX, "jvm.a..b"):
        assert p.key_action("attributes", "metrics", "jvm.gc", key) == ("drop", "attributes.default"), key
    assert p.key_action("resource", "metrics", None, "deployment.environment.ann@corp.example.com")[0] == "drop"
    assert p.key_action("resource", "metrics", None, "deployment.environment.name")[0] == "keep"
    # A glob that drops matches every key: an odd key must not slip past it to a keep default.
    pf, _ = load_text("version: 1\nattributes:\n  default: keep\n  rules: [{key: 'user.*', action: drop}]\n",
                      PolicyFile)
    loose = Policy(pf, SECRET, "p", "0" * 64, 0.0)
    assert loose.key_action("attributes", "logs", None, "user.Ann@x.example.com")[0] == "drop"


def test_name_like_is_bounded_and_refuses_what_a_detector_finds() -> None:
    p = shipped()
    assert p.name_like("jvm.memory.used") and p.name_like("rpc.grpc.status_code")
    assert p.name_like("a" * NAME_MAX) and not p.name_like("a" * (NAME_MAX + 1))
    assert not p.name_like("Jvm.Upper") and not p.name_like("jvm.") and not p.name_like("")
    pf, _ = load_text("version: 1\nvalues: [{regex: 'cust_[0-9]+', action: hash}]\n", PolicyFile)
    assert not Policy(pf, SECRET, "p", "0" * 64, 0.0).name_like("jvm.cust_42")  # a value rule finds it
    assert not p.name_like("jvm.192.168.1.20")  # a segment starts with a letter: no address hides in one


def test_schema_urls_are_scanned_at_every_level() -> None:
    bad = "https://schemas.example/1.0?token=ann@corp.example.com"
    for signal in ("metrics", "logs", "traces"):
        req = SIGNAL_INFO[signal].request()  # type: ignore[index]
        rx = getattr(req, f"resource_{'spans' if signal == 'traces' else signal}").add(schema_url=bad)
        sx = getattr(rx, f"scope_{'spans' if signal == 'traces' else signal}").add(schema_url=bad)
        if signal == "metrics":
            sx.metrics.append(CLEAN_METRIC)
        elif signal == "logs":
            sx.log_records.add(body=common_pb2.AnyValue(string_value="x"))
        else:
            sx.spans.add(name="x")
        out, _ = shipped().apply(signal, req.SerializeToString())  # type: ignore[arg-type]
        assert b"ann@corp" not in out and out.count(b"https://schemas.example/1.0?token=h:") == 2, signal


def test_entity_refs_keep_only_keys_of_attributes_still_there_and_their_text_is_scanned() -> None:
    req, _ = one_span()
    res = req.resource_spans[0].resource
    res.attributes.append(kv("host.name", "broker-1"))
    res.entity_refs.add(type="service", id_keys=["service.name", "ann@corp.example.com"],
                        description_keys=["owner"], schema_url="https://x.example/ann@corp.example.com")
    res.entity_refs.add(type="secret", id_keys=["owner"])  # names only attributes that do not leave
    out, _ = shipped().apply("traces", req.SerializeToString())
    refs = parsed("traces", out).resource_spans[0].resource.entity_refs
    assert len(refs) == 1 and list(refs[0].id_keys) == ["service.name"] and not refs[0].description_keys
    assert b"ann@corp" not in out and b"owner" not in out


def test_scope_attributes_and_metric_metadata_follow_the_attribute_rules() -> None:
    b = MetricsBuilder({"service.name": "app"}, "test")
    m = b.sum("orders", "1")
    b.point(m, 1, 1_000, 1, {"topic": "orders"})
    req = b.finish()
    sm = req.resource_metrics[0].scope_metrics[0]
    sm.scope.attributes.extend([kv("owner", "ann"), kv("code.namespace", "ann@corp.example.com")])
    sm.metrics[0].metadata.extend([kv("db.password", "hunter2"), kv("rpc.service", "10.1.2.3")])
    p = shipped()
    for _ in range(2):  # and once the metric's shape is known
        out, _ = p.apply("metrics", req.SerializeToString())
        assert b"ann" not in out and b"hunter2" not in out and b"10.1.2.3" not in out
        got = parsed("metrics", out).resource_metrics[0].scope_metrics[0]
        assert set(attributes_dict(got.scope.attributes)) == {"code.namespace"}
        assert attributes_dict(got.metrics[0].metadata) == {"rpc.service": p.token("10.1.2.3")}


def test_unknown_fields_are_dropped_on_both_paths_and_kept_only_when_the_policy_says_so() -> None:
    b = MetricsBuilder({"service.name": "kafka"}, "test")
    b.point(b.sum("kafka.message.count", "1"), 1, 1_000, 1, {"topic": "orders"})
    clean = b.finish()
    p = shipped()
    assert p.apply("metrics", clean.SerializeToString())[0]
    assert p.shape_memo.shapes, "the shape is known: the next copy would be copied as bytes"
    planted = clean.__class__()
    planted.CopyFrom(clean)
    levels = messages(planted)
    # The request, resource_metrics, resource, its attribute and value, scope_metrics, scope, metric,
    # sum, data point, its attribute and value: each level alone, then all at once.
    assert len(levels) == 12
    bodies = []
    for i in range(len(levels)):
        alone = clean.__class__()
        alone.CopyFrom(clean)
        messages(alone)[i].MergeFromString(field(1000 + i, f"future-{i}".encode()))
        bodies.append(alone.SerializeToString())
    for i, level in enumerate(levels):
        level.MergeFromString(field(1000 + i, f"future-{i}".encode()))
    body = planted.SerializeToString()
    for each in [*bodies, body]:
        for out in (p.apply("metrics", each)[0], p.apply_per_point("metrics", each)[0]):
            assert b"future-" not in out
            assert parsed("metrics", out) == clean
    # A string field that a later OTLP adds to a span is just as unknown.
    req, sp = one_span()
    sp.MergeFromString(field(17, b"ann@corp.example.com"))
    assert b"ann@corp" not in shipped().apply("traces", req.SerializeToString())[0]
    keeping = shipped(keep_unknown=True)
    assert all(f"future-{i}".encode() in keeping.apply("metrics", body)[0] for i in range(len(levels)))


def test_merges_are_counted_under_a_bounded_label() -> None:
    b = MetricsBuilder({"service.name": "app"}, "test")
    for i in range(2_000):  # two thousand metric names, each with two points that collide
        m = b.sum(f"app.metric.{i}", "1")
        b.point(m, 1, 1_000, 1, {"topic": "a", "pod": "x"})
        b.point(m, 2, 1_000, 1, {"topic": "a", "pod": "y"})
    _, outcome = shipped().apply("metrics", b.finish().SerializeToString())
    merged = {rule: n for (rule, action), n in outcome.counts.items() if action == "merged"}
    assert merged == {"attributes.default": 2_000}
    assert len({rule for rule, _ in outcome.counts}) <= 3


# -- the outbox: decoded from the bytes that left ------------------------------------------------------

def test_the_outbox_decodes_the_wire_bytes_and_flags_unknown_fields() -> None:
    req, sp = one_span()
    known = req.SerializeToString()
    sp.MergeFromString(field(99, b"hidden"))
    odd = req.SerializeToString()
    box = Outbox(1 << 20)
    for body in (known, odd, b"\xff\xff\xff"):
        box.add("vendor", "traces", len(body), compress(body, "zstd"), "zstd", "0" * 64)
    plain, flagged, garbage = (Outbox.describe(s, True, True) for s in box.last(3))
    assert plain["unknown_fields"] == [] and plain["items"] == 1
    assert flagged["unknown_fields"] == ["resource_spans[0].scope_spans[0].spans[0]#99"]
    assert "hidden" not in str(flagged["request"])  # the decoded view cannot show it: hence the flag
    assert flagged["wire_sha256"] == hashlib.sha256(box.last(2)[0].wire).hexdigest()
    assert garbage["undecodable"] and garbage["items"] is None
    assert base64.b64decode(flagged["wire_base64"]) == box.last(2)[0].wire  # the bytes as sent


def test_the_unknown_field_walk_knows_packed_numbers_and_refuses_wrong_wire_types() -> None:
    from opentelemetry.proto.metrics.v1 import metrics_pb2

    dp = metrics_pb2.HistogramDataPoint(bucket_counts=[1, 2], explicit_bounds=[1.0], count=3)
    desc = metrics_pb2.HistogramDataPoint.DESCRIPTOR
    assert wire.unknown_fields(desc, dp.SerializeToString()) == []
    unpacked = wire.encode_varint(6 << 3 | 1) + b"\x01" + b"\x00" * 7  # bucket_counts one by one: still known
    assert wire.unknown_fields(desc, unpacked) == []
    as_varint = wire.encode_varint(4 << 3 | 0) + b"\x01"  # count is fixed64: a varint there is not it
    assert wire.unknown_fields(desc, as_varint) == ["#4"]
    with pytest.raises(wire.Malformed):
        wire.unknown_fields(desc, b"\x0a\x05ab")
