"""Kafka client metrics (KIP-714) end to end: real Kafka brokers running the telemetry-relay
plugin (kafka-plugin/), a Java producer and consumer and a librdkafka client pushing, the relay
receiving the pushes like any OTLP push and shipping them through the shipped default policy to
the reference ingest; both broker API generations (4.4 through ClientTelemetryExporter, 4.1
through ClientTelemetryReceiver); the relay going away and coming back, refusing pushes, and a
plugin queue that cannot drain; the status, the page and `telemetry-relay status` showing the
plugin and the subscription. One 4.4 and one 4.1 broker serve the whole module."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from relay import status
from tests.kafka.harness import HERE, Broker, Jars, fetch, jolokia_read, plugin_jar
from tests.procs import CLI, Ingest, Proc, Relay, free_port, relay_config, wait_until

ROOT = Path(__file__).parents[2]
SHIPPED_POLICY = ROOT / "configs" / "policy.yaml"
MBEAN = "telemetry.relay:type=ClientTelemetry"
QUIET = {"host": {"enabled": False}, "internal": {"enabled": False}}
PUSH_INTERVAL_MS = 1000  # the tests' subscription: one push a second per client
HASHED = re.compile(r"^h:[0-9a-f]{16}$")


@dataclass
class Stack:
    workdir: Path
    jars: Jars
    broker: Broker
    ingest: Ingest
    relay: Relay
    token_file: Path

    def bean(self, broker: Broker | None = None) -> dict[str, Any]:
        answer = jolokia_read(broker or self.broker, MBEAN)
        assert isinstance(answer, dict) and answer.get("status") == 200, answer
        return answer["value"]  # type: ignore[no-any-return]

    def restart_relay(self, **otlp: Any) -> None:
        """The relay again on the same ports and state, its OTLP receiver settings changed by otlp."""
        if self.relay.alive():
            self.relay.terminate()
        cfg = self.relay.cfg
        cfg["sources"]["otlp"] = {**_otlp(cfg["sources"]["otlp"]["listen"], self.token_file), **otlp}
        self.relay = Relay(self.workdir, cfg)
        self.relay.start()


def _otlp(listen: str, token_file: Path) -> dict[str, Any]:
    return {"listen": listen, "auth_token_file": str(token_file)}


def _plugin_properties(reporter: str, otlp_port: int, token_file: Path, **extra: str) -> dict[str, str]:
    return {"metric.reporters": f"telemetry.relay.kafka.{reporter}",
            "telemetry.relay.endpoint": f"http://127.0.0.1:{otlp_port}/v1/metrics",
            "telemetry.relay.token.file": str(token_file),
            "telemetry.relay.subscription.check.interval.ms": "500",
            **{f"telemetry.relay.{k.replace('_', '.')}": v for k, v in extra.items()}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("client-metrics")
    jars, jar = fetch("4.4"), plugin_jar()
    token_file = workdir / "otlp.token"
    token_file.write_text("client-metrics-test-token\n")
    token_file.chmod(0o600)  # the relay refuses a token others can read; the broker runs as us
    otlp_port = free_port()
    broker = Broker(jars, workdir, node_id=11, heap="384m", name="kafka-4.4", extra_jars=(jar,),
                    extra_properties=_plugin_properties("RelayTelemetryReporter", otlp_port, token_file))
    ingest = Ingest(workdir)
    relay: Relay | None = None
    try:
        ingest.start()
        broker.start()
        cfg = relay_config(workdir, ingest.url, policy={"file": str(SHIPPED_POLICY), "watch_interval": "1s"},
                           sources={**QUIET, "discovery": {"kafka": False},
                                    "otlp": _otlp(f"127.0.0.1:{otlp_port}", token_file),
                                    "jolokia": {"interval": "1s", "targets": [
                                        {"url": broker.jolokia_url, "mappings": ["kafka", "kraft", "jvm"]}]}})
        relay = Relay(workdir, cfg)
        relay.start()
        s = Stack(workdir, jars, broker, ingest, relay, token_file)
        yield s
        relay = s.relay
    finally:
        for p in (relay, broker, ingest):
            if p is not None and p.alive():
                p.terminate(60)


def subscribe(jars: Jars, command: str) -> str:
    """Runs a kafka-client-metrics.sh line as printed, with the tool's main class from the jars."""
    args = command.split()
    assert args[0] == "kafka-client-metrics.sh", command
    p = subprocess.run(["java", "-Xmx128m", "-cp", jars.classpath(), "org.apache.kafka.tools.ClientMetricsCommand",
                        *args[1:]], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def java_clients(jars: Jars, broker: Broker, prefix: str, rate: int = 50) -> Proc:
    p = Proc(["java", "-Xmx128m", "-XX:TieredStopAtLevel=1", "-cp", jars.classpath(), str(HERE / "Clients.java"),
              broker.bootstrap, f"{prefix}-events", str(rate), prefix], broker.dir / f"{prefix}.log")
    p.start()
    wait_until(lambda: not p.alive() or "clients ready" in p.log(), timeout=120, interval=0.25,
               what=f"the Java clients; log:\n{p.log()[-3000:]}")
    assert p.alive(), p.log()
    return p


def rdkafka_client(broker: Broker, prefix: str) -> Proc:
    p = Proc([sys.executable, "-m", "tests.kafka.rdkafka_client", broker.bootstrap, f"{prefix}-events", prefix],
             broker.dir / f"{prefix}.log")
    p.start()
    wait_until(lambda: not p.alive() or "rdkafka ready" in p.log(), timeout=60, interval=0.25,
               what=f"the librdkafka client; log:\n{p.log()[-3000:]}")
    assert p.alive(), p.log()
    return p


def pushes(ingest: Ingest) -> list[tuple[dict[str, str], list[str], int]]:
    """(resource attributes, metric names, latest point time) of every client-metrics resource shipped."""
    out = []
    for rec in ingest.requests():
        for rm in rec["request"].get("resourceMetrics", []):
            res = {a["key"]: next(iter(a["value"].values())) for a in rm.get("resource", {}).get("attributes", [])}
            if "kafka.client.instance.id" not in res:
                continue
            names, latest = [], 0
            for sm in rm.get("scopeMetrics", []):
                for m in sm.get("metrics", []):
                    names.append(m["name"])
                    kind = next((k for k in ("sum", "gauge", "histogram") if k in m), "")
                    for dp in (m.get(kind) or {}).get("dataPoints", []):
                        latest = max(latest, int(dp.get("timeUnixNano", 0)))
            out.append((res, names, latest))
    return out


def _library(res: dict[str, str]) -> str:
    """java or librdkafka, from the software a client named in its ApiVersions request."""
    if res.get("kafka.client.software.name") == "apache-kafka-java":
        return "java"
    return "librdkafka" if "rdkafka" in res.get("kafka.client.software.version", "") else "other"


def cli_status(relay: Relay) -> str:
    p = subprocess.run([*CLI, "status", "--url", relay.status_url], capture_output=True, text=True, timeout=30)
    return p.stdout + p.stderr


def broker_view(relay: Relay) -> dict[str, Any]:
    views = relay.status()["client_metrics"]
    assert len(views) == 1, views
    return views[0]  # type: ignore[no-any-return]


# -- the plugin's hand-encoded protobuf, read back by the real protobuf library ----------------------


def test_the_plugin_adds_resource_attributes_by_hand_encoded_protobuf(tmp_path: Path) -> None:
    jars = fetch("4.4")
    clients_jar = next(jars.lib.glob("kafka-clients-*.jar"))
    kv = common_pb2.KeyValue
    req = ms.ExportMetricsServiceRequest()
    for i in (0, 1, 2, 0):  # the last comes with the same Resource and schema URL as the first
        rm = req.resource_metrics.add(schema_url=f"https://schema/{i}")
        if i < 2:  # the third comes without a Resource at all
            rm.resource.attributes.extend([kv(key="service.name", value=common_pb2.AnyValue(string_value="app")),
                                           kv(key="kafka.client.id", value=common_pb2.AnyValue(string_value="own"))])
            rm.resource.dropped_attributes_count = 2
        m = rm.scope_metrics.add().metrics.add(name=f"org.apache.kafka.producer.m{len(req.resource_metrics)}")
        m.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
        m.sum.is_monotonic = True
        m.sum.data_points.add(as_double=1.5 * i, time_unix_nano=1_800_000_000_000_000_000 + i)
    src, out = tmp_path / "in.pb", tmp_path / "out.pb"
    src.write_bytes(req.SerializeToString())
    attrs = {"kafka.client.id": "producer-1", "kafka.client.instance.id": "AAAAAAAAAAAAAAAAAAAAAA",
             "kafka.client.principal": "User:alice", "kafka.broker.id": "7"}

    def run(data: bytes) -> subprocess.CompletedProcess[str]:
        src.write_bytes(data)
        return subprocess.run(["java", "-cp", f"{plugin_jar()}:{clients_jar}", str(HERE / "EncodeCheck.java"),
                               str(src), str(out), *(f"{k}={v}" for k, v in attrs.items())],
                              capture_output=True, text=True, timeout=120)

    p = run(req.SerializeToString())
    assert p.returncode == 0, p.stdout + p.stderr
    got = ms.ExportMetricsServiceRequest.FromString(out.read_bytes())
    # The Java client sends one ResourceMetrics per metric: those of one Resource become one.
    assert len(got.resource_metrics) == 3
    first = req.resource_metrics[0].scope_metrics
    assert list(got.resource_metrics[0].scope_metrics) == [*first, *req.resource_metrics[3].scope_metrics]
    for i, rm in enumerate(got.resource_metrics):
        res = {a.key: a.value.string_value for a in rm.resource.attributes}
        # The client's own attribute of a key the plugin sets is replaced, not duplicated.
        assert [a.key for a in rm.resource.attributes].count("kafka.client.id") == 1
        assert res == ({"service.name": "app"} if i < 2 else {}) | attrs
        assert rm.resource.dropped_attributes_count == (2 if i < 2 else 0)
        assert rm.schema_url == f"https://schema/{i}"
        if i:
            assert rm.scope_metrics == req.resource_metrics[i].scope_metrics  # the metrics as they came
    # Truncated or garbage bytes are refused, never half-rewritten.
    for bad in (req.SerializeToString()[:-3], b"\x0a\xff\xff\xff\xff\x0f", b"\x0b\x00"):
        p = run(bad)
        assert p.returncode == 3 and "refused" in p.stdout, (bad, p.stdout, p.stderr)


def test_policy_test_shows_what_the_shipped_policy_does_to_a_labelled_push(tmp_path: Path) -> None:
    identity = {"kafka.client.instance.id": "46_KjyvJSWaYkvJMaYvtWw", "kafka.client.id": "orders-producer",
                "kafka.client.software.name": "apache-kafka-java", "kafka.client.software.version": "4.4.0",
                "kafka.client.principal": "User:alice", "kafka.client.listener": "INTERNAL",
                "kafka.client.security.protocol": "SASL_SSL", "kafka.client.address": "10.1.2.3",
                "kafka.cluster.id": "dunxN-8iSCaUl5VRIXXX4w", "kafka.broker.id": "1", "group_id": "billing"}
    req = ms.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.extend(common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=v))
                                  for k, v in identity.items())
    m = rm.scope_metrics.add().metrics.add(name="org.apache.kafka.producer.record.send.total")
    m.sum.aggregation_temporality, m.sum.is_monotonic = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA, True
    m.sum.data_points.add(as_double=20, attributes=[common_pb2.KeyValue(
        key="node_id", value=common_pb2.AnyValue(string_value="node-1"))])
    (tmp_path / "push.pb").write_bytes(req.SerializeToString())
    (tmp_path / "relay.yaml").write_text(f"state_dir: {tmp_path / 'state'}\npolicy: {{file: {SHIPPED_POLICY}}}\n"
                                         "destinations: [{name: vendor, endpoint: 'http://127.0.0.1:9'}]\n")

    def policy_test(*extra: str) -> str:
        p = subprocess.run([*CLI, "policy", "test", "--config", str(tmp_path / "relay.yaml"), "--input",
                            str(tmp_path / "push.pb"), *extra], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout

    summary = policy_test()
    for key in ("kafka.client.id", "kafka.client.principal", "kafka.client.address", "kafka.client.listener",
                "group_id"):
        assert re.search(rf"resource_attributes:{re.escape(key)} +hashed 1", summary), summary
    out = json.loads(policy_test("--json"))
    (left,) = out[0]["request"]["resourceMetrics"]
    res = {a["key"]: a["value"]["stringValue"] for a in left["resource"]["attributes"]}
    for key in ("kafka.client.instance.id", "kafka.client.software.name", "kafka.client.software.version",
                "kafka.client.security.protocol", "kafka.cluster.id", "kafka.broker.id"):
        assert res[key] == identity[key], key
    assert all(HASHED.match(res[k]) for k in ("kafka.client.id", "kafka.client.principal", "group_id"))
    point = left["scopeMetrics"][0]["metrics"][0]["sum"]["dataPoints"][0]
    assert point["attributes"] == [{"key": "node_id", "value": {"stringValue": "node-1"}}]


# -- the new interface (Kafka 4.4) ------------------------------------------------------------------


def test_status_shows_the_plugin_and_the_command_that_creates_the_subscription(stack: Stack) -> None:
    view = wait_until(lambda: (v := broker_view(stack.relay)).get("subscription_count") == 0 and v,
                      timeout=60, interval=0.5, what="the plugin's MBean through Jolokia, no subscription yet")
    assert view["plugin_loaded"] and view["api"] == "ClientTelemetryExporter"
    assert view["broker_id"] == str(stack.broker.node_id) and view["cluster_id"] == stack.broker.cluster_id
    command = view["subscribe_command"]
    assert command == (f"kafka-client-metrics.sh --bootstrap-server {stack.broker.bootstrap} --alter --name "
                       "telemetry-relay --metrics org.apache.kafka.producer.,org.apache.kafka.consumer. "
                       "--interval 10000")
    text = cli_status(stack.relay)
    assert "plugin 0.1.0 loaded (ClientTelemetryExporter)" in text and "subscriptions: NONE" in text
    assert command in text
    assert any("no client-metrics subscription exists" in r for r in stack.relay.status()["verdict"]["reasons"])

    assert "Altered client metrics config" in subscribe(stack.jars, command)  # the printed line, as printed
    view = wait_until(lambda: (v := broker_view(stack.relay)).get("subscription_count") == 1 and v,
                      timeout=30, interval=0.5, what="the subscription in the status")
    assert view["subscriptions"] == ["telemetry-relay: metrics=org.apache.kafka.producer.,org.apache.kafka.consumer. "
                                     "interval.ms=10000"]
    assert "subscribe_command" not in view
    # The tests' clients push every second: the same subscription, a shorter interval.
    subscribe(stack.jars, command.replace("--interval 10000", f"--interval {PUSH_INTERVAL_MS}"))


@pytest.fixture(scope="module")
def clients(stack: Stack) -> Iterator[Proc]:
    """A Java producer and consumer and a librdkafka producer and consumer on the 4.4 broker,
    with the subscription they push for (the status test above creates it as an operator would;
    --alter again is harmless, and lets a test here run alone)."""
    subscribe(stack.jars, status.subscribe_command(stack.broker.bootstrap).replace(
        "--interval 10000", f"--interval {PUSH_INTERVAL_MS}"))
    java = java_clients(stack.jars, stack.broker, "orders")
    rdkafka = rdkafka_client(stack.broker, "billing")
    try:
        yield java
    finally:
        for p in (rdkafka, java):
            p.terminate(30)


def test_java_and_librdkafka_clients_push_through_the_new_interface(stack: Stack, clients: Proc) -> None:
    def both_kinds_from_both_clients() -> bool:
        seen = {(_library(r), n.split(".")[3]) for r, names, _ in pushes(stack.ingest)
                for n in names if n.startswith(("org.apache.kafka.producer.", "org.apache.kafka.consumer."))}
        return {(lib, kind) for lib in ("java", "librdkafka") for kind in ("producer", "consumer")} <= seen

    wait_until(both_kinds_from_both_clients, timeout=90, interval=0.5,
               what="producer and consumer metrics from the Java client and librdkafka at the ingest")
    shipped = pushes(stack.ingest)
    software = {(r["kafka.client.software.name"], r.get("kafka.client.software.version")) for r, _, _ in shipped}
    print(f"\nclient software seen: {sorted(software)}; {len(shipped)} client resources shipped")
    assert ("apache-kafka-java", "4.4.0") in software
    # librdkafka names the language binding and its own version: confluent-kafka-python 2.x-rdkafka-2.x.
    assert any(name == "confluent-kafka-python" and "-rdkafka-" in version for name, version in software)
    for res, _, _ in shipped:
        # Redacted by the shipped policy: who the client is, is hashed ...
        for key in ("kafka.client.id", "kafka.client.principal", "kafka.client.address"):
            assert HASHED.match(res[key]), (key, res)
        assert "orders" not in str(res) and "billing" not in str(res) and "127.0.0.1" not in str(res)
        # ... while the Kafka ids and the client software leave as they are.
        assert res["kafka.cluster.id"] == stack.broker.cluster_id and res["kafka.broker.id"] == "11"
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", res["kafka.client.instance.id"])
        assert res["kafka.client.security.protocol"] == "PLAINTEXT"
    # Every client's pushed counters are DELTA sums, and ship so (docs/kafka-client-metrics.md).
    rec = next(r for r in stack.ingest.requests() for rm in r["request"]["resourceMetrics"]
               for sm in rm.get("scopeMetrics", []) for m in sm.get("metrics", [])
               if m["name"] == "org.apache.kafka.producer.record.send.total")
    m = next(m for rm in rec["request"]["resourceMetrics"] for sm in rm.get("scopeMetrics", [])
             for m in sm["metrics"] if m["name"] == "org.apache.kafka.producer.record.send.total")
    assert m["sum"]["aggregationTemporality"] == metrics_pb2.AGGREGATION_TEMPORALITY_DELTA and m["sum"]["isMonotonic"]
    bean = stack.bean()
    assert bean["Received"] > 0 and bean["Forwarded"] > 0 and bean["PushIntervalMs"] == PUSH_INTERVAL_MS


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="make test installs chromium and chromium-driver")
def test_status_page_and_cli_show_the_plugin_the_subscription_and_the_clients(stack: Stack, clients: Proc) -> None:
    from selenium.webdriver.common.by import By

    from tests.integration.test_status_page import ARTIFACTS, chrome

    # Four clients push every second: a Java producer and consumer, a librdkafka producer and consumer.
    view = wait_until(lambda: (v := broker_view(stack.relay))["clients_pushed"] >= 4 and v, timeout=60,
                      interval=0.5, what="four clients pushing, in the status")
    assert view["window_seconds"] == PUSH_INTERVAL_MS / 1000 and view["forwarded"] > 0
    text = cli_status(stack.relay)
    print("\n" + text)
    assert re.search(r"broker 11: plugin 0\.1\.0 loaded \(ClientTelemetryExporter\), forwarding to http://127", text)
    assert re.search(r"\b[4-9] clients pushed in the last 1s", text)
    assert "telemetry-relay: metrics=org.apache.kafka.producer.,org.apache.kafka.consumer. interval.ms=1000" in text
    driver = chrome(1280, 900)
    try:
        driver.get(stack.relay.status_url + "/")
        row = wait_until(lambda: driver.find_element(By.CSS_SELECTOR, 'tr[data-broker="11"][data-plugin="loaded"]'),
                         timeout=20, what="the broker's row on the page")
        assert row.get_attribute("data-subscriptions") == "1"
        assert "ClientTelemetryExporter" in row.text and "interval.ms=1000" in row.text
        assert re.search(r"\b[4-9] pushed in the last 1 s", row.text), row.text
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "status-page-client-metrics.png"))
    finally:
        driver.quit()
    # The plugin's counters also ship, as metrics of the broker's Jolokia scrape.
    names = {m["name"] for rec in stack.ingest.requests() for rm in rec["request"]["resourceMetrics"]
             for sm in rm.get("scopeMetrics", []) for m in sm.get("metrics", [])}
    assert {"kafka.client_telemetry.pushes", "kafka.client_telemetry.forwarded", "kafka.client_telemetry.clients",
            "kafka.client_telemetry.subscriptions", "kafka.client_telemetry.queue.usage"} <= names


