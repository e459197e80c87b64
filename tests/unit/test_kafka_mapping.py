"""Every Jolokia and Prometheus/OpenMetrics sample of the corpus (tests/fixtures, see SOURCES.md)
through the mapping code: valid ones give the expected OTLP, malformed ones a clear error."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from relay import mapping
from relay.otlp import attributes_dict, count_items
from relay.sources.jolokia import JolokiaError, bulk_request, map_response
from relay.sources.prometheus import ExpositionError, map_exposition
from relay.strict_yaml import SchemaError

FIX = Path(__file__).parents[1] / "fixtures"

TEST_RULES = """
service_name: fixture
jolokia:
  - bean: java.lang:type=Memory
    unit: By
    mapping:
      HeapMemoryUsage.used:
        {metric: jvm.memory.used, type: updowncounter, metricAttribute: {jvm.memory.type: heap}}
      HeapMemoryUsage.max:
        {metric: jvm.memory.limit, type: updowncounter, drop_negative: true, metricAttribute: {jvm.memory.type: heap}}
      NonHeapMemoryUsage.used:
        {metric: jvm.memory.used, type: updowncounter, metricAttribute: {jvm.memory.type: non_heap}}
      NonHeapMemoryUsage.max:
        metric: jvm.memory.limit
        type: updowncounter
        drop_negative: true
        metricAttribute: {jvm.memory.type: non_heap}
  - bean: java.lang:type=GarbageCollector,name=*
    metricAttribute: {jvm.gc.name: param(name)}
    mapping:
      CollectionCount: {metric: jvm.gc.collections.count, type: counter}
      CollectionTime: {metric: jvm.gc.collections.elapsed, type: counter, unit: s, scale: 0.001}
  - bean: Catalina:type=ThreadPool,name=*
    metricAttribute: {pool: param(name)}
    mapping:
      maxConnections: {metric: tomcat.threads.max_connections, type: gauge}
  - bean: object_with_key_pattern:test=*
    metricAttribute: {test: param(test)}
    mapping:
      fiz: {metric: fixture.fiz, type: gauge}
  - bean: org.apache.cassandra.metrics:keyspace=*,name=EstimatedRowSizeHistogram,scope=*,type=ColumnFamily
    mapping:
      Value: {metric: cassandra.row_size, type: gauge}
