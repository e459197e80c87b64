"""The redaction engine: property-based proof that blocked values never reach the bytes that
would be sent, merges after a dropped attribute, and the shipped default policy on real data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import mapping
from relay.otlp import SIGNAL_INFO, MetricsBuilder, attributes_dict, set_attributes
from relay.policy import Policy, load_policy
from relay.policy.schema import PolicyFile
from relay.sources.jolokia import bulk_request, map_response
from relay.strict_yaml import SchemaError, load_text

ROOT = Path(__file__).parents[2]
SECRET = b"0123456789abcdef0123456789abcdef"


def policy(text: str) -> Policy:
    pf, _ = load_text(text, PolicyFile, "test-policy.yaml")
    return Policy(pf, SECRET, "test-policy.yaml", "0" * 64, 0.0)


# -- sensitive values, planted ----------------------------------------------------------------------

SENSITIVE = st.one_of(
    st.builds(lambda u, d: f"{u}@{d}.example.com", st.from_regex(r"[a-z]{3,8}", fullmatch=True),
              st.from_regex(r"[a-z]{3,8}", fullmatch=True)),
    st.builds(lambda a, b, c, d: f"10.{a}.{b}.{c + d}", st.integers(0, 255), st.integers(0, 255),
              st.integers(1, 100), st.integers(0, 100)),
    st.builds(lambda s: "AKIA" + s, st.from_regex(r"[A-Z0-9]{16}", fullmatch=True)),
    st.sampled_from(["4111 1111 1111 1111", "5500-0000-0000-0004", "340000000000009"]),
    st.builds(lambda s: f"https://admin:{s}@db.internal/x", st.from_regex(r"[A-Za-z0-9]{6,12}", fullmatch=True)),
)
FILLER = st.text(alphabet="abcdefghij klmnop-_", max_size=12)


def plant(signal: str, secrets_: list[str], filler: str) -> bytes:
    """A request with the secrets in resource attributes, item attributes, and log bodies or span names."""
    s0, s1, s2 = (secrets_ * 3)[:3]
    req = SIGNAL_INFO[signal].request()  # type: ignore[index]
    if signal == "metrics":
        b = MetricsBuilder({"service.name": "app", "owner": s0}, "test")
        m = b.sum("orders", "1")
        b.point(m, 5, 1_000, 1, {"customer": f"{filler} {s1}", "plain": "ok"})
        b.point(m, 6, 1_000, 1, {"nested": [f"{filler}{s2}", "x"]})
        return bytes(b.finish().SerializeToString())
    if signal == "logs":
        rl = req.resource_logs.add()
        set_attributes(rl.resource.attributes, {"service.name": "app", "owner": s0})
        sl = rl.scope_logs.add()
        lr = sl.log_records.add()
        lr.body.string_value = f"login failed for {s1} {filler}"
        set_attributes(lr.attributes, {"user": s2})
        lr2 = sl.log_records.add()
        set_attributes(lr2.body.kvlist_value.values, {"msg": f"{filler} {s0}", "inner": {"who": s1}})
    else:
        rs = req.resource_spans.add()
        set_attributes(rs.resource.attributes, {"service.name": "app", "owner": s0})
        sp = rs.scope_spans.add().spans.add()
        sp.name = f"GET {s1} {filler}"
        sp.trace_id, sp.span_id = b"\x01" * 16, b"\x02" * 8
        set_attributes(sp.attributes, {"peer": s2})
        set_attributes(sp.events.add().attributes, {"detail": s0})
    return bytes(req.SerializeToString())


MASKING = """
version: 1
metrics: {default: allow}
resource_attributes: {default: keep}
attributes: {default: keep}
values:
  - {detector: email, action: mask}
  - {detector: ipv4, action: mask}
  - {detector: aws_access_key, action: mask}
  - {detector: credit_card, action: mask}
  - {detector: url_credentials, action: mask}
