"""`make bench`, Kafka client metrics (KIP-714): the two costs the plugin path adds.

- On the broker's request thread: the telemetry-relay plugin's exportMetrics per client push
  (bench/ExportCost.java: the real plugin jar, the broker's real RequestContext, a realistic
  push), beside a no-op exporter's call timed batch for batch in the same JVM.
- In the relay: CPU seconds per 1,000 client pushes of a realistic size, received, spooled,
  redacted by the shipped policy, compressed, signed and shipped, at the rate of a broker with
  1,000 clients pushing every 60 s (16.7 pushes/s), beside the same relay's idle CPU over a
  window of the same length.

A realistic push is shaped like the Java client's: one ResourceMetrics per metric (about 80
producer and consumer metrics), gauges and DELTA sums, `node_id`/`topic`/`partition` point
attributes where they apply; the relay is sent what the plugin POSTs (the same metrics under
one Resource with the plugin's identity attributes).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any

import psutil
import yaml
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from bench.common import CLI, DEFAULT_POLICY, HERE, WORK, MemorySampler, free_port, wait
from tests.kafka.harness import fetch, plugin_jar

CLIENTS, PUSH_INTERVAL_S = 1000, 60.0
RATE = CLIENTS / PUSH_INTERVAL_S  # pushes per second a broker with 1,000 clients receives
PUSHES = 1000
EXPORT_CALLS, EXPORT_BATCHES = 2000, 25

# The Java producer's and consumer's pushed metric names (a sample of the real ones), and which are sums.
_NAMES = [
    ("producer.record.send.total", True), ("producer.record.send.rate", False),
    ("producer.record.error.total", True), ("producer.request.latency.avg", False),
    ("producer.request.latency.max", False), ("producer.record.queue.time.avg", False),
    ("producer.record.queue.time.max", False), ("producer.buffer.available.bytes", False),
    ("producer.batch.size.avg", False), ("producer.compression.rate.avg", False),
    ("producer.node.request.latency.avg", False), ("producer.node.request.latency.max", False),
    ("producer.outgoing.byte.total", True), ("producer.incoming.byte.total", True),
    ("producer.connection.creation.total", True), ("producer.io.wait.ratio", False),
    ("producer.topic.record.send.total", True), ("producer.topic.byte.total", True),
    ("producer.requests.in.flight", False), ("producer.produce.throttle.time.avg", False),
    ("consumer.fetch.manager.records.lag.max", False), ("consumer.fetch.manager.records.lag", False),
    ("consumer.fetch.manager.fetch.latency.avg", False), ("consumer.fetch.manager.fetch.total", True),
    ("consumer.fetch.manager.bytes.consumed.total", True), ("consumer.fetch.manager.records.consumed.total", True),
    ("consumer.coordinator.commit.latency.avg", False), ("consumer.coordinator.rebalance.total", True),
    ("consumer.coordinator.assigned.partitions", False), ("consumer.node.request.latency.avg", False),
    ("consumer.poll.idle.ratio.avg", False), ("consumer.time.between.poll.max", False),
]
_LABEL = {"kafka.client.instance.id": "46_KjyvJSWaYkvJMaYvtWw", "kafka.client.id": "orders-producer",
          "kafka.client.software.name": "apache-kafka-java", "kafka.client.software.version": "4.4.0",
          "kafka.client.principal": "User:alice", "kafka.client.listener": "PLAINTEXT",
          "kafka.client.security.protocol": "PLAINTEXT", "kafka.client.address": "10.20.30.40",
          "kafka.cluster.id": "dunxN-8iSCaUl5VRIXXX4w", "kafka.broker.id": "1"}


def _kv(key: str, value: str) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))


def client_push(labelled: bool, metrics: int = 80) -> bytes:
    """One Java client's push as the broker hands it (labelled=False: one ResourceMetrics per
    metric) or as the plugin POSTs it (one ResourceMetrics with the plugin's identity attributes,
    holding every ScopeMetrics of the push, in order)."""
    req = ms.ExportMetricsServiceRequest()
    now = time.time_ns()
    if labelled:
        req.resource_metrics.add().resource.attributes.extend(_kv(k, v) for k, v in _LABEL.items())
    for i in range(metrics):
        name, is_sum = _NAMES[i % len(_NAMES)]
        rm = req.resource_metrics[0] if labelled else req.resource_metrics.add()
        m = rm.scope_metrics.add().metrics.add(name=f"org.apache.kafka.{name}")
        attrs = [_kv("node_id", f"node-{i % 3}")] if "node" in name else []
        if "topic" in name or "lag" in name:
            attrs += [_kv("topic", f"orders-{i % 4}"), _kv("partition", str(i % 6))]
        if is_sum:
            m.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
            m.sum.is_monotonic = True
            m.sum.data_points.add(as_double=float(i * 17), start_time_unix_nano=now - 60 * 10**9, time_unix_nano=now,
                                  attributes=attrs)
        else:
            m.gauge.data_points.add(as_double=i * 1.25, time_unix_nano=now, attributes=attrs)
    return req.SerializeToString()


def bench_export_cost() -> dict[str, Any]:
    """The plugin's exportMetrics beside a no-op exporter's, nanoseconds per call on the calling thread."""
    jars = fetch()
    WORK.mkdir(parents=True, exist_ok=True)
    payload = WORK / "client-push.pb"
    payload.write_bytes(client_push(labelled=False))
    p = subprocess.run(["java", "-Xmx1g", "-cp", f"{plugin_jar()}:{jars.classpath()}", str(HERE / "ExportCost.java"),
                        str(payload), str(EXPORT_CALLS), str(EXPORT_BATCHES)], capture_output=True, text=True,
                       timeout=900)
    if p.returncode != 0:
        raise SystemExit(f"bench: ExportCost.java failed:\n{p.stdout[-2000:]}{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def bench_relay_pushes(ingest_url: str, ingest_items: Any) -> dict[str, Any]:
    """The relay's CPU for 1,000 plugin POSTs at 16.7/s, beside its idle CPU over as long, and
    its peak RSS and USS while they arrive and ship."""
    import urllib.request

    state = WORK / "client-metrics-state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    status, otlp = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    cfg = {"state_dir": str(state), "server": {"listen": status}, "policy": {"file": str(DEFAULT_POLICY)},
           "sources": {"discovery": {"kafka": False}, "host": {"enabled": False}, "otlp": {"listen": otlp}},
           "destinations": [{"name": "ingest", "endpoint": ingest_url}]}
    config = WORK / "client-metrics.yaml"
    config.write_text(yaml.safe_dump(cfg))
    p = subprocess.Popen([*CLI, "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                         stderr=open(config.with_suffix(".log"), "wb"))  # noqa: SIM115 - owned by the child
    try:
        proc = psutil.Process(p.pid)

        def ready() -> bool:
            with urllib.request.urlopen(f"http://{status}/readyz", timeout=5) as r:
                return bool(r.status == 200)

        wait(ready, 60, "the relay")
        body = client_push(labelled=True)
        window = PUSHES / RATE
        # Idle first: the same relay, nothing pushed, over a window as long as the pushes take.
        cpu0 = _cpu(proc)
        time.sleep(window)  # a fixed measuring window, not a wait for a condition
        idle = _cpu(proc) - cpu0
        with MemorySampler(p.pid, period=0.5) as mem:  # while the pushes arrive and ship
            before = ingest_items()
            points = sum(len(sm.metrics) for rm in ms.ExportMetricsServiceRequest.FromString(body).resource_metrics
                         for sm in rm.scope_metrics)
            cpu0, t0 = _cpu(proc), time.perf_counter()
            for i in range(PUSHES):
                req = urllib.request.Request(f"http://{otlp}/v1/metrics", data=body,
                                             headers={"Content-Type": "application/x-protobuf"})
                with urllib.request.urlopen(req, timeout=30) as r:
                    if r.status != 200:
                        raise SystemExit(f"bench: the relay answered a push with {r.status}")
                time.sleep(max(0.0, (i + 1) / RATE - (time.perf_counter() - t0)))
            wall = time.perf_counter() - t0
            wait(lambda: ingest_items() - before >= PUSHES * points, 120, "the pushed points to arrive")
            busy = _cpu(proc) - cpu0  # until shipped: the shipping of the last pushes is counted too
            elapsed = time.perf_counter() - t0
        peak = mem.result()
    finally:
        p.terminate()
        p.wait(30)
    return {"pushes": PUSHES, "push_bytes": len(body), "points_per_push": points, "rate_per_s": RATE,
            "wall_s": wall, "cpu_s": busy, "idle_cpu_s": idle,
            "cpu_s_per_1000_pushes": (busy - idle * elapsed / window) / PUSHES * 1000,
            "cpu_pct_of_core": busy / elapsed * 100, "idle_cpu_pct_of_core": idle / window * 100,
            "peak_rss_bytes": peak["peak_rss_bytes"], "peak_uss_bytes": peak["peak_uss_bytes"],
            "peak_pss_bytes": peak["peak_pss_bytes"]}


def run(ingest_url: str, ingest_items: Any) -> dict[str, Any]:
    return {"export": bench_export_cost(), "relay": bench_relay_pushes(ingest_url, ingest_items)}


def rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    e, rel = r["export"], r["relay"]
    added = e["plugin_ns_mean"] - e["noop_ns_mean"]
    return [
        {"figure": f"KIP-714 plugin: exportMetrics on the request thread, {e['payload_bytes']:,} B push (ns/call)",
         "value": f"{e['plugin_ns_mean']:,.0f} mean, {e['plugin_ns_p99']:,} p99",
         "baseline": f"{e['noop_ns_mean']:,.0f} mean, {e['noop_ns_p99']:,} p99 (no-op exporter)",
         "ratio": f"+{added:,.0f} ns", "target": "-", "result": "-"},
        {"figure": "KIP-714 pushes through the relay: CPU s per 1,000 pushes "
                   f"({rel['push_bytes']:,} B, {rel['rate_per_s']:.1f}/s = 1,000 clients every 60 s)",
         "value": f"{rel['cpu_s_per_1000_pushes']:.2f} ({rel['cpu_pct_of_core']:.2f} % of a core)",
         "baseline": f"{rel['idle_cpu_pct_of_core']:.2f} % of a core (same relay idle, same window)",
         "ratio": "-", "target": "-", "result": "-"},
        {"figure": "  KIP-714 pushes through the relay: peak memory",
         "value": f"RSS {rel['peak_rss_bytes'] / 2**20:.1f} MiB (USS {rel['peak_uss_bytes'] / 2**20:.1f})",
         "baseline": "-", "ratio": "-", "target": "-", "result": "-"},
    ]


if __name__ == "__main__":
    from bench.run import Ingest

    ingest = Ingest()
    try:
        results = run(ingest.url, ingest.items)
    finally:
        ingest.stop()
    print(json.dumps(results, indent=2))
    for row in rows(results):
        print(f"{row['figure']}: {row['value']}  [baseline {row['baseline']}, {row['ratio']}]")