"""


def rules(tmp_path: Path) -> mapping.Mappings:
    (tmp_path / "fixture.yaml").write_text(TEST_RULES)
    return mapping.load(["fixture"], tmp_path)


def jolokia_fixture(name: str) -> tuple[list[dict[str, Any]], Any]:
    data = json.loads((FIX / name).read_text())
    entries = data if isinstance(data, list) else [data]
    return [e.get("request", {}) for e in entries], data


def points(req: Any) -> dict[str, list[tuple[dict[str, Any], float]]]:
    out: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                for dp in getattr(m, kind).data_points:
                    value = dp.as_int if dp.WhichOneof("value") == "as_int" else dp.as_double
                    out.setdefault(m.name, []).append((attributes_dict(dp.attributes), value))
    return out


def kinds(req: Any) -> dict[str, str]:
    return {m.name: m.WhichOneof("data") + ("" if m.WhichOneof("data") != "sum" else
                                            ("/monotonic" if m.sum.is_monotonic else "/updown"))
            for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def test_beats_bulk_response_composites_and_gc(tmp_path: Path) -> None:
    sent, data = jolokia_fixture("beats_jolokia_bulk_response.json")
    r = map_response(sent, data, rules(tmp_path), {"service.name": "jvm"})
    p = points(r.request)
    used = {a["jvm.memory.type"]: v for a, v in p["jvm.memory.used"]}
    assert used["heap"] == 227420472 and used["non_heap"] > 0
    # NonHeap max is -1 (undefined) in the fixture: dropped, not sent as a negative limit.
    assert [a["jvm.memory.type"] for a, _ in p["jvm.memory.limit"]] == ["heap"]
    assert p["jvm.gc.collections.count"] == [({"jvm.gc.name": "ConcurrentMarkSweep"}, 1)]
    assert p["jvm.gc.collections.elapsed"] == [({"jvm.gc.name": "ConcurrentMarkSweep"}, pytest.approx(0.053))]
    assert kinds(r.request)["jvm.gc.collections.count"] == "sum/monotonic"
    assert kinds(r.request)["jvm.memory.used"] == "sum/updown"
    assert r.entry_errors == {}


def test_wildcard_response_with_quoted_object_names(tmp_path: Path) -> None:
    sent, data = jolokia_fixture("beats_jolokia_wildcard_response.json")
    p = points(map_response(sent, data, rules(tmp_path), {}).request)
    assert sorted((a["pool"], v) for a, v in p["tomcat.threads.max_connections"]) == [
        ("ajp-bio-8009", 200), ("http-bio-8080", 200)]


def test_telegraf_shapes_and_per_entry_errors(tmp_path: Path) -> None:
    sent, data = jolokia_fixture("telegraf_jolokia2_agent_response.json")
    r = map_response(sent, data, rules(tmp_path), {})
    p = points(r.request)
    assert p["fixture.fiz"] == [({"test": "foo"}, 123)]
    assert "cassandra.row_size" not in p  # a 151-element array is not a number: skipped, no crash
    sent, data = jolokia_fixture("telegraf_jolokia2_bulk_status_200_404_500.json")
    r = map_response(sent, data, rules(tmp_path), {})
    assert r.entry_errors == {404: 1, 500: 1}


def test_non_bulk_and_mismatched_responses_fail_clearly(tmp_path: Path) -> None:
    for name in ("beats_jolokia_get_response.json", "beats_jolokia_get_response_uptime.json"):
        sent, data = jolokia_fixture(name)
        with pytest.raises(JolokiaError, match="expected a JSON list"):
            map_response(sent * 2, data, rules(tmp_path), {})
    with pytest.raises(JolokiaError):
        map_response([{}], "<html>", rules(tmp_path), {})


def test_default_rules_read_one_bulk_with_identity_first() -> None:
    m = mapping.load(["kafka", "jvm"])
    sent = bulk_request(m)
    assert [e["mbean"] for e in sent[:3]] == ["java.lang:type=Runtime", "kafka.server:type=KafkaServer,name=ClusterId",
                                             "kafka.server:type=app-info,*"]
    beans = [e["mbean"] for e in sent[3:]]
    assert len(beans) == len(set(beans)), "one entry per bean pattern"
    assert "kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec,topic=*" in beans
    pools = next(e for e in sent if e["mbean"] == "java.lang:type=MemoryPool,name=*")
    assert "Type" in pools["attribute"], "beanattr(Type) is read along"


def test_default_rules_map_a_kafka_broker_response() -> None:
    """A response shaped as Jolokia answers the default bulk read (names canonical, keys sorted)."""
    m = mapping.load(["kafka", "jvm"])
    sent = bulk_request(m)
    answers = {
        "java.lang:type=Runtime": {"StartTime": 1_790_000_000_000},
        "kafka.server:type=KafkaServer,name=ClusterId": {"Value": "lkc-abc"},
        "kafka.server:type=app-info,*": {"kafka.server:id=3,type=app-info": {"Version": "3.7.0"}},
        "kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec,topic=*": {
            "kafka.server:name=MessagesInPerSec,topic=orders,type=BrokerTopicMetrics": {"Count": 10},
            "kafka.server:name=MessagesInPerSec,topic=payments,type=BrokerTopicMetrics": {"Count": 20}},
        "kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec": {"Count": 30},
        "kafka.network:type=RequestMetrics,name=TotalTimeMs,request=Produce": {
            "Count": 5, "50thPercentile": 1.5, "99thPercentile": 9.0, "Mean": 2.0},
        "java.lang:type=MemoryPool,name=*": {
            "java.lang:name=G1 Eden Space,type=MemoryPool": {
                "Usage": {"used": 100, "committed": 200, "max": -1}, "CollectionUsage": {"used": 7}, "Type": "HEAP"}},
    }
    response = [{"status": 200, "value": answers[e["mbean"]]} if e["mbean"] in answers
                else {"status": 404, "error": "InstanceNotFoundException"} for e in sent]
    r = map_response(sent, response, m, {"service.name": "kafka"}, now_ns=1_800_000_000_000_000_000)
    p = points(r.request)
    assert sorted(p["kafka.message.count"], key=lambda x: x[1]) == [
        ({"topic": "orders"}, 10), ({"topic": "payments"}, 20), ({}, 30)]
    assert p["kafka.request.time.99p"] == [({"type": "Produce"}, 9.0)]
    assert p["jvm.memory.used"] == [({"jvm.memory.pool.name": "G1 Eden Space", "jvm.memory.type": "heap"}, 100)]
    assert p["jvm.memory.used_after_last_gc"][0][1] == 7
    assert "jvm.memory.limit" not in p  # max -1 means undefined
    res = attributes_dict(r.request.resource_metrics[0].resource.attributes)
    assert res["kafka.cluster.id"] == "lkc-abc" and res["kafka.broker.id"] == "3"
    counter = next(m for m in r.request.resource_metrics[0].scope_metrics[0].metrics if m.name == "kafka.message.count")
    assert counter.sum.data_points[0].start_time_unix_nano == 1_790_000_000_000 * 1_000_000
    assert 404 in r.entry_errors and sum(r.entry_errors.values()) == len(sent) - 3 - 4


PROM_VALID = {
    # file: (openmetrics, families, points)
    "promcommon_expfmt_testdata_text.prom": (False, 37, None),
    "prometheus_textparse_alltypes_237mfs.prom.txt": (False, 237, None),
    "datadog_amazon_msk_jmx_metrics_EXCERPT.prom.txt": (False, 20, 102),
    "node_exporter_textfile_inconsistent_labels.prom": (False, 2, 19),
    "promcommon_fuzz_parse_2_escapes_nan_inf_ts.prom": (False, 2, 4),
    "promcommon_fuzz_parse_3_summary_weird.prom": (False, 13, None),
    # prometheus_client's text parser is lenient about a float timestamp; the sample is kept.
    "promcommon_fuzz_error_9_float_timestamp.prom": (False, 1, 1),
    "openmetrics_suite_roundtrip.om.txt": (True, 9, None),
    "openmetrics_suite_escaping.om.txt": (True, 1, 4),
    "openmetrics_suite_label_escaping.om.txt": (True, 10, 10),
    "openmetrics_suite_timestamps.om.txt": (True, 2, 6),
    "telegraf_openmetrics_multiple_summary_unit_created.om.txt": (True, 3, None),
}
PROM_MALFORMED = {
    "openmetrics_suite_bad_text_after_eof_0.om.txt": (True, "line after # EOF"),
    "promcommon_fuzz_error_2_newline_in_label.prom": (False, "malformed Prometheus text"),
    # Valid per Prometheus, refused by prometheus_client's OpenMetrics parser (a negative
    # histogram _sum): the scrape fails with its message rather than guessing.
    "prometheus_textparse_alltypes_5mfs.om.txt": (True, "cannot be negative"),
}


@pytest.mark.parametrize("name", sorted(PROM_VALID))
def test_valid_exposition_maps_to_otlp(name: str) -> None:
    om, families, expected_points = PROM_VALID[name]
    r = map_exposition((FIX / name).read_text(), om, mapping.load(["kafka", "jvm"]), {"service.name": "x"})
    assert r.families == families
    assert r.points == count_items("metrics", r.request) > 0
    if expected_points is not None:
        assert r.points == expected_points
    r.request.SerializeToString()  # a valid protobuf message


@pytest.mark.parametrize("name", sorted(PROM_MALFORMED))
def test_malformed_exposition_fails_with_a_clear_error(name: str) -> None:
    om, message = PROM_MALFORMED[name]
    with pytest.raises(ExpositionError, match=message):
        map_exposition((FIX / name).read_text(), om, None, {})


def test_prometheus_types_follow_the_compatibility_spec() -> None:
    r = map_exposition((FIX / "promcommon_expfmt_testdata_text.prom").read_text(), False, None, {}, start_ns=42)
    metrics = {m.name: m for rm in r.request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    # The spec keeps the name as exposed: the counter is `# TYPE http_requests_total counter`.
    assert metrics["http_requests_total"].sum.is_monotonic
    assert metrics["http_requests_total"].sum.data_points[0].start_time_unix_nano == 42
    summary = metrics["http_request_duration_microseconds"].summary.data_points[0]
    assert [q.quantile for q in summary.quantile_values] == [0.5, 0.9, 0.99]
    assert metrics["process_resident_memory_bytes"].WhichOneof("data") == "gauge"
    r = map_exposition((FIX / "prometheus_textparse_alltypes_237mfs.prom.txt").read_text(), False, None, {})
    hists = [m for rm in r.request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
             if m.WhichOneof("data") == "histogram"]
    assert hists
    for h in hists:
        for dp in h.histogram.data_points:
            assert len(dp.bucket_counts) == len(dp.explicit_bounds) + 1
            assert sum(dp.bucket_counts) == dp.count  # de-cumulated


def test_jmx_exporter_names_map_to_the_jolokia_names() -> None:
    text = (
        "# TYPE kafka_server_brokertopicmetrics_messagesin_total counter\n"
        'kafka_server_brokertopicmetrics_messagesin_total{topic="orders",} 10.0\n'
        "kafka_server_brokertopicmetrics_messagesin_total 30.0\n"
        "# TYPE kafka_network_requestmetrics_totaltimems gauge\n"
        'kafka_network_requestmetrics_totaltimems{request="Produce",quantile="0.99",} 9.0\n'
        'kafka_network_requestmetrics_totaltimems{request="Produce",quantile="0.50",} 1.5\n'
        "# TYPE kafka_server_replicamanager_underreplicatedpartitions gauge\n"
        "kafka_server_replicamanager_underreplicatedpartitions 2.0\n"
        "# TYPE some_other_metric gauge\nsome_other_metric 1.0\n"
    )
    r = map_exposition(text, False, mapping.load(["kafka", "jvm"]), {})
    p = points(r.request)
    assert sorted(p["kafka.message.count"], key=lambda x: x[1]) == [({"topic": "orders"}, 10.0), ({}, 30.0)]
    assert p["kafka.request.time.99p"] == [({"type": "Produce"}, 9.0)]
    assert p["kafka.request.time.50p"] == [({"type": "Produce"}, 1.5)]
    assert p["kafka.partition.under_replicated"] == [({}, 2.0)]
    assert p["some_other_metric"] == [({}, 1.0)]  # unmapped: passed through
    assert r.mapped_samples == 5
    assert kinds(r.request)["kafka.message.count"] == "sum/monotonic"


def test_rule_files_are_validated_strictly(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("service_name: x\njolokia:\n  - bean: kafka.server:type=X\n    mapping:\n"
                                       "      Value: {metric: x, typ: gauge}\n")
    with pytest.raises(SchemaError, match=r"bad.yaml:5: jolokia\[0\].mapping.Value.typ: unknown key"):
        mapping.load(["bad"], tmp_path)
    (tmp_path / "bad2.yaml").write_text("service_name: x\njolokia:\n  - beans: [kafka.server:type=X,name=Y]\n"
                                        "    mapping: {Value: {metric: x}}\n")
    with pytest.raises(SchemaError, match="quote names that contain commas"):
        mapping.load(["bad2"], tmp_path)
    with pytest.raises(SchemaError, match="no mapping file 'nope'"):
        mapping.load(["nope"], tmp_path)


@pytest.mark.parametrize("broken", ["yaml", "unknown_key"])
def test_check_config_refuses_a_broken_rule_file_with_its_path_and_line(tmp_path: Path, broken: str) -> None:
    """The rule files are validated when the config is, so check-config (and a reload) catch them."""
    import subprocess

    from tests.procs import CLI

    DEFAULT_POLICY = Path(__file__).parents[2] / "configs" / "policy.yaml"

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "mine.yaml").write_text({
        "yaml": "service_name: x\njolokia:\n  - bean: kafka.server:type=X\n    mapping:\n"
                "      Value: {metric: x\n  - bean: kafka.server:type=Y\n",
        "unknown_key": "service_name: x\njolokia:\n  - bean: kafka.server:type=X\n    mapping:\n"
                       "      Value: {metric: x, typ: gauge}\n",
    }[broken])
    config = tmp_path / "relay.yaml"
    # The shipped default policy, so the only thing check-config can refuse is the rule file.
    config.write_text(f"state_dir: {tmp_path / 'state'}\npolicy: {{file: {DEFAULT_POLICY}}}\n"
                      f"sources:\n  mappings_dir: {rules}\n  jolokia:\n"
                      "    targets: [{url: 'http://127.0.0.1:8778/jolokia', mappings: [jvm]}]\n"
                      "  prometheus:\n    targets: [{url: 'http://127.0.0.1:9404/metrics', mappings: [mine]}]\n"
                      "destinations:\n  - {name: v, endpoint: 'http://127.0.0.1:1'}\n")
    (rules / "jvm.yaml").write_text((mapping.default_dir() / "jvm.yaml").read_text())
    p = subprocess.run([*CLI, "check-config", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    expected = {"yaml": f"{rules / 'mine.yaml'}:6: invalid YAML: expected ',' or '}}'",
                "unknown_key": f"{rules / 'mine.yaml'}:5: jolokia[0].mapping.Value.typ: unknown key"}[broken]
    assert expected in p.stderr
    # Valid again, the same config passes: what failed was the rule file.
    (rules / "mine.yaml").write_text("service_name: x\nprometheus:\n  - {series: [up], metric: up}\n")
    p = subprocess.run([*CLI, "check-config", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_missing_rule_file_is_named_once_at_the_config_line(tmp_path: Path) -> None:
    from relay import config

    text = (f"sources:\n  mappings_dir: {mapping.default_dir()}\n  jolokia:\n    targets:\n"
            "      - {url: 'http://127.0.0.1:8778/jolokia', mappings: [kafka, nope]}\n"
            "destinations:\n  - {name: v, endpoint: 'http://127.0.0.1:1'}\n")
    with pytest.raises(SchemaError) as e:
        config.loads(text, "relay.yaml")
    assert str(e.value) == (f"relay.yaml:5: sources.jolokia.targets[0].mappings: no mapping file 'nope' in "
                            f"{mapping.default_dir()} (available: jvm, kafka, kraft, zookeeper)")
    with pytest.raises(SchemaError) as e:
        mapping.load(["nope"])
    assert e.value.message == (f"no mapping file 'nope' in {mapping.default_dir()} "
                               "(available: jvm, kafka, kraft, zookeeper)")


def test_an_edited_rule_file_is_read_afresh(tmp_path: Path) -> None:
    """Rule files are parsed once per content (config and sources both load them): an edit of
    the same size, right after, must still be seen."""
    rules = tmp_path / "r.yaml"
    rules.write_text("service_name: x\nprometheus:\n  - {series: [up], metric: aaa}\n")
    assert mapping.load(["r"], tmp_path).prometheus["up"][0].metric == "aaa"
    rules.write_text("service_name: x\nprometheus:\n  - {series: [up], metric: bbb}\n")
    assert mapping.load(["r"], tmp_path).prometheus["up"][0].metric == "bbb"
    rules.write_text("service_name: x\nprometheus:\n  - {series: [up], metric: ccc, typo: 1}\n")
    with pytest.raises(SchemaError, match=r"r.yaml:3: prometheus\[0\].typo: unknown key"):
        mapping.load(["r"], tmp_path)


def test_every_shipped_rule_file_loads_and_names_are_unique_per_type() -> None:
    names = sorted(p.stem for p in mapping.default_dir().glob("*.yaml"))
    assert names == ["jvm", "kafka", "kraft", "zookeeper"]
    seen: dict[str, str] = {}
    for n in names:
        m = mapping.load([n])
        for r in m.jolokia:
            assert seen.setdefault(r.metric, r.type) == r.type, f"{r.metric} has two types"
        assert Counter(r.metric for r in m.jolokia)


def test_default_kafka_rules_cover_the_datadog_broker_bean_set() -> None:
    """Every broker-side bean Datadog's Kafka integration reads is read by the default rules."""
    import re as _re

    text = (FIX / "datadog_kafka_metrics.yaml").read_text()
    beans = set(_re.findall(r"bean: '(kafka\.(?:server|network|controller|log):[^']+)'", text))
    assert len(beans) >= 35
    # Datadog's list still names some beans as brokers before 2.0 registered them; a real
    # 4.x broker (tests/integration/test_real_kafka.py) registers these instead.
    as_registered = {
        "kafka.network:type=RequestMetrics,name=RequestsPerSec,request=Produce":
            "kafka.network:type=RequestMetrics,name=RequestsPerSec,request=Produce,version=11",
        "kafka.network:type=RequestMetrics,name=RequestsPerSec,request=FetchConsumer":
            "kafka.network:type=RequestMetrics,name=RequestsPerSec,request=FetchConsumer,version=17",
        "kafka.network:type=RequestMetrics,name=RequestsPerSec,request=FetchFollower":
            "kafka.network:type=RequestMetrics,name=RequestsPerSec,request=FetchFollower,version=17",
        "kafka.network:type=RequestMetrics,name=TotalTimeMs,request=Offsets":
            "kafka.network:type=RequestMetrics,name=TotalTimeMs,request=ListOffsets",
        "kafka.server:type=ProducerRequestPurgatory,name=PurgatorySize":
            "kafka.server:type=DelayedOperationPurgatory,name=PurgatorySize,delayedOperation=Produce",
        "kafka.server:type=FetchRequestPurgatory,name=PurgatorySize":
            "kafka.server:type=DelayedOperationPurgatory,name=PurgatorySize,delayedOperation=Fetch",
    }
    assert set(as_registered) <= beans
    beans = {as_registered.get(b, b) for b in beans}
    patterns = [r.pattern for r in mapping.load(["kafka"]).jolokia]
    missing = sorted(b for b in beans if not any(mapping.bean_matches(p, b) for p in patterns))
    assert missing == [], f"beans the default rules do not read: {missing}"


