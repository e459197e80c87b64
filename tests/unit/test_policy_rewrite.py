"""A metric the policy changes by its shape alone is rewritten from what the engine made of it
the first time: the output is the full engine's, byte for byte, on real scrapes (first request
and later ones with new values), on the OTLP example, and on generated requests; the memo stays
bounded and does not outlive its policy."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from relay import mapping, wire
from relay.otlp import from_json
from relay.policy import Policy, PolicyHolder, load_policy, shapes
from relay.policy.outcome import Outcome
from relay.policy.schema import PolicyFile
from relay.source_settings import PrometheusSettings, ScrapeTargetSettings
from relay.sources.exposition import ExpositionLimits
from relay.sources.prometheus import PrometheusSource
from relay.sources.scrape_bounds import Deadline
from relay.strict_yaml import load_text

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
SECRET = b"s" * 32
URL = "http://127.0.0.1:9404/metrics"
NOW = 1_700_000_000_000_000_000
VALUE = re.compile(rb"^([^#\n][^\n]* )([-+0-9.eE]+)$", re.M)
SHIPPED = (ROOT / "configs" / "policy.yaml").read_text()
# Point attributes hashed, dropped, masked and renamed (a value rule rewrites a key), metric
# names renamed, a family denied, and the Prometheus type in the metadata dropped.
REWRITING = """
version: 1
metrics: {default: allow, deny: ['go_memstats_*']}
resource_attributes: {default: keep}
attributes:
  default: keep
  rules:
    - {key: topic, action: hash}
    - {key: mountpoint, action: hash}
    - {key: fstype, action: drop}
    - {key: cpu, action: mask}
    - {key: prometheus.type, action: drop}
values:
  - {regex: "^device", action: hash}
  - {regex: "seconds", action: mask}
  - {detector: email, action: hash}
  - {detector: ipv4, action: hash}
"""
POLICIES = {"shipped": SHIPPED, "rewriting": REWRITING}
REAL = [("jmx_exporter_kafka-4.4_broker_EXCERPT.prom", mapping.load(["kafka", "kraft", "jvm"])),
        ("node_exporter_1.5.0_linux.prom", None)]


def policy(text: str, cls: type[Policy] = Policy) -> Policy:
    pf, _ = load_text(text, PolicyFile, "test-policy.yaml")
    return cls(pf, SECRET, "test-policy.yaml", "0" * 64, 0.0)


class Counting(Policy):
    """The shipped engine, recording which metrics reach its per-point visit."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls: list[str] = []

    def apply_metric(self, m: Any, o: Any, exemplars: bool = True) -> tuple[bool, bool]:
        self.calls.append(m.name)
        return super().apply_metric(m, o, exemplars)


def moved(body: bytes, k: int) -> bytes:
    """The exposition with every plain value changed, as a target's next scrape has it."""
    def move(m: re.Match[bytes]) -> bytes:
        try:
            return m.group(1) + repr(float(m.group(2)) * (1 + k) + k).encode()
        except ValueError:
            return m.group(0)
    return VALUE.sub(move, body)


def scrapes(name: str, maps: mapping.Mappings | None, n: int) -> list[bytes]:
    """n requests the Prometheus source makes of a real body, values moving between them."""
    src = PrometheusSource(ScrapeTargetSettings(url=URL), None, maps, PrometheusSettings(), {"host.name": "h"})
    src.first_scrape_ns = NOW - 10**9
    s, body = src.settings, (FIX / name).read_bytes()
    out = []
    for k in range(n):
        lim = ExpositionLimits(URL, s.max_line_length, s.max_labels_per_series, s.max_series,
                               Deadline(URL, 60.0, "sources.prometheus.parse_timeout"))
        out.append(bytes(src._map(moved(body, k), False, NOW + k * 10**10, lim).request.SerializeToString()))
    return out


def same_as_full_engine(p: Policy, text: str, body: bytes) -> None:
    """p (its memo warm or not) gives exactly the bytes and counts a fresh per-point engine gives."""
    fast, fo = p.apply("metrics", body)
    full, o = policy(text).apply_per_point("metrics", body)
    assert fast == full
    assert (fo.items_in, fo.items_out) == (o.items_in, o.items_out)
    assert {k: v for k, v in fo.counts.items() if v} == {k: v for k, v in o.counts.items() if v}