"""
HASHING = MASKING.replace("action: mask", "action: hash")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signal=st.sampled_from(["metrics", "logs", "traces"]), secrets_=st.lists(SENSITIVE, min_size=1, max_size=3),
       filler=FILLER)
def test_masked_values_never_reach_the_sent_bytes(signal: str, secrets_: list[str], filler: str) -> None:
    body = plant(signal, secrets_, filler)
    out, outcome = policy(MASKING).apply(signal, body)  # type: ignore[arg-type]
    for s in secrets_:
        needle = s.split("://admin:")[1].split("@")[0] if "://admin:" in s else s
        assert needle.encode() not in out, f"{needle!r} left in the {signal} payload"
    assert outcome.items_out == outcome.items_in  # masking drops nothing


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signal=st.sampled_from(["metrics", "logs", "traces"]), secrets_=st.lists(SENSITIVE, min_size=1, max_size=3),
       filler=FILLER)
def test_hashed_values_leave_only_as_tokens(signal: str, secrets_: list[str], filler: str) -> None:
    p = policy(HASHING)
    body = plant(signal, secrets_, filler)
    out, outcome = p.apply(signal, body)  # type: ignore[arg-type]
    for s in secrets_:
        for part in p.hash_candidates(s):
            assert part.encode() not in out
    tokens = set(re.findall(rb"h:[0-9a-f]{16}", out))
    assert tokens, "hashed values leave as tokens"
    assert sum(n for (_, action), n in outcome.counts.items() if action == "hashed") >= 1
    # Deterministic, so the vendor can follow a series across time without learning the value.
    assert policy(HASHING).apply(signal, body)[0] == out  # type: ignore[arg-type]


DROPPING = """
version: 1
metrics: {default: allow}
resource_attributes:
  default: drop
  rules: [{key: service.name, action: keep}]
attributes: {default: drop}
values:
  - {detector: email, action: drop_item}
  - {detector: ipv4, action: drop_item}
  - {detector: aws_access_key, action: drop_item}
  - {detector: credit_card, action: drop_item}
  - {detector: url_credentials, action: drop_item}