def test_an_empty_match_value_takes_only_samples_without_that_label() -> None:
    """The exporter gives a broker-wide counter beside per-topic ones under one name; the rule
    for the broker-wide metric must not take the per-topic samples too (same attributes twice)."""
    text = ("# TYPE kafka_server_brokertopicmetrics_totalproducerequests_total counter\n"
            "kafka_server_brokertopicmetrics_totalproducerequests_total 30.0\n"
            'kafka_server_brokertopicmetrics_totalproducerequests_total{topic="a"} 10.0\n'
            'kafka_server_brokertopicmetrics_totalproducerequests_total{topic="b"} 20.0\n')
    r = map_exposition(text, False, mapping.load(["kafka"]), {"service.name": "x"}, passthrough=False)
    points = [(attributes_dict(dp.attributes), dp.as_double)
              for rm in r.request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
              if m.name == "kafka.request.count" for dp in m.sum.data_points]
    assert points == [({"type": "produce"}, 30.0)]


def test_rules_read_by_two_files_are_compiled_once() -> None:
    """A combined KRaft node loads kafka and kraft, which both read ActiveControllerCount."""
    both = mapping.load(["kafka", "kraft"])
    reads = [(r.pattern, r.attribute, r.metric) for r in both.jolokia]
    assert len(reads) == len(set(reads))
    assert reads.count(("kafka.controller:type=KafkaController,name=ActiveControllerCount", "Value",
                        "kafka.controller.active.count")) == 1
    assert len(both.prometheus["kafka_controller_kafkacontroller_activecontrollercount"]) == 1