# -- faults -------------------------------------------------------------------------------------------


def _latencies(clients: Proc, since_ms: float, until_ms: float) -> list[tuple[float, int, int]]:
    """(worst send-to-ack ms, acked, failed) of each second the producer reported in [since, until)."""
    out = []
    for line in clients.log().splitlines():
        m = re.match(r"latency t=(\d+) max_ms=([\d.]+) sent=(\d+) failed=(\d+)", line)
        if m and since_ms <= int(m[1]) < until_ms:
            out.append((float(m[2]), int(m[3]), int(m[4])))
    return out


def _arrived_after(ingest: Ingest, t_ns: int, library: str = "java") -> bool:
    return any(latest > t_ns and _library(res) == library for res, _, latest in pushes(ingest))


def test_the_broker_serves_through_a_relay_outage_and_the_flow_resumes(stack: Stack, clients: Proc) -> None:
    start = time.time_ns()
    wait_until(lambda: _arrived_after(stack.ingest, start), timeout=30, interval=0.5,
               what="pushes arriving before the outage")
    before_start = time.time() * 1000
    wait_until(lambda: time.time() * 1000 - before_start > 6000, timeout=10, interval=0.2)
    dropped_before = stack.bean()["Dropped"]
    stopped = time.time() * 1000
    stack.relay.terminate()
    received_at_stop = stack.bean()["Received"]
    wait_until(lambda: time.time() * 1000 - stopped > 10_000, timeout=15, interval=0.2)  # the outage
    during_bean = stack.bean()
    back = time.time() * 1000
    stack.restart_relay()
    before = _latencies(clients, before_start, stopped)
    during = _latencies(clients, stopped, back)
    worst_before, worst_during = max(x[0] for x in before), max(x[0] for x in during)
    print(f"\nproducer send-to-ack latency, worst of each window (acks=all, 50 msg/s): before the outage "
          f"{worst_before:.1f} ms over {len(before)} s, while the relay was stopped {worst_during:.1f} ms over "
          f"{len(during)} s; plugin dropped {during_bean['Dropped'] - dropped_before} pushes meanwhile "
          f"(unreachable {during_bean['DroppedUnreachable']}, queue full {during_bean['DroppedQueueFull']})")
    # The broker kept serving: every second of the outage acked sends, none failed.
    assert len(during) >= 8 and all(sent > 0 and failed == 0 for _, sent, failed in during), during
    assert worst_during < 2000, during
    # The clients kept pushing; the plugin counted what it could not deliver.
    assert during_bean["Received"] > received_at_stop
    assert during_bean["DroppedUnreachable"] > 0 and "cannot reach" in during_bean["LastError"]
    # And the flow resumes once the relay is back.
    wait_until(lambda: _arrived_after(stack.ingest, int(back * 1e6)), timeout=30, interval=0.5,
               what="pushes arriving after the relay came back")
    wait_until(lambda: _arrived_after(stack.ingest, int(back * 1e6), "librdkafka"), timeout=30, interval=0.5,
               what="librdkafka's pushes arriving after the relay came back")