"""


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signal=st.sampled_from(["metrics", "logs", "traces"]), secrets_=st.lists(SENSITIVE, min_size=1, max_size=3),
       filler=FILLER)
def test_dropped_attributes_and_items_never_reach_the_sent_bytes(signal: str, secrets_: list[str],
                                                                 filler: str) -> None:
    out, _ = policy(DROPPING).apply(signal, plant(signal, secrets_, filler))  # type: ignore[arg-type]
    for s in secrets_:
        assert s.encode() not in out
    assert b"owner" not in out


def test_dropping_a_distinguishing_attribute_merges_sums_by_adding() -> None:
    b = MetricsBuilder({"service.name": "x"}, "t")
    m = b.sum("requests", "1")
    b.point(m, 10, 1000, 1, {"pod": "a", "route": "/x"})
    b.point(m, 32, 1000, 1, {"pod": "b", "route": "/x"})
    b.point(m, 5, 1000, 1, {"pod": "c", "route": "/y"})
    g = b.gauge("temperature", "Cel")
    b.point(g, 20.0, 1000, 0, {"pod": "a"})
    b.point(g, 25.0, 2000, 0, {"pod": "b"})
    p = policy("version: 1\nresource_attributes: {default: keep}\nattributes:\n  default: keep\n"
               "  rules: [{key: pod, action: drop}]\n")
    out, outcome = p.apply("metrics", b.finish().SerializeToString())
    req = SIGNAL_INFO["metrics"].request()
    req.ParseFromString(out)
    metrics = {m.name: m for m in req.resource_metrics[0].scope_metrics[0].metrics}
    sums = {attributes_dict(dp.attributes)["route"]: dp.as_int for dp in metrics["requests"].sum.data_points}
    assert sums == {"/x": 42, "/y": 5}
    gauges = [(attributes_dict(dp.attributes), dp.as_double) for dp in metrics["temperature"].gauge.data_points]
    assert gauges == [({}, 20.0), ({}, 25.0)]  # different times: distinct points, not merged
    # Counted under the rule that made them collide: a label the policy bounds, not one per metric.
    assert outcome.counts[("attributes:pod", "merged")] == 1
    assert outcome.counts[("attributes:pod", "dropped")] == 5


def test_metric_allow_and_deny_lists() -> None:
    p = policy("version: 1\nmetrics: {default: deny, allow: ['kafka.*', 'jvm.*'], deny: ['kafka.secret.*']}\n"
               "resource_attributes: {default: keep}\nattributes: {default: keep}\n")
    assert p.metric_allowed("kafka.message.count")[0]
    assert not p.metric_allowed("kafka.secret.thing")[0]  # deny wins
    assert not p.metric_allowed("app.orders")[0]  # in neither: default deny


def test_policy_files_are_validated_with_path_and_line(tmp_path: Path) -> None:
    bad = {  # the file starts with "version: 1", so these lines are one further down
        "attributes:\n  default: drop\n  rulez: []\n": ":4: attributes.rulez: unknown key",
        "values:\n  - {detector: ssn, action: mask}\n": ":3: values[0]: unknown detector 'ssn'",
        "values:\n  - {regex: '([a-z', action: mask}\n": ":3: values[0]: bad regex",
        "attributes:\n  rules:\n    - {key: x, action: obliterate}\n":
            ":4: attributes.rules[0].action: expected one of",
    }
    for text, message in bad.items():
        f = tmp_path / "policy.yaml"
        f.write_text("version: 1\n" + text)
        with pytest.raises(SchemaError) as e:
            load_policy(f, SECRET)
        assert f"{f}{message}" in str(e.value)


def test_shipped_default_policy_on_kafka_broker_data() -> None:
    p = load_policy(ROOT / "configs" / "policy.yaml", SECRET)
    maps = mapping.load(["kafka", "jvm"])
    sent = bulk_request(maps)
    answers: dict[str, Any] = {
        "kafka.server:type=KafkaServer,name=ClusterId": {"Value": "lkc-abc"},
        "kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec,topic=*": {
            "kafka.server:name=MessagesInPerSec,topic=orders,type=BrokerTopicMetrics": {"Count": 10}},
        "java.lang:type=MemoryPool,name=*": {"java.lang:name=G1 Eden Space,type=MemoryPool": {
            "Usage": {"used": 100, "committed": 200, "max": 300}, "CollectionUsage": {"used": 7}, "Type": "HEAP"}},
    }
    response = [{"status": 200, "value": answers[e["mbean"]]} if e["mbean"] in answers else {"status": 404}
                for e in sent]
    resource = {"service.name": "kafka", "service.instance.id": "broker-1.corp.example:8778",
                "host.name": "broker-1.corp.example", "process.command": "/home/alice/kafka/bin/java"}
    req = map_response(sent, response, maps, resource).request
    out, outcome = p.apply("metrics", req.SerializeToString())
    r = SIGNAL_INFO["metrics"].request()
    r.ParseFromString(out)
    res = attributes_dict(r.resource_metrics[0].resource.attributes)
    assert res["service.name"] == "kafka" and res["kafka.cluster.id"] == "lkc-abc"
    assert res["host.name"] == p.token("broker-1.corp.example")  # hashed
    assert res["service.instance.id"].startswith("h:")
    assert "process.command" not in res  # dropped
    points = {m.name: [attributes_dict(dp.attributes) for dp in getattr(m, m.WhichOneof("data")).data_points]
              for m in r.resource_metrics[0].scope_metrics[0].metrics}
    assert points["kafka.message.count"] == [{"topic": "orders"}]
    assert points["jvm.memory.used"] == [{"jvm.memory.pool.name": "G1 Eden Space", "jvm.memory.type": "heap"}]
    assert outcome.items_out == outcome.items_in


def test_shipped_default_policy_on_the_otlp_example_and_logs() -> None:
    p = load_policy(ROOT / "configs" / "policy.yaml", SECRET)
    from relay.otlp import from_json

    example = from_json("metrics", (ROOT / "tests" / "fixtures" / "otlp_proto_examples_metrics.json").read_bytes())
    out, outcome = p.apply("metrics", example.SerializeToString())
    doc = out.decode("latin-1")
    assert "my.service" in doc and "my.counter" in doc
    assert outcome.counts[("attributes.default", "dropped")] >= 1  # the example's "my.*.attr" keys
    logs = plant("logs", ["jane@corp.example", "10.1.2.3", "AKIAABCDEFGHIJKLMNOP"], "x")
    out, _ = p.apply("logs", logs)
    assert b"jane@corp.example" not in out and b"10.1.2.3" not in out and b"AKIAABCDEFGHIJKLMNOP" not in out
    assert p.token("10.1.2.3").encode() in out
    assert json.dumps(list(outcome.counts))  # counts are plain data


def test_rules_scoped_to_metric_globs_and_signals() -> None:
    p = policy("""