def test_msk_style_names_map_to_the_otel_names_jolokia_gives() -> None:
    """MSK's exporter configuration names series kafka_<domain>_<Type>_<Attribute>{name=...};
    no real MSK output can be produced here, so these lines follow the corpus scrape's shape
    (untyped, trailing commas)."""
    text = ('kafka_network_RequestMetrics_Mean{name="TotalTimeMs",request="Produce",} 2.5\n'
            'kafka_network_RequestMetrics_99thPercentile{name="TotalTimeMs",request="Produce",} 9.0\n'
            'kafka_network_RequestMetrics_Count{name="RequestsPerSec",request="Produce",version="9",} 42.0\n'
            'kafka_network_RequestMetrics_Mean{name="LocalTimeMs",request="Produce",} 1.0\n'
            'kafka_server_BrokerTopicMetrics_Count{name="TotalProduceRequestsPerSec",} 30.0\n'
            'kafka_server_BrokerTopicMetrics_Count{name="TotalProduceRequestsPerSec",topic="a",} 30.0\n'
            'kafka_server_DelayedOperationPurgatory_Value{name="PurgatorySize",delayedOperation="Fetch",} 3.0\n'
            'kafka_consumer_group_ConsumerLagMetrics_Value{name="SumOffsetLag",groupId="g",topic="a",} 7.0\n')
    r = map_exposition(text, False, mapping.load(["kafka"]), {"service.name": "x"}, passthrough=False)
    got = [((m.name, tuple(sorted(attributes_dict(dp.attributes).items()))), dp.as_double)
           for rm in r.request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
           for dp in (m.sum if m.HasField("sum") else m.gauge).data_points]
    assert len(got) == len(dict(got)), "one series reported twice"
    assert dict(got) == {
        ("kafka.request.time.avg", (("type", "Produce"),)): 2.5,
        ("kafka.request.time.99p", (("type", "Produce"),)): 9.0,
        ("kafka.network.request.count", (("type", "Produce"), ("version", "9"))): 42.0,
        ("kafka.request.count", (("type", "produce"),)): 30.0,
        ("kafka.purgatory.size", (("type", "Fetch"),)): 3.0,
        ("kafka.consumer_group.lag_sum", (("group", "g"), ("topic", "a"))): 7.0,
    }
