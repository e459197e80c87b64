"""Kafka broker and JVM metrics from a real JVM serving the real Jolokia protocol, configured
and auto-discovered, and a Prometheus exposition scraped over HTTP."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.jvm import FakeBroker, JavaBuild
from tests.procs import Ingest, Relay, free_port, http_get, relay_config, wait_until

FIX = Path(__file__).parents[1] / "fixtures"
QUIET = {"host": {"enabled": False}, "internal": {"enabled": False}}


def series(ingest: Ingest, name: str) -> list[tuple[dict[str, Any], dict[str, Any], Any]]:
    """(resource attributes, point attributes, value) of every point of a metric at the ingest."""
    out = []
    for rec in ingest.requests():
        for rm in rec["request"]["resourceMetrics"]:
            res = {a["key"]: next(iter(a["value"].values())) for a in rm["resource"]["attributes"]}
            for sm in rm["scopeMetrics"]:
                for m in sm["metrics"]:
                    if m["name"] != name:
                        continue
                    data = m.get("sum") or m.get("gauge") or {}
                    for dp in data.get("dataPoints", []):
                        attrs = {a["key"]: next(iter(a["value"].values())) for a in dp.get("attributes", [])}
                        value = dp.get("asInt", dp.get("asDouble"))
                        out.append((res, attrs, float(value)))
    return out


def latest(points: list[tuple[dict[str, Any], dict[str, Any], Any]]) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(a.items())): v for _, a, v in points}


def test_jolokia_target_on_a_real_jvm_maps_kafka_and_jvm_metrics(tmp_path: Path, java: JavaBuild) -> None:
    broker = FakeBroker(java, tmp_path, topics=3, broker_id=7)
    broker.start()
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url, sources={
        **QUIET, "discovery": {"kafka": False},
        "jolokia": {"interval": "500ms", "targets": [{"url": broker.url, "mappings": ["kafka", "jvm"]}]}})
    relay = Relay(tmp_path, cfg)
    relay.start()
    try:
        wait_until(lambda: series(ingest, "kafka.message.count") and series(ingest, "jvm.memory.used"),
                   timeout=30, what="kafka and jvm metrics at the ingest")
        msgs = latest(series(ingest, "kafka.message.count"))
        assert msgs == {(("topic", "topic-0"),): 1000, (("topic", "topic-1"),): 2000, (("topic", "topic-2"),): 3000,
                        (): 6000}
        net = latest(series(ingest, "kafka.network.io"))
        assert net[(("direction", "in"), ("topic", "topic-1"))] == 20000
        assert net[(("direction", "out"),)] == 120000
        assert latest(series(ingest, "kafka.partition.under_replicated")) == {(): 2}
        assert latest(series(ingest, "kafka.request.time.99p"))[(("type", "Produce"),)] == 12.0
        assert latest(series(ingest, "kafka.request.count")) == {(("type", "fetch"),): 700, (("type", "produce"),): 500}
        assert latest(series(ingest, "kafka.isr.operation.count")) == {(("operation", "expand"),): 6,
                                                                     (("operation", "shrink"),): 5}
        assert latest(series(ingest, "kafka.max.lag")) == {(): 17}
        assert latest(series(ingest, "kafka.controller.active.count")) == {(): 1}
        # JVM metrics with the semantic-convention attributes.
        used = series(ingest, "jvm.memory.used")
        pools = {a["jvm.memory.pool.name"]: a["jvm.memory.type"] for _, a, _ in used}
        assert pools.get("G1 Eden Space") == "heap" and pools.get("Metaspace") == "non_heap"
        assert all(v >= 0 for _, _, v in used)
        assert latest(series(ingest, "jvm.thread.count"))[()] > 0
        assert latest(series(ingest, "jvm.class.loaded"))[()] > 100
        gc = {a["jvm.gc.name"] for _, a, _ in series(ingest, "jvm.gc.collections.count")}
        assert gc >= {"G1 Young Generation", "G1 Old Generation"}
        res = series(ingest, "kafka.message.count")[0][0]
        assert res["service.name"] == "kafka"
        assert res["kafka.cluster.id"] == "lkc-test-cluster" and res["kafka.broker.id"] == "7"
        src = next(s for s in relay.status()["sources"] if s["name"].startswith("jolokia"))
        assert src["last_error"] is None and src["identity"]["kafka.broker.id"] == "7"
    finally:
        relay.terminate()
        ingest.terminate()
        broker.kill9()


def test_discovery_finds_a_broker_follows_it_away_and_back_on_another_port(tmp_path: Path, java: JavaBuild) -> None:
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url, sources={
        **QUIET, "discovery": {"kafka": True, "interval": "500ms"}, "jolokia": {"interval": "500ms"}})
    relay = Relay(tmp_path, cfg)
    relay.start()
    broker = FakeBroker(java, tmp_path, topics=2, broker_id=4)
    broker.start()
    broker2 = None
    try:
        found = wait_until(lambda: [f for f in relay.status()["discovery"]["found"] if f["pid"] == broker.pid],
                           timeout=30, what="discovery of the broker")
        assert found[0]["protocol"] == "jolokia" and f":{broker.port}/" in found[0]["url"]
        assert "kafka.Kafka" in found[0]["reason"] and "jolokia-jvm-agent.jar" in found[0]["reason"]
        wait_until(lambda: any(r.get("kafka.broker.id") == "4" for r, _, _ in series(ingest, "kafka.message.count")),
                   timeout=30, what="metrics of the discovered broker")
        # Another JVM on the machine (the session's real broker) may be discovered too: this one's.
        procs = wait_until(lambda: [p for p in series(ingest, "process.memory.usage")
                                    if p[0].get("process.pid") == str(broker.pid)], what="process metrics of the JVM")
        res = procs[0][0]
        assert res["process.pid"] == str(broker.pid) and res["process.executable.name"] == "java"
        assert "process.command_line" not in res, "the command line is not sent by default"
        assert f'source="jolokia pid {broker.pid}"' in http_get(relay.status_url + "/metrics")[1].decode()

        broker.kill9()
        wait_until(lambda: not [f for f in relay.status()["discovery"]["found"] if f["pid"] == broker.pid],
                   timeout=30, what="the broker to be forgotten")
        # Its self-metric series were named after its pid, which never comes back: they go too.
        gone = (f'source="jolokia pid {broker.pid}"', f'source="process {broker.pid}"')
        wait_until(lambda: not any(g in http_get(relay.status_url + "/metrics")[1].decode() for g in gone),
                   what="the gone broker's series to leave /metrics")
        broker2 = FakeBroker(java, tmp_path, topics=2, broker_id=5, name="broker2")
        broker2.start()
        found = wait_until(lambda: [f for f in relay.status()["discovery"]["found"] if f["pid"] == broker2.pid],
                           timeout=30, what="rediscovery")
        assert f":{broker2.port}/" in found[0]["url"] and broker2.port != broker.port
        wait_until(lambda: any(r.get("kafka.broker.id") == "5" for r, _, _ in series(ingest, "kafka.message.count")),
                   timeout=30, what="metrics from the broker on its new port")
    finally:
        relay.terminate()
        ingest.terminate()
        for b in (broker, broker2):
            if b is not None and b.alive():
                b.kill9()


class _Exposition(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args: Any) -> None:
        pass


def test_prometheus_target_maps_jmx_exporter_names_and_survives_malformed_text(tmp_path: Path) -> None:
    handler = type("H", (_Exposition,), {"body": (
        b"# TYPE kafka_server_brokertopicmetrics_messagesin_total counter\n"
        b'kafka_server_brokertopicmetrics_messagesin_total{topic="orders",} 10.0\n'
        b"# TYPE kafka_server_replicamanager_underreplicatedpartitions gauge\n"
        b"kafka_server_replicamanager_underreplicatedpartitions 2.0\n"
    )})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url, sources={
        **QUIET, "discovery": {"kafka": False},
        "prometheus": {"interval": "300ms", "targets": [{"url": url, "mappings": ["kafka", "jvm"]}]}})
    relay = Relay(tmp_path, cfg)
    relay.start()
    try:
        wait_until(lambda: series(ingest, "kafka.message.count"), what="the mapped series")
        assert latest(series(ingest, "kafka.message.count")) == {(("topic", "orders"),): 10.0}
        res = series(ingest, "kafka.message.count")[0][0]
        assert res["service.name"] == "kafka" and res["service.instance.id"] == f"127.0.0.1:{server.server_address[1]}"
        handler.body = b'bad_metric{label="new\nline"} 1\n'
        src = wait_until(lambda: next(s for s in relay.status()["sources"] if s["name"].startswith("prometheus")
                                      and s["last_error"]), what="the malformed scrape to be reported")
        assert "malformed Prometheus text exposition" in src["last_error"]
        assert relay.metric("relay_source_errors_total", source=src["name"]) >= 1
        assert relay.alive() and relay.readyz()[0] == 200
    finally:
        relay.terminate()
        ingest.terminate()
        server.shutdown()
    assert "Traceback" not in relay.log()