version: 1
resource_attributes: {default: keep}
attributes:
  default: keep
  rules:
    - {key: topic, action: hash, metrics: ["kafka.network.*"]}
    - {key: user, action: drop, signals: [logs]}
values:
  - {regex: "secret-[0-9]+", action: mask, signals: [traces], name: trace-secrets}
""")
    assert p.key_action("attributes", "metrics", "kafka.network.io", "topic")[0] == "hash"
    assert p.key_action("attributes", "metrics", "kafka.message.count", "topic")[0] == "keep"
    assert p.key_action("attributes", "logs", None, "user")[0] == "drop"
    assert p.key_action("attributes", "metrics", "x", "user")[0] == "keep"
    assert p.value("traces", None, "span.name", "GET secret-42")[0] == "GET ***"
    assert p.value("logs", None, "body", "GET secret-42")[0] == "GET secret-42"


# -- the metrics fast path (relay.policy.shapes): the same answer as the per-point engine ----------

METRIC_POLICY = """
version: 1
metrics: {default: allow, deny: ['secret.*']}
resource_attributes:
  default: drop
  rules: [{key: service.name, action: keep}, {key: host.name, action: hash}]
attributes:
  default: keep
  rules: [{key: pod, action: drop}, {key: user, action: hash}]
values:
  - {detector: email, action: mask}
  - {detector: ipv4, action: hash}
  - {detector: aws_access_key, action: drop_item}