def test_a_refused_forward_never_makes_a_client_stop_pushing(stack: Stack, clients: Proc) -> None:
    # The receiver refuses every client push as too large (413) for a while ...
    stack.restart_relay(max_body_bytes="1KiB")
    rejected = stack.bean()["DroppedRejected"]
    wait_until(lambda: stack.bean()["DroppedRejected"] > rejected + 8, timeout=30, interval=0.5,
               what="the plugin counting refused forwards")
    bean = stack.bean()
    assert "HTTP 413" in bean["LastError"], bean["LastError"]
    received = bean["Received"]
    # ... the clients go on pushing all the same (a client the broker answered INVALID_RECORD would not) ...
    wait_until(lambda: stack.bean()["Received"] > received + 4, timeout=20, interval=0.5,
               what="pushes still received while every forward is refused")
    back = time.time_ns()
    stack.restart_relay()
    # ... so the next push after the receiver takes them again arrives.
    wait_until(lambda: _arrived_after(stack.ingest, back), timeout=30, interval=0.5,
               what="the next push arriving once the receiver accepts again")


# -- the old interface (Kafka 4.1) and a queue that cannot drain ----------------------------------


def test_a_kafka_4_1_broker_through_the_old_interface_and_a_full_queue_stays_bounded(stack: Stack) -> None:
    jars = fetch("4.1")
    otlp_port = int(stack.relay.cfg["sources"]["otlp"]["listen"].rsplit(":", 1)[1])
    queue_max = 64 * 1024
    broker = Broker(jars, stack.workdir, node_id=12, heap="384m", name="kafka-4.1", extra_jars=(plugin_jar(),),
                    extra_properties=_plugin_properties("LegacyRelayTelemetryReporter", otlp_port, stack.token_file,
                                                        queue_max_bytes=str(queue_max), timeout_ms="3000",
                                                        retries="0"))
    clients: Proc | None = None
    hole: Proc | None = None
    try:
        broker.start()
        subscribe(jars, f"kafka-client-metrics.sh --bootstrap-server {broker.bootstrap} --alter --name relay --metrics "
                        f"org.apache.kafka.producer.,org.apache.kafka.consumer. --interval {PUSH_INTERVAL_MS}")
        clients = java_clients(jars, broker, "legacy", rate=20)

        def from_4_1() -> bool:
            return any(r.get("kafka.broker.id") == "12" and r.get("kafka.client.software.version") == "4.1.1"
                       and any(n.startswith("org.apache.kafka.producer.") for n in names)
                       for r, names, _ in pushes(stack.ingest))

        wait_until(from_4_1, timeout=90, interval=0.5, what="4.1 clients' pushes through the old interface")
        bean = stack.bean(broker)
        assert bean["Api"] == "ClientTelemetryReceiver" and bean["PushIntervalMs"] == 0  # the old API has none
        assert bean["SubscriptionCount"] == 1 and bean["ClientsWindowMs"] == PUSH_INTERVAL_MS

        # Now the receiver's port takes connections and never answers: nothing drains the queue.
        stack.relay.terminate()
        hole = Proc([sys.executable, "-c", _BLACK_HOLE, str(otlp_port)], stack.workdir / "black-hole.log")
        hole.start()
        wait_until(lambda: "listening" in hole.log(), timeout=20, what="the black hole listening")
        wait_until(lambda: stack.bean(broker)["DroppedQueueFull"] > 5, timeout=60, interval=0.5,
                   what="the plugin's queue filling up")
        samples = [stack.bean(broker) for _ in range(5)]
        for b in samples:
            assert 0 < b["QueueBytes"] <= queue_max == b["QueueMaxBytes"], b
        print(f"\nplugin queue with nothing draining it: {[b['QueueBytes'] for b in samples]} bytes of {queue_max}, "
              f"{samples[-1]['QueueItems']} pushes; dropped queue full {samples[-1]['DroppedQueueFull']}")
        assert samples[-1]["Received"] > samples[0]["Received"] or samples[-1]["DroppedQueueFull"] > 0
    finally:
        for p in (clients, broker, hole):
            if p is not None and p.alive():
                p.terminate(60)
        stack.restart_relay()


# Accepts connections and reads requests, never answers: a receiver that hangs.
_BLACK_HOLE = """
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64); print("listening", flush=True)
held = []
def drain(c):
    while c.recv(65536):
        pass
while True:
    c, _ = s.accept(); held.append(c); threading.Thread(target=drain, args=(c,), daemon=True).start()
"""