def merging(text: str, body: bytes) -> set[str]:
    """The metrics whose points the policy merges (or drops one by one): never rewritten."""
    req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
    names, engine = set(), policy(text)
    for m in (m for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics):
        before = len(getattr(m, m.WhichOneof("data")).data_points)
        out = metrics_pb2.Metric()
        out.CopyFrom(m)
        keep, _ = engine.apply_metric(out, Outcome())
        if keep and len(getattr(out, out.WhichOneof("data")).data_points) != before:
            names.add(m.name)
    return names


def test_real_scrapes_are_rewritten_exactly_as_the_engine_writes_them() -> None:
    for name, maps in REAL:
        bodies = scrapes(name, maps, 4)
        for label, text in POLICIES.items():
            pf, _ = load_text(text, PolicyFile, "test-policy.yaml")
            p = Counting(pf, SECRET, "test-policy.yaml", "0" * 64, 0.0)
            merges = merging(text, bodies[0])
            for k, body in enumerate(bodies):
                p.calls.clear()
                same_as_full_engine(p, text, body)
                if k:  # later scrapes: only what merges reaches the per-point engine
                    assert set(p.calls) <= merges, (name, label)
            assert p.shape_memo.rewrites, (name, label)
            assert p.shape_memo.evictions == 0


def moved_otlp(body: bytes, k: int) -> bytes:
    """The same request with every number in its points changed (values, counts, times, buckets)."""
    req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)

    def move(msg: Any) -> None:
        for f, v in msg.ListFields():
            if f.type == f.TYPE_MESSAGE:
                for sub in (v if f.is_repeated else [v]):
                    if f.message_type.full_name.startswith("opentelemetry.proto.metrics"):
                        move(sub)
            elif f.type in (f.TYPE_DOUBLE, f.TYPE_FLOAT) and f.name not in ("quantile",) and not f.is_repeated:
                setattr(msg, f.name, v * (1 + k) + 0.5)
            elif f.type in (f.TYPE_FIXED64, f.TYPE_SFIXED64, f.TYPE_UINT64) and not f.is_repeated:
                setattr(msg, f.name, v + k)
            elif f.type in (f.TYPE_FIXED64, f.TYPE_UINT64) and f.is_repeated:
                v[:] = [x + k for x in v]

    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                move(m)
    return bytes(req.SerializeToString())


def test_the_otlp_example_is_rewritten_exactly_as_the_engine_writes_it() -> None:
    body = bytes(from_json("metrics", (FIX / "otlp_proto_examples_metrics.json").read_bytes()).SerializeToString())
    for label, text in POLICIES.items():
        p = policy(text)
        for k in range(3):
            same_as_full_engine(p, text, moved_otlp(body, k))
        # The shipped policy drops each point's attribute; the other one leaves the example alone.
        assert p.shape_memo.rewrites if label == "shipped" else p.shape_memo.shapes


def kv(key: str, value: str) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))


KEYS = st.sampled_from(["topic", "pod", "user", "partition", "cpu", "mountpoint", "device", "fstype",
                        "ann@x.example.com"])
VALUES = st.sampled_from(["orders", "audit", "orders.x", "10.1.2.3", "ann@corp.example.com", "AKIAABCDEFGHIJKLMNOP",
                          "sda", "x", "seconds"])
ATTRS = st.lists(st.tuples(KEYS, VALUES), max_size=3)
KINDS = st.sampled_from(["gauge", "sum", "histogram", "summary", "exponential_histogram"])
SHAPE = st.tuples(st.sampled_from(["kafka.bytes", "io_seconds", "go_memstats_x", "disk.ops"]), KINDS,
                  st.lists(ATTRS, min_size=1, max_size=5), st.booleans())
LEAKS = ["10.1.2.3", "ann@corp.example.com", "ann@x.example.com"]