"""

ATTR_VALUES = st.one_of(st.sampled_from(["a", "b", "orders", "10.1.2.3", "x@y.example.com", "AKIAABCDEFGHIJKLMNOP"]),
                        st.integers(0, 3))
POINT = st.tuples(st.integers(0, 10**6), st.dictionaries(st.sampled_from(["topic", "pod", "user", "partition"]),
                                                         ATTR_VALUES, max_size=3))
METRIC = st.tuples(st.sampled_from(["kafka.bytes", "kafka.lag", "secret.thing", "jvm.heap"]),
                   st.sampled_from(["sum", "gauge"]), st.lists(POINT, min_size=1, max_size=6))


def _request(metrics: list[Any], host: str = "broker-1", t: int = 1_000) -> bytes:
    b = MetricsBuilder({"service.name": "kafka", "host.name": host, "owner": "ops"}, "test")
    for name, kind, points in metrics:
        m = b.sum(name, "1") if kind == "sum" else b.gauge(name, "1")
        for value, attrs in points:
            b.point(m, value, t, 1, attrs)
    return bytes(b.finish().SerializeToString())


def _full_engine(p: Policy, body: bytes) -> tuple[Any, Any]:
    """The per-point engine alone, on a full parse: what the fast path must agree with."""
    out, outcome = p.apply_per_point("metrics", body)
    return _parsed(out), outcome


def _parsed(body: bytes) -> Any:
    msg = SIGNAL_INFO["metrics"].request()
    msg.ParseFromString(body)
    return msg


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(METRIC, min_size=1, max_size=4), min_size=1, max_size=3))
def test_the_fast_path_agrees_with_the_per_point_engine(batches: list[Any]) -> None:
    p, reference = policy(METRIC_POLICY), policy(METRIC_POLICY)
    # Each batch twice, and twice merged: the second time most shapes come from the memo.
    bodies = [_request(m, t=1_000 + i) for i, m in enumerate(batches)]
    for body in [*bodies, *bodies, b"".join(bodies)]:
        fast, fast_outcome = p.apply("metrics", body)
        full, full_outcome = _full_engine(reference, body)
        assert _parsed(fast) == full
        assert (fast_outcome.items_in, fast_outcome.items_out) == (full_outcome.items_in, full_outcome.items_out)
        assert {k: v for k, v in fast_outcome.counts.items() if v} == {k: v for k, v in full_outcome.counts.items()
                                                                        if v}


def test_a_known_shape_with_a_new_value_is_not_let_through() -> None:
    p = policy(METRIC_POLICY)
    clean = _request([("kafka.bytes", "sum", [(1, {"topic": "orders"}), (2, {"topic": "audit"})])])
    out, _ = p.apply("metrics", clean)
    assert p.shape_memo.shapes, "a metric the policy leaves alone is remembered"
    assert b"orders" in out
    # Same metric, same keys, one value now an email: a different shape, so the engine sees it.
    leaky = _request([("kafka.bytes", "sum", [(1, {"topic": "orders"}), (2, {"topic": "ann@corp.example.com"})])])
    out, outcome = p.apply("metrics", leaky)
    assert b"ann@corp" not in out and b"***" in out
    assert outcome.counts[("detector:email", "masked")] == 1


def test_the_memo_does_not_outlive_its_policy() -> None:
    body = _request([("kafka.bytes", "sum", [(1, {"topic": "x@y.example.com"})])])
    keep_all = policy("version: 1\nresource_attributes: {default: keep}\nattributes: {default: keep}\n")
    assert b"x@y.example.com" in keep_all.apply("metrics", body)[0]
    assert keep_all.shape_memo.shapes
    tightened = policy(METRIC_POLICY)  # what a reload builds: a new Policy, an empty memo
    assert b"x@y.example.com" not in tightened.apply("metrics", body)[0]


def test_exemplar_attributes_follow_the_attribute_rules() -> None:
    b = MetricsBuilder({"service.name": "app"}, "test")
    m = b.sum("requests", "1")
    b.point(m, 1, 1_000, 1, {"route": "/x"})
    req = b.finish()
    dp = req.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    ex = dp.exemplars.add(time_unix_nano=900, as_int=1, trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    set_attributes(ex.filtered_attributes, {"pod": "web-7f9c", "client": "10.9.8.7"})
    ex2 = dp.exemplars.add(time_unix_nano=950, as_int=1)
    set_attributes(ex2.filtered_attributes, {"key": "AKIAABCDEFGHIJKLMNOP"})
    p = policy(METRIC_POLICY)
    for _ in range(2):  # and the second time, when the point's shape is known
        out, _ = p.apply("metrics", req.SerializeToString())
        assert b"web-7f9c" not in out and b"10.9.8.7" not in out and b"AKIA" not in out
        exemplars = _parsed(out).resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0].exemplars
        assert len(exemplars) == 1  # the one holding an access key is dropped
        assert attributes_dict(exemplars[0].filtered_attributes)["client"].startswith("h:")


def test_histograms_and_summaries_take_both_paths_alike() -> None:
    b = MetricsBuilder({"service.name": "app"}, "test")
    req = b.finish()
    sm = req.resource_metrics[0].scope_metrics[0]
    h = sm.metrics.add(name="latency", unit="ms")
    for pod, route in (("a", "/x"), ("b", "/x")):
        dp = h.histogram.data_points.add(count=2, sum=3.0, bucket_counts=[1, 1], explicit_bounds=[1.0],
                                         time_unix_nano=5, start_time_unix_nano=1)
        set_attributes(dp.attributes, {"pod": pod, "route": route})
        ex = dp.exemplars.add(as_double=0.5)
        set_attributes(ex.filtered_attributes, {"client": "10.0.0.1"})
    q = sm.metrics.add(name="gc.pause", unit="s")
    qp = q.summary.data_points.add(count=1, sum=0.1, time_unix_nano=5)
    set_attributes(qp.attributes, {"pod": "a", "user": "x@y.example.com"})
    body = req.SerializeToString()
    p = policy(METRIC_POLICY)
    for _ in range(2):
        out, outcome = p.apply("metrics", body)
        full, full_outcome = _full_engine(policy(METRIC_POLICY), body)
        assert _parsed(out) == full
        assert dict(outcome.counts) == dict(full_outcome.counts)
    merged = full.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points
    assert len(merged) == 1 and merged[0].count == 4 and list(merged[0].bucket_counts) == [2, 2]
    assert b"10.0.0.1" not in out and b"x@y" not in out


def test_encodings_the_walk_does_not_take_apart_go_to_the_full_engine() -> None:
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.resource.v1 import resource_pb2

    from relay import wire

    def field(n: int, payload: bytes) -> bytes:
        return wire.encode_varint(n << 3 | 2) + wire.encode_varint(len(payload)) + payload

    p = policy(METRIC_POLICY)
    body = _request([("kafka.bytes", "sum", [(1, {"topic": "orders", "user": "ann"})])])
    msg = _parsed(body)
    # The resource written as two fields, which protobuf merges: the walk must not read only one.
    first, second = resource_pb2.Resource(), resource_pb2.Resource()
    set_attributes(first.attributes, {"service.name": "kafka", "host.name": "broker-1"})
    set_attributes(second.attributes, {"owner": "ops"})
    scope = msg.resource_metrics[0].scope_metrics[0].SerializeToString()
    odd = field(1, field(1, first.SerializeToString()) + field(1, second.SerializeToString()) + field(2, scope))
    assert _parsed(odd) == msg  # the same request, encoded unusually
    out, _ = p.apply("metrics", odd)
    assert _parsed(out) == _full_engine(policy(METRIC_POLICY), body)[0]
    assert b"broker-1" not in out and b"ops" not in out
    # Unknown fields (a newer OTLP) are dropped; a policy that keeps them lets them through.
    assert field(99, b"future") not in p.apply("metrics", body + field(99, b"future"))[0]
    keeping = policy(METRIC_POLICY + "unknown_fields: keep\n")
    assert keeping.apply("metrics", body + field(99, b"future"))[0].endswith(field(99, b"future"))
    # Garbage is still refused, as before.
    with pytest.raises(DecodeError):
        p.apply("metrics", body[:-3] + b"\xff\xff\xff")


def test_a_repeated_scrape_is_copied_without_the_per_point_engine() -> None:
    calls = []

    class Counting(Policy):
        def apply_metric(self, m: Any, o: Any, exemplars: bool = True) -> tuple[bool, bool]:
            calls.append(m.name)
            return super().apply_metric(m, o, exemplars)

    pf, _ = load_text(METRIC_POLICY, PolicyFile, "test-policy.yaml")
    p = Counting(pf, SECRET, "test-policy.yaml", "0" * 64, 0.0)
    series = [("kafka.bytes", "sum", [(1, {"topic": "orders"}), (2, {"topic": "audit"})]),
              ("kafka.lag", "gauge", [(5, {"topic": "orders", "partition": 0})]),
              ("kafka.users", "gauge", [(5, {"user": "ann"})])]  # hashed: changed by its shape alone
    p.apply("metrics", _request(series, t=1_000))
    assert sorted(calls) == ["kafka.bytes", "kafka.lag", "kafka.users"]
    assert len(p.shape_memo.shapes) == 2 and len(p.shape_memo.rewrites) == 1
    calls.clear()
    # The next scrape: same series, new values and timestamps.
    later = [(name, kind, [(v * 7 + 3, attrs) for v, attrs in points]) for name, kind, points in series]
    out, outcome = p.apply("metrics", _request(later, t=31_000))
    assert calls == []
    assert outcome.items_in == outcome.items_out == 4
    assert _parsed(out) == _full_engine(policy(METRIC_POLICY), _request(later, t=31_000))[0]


def test_what_the_fast_path_copies_is_still_checked_like_the_full_parser_would() -> None:
    from google.protobuf.message import DecodeError

    p = policy(METRIC_POLICY)
    body = _request([("kafka.bytes", "sum", [(1, {"topic": "orders"})])])
    p.apply("metrics", body)
    p.apply("metrics", body)  # the metric's shape is now known, its bytes copied as they come
    msg = _parsed(body)
    msg.resource_metrics[0].scope_metrics[0].scope.name = "scope-xyz"
    raw = msg.SerializeToString()
    bad = raw.replace(b"scope-xyz", b"scope-\xff\xfe\xfd")  # same length: not UTF-8 any more
    with pytest.raises(DecodeError):
        SIGNAL_INFO["metrics"].request().ParseFromString(bad)
    with pytest.raises(DecodeError):
        p.apply("metrics", bad)


def test_the_wire_walk_splits_fields_and_refuses_what_it_does_not_take_apart() -> None:
    from opentelemetry.proto.resource.v1 import resource_pb2

    from relay import wire

    res = resource_pb2.Resource(dropped_attributes_count=300)
    set_attributes(res.attributes, {"a": "x" * 200, "b": "y"})
    raw = res.SerializeToString()
    parts = list(wire.fields(memoryview(raw), (1,)))
    assert [f for f, _, _ in parts] == [1, 1, 2]
    assert b"".join(bytes(whole) for _, whole, _ in parts) == raw  # nothing lost, nothing added
    out: list[bytes | memoryview] = []
    for f, _, value in parts[:2]:
        wire.emit(out, f, [value])
    assert resource_pb2.Resource.FromString(b"".join(out)).attributes == res.attributes
    assert wire.varint(memoryview(wire.encode_varint(300)), 0) == (300, 2)
    # A truncated varint, a value longer than what is left, field number 0, a group, and field 1
    # as a varint where it must be length-delimited.
    for bad in (raw[:-1], b"\x0a\x05abc", b"\x00\x01", b"\x1b\x0c", wire.encode_varint(1 << 3 | 0) + b"\x01"):
        with pytest.raises(wire.Malformed):
            list(wire.fields(memoryview(bad), (1,)))


def test_the_fast_path_memo_stays_bounded_under_a_flood(monkeypatch: pytest.MonkeyPatch) -> None:
    from relay.policy import shapes

    # Small bounds, so that a short flood crosses each of them several times.
    monkeypatch.setattr(shapes, "_RESOURCES_LIMIT", 30)
    monkeypatch.setattr(shapes, "_SCOPES_LIMIT", 30)
    monkeypatch.setattr(shapes, "_SHAPE_MEMO_BYTES", 2_000)
    p = policy(METRIC_POLICY)
    for i in range(200):  # a new resource, scope and metric shape every time
        b = MetricsBuilder({"service.name": "app", "host.name": f"h{i}"}, f"scope-{i}")
        b.point(b.gauge(f"m{i}", "1"), 1, 1_000, 1, {"topic": f"t{i}"})
        body = b.finish().SerializeToString()
        out, _ = p.apply("metrics", body)
        assert _parsed(out) == _full_engine(policy(METRIC_POLICY), body)[0]
    memo = p.shape_memo
    assert 0 < len(memo.resources) <= 30
    assert 0 < len(memo.scopes) <= 30
    assert memo.shapes and sum(map(len, memo.shapes)) <= 2_000
