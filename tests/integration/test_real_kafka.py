"""The Kafka sources against a real Apache Kafka broker (tests/kafka/harness.py): discovery
through each agent, Jolokia beside the JMX exporter (its published KRaft configuration and
Confluent's), the broker's identity and start time, and a coverage report of the shipped
mapping rules."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from relay import mapping
from relay.sources.exposition import parse_families
from tests.kafka.harness import EXPORTER_CONFIGS, Broker, Jars, jolokia_read
from tests.procs import Ingest, Relay, relay_config, wait_until

FIX = Path(__file__).parents[1] / "fixtures"
QUIET = {"host": {"enabled": False}, "internal": {"enabled": False}}
MAPPINGS = ["kafka", "kraft", "jvm"]
JOLOKIA, EXPORTER = "telemetry-relay/jolokia", "telemetry-relay/prometheus"

# Every metric of the OTel JMX scraper's kafka target (the names only: the file re-defines
# YAML anchors, which PyYAML refuses).
_TARGET_TEXT = (FIX / "otel_jmx_scraper_kafka.yaml").read_text()
OTEL_TARGET = sorted(
    {m for m in re.findall(r"metric: (?:&\w+ )?(kafka\.[\w.]+)", _TARGET_TEXT)}
    | {"kafka.logs.flush." + m for m in ("count", "time.50p", "time.99p")})
# What a Kafka 4.4 KRaft node cannot give, through which agent, and why (docs/metrics.md).
NOT_ON_KRAFT_4 = {
    "kafka.leader.election.rate": ({JOLOKIA, EXPORTER}, "LeaderElectionRateAndTimeMs is the ZooKeeper-mode "
                                   "controller's (Kafka before 4.0); a KRaft controller has no such bean"),
    "kafka.request.time.avg": ({EXPORTER}, "neither exporter configuration exports a timer's Mean"),
}
# Identical in both agents' reads of one JVM (a read of the same bean a moment apart);
# sampled statistics (percentiles, means, idle ratios) move between two reads and are only printed.
EXACT_GAUGES = {"kafka.partition.count", "kafka.partition.offline", "kafka.partition.under_replicated",
                "kafka.controller.active.count", "kafka.partition.leader.count", "kafka.topic.count",
                "kafka.raft.leader"}


Point = tuple[str, dict[str, Any], str, dict[str, Any], float, int, int, str]


def points(ingest: Ingest) -> list[Point]:
    """(scope, resource, metric, attributes, value, time, start time, kind) of every point at the ingest."""
    out: list[Point] = []
    for rec in ingest.requests():
        for rm in rec["request"]["resourceMetrics"]:
            res = {a["key"]: next(iter(a["value"].values())) for a in rm["resource"]["attributes"]}
            for sm in rm["scopeMetrics"]:
                scope = sm.get("scope", {}).get("name", "")
                for m in sm["metrics"]:
                    kind = "sum" if "sum" in m else "gauge" if "gauge" in m else ""
                    for dp in (m.get(kind) or {}).get("dataPoints", []):
                        attrs = {a["key"]: next(iter(a["value"].values())) for a in dp.get("attributes", [])}
                        value = float(dp.get("asInt", dp.get("asDouble", 0)))
                        out.append((scope, res, m["name"], attrs, value, int(dp.get("timeUnixNano", 0)),
                                    int(dp.get("startTimeUnixNano", 0)), kind))
    return out


def _key(attrs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(attrs.items()))


def _relay_on_both_agents(tmp_path: Path, broker: Broker) -> tuple[Ingest, Relay]:
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url, sources={
        **QUIET, "discovery": {"kafka": False},
        "jolokia": {"interval": "1s", "targets": [{"url": broker.jolokia_url, "mappings": MAPPINGS}]},
        "prometheus": {"interval": "1s", "passthrough_unmapped": False,
                       "targets": [{"url": broker.exporter_url, "mappings": MAPPINGS}]}})
    relay = Relay(tmp_path, cfg)
    relay.start()
    return ingest, relay


def _by_scope(pts: list[Point], scope: str) -> dict[str, dict[tuple[tuple[str, Any], ...], list[tuple[int, float]]]]:
    out: dict[str, dict[tuple[tuple[str, Any], ...], list[tuple[int, float]]]] = {}
    for sc, _, name, attrs, value, t, _, _ in pts:
        if sc == scope and name.startswith("kafka."):
            out.setdefault(name, {}).setdefault(_key(attrs), []).append((t, value))
    return out


def _agree(jolokia: list[tuple[int, float]], exporter: list[tuple[int, float]], interval_ns: int) -> bool | None:
    """Does an exporter reading lie between the Jolokia readings just before and just after it?
    None when no exporter reading has Jolokia readings on both sides yet."""
    for t, v in sorted(exporter, reverse=True):
        before = [jv for jt, jv in jolokia if t - 2 * interval_ns <= jt <= t]
        after = [jv for jt, jv in jolokia if t <= jt <= t + 2 * interval_ns]
        if before and after:
            lo, hi = min(before + after), max(before + after)
            return lo - 1e-9 <= v <= hi + 1e-9
    return None


@pytest.mark.parametrize("config", ["exporter", "confluent"])
def test_jolokia_and_the_jmx_exporter_deliver_the_same_metrics(tmp_path: Path, request: pytest.FixtureRequest,
                                                                config: str) -> None:
    broker: Broker = request.getfixturevalue("real_kafka" if config == "exporter" else "real_kafka_confluent")
    ingest, relay = _relay_on_both_agents(tmp_path, broker)
    try:
        def both_have_the_target() -> bool:
            pts = points(ingest)
            for scope in (JOLOKIA, EXPORTER):
                have = set(_by_scope(pts, scope))
                want = {n for n in OTEL_TARGET if scope not in NOT_ON_KRAFT_4.get(n, (set(), ""))[0]}
                if not want <= have:
                    return False
            return True

        wait_until(both_have_the_target, timeout=90, interval=0.5, what="the OTel kafka target through both agents")
        # A few more scrapes, so each exporter reading has Jolokia readings on both sides.
        start = time.monotonic()
        wait_until(lambda: time.monotonic() - start > 4, timeout=10, interval=0.5)
        pts = points(ingest)
    finally:
        relay.terminate()
        ingest.terminate()
    jol, exp = _by_scope(pts, JOLOKIA), _by_scope(pts, EXPORTER)
    kinds = {name: kind for _, _, name, _, _, _, _, kind in pts}

    rows, disagree = [], []
    for name in sorted(set(jol) | set(exp)):
        for key in sorted(set(jol.get(name, {})) | set(exp.get(name, {}))):
            j, e = jol.get(name, {}).get(key, []), exp.get(name, {}).get(key, [])
            verdict = ""
            if j and e and (kinds[name] == "sum" or name in EXACT_GAUGES):
                ok = _agree(j, e, 1_000_000_000)
                verdict = {True: "agree", False: "DIFFER", None: "no straddling read"}[ok]
                if ok is False:
                    disagree.append((name, key, j, e))
            attrs = ",".join(f"{k}={v}" for k, v in key)
            jv, ev = max(j)[1] if j else "—", max(e)[1] if e else "—"
            rows.append(f"| {name} | {attrs} | {jv:>14} | {ev:>14} | {verdict} |")
    print(f"\nJolokia vs JMX exporter ({EXPORTER_CONFIGS[config].name}), Kafka 4.4.0, latest reading each:")
    print("| metric | attributes | Jolokia | JMX exporter | within one interval |\n|---|---|---|---|---|")
    print("\n".join(rows))

    for name in OTEL_TARGET:
        missing_from, why = NOT_ON_KRAFT_4.get(name, (set(), ""))
        assert (name in jol) == (JOLOKIA not in missing_from), f"{name} through Jolokia: {why or 'expected'}"
        assert (name in exp) == (EXPORTER not in missing_from), f"{name} through the exporter: {why or 'expected'}"
        if name in jol and name in exp:
            assert set(jol[name]) == set(exp[name]), f"{name}: attribute sets differ between the agents"
    assert not disagree, f"values further apart than one scrape interval explains: {disagree}"
    # Real traffic: rates, latencies, rejections and waiting fetches are not zero.
    latest = {(n, k): max(v)[1] for n, series in jol.items() for k, v in series.items()}
    assert latest[("kafka.message.count", ())] > 0 and latest[("kafka.network.io", (("direction", "in"),))] > 0
    assert latest[("kafka.network.io", (("direction", "out"),))] > 0
    assert latest[("kafka.request.count", (("type", "produce"),))] > 0
    assert latest[("kafka.request.failed", (("type", "produce"),))] > 0
    assert latest[("kafka.network.rejected", (("topic", "traffic-rejects"),))] > 0
    assert latest[("kafka.request.time.total", (("type", "Produce"),))] > 0
    assert latest[("kafka.purgatory.size", (("type", "Fetch"),))] > 0
    assert latest[("kafka.partition.count", ())] >= 13
    assert any(n == "kafka.network.request.count" and dict(k).get("version") for n, k in latest)


def test_identity_start_time_and_kraft_metrics_come_from_the_combined_node(tmp_path: Path, real_kafka: Broker) -> None:
    ingest, relay = _relay_on_both_agents(tmp_path, real_kafka)
    try:
        wait_until(lambda: {sc for sc, _, n, *_ in points(ingest) if n == "kafka.raft.leader"} == {JOLOKIA, EXPORTER},
                   timeout=60, interval=0.5, what="raft metrics through both agents")
        pts = points(ingest)
    finally:
        relay.terminate()
        ingest.terminate()
    res = next(r for sc, r, n, *_ in pts if sc == JOLOKIA and n == "kafka.message.count")
    assert res["kafka.cluster.id"] == real_kafka.cluster_id
    assert res["kafka.broker.id"] == str(real_kafka.node_id)
    for scope in (JOLOKIA, EXPORTER):
        raft = {n: v for sc, _, n, _, v, *_ in pts if sc == scope}
        assert raft["kafka.raft.leader"] == real_kafka.node_id, scope
        assert raft["kafka.controller.active.count"] == 1, scope
        assert raft["kafka.raft.high_watermark"] > 0, scope
    # Counters start when the JVM did (Runtime.StartTime), not when the relay first read them.
    start_ms = jolokia_read(real_kafka, "java.lang:type=Runtime")["value"]["StartTime"]  # type: ignore[index]
    assert abs(start_ms / 1000 - psutil.Process(real_kafka.pid).create_time()) < 5
    starts = {st for sc, _, n, _, _, _, st, kind in pts if sc == JOLOKIA and kind == "sum" and n.startswith("kafka.")}
    assert starts == {start_ms * 1_000_000}


def test_discovery_finds_the_real_broker_through_each_agent_and_forgets_it(tmp_path: Path, kafka_jars: Jars) -> None:
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url, sources={
        **QUIET, "discovery": {"kafka": True, "interval": "500ms"}, "jolokia": {"interval": "1s"},
        "prometheus": {"interval": "1s", "passthrough_unmapped": False}})
    relay = Relay(tmp_path, cfg)
    relay.start()
    broker = Broker(kafka_jars, tmp_path, exporter=EXPORTER_CONFIGS["exporter"], node_id=5, heap="384m")
    try:
        broker.start()
        def this_broker() -> list[dict[str, Any]]:  # the session's brokers are found too
            return [f for f in relay.status()["discovery"]["found"] if f["pid"] == broker.pid]

        found = wait_until(lambda: len(this_broker()) == 2 and this_broker(), timeout=30,
                           what="discovery of the broker through both agents")
        by_protocol = {f["protocol"]: f for f in found}
        assert set(by_protocol) == {"jolokia", "prometheus"}
        assert f":{broker.jolokia_port}/jolokia/" in by_protocol["jolokia"]["url"]
        assert by_protocol["prometheus"]["url"] == broker.exporter_url
        assert "kafka.Kafka" in by_protocol["jolokia"]["reason"]
        assert kafka_jars.jolokia.name in by_protocol["jolokia"]["reason"]
        assert kafka_jars.exporter.name in by_protocol["prometheus"]["reason"]
        # A combined node: the controller's rules come along with the broker's.
        assert by_protocol["jolokia"]["mappings"] == ["kafka", "kraft", "jvm"]
        instances = {"jolokia": f":{broker.jolokia_port}", "prometheus": f"127.0.0.1:{broker.exporter_port}"}

        def from_this_broker() -> dict[str, dict[str, Any]]:
            out = {}
            for sc, r, n, *_ in points(ingest):
                inst = r.get("service.instance.id", "")
                if n == "kafka.message.count" and any(inst.endswith(i) for i in instances.values()):
                    out[sc] = r
            return out

        res = wait_until(lambda: len(from_this_broker()) == 2 and from_this_broker(), timeout=30,
                         what="broker metrics through both discovered agents")
        assert set(res) == {JOLOKIA, EXPORTER}
        assert res[JOLOKIA]["kafka.broker.id"] == "5" and res[JOLOKIA]["kafka.cluster.id"] == broker.cluster_id
        broker.stop()
        wait_until(lambda: not this_broker(), timeout=30, what="the broker to be forgotten")
    finally:
        relay.terminate()
        ingest.terminate()
        broker.stop()


def _jolokia_beans(broker: Broker) -> list[str]:
    body = json.dumps({"type": "search", "mbean": "*:*"}).encode()
    req = urllib.request.Request(broker.jolokia_url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return list(json.loads(r.read())["value"])


def _exposed(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return {s.name for fam, _ in parse_families(r.read().decode(), False) for s in fam.samples}


def test_coverage_every_rule_matches_the_real_broker_or_says_what_provides_it(
        real_kafka: Broker, real_kafka_confluent: Broker) -> None:
    beans = _jolokia_beans(real_kafka)
    assert len(beans) > 1000  # per-partition, KRaft controller, raft, socket-server and quota beans
    series = {"exporter": _exposed(real_kafka.exporter_url), "confluent": _exposed(real_kafka_confluent.exporter_url)}
    msk_text = (FIX / "datadog_amazon_msk_jmx_metrics_EXCERPT.prom.txt").read_text()
    corpus = {s.name for fam, _ in parse_families(msk_text, False) for s in fam.samples}
    report, unexplained, wrongly_explained = [], [], []
    for name in ("kafka", "kraft", "jvm"):
        mf = mapping.load_mapping_file(mapping.rule_file(name, mapping.default_dir()))
        for rule in mf.jolokia:
            for bean in rule.all_beans:
                hits = sum(mapping.bean_matches(bean, b) for b in beans)
                where = f"{hits} bean(s)" if hits else (rule.provided_by or "NOTHING")
                report.append(f"{name}.yaml jolokia {bean}: {where}")
                if not hits and not rule.provided_by:
                    unexplained.append(bean)
                if hits and rule.provided_by:
                    wrongly_explained.append(bean)
        for prule in mf.prometheus:
            hit = [cfg for cfg, names in series.items() if set(prule.series) & names]
            in_corpus = bool(set(prule.series) & corpus)
            where = ", ".join(hit) or ("Amazon MSK corpus scrape" if in_corpus else prule.provided_by or "NOTHING")
            report.append(f"{name}.yaml prometheus {prule.series[0]} {prule.match or ''}: {where}")
            if not hit and not in_corpus and not prule.provided_by:
                unexplained.append(prule.series[0])
    print("\nCoverage of configs/mappings on Kafka 4.4.0 (KRaft, combined node):\n" + "\n".join(report))
    assert not unexplained, f"rules that match nothing on the real broker and say nothing of why: {unexplained}"
    assert not wrongly_explained, f"rules marked as other versions' that match Kafka 4.4: {wrongly_explained}"