def build(shapes_: list[Any], values: list[float], t: int, unknown: int | None) -> bytes:
    """A request with these metric shapes, each point's numbers taken from `values`, and (when
    `unknown` is set) a field this OTLP does not know inside that point."""
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    sm = req.resource_metrics.add().scope_metrics.add()
    vals = itertools.cycle(values)
    n = 0
    for name, kind, points, with_meta in shapes_:
        m = sm.metrics.add(name=name, description="d", unit="1")
        if with_meta:
            m.metadata.append(kv("prometheus.type", kind))
        for attrs in points:
            dp = getattr(m, kind).data_points.add(time_unix_nano=t + 5, start_time_unix_nano=t)
            dp.attributes.extend(kv(k, v) for k, v in attrs)
            v = next(vals)
            if kind in ("gauge", "sum"):
                if v.is_integer():
                    dp.as_int = int(v)
                else:
                    dp.as_double = v
            elif kind == "histogram":
                dp.count, dp.sum = int(abs(v)), v
                dp.bucket_counts[:], dp.explicit_bounds[:] = [int(abs(v)), 0], [1.0]
            elif kind == "summary":
                dp.count, dp.sum = int(abs(v)), v
                dp.quantile_values.add(quantile=0.5, value=v)
            else:
                dp.count, dp.scale = int(abs(v)), int(v) % 5
                dp.positive.bucket_counts[:] = [int(abs(v))]
            if unknown is not None and n == unknown:
                dp.MergeFromString(wire.encode_varint(99 << 3 | 2) + b"\x06future")
            n += 1
    return bytes(req.SerializeToString())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes_=st.lists(SHAPE, min_size=1, max_size=4), text=st.sampled_from(list(POLICIES.values())),
       rounds=st.lists(st.tuples(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=6),
                                 st.none() | st.integers(0, 6)), min_size=2, max_size=4))
def test_generated_requests_are_rewritten_exactly_as_the_engine_writes_them(
        shapes_: list[Any], text: str, rounds: list[Any]) -> None:
    p = policy(text)
    for t, (values, unknown) in enumerate(rounds):
        body = build(shapes_, values, 1_000 + t, unknown)
        same_as_full_engine(p, text, body)
        out = p.apply("metrics", body)[0]
        assert not any(leak.encode() in out for leak in LEAKS)
        assert b"future" not in out


def test_a_remembered_rewrite_answers_only_for_its_own_attribute_values() -> None:
    p = policy(REWRITING)
    # Changed by its shape (the metadata goes), the point's attribute kept as it is.
    first = build([("kafka.bytes", "sum", [[("pod", "orders.x")]], True)], [1.0], 1, None)
    p.apply("metrics", first)
    assert len(p.shape_memo.rewrites) == 1
    # The same metric, its value as long, now an address: another shape, for the engine to decide.
    other = build([("kafka.bytes", "sum", [[("pod", "10.1.2.3")]], True)], [2.0], 2, None)
    same_as_full_engine(p, REWRITING, other)
    assert b"10.1.2.3" not in p.apply("metrics", other)[0]
    assert len(p.shape_memo.rewrites) == 2


def test_the_memo_stays_bounded_and_counts_what_it_lets_go() -> None:
    p = policy(REWRITING)
    # Distinct changed shapes with long attribute values, well past the memo's byte budget.
    long = [("kafka.bytes", "gauge", [[("topic", f"{i:04d}" + "t" * 2000)]], True) for i in range(2_500)]
    body = build(long, [1.0], 1, None)
    same_as_full_engine(p, REWRITING, body)
    memo = p.shape_memo
    assert memo.evictions >= 1
    assert memo._shape_bytes <= shapes._SHAPE_MEMO_BYTES
    assert 0 < len(memo.rewrites) < 2_500
    same_as_full_engine(p, REWRITING, build(long, [3.0], 2, None))


def test_a_reloaded_policy_starts_with_an_empty_memo(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(REWRITING)
    holder = PolicyHolder(str(path), SECRET)
    assert holder.load() and holder.current is not None
    body = build([("kafka.bytes", "sum", [[("topic", "orders")]], False)], [1.0], 1, None)
    before = holder.current.apply("metrics", body)[0]
    assert holder.current.shape_memo.rewrites and holder.current.token("orders").encode() in before
    path.write_text(REWRITING.replace("{key: topic, action: hash}", "{key: topic, action: drop}"))
    assert holder.load() and holder.current is not None
    assert not holder.current.shape_memo.rewrites
    after = holder.current.apply("metrics", body)[0]
    assert b"orders" not in after and holder.current.token("orders").encode() not in after
    assert after == load_policy(path, SECRET).apply_per_point("metrics", body)[0]
