"""`make bench`: end-to-end throughput of the relay beside the OTel Python SDK, same run.

Figures (each beside a baseline measured in this run, as a ratio):
- spool append: pre-generated broker-shaped requests written to the spool with fsync
  (the relay's Spool, group commit, in this process);
- drain: a real relay process shipping that spool (redact, zstd, sign, POST) to the
  reference ingest on loopback, timed from its READY=1 until the ingest has every point
  (and, as a second figure, from process launch);
- end to end = append + drain, in points/s and CPU seconds per million points;
- baseline: the OTel Python SDK's OTLP/HTTP exporter sending the same points to the
  same ingest (export loop only);
- the relay's peak RSS (VmHWM) and USS while it drains;
- a real Kafka broker with 2,000 partitions (bench/kafka_scale.py): series, CPU and peak RSS
  per scrape through each agent, beside Jolokia's and the JMX exporter's own response times;
- the vendor's ingest into a real Kafka broker (bench/ingest_kafka.py): verified requests/s and
  points/s beside the same ingest writing nothing, and about 200 simulated relays draining a
  backlog through one rate-limited ingest (peak arrivals against the limit, time to drain).
- Kafka client metrics (bench/client_metrics.py): the KIP-714 plugin's cost per exportMetrics
  call on the broker's request thread beside a no-op exporter's, and the relay's CPU per 1,000
  client pushes at the rate of 1,000 clients pushing every 60 s beside its idle CPU.
- a broker's server.log tailed, parsed, spooled, redacted and shipped (bench/logs.py): lines/s
  and CPU per 100,000 lines, beside the OTel Collector's filelog receiver on the same file.
- the scrape path beside Prometheus in agent mode (bench/prom_agent.py): the same JMX exporter,
  node_exporter and sequence targets scraped by both at once; CPU per 1,000 samples, wire and
  disk bytes per sample, RSS and USS; and the kill -9 durability counts of both.
Prints a table and writes bench/results.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench import client_metrics, ingest_kafka, kafka_scale, logs, overhead, prom_agent
from bench.common import CLI, DEFAULT_POLICY, HERE, WORK, MemorySampler
from bench.common import free_port as _free_port
from bench.common import get_json as _get
from bench.common import wait as _wait
from bench.workload import otlp_requests, points_per_request
from relay.config import SpoolSettings
from relay.selfmetrics import SelfMetrics
from relay.spool import Spool

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "600"))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _append_all(state: Path, reqs: list[bytes], items: int) -> None:
    spool = Spool(state, SpoolSettings(max_bytes=4 << 30, fsync="always"), ["ingest"], SelfMetrics())
    await spool.open()
    # Several writers at once, as several sources or pushing clients would be.
    queue = list(reqs)

    async def writer() -> None:
        while queue:
            await spool.append("metrics", queue.pop(), items)

    await asyncio.gather(*(writer() for _ in range(8)))
    await spool.close()


class Ingest:
    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.p = subprocess.Popen(
            [*CLI, "ingest", "--listen", f"127.0.0.1:{self.port}", "--no-store"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait(lambda: _get(self.url + "/healthz"), 20, "ingest")

    def items(self) -> int:
        return int(_get(self.url + "/stats")["signals"]["metrics"]["items"])

    def metrics_stats(self) -> Any:
        return _get(self.url + "/stats")["signals"]["metrics"]

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait(20)


def bench_end_to_end(ingest: Ingest, reqs: list[bytes]) -> dict[str, Any]:
    per = points_per_request()
    total = per * len(reqs)
    state = WORK / "state"
    shutil.rmtree(state, ignore_errors=True)

    wall0, cpu0 = time.perf_counter(), _cpu()
    asyncio.run(_append_all(state, reqs, per))
    append_wall, append_cpu = time.perf_counter() - wall0, _cpu() - cpu0

    cfg = {
        "state_dir": str(state),
        "server": {"listen": f"127.0.0.1:{_free_port()}"},
        "sources": {"host": {"enabled": False}, "internal": {"enabled": False}, "discovery": {"kafka": False},
                    "otlp": {"enabled": False}},
        "policy": {"file": str(DEFAULT_POLICY)},
        "destinations": [{"name": "ingest", "endpoint": ingest.url, "compression": "zstd", "in_flight": 2}],
    }
    (WORK / "relay.yaml").write_text(yaml.safe_dump(cfg))
    before = ingest.items()
    notify = overhead.Notify(WORK / "e2e-notify.sock")
    wall0 = time.perf_counter()
    relay = subprocess.Popen([*CLI, "run", "--config", str(WORK / "relay.yaml")],
                             env={**os.environ, "NOTIFY_SOCKET": str(notify.path)},
                             stdout=subprocess.DEVNULL, stderr=open(WORK / "relay.log", "wb"))  # noqa: SIM115
    proc = psutil.Process(relay.pid)
    with MemorySampler(relay.pid) as mem:
        # Like the SDK baseline (its export loop alone), the drain is timed from the moment the
        # relay is ready to work: process start is its own figure (start to READY=1). Points that
        # left before READY are not counted in that rate.
        _wait(lambda: notify.ready_at is not None, 60, "the relay's READY=1")
        t = proc.cpu_times()
        ready_wall, ready_cpu, at_ready = time.perf_counter(), t.user + t.system, ingest.items() - before
        notify.close()
        _wait(lambda: ingest.items() - before >= total, 600, "the relay to drain the spool")
        end_wall = time.perf_counter()
        drain_wall = end_wall - ready_wall
        t = proc.cpu_times()
        drain_cpu = t.user + t.system - ready_cpu
    peak = mem.result()
    status = _get(f"http://{cfg['server']['listen']}/status")  # type: ignore[index]
    wire_bytes = status["destinations"][0]["shipped_bytes"]
    relay.terminate()
    relay.wait(30)
    drained = total - at_ready
    # End to end: append every point, then drain at the measured rate (both with fsync).
    wall = append_wall + total * drain_wall / drained
    cpu = append_cpu + drain_cpu * total / drained
    return {
        "points": total,
        "append_points_per_s": total / append_wall,
        "drain_points_per_s": drained / drain_wall,
        "drain_with_start_points_per_s": total / (end_wall - wall0),
        "start_to_ready_s": ready_wall - wall0,
        "points_per_s": total / wall,
        "cpu_s_per_million": cpu / total * 1e6,
        "wall_s": wall,
        "peak_rss_bytes": peak["peak_rss_bytes"],
        "peak_uss_bytes": peak["peak_uss_bytes"],
        "peak_pss_bytes": peak["peak_pss_bytes"],
        "wire_bytes_per_point": wire_bytes / total,
    }


async def _push_all(url: str, reqs: list[bytes], clients: int) -> float:
    """Post every request with `clients` concurrent connections; returns wall seconds."""
    import aiohttp

    queue = list(reversed(reqs))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def client() -> None:
            while queue:
                body = queue.pop()
                async with session.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}) as r:
                    await r.read()
                    if r.status != 200:
                        raise SystemExit(f"bench: push answered {r.status}")

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - t0


def bench_receiver(ingest: Ingest, reqs: list[bytes], clients: int = 8) -> dict[str, Any]:
    """Concurrent clients push to the relay's OTLP receiver until spooled (fsync), beside the
    same clients posting to the reference ingest, which decodes and counts but keeps nothing."""
    per = points_per_request()
    state = WORK / "recv-state"
    shutil.rmtree(state, ignore_errors=True)
    otlp = f"127.0.0.1:{_free_port()}"
    cfg = {
        "state_dir": str(state),
        "server": {"listen": f"127.0.0.1:{_free_port()}"},
        "sources": {"host": {"enabled": False}, "internal": {"enabled": False}, "otlp": {"listen": otlp},
                    "discovery": {"kafka": False}},
        "policy": {"file": str(DEFAULT_POLICY)},
        "spool": {"max_bytes": "4GiB"},
        # Nothing drains during the measurement: this figure is the receive-and-spool path alone.
        "destinations": [{"name": "nowhere", "endpoint": "http://127.0.0.1:9", "retry": {"initial_backoff": "60s",
                                                                                        "max_backoff": "60s"}}],
    }
    (WORK / "recv.yaml").write_text(yaml.safe_dump(cfg))
    relay = subprocess.Popen([*CLI, "run", "--config", str(WORK / "recv.yaml")],
                             stdout=subprocess.DEVNULL, stderr=open(WORK / "recv.log", "wb"))  # noqa: SIM115
    try:
        _wait(lambda: _get(f"http://{cfg['server']['listen']}/healthz"), 30, "the relay")  # type: ignore[index]
        relay_wall = asyncio.run(_push_all(f"http://{otlp}/v1/metrics", reqs, clients))
        spooled = _get(f"http://{cfg['server']['listen']}/status")["spool"]["entries"]  # type: ignore[index]
        if spooled != len(reqs):
            raise SystemExit(f"bench: {spooled} of {len(reqs)} pushes were spooled")
    finally:
        relay.terminate()
        relay.wait(30)
    ingest_wall = asyncio.run(_push_all(ingest.url + "/v1/metrics", reqs, clients))
    n = len(reqs)
    return {
        "requests": n, "clients": clients, "points_per_request": per,
        "relay_requests_per_s": n / relay_wall, "relay_points_per_s": n * per / relay_wall,
        "ingest_requests_per_s": n / ingest_wall, "ingest_points_per_s": n * per / ingest_wall,
    }


def _best_of(fn: Any, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_mapping(topics: int = 1600) -> dict[str, Any]:
    """Map cost per 1,000 series of broker-shaped input, beside the bare parse of the same input."""
    import json

    from prometheus_client.parser import text_string_to_metric_families

    from relay import mapping
    from relay.sources import jolokia, prometheus

    maps = mapping.load(["kafka", "jvm"])
    # Prometheus: the JMX exporter's names, three series per topic plus broker-wide gauges.
    lines = []
    for name in ("messagesin", "bytesin", "bytesout"):
        lines.append(f"# TYPE kafka_server_brokertopicmetrics_{name}_total counter")
        lines += [f'kafka_server_brokertopicmetrics_{name}_total{{topic="orders.v1.{t:04d}",}} {t * 1000.0}'
                  for t in range(topics)]
    lines.append("# TYPE kafka_log_log_size gauge")
    lines += [f'kafka_log_log_size{{topic="orders.v1.{t:04d}",partition="0",}} {t * 7.0}' for t in range(topics)]
    text = "\n".join(lines) + "\n"
    n_prom = topics * 4
    parse_s = _best_of(lambda: list(text_string_to_metric_families(text)))
    map_s = _best_of(lambda: prometheus.map_exposition(text, False, maps, {"service.name": "kafka"}))
    # Jolokia: the default bulk read answered for `topics` topics (three meters each).
    sent = jolokia.bulk_request(maps)
    answers: dict[str, Any] = {}
    for meter in ("MessagesInPerSec", "BytesInPerSec", "BytesOutPerSec"):
        answers[f"kafka.server:type=BrokerTopicMetrics,name={meter},topic=*"] = {
            f"kafka.server:name={meter},topic=orders.v1.{t:04d},type=BrokerTopicMetrics": {"Count": t * 1000}
            for t in range(topics)}
    raw = json.dumps([{"status": 200, "value": answers[e["mbean"]]} if e["mbean"] in answers
                      else {"status": 404} for e in sent])
    n_jolokia = topics * 3
    jparse_s = _best_of(lambda: json.loads(raw))
    jmap_s = _best_of(lambda: jolokia.map_response(sent, json.loads(raw), maps, {"service.name": "kafka"}))
    return {
        "prometheus_series": n_prom, "prometheus_parse_ms_per_1k": parse_s / n_prom * 1e6,
        "prometheus_map_ms_per_1k": map_s / n_prom * 1e6,
        "jolokia_series": n_jolokia, "jolokia_json_ms_per_1k": jparse_s / n_jolokia * 1e6,
        "jolokia_map_ms_per_1k": jmap_s / n_jolokia * 1e6,
    }


def bench_policy(reqs: list[bytes]) -> dict[str, Any]:
    """Points per second through the shipped default policy on 4 MiB broker-shaped batches:
    the relay's path (known metric shapes copied as bytes) beside the per-point engine it
    replaces for them (decode, a decision per data point, encode), and a keep-everything policy."""
    from relay.policy import Policy
    from relay.policy import load_policy as load
    from relay.policy.schema import PolicyFile
    from relay.strict_yaml import load_text

    secret = b"bench" * 8
    default = load(DEFAULT_POLICY, secret)
    keep, _ = load_text("version: 1\nresource_attributes: {default: keep}\nattributes: {default: keep}\n",
                        PolicyFile)
    passthrough = Policy(keep, secret, "keep-all", "0" * 64, 0.0)
    per = points_per_request()
    batch = b"".join(reqs[:14])  # about 4 MiB, the default max_request_bytes
    points = per * 14
    default.apply("metrics", batch)  # warm the memo caches as a running relay has them
    passthrough.apply("metrics", batch)
    t_default = _best_of(lambda: default.apply("metrics", batch))
    t_per_point = _best_of(lambda: default.apply_per_point("metrics", batch))
    t_keep = _best_of(lambda: passthrough.apply("metrics", batch))
    # The anchors for the libraries themselves, on the same batch and this machine.
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from relay.compression import compress

    t_upb = _best_of(lambda: ExportMetricsServiceRequest.FromString(batch).SerializeToString())
    t_zstd = _best_of(lambda: compress(batch, "zstd"))
    return {"batch_points": points, "default_points_per_s": points / t_default,
            "per_point_points_per_s": points / t_per_point, "passthrough_points_per_s": points / t_keep,
            "upb_decode_encode_points_per_s": points / t_upb, "zstd_points_per_s": points / t_zstd}


def bench_sdk(ingest: Ingest, requests: int) -> dict[str, Any]:
    before = ingest.items()
    out = subprocess.run(
        [sys.executable, "-m", "bench.sdk_baseline", "--endpoint", ingest.url, "--requests", str(requests)],
        capture_output=True, text=True, check=True, timeout=900,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    arrived = ingest.items() - before
    if arrived != r["points"]:
        raise SystemExit(f"bench: the SDK baseline delivered {arrived} of {r['points']} points")
    return {
        "points": r["points"],
        "points_per_s": r["points"] / r["wall"],
        "cpu_s_per_million": r["cpu"] / r["points"] * 1e6,
        "wall_s": r["wall"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ("figure", "value", "baseline", "ratio", "target", "result")
    cells = [head] + [
        (r["figure"], r["value"], r["baseline"], r["ratio"], r["target"], r["result"]) for r in rows
    ]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(head))]
    lines = []
    for n, c in enumerate(cells):
        lines.append("| " + " | ".join(str(v).ljust(w) for v, w in zip(c, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"bench: generating {REQUESTS} broker-shaped requests of {points_per_request()} points...", flush=True)
    reqs = otlp_requests(REQUESTS)
    ingest = Ingest()
    try:
        print("bench: relay end to end (spool append with fsync, then drain to the ingest)...", flush=True)
        relay = bench_end_to_end(ingest, reqs)
        print("bench: OpenTelemetry Python SDK OTLP/HTTP exporter, same points, same ingest...", flush=True)
        sdk = bench_sdk(ingest, REQUESTS)
        print("bench: OTLP receiver, 8 concurrent clients, until spooled...", flush=True)
        receiver = bench_receiver(ingest, reqs[:200])
        print("bench: scrape-and-map cost per 1,000 series...", flush=True)
        maps = bench_mapping()
        print("bench: redaction policy throughput...", flush=True)
        pol = bench_policy(reqs)
        print("bench: start to ready...", flush=True)
        start = overhead.bench_start_to_ready(ingest.url)
        print(f"bench: steady state at the reference load ({overhead.WINDOW:.0f} s window, a real Kafka broker)...",
              flush=True)
        steady = overhead.bench_overhead(ingest.url, ingest.metrics_stats)
        floor = overhead.bench_import_floor()
        print("bench: 10,000 points/s pushed over OTLP/HTTP for 60 s (the OTel Collector's load test)...",
              flush=True)
        push = overhead.bench_push_10k(ingest.url, ingest.items)
        print("bench: catch-up of a 24 h backlog...", flush=True)
        catch = overhead.bench_catch_up(ingest.url, ingest.items, reqs[:60], points_per_request())
        print("bench: a real Kafka broker with 2,000 partitions, through each agent...", flush=True)
        kafka = kafka_scale.bench_kafka_scale(ingest.url)
        print("bench: the ingest into a real Kafka broker, and 200 relays catching up through it...", flush=True)
        vendor = ingest_kafka.bench_ingest_kafka()
        print("bench: Kafka client metrics: the plugin's exportMetrics, and 1,000 pushes through the relay...",
              flush=True)
        clients = client_metrics.run(ingest.url, ingest.items)
        print(f"bench: a broker log of {logs.LINES:,} lines, the relay beside otelcol-contrib's filelog...", flush=True)
        broker_logs = logs.bench_logs()
        print(f"bench: the scrape path beside Prometheus in agent mode ({prom_agent.WINDOW:.0f} s window, "
              f"then kill -9 with the receivers down {prom_agent.OUTAGE:.0f} s)...", flush=True)
        prom = prom_agent.bench_prom_agent()
    finally:
        ingest.stop()

    def fmt(v: float, unit: str = "") -> str:
        return f"{v:,.0f}{unit}" if v >= 100 else f"{v:,.2f}{unit}"

    throughput_ratio = relay["points_per_s"] / sdk["points_per_s"]
    cpu_ratio = sdk["cpu_s_per_million"] / relay["cpu_s_per_million"]
    rows = [
        {"figure": "end-to-end throughput (points/s)", "value": fmt(relay["points_per_s"]),
         "baseline": fmt(sdk["points_per_s"]) + " (OTel SDK)", "ratio": f"{throughput_ratio:.1f}x",
         "target": ">= 300,000 and >= 5x", "result": "pass" if relay["points_per_s"] >= 300_000
         and throughput_ratio >= 5 else "fail"},
        {"figure": "CPU seconds per million points", "value": fmt(relay["cpu_s_per_million"]),
         "baseline": fmt(sdk["cpu_s_per_million"]) + " (OTel SDK)", "ratio": f"{cpu_ratio:.1f}x less",
         "target": "-", "result": "-"},
        {"figure": "  spool append with fsync (points/s)", "value": fmt(relay["append_points_per_s"]),
         "baseline": "-", "ratio": "-", "target": "-", "result": "-"},
        {"figure": "  drain: relay process to ingest, from READY=1 (points/s)",
         "value": fmt(relay["drain_points_per_s"]), "baseline": "-", "ratio": "-", "target": "-", "result": "-"},
        {"figure": "  the same drain timed from process launch (points/s)",
         "value": fmt(relay["drain_with_start_points_per_s"]),
         "baseline": f"{relay['start_to_ready_s']:.2f} s to READY=1", "ratio": "-", "target": "-", "result": "-"},
        {"figure": "OTLP receiver: pushes until spooled (requests/s)",
         "value": fmt(receiver["relay_requests_per_s"]),
         "baseline": fmt(receiver["ingest_requests_per_s"]) + " (ingest, no spool)",
         "ratio": f"{receiver['relay_requests_per_s'] / receiver['ingest_requests_per_s']:.2f}x",
         "target": "-", "result": "-"},
        {"figure": "OTLP receiver: points/s until spooled", "value": fmt(receiver["relay_points_per_s"]),
         "baseline": fmt(receiver["ingest_points_per_s"]) + " (ingest, no spool)",
         "ratio": f"{receiver['relay_points_per_s'] / receiver['ingest_points_per_s']:.2f}x",
         "target": "-", "result": "-"},
        {"figure": "Prometheus text: parse and map to OTLP (ms per 1,000 series)",
         "value": fmt(maps["prometheus_map_ms_per_1k"]),
         "baseline": fmt(maps["prometheus_parse_ms_per_1k"]) + " (prometheus_client parse only)",
         "ratio": f"{maps['prometheus_map_ms_per_1k'] / maps['prometheus_parse_ms_per_1k']:.2f}x",
         "target": "-", "result": "-"},
        {"figure": "Jolokia bulk JSON: parse and map to OTLP (ms per 1,000 series)",
         "value": fmt(maps["jolokia_map_ms_per_1k"]),
         "baseline": fmt(maps["jolokia_json_ms_per_1k"]) + " (json.loads only)",
         "ratio": f"{maps['jolokia_map_ms_per_1k'] / maps['jolokia_json_ms_per_1k']:.2f}x",
         "target": "-", "result": "-"},
        {"figure": "redaction, shipped default policy (points/s)", "value": fmt(pol["default_points_per_s"]),
         "baseline": fmt(pol["per_point_points_per_s"]) + " (per-point engine)",
         "ratio": f"{pol['default_points_per_s'] / pol['per_point_points_per_s']:.1f}x",
         "target": "-", "result": "-"},
        {"figure": "redaction, keep-everything policy (points/s)", "value": fmt(pol["passthrough_points_per_s"]),
         "baseline": fmt(pol["default_points_per_s"]) + " (shipped default)",
         "ratio": f"{pol['passthrough_points_per_s'] / pol['default_points_per_s']:.2f}x",
         "target": "-", "result": "-"},
        {"figure": "  protobuf (upb): decode and encode the same batch (points/s)",
         "value": fmt(pol["upb_decode_encode_points_per_s"]), "baseline": "-", "ratio": "-", "target": "-",
         "result": "-"},
        {"figure": "  zstd level 3: compress the same batch (points/s)", "value": fmt(pol["zstd_points_per_s"]),
         "baseline": "-", "ratio": "-", "target": "-", "result": "-"},
        {"figure": "steady state: wire bytes per point, headers included",
         "value": f"{steady['wire_bytes_per_point']:.2f}",
         "baseline": "-", "ratio": "-", "target": "<= 12",
         "result": "pass" if 0 < steady["wire_bytes_per_point"] <= 12 else "fail"},
        {"figure": "10,000 points/s pushed over OTLP/HTTP (100-point batches): CPU (% of one core)",
         "value": f"{push['cpu_pct_of_core']:.1f}", "baseline": "~20 (OTel Collector, published; no spool, "
         "no redaction, no signing)", "ratio": "-", "target": "-", "result": "-"},
        {"figure": "  the same: average / peak memory",
         "value": f"RSS {push['avg_rss_bytes'] / 2**20:.1f} MiB (USS {push['avg_uss_bytes'] / 2**20:.1f}) / "
                  f"RSS {push['peak_rss_bytes'] / 2**20:.1f} MiB (USS {push['peak_uss_bytes'] / 2**20:.1f})",
         "baseline": "46 average (OTel Collector, published)", "ratio": "-", "target": "-", "result": "-"},
        {"figure": "catch-up: 24 h backlog at the reference load (s)", "value": f"{catch['drain_s']:.1f}",
         "baseline": f"{catch['points']:,} points", "ratio": "-", "target": "<= 180",
         "result": "pass" if catch["drain_s"] <= 180 else "fail"},
        {"figure": "catch-up with max_bytes_per_second set: bytes/s on the wire",
         "value": fmt(catch["capped_bytes_per_s"]), "baseline": f"{catch['capped_cap_bytes_per_s']:,} (the cap)",
         "ratio": f"{catch['capped_bytes_per_s'] / catch['capped_cap_bytes_per_s']:.2f}x", "target": "<= the cap + 5 %",
         "result": "pass" if catch["capped_bytes_per_s"] <= catch["capped_cap_bytes_per_s"] * 1.05 else "fail"},
        {"figure": "start to READY=1 (s)", "value": f"{start['ready_s']:.2f}",
         "baseline": f"{start['bare_python_s']:.2f} (bare python3 start)", "ratio": "-", "target": "<= 2",
         "result": "pass" if start["ready_s"] <= 2 and start["readyz_s"] <= 2 else "fail"},
        {"figure": "relay peak memory while draining",
         "value": f"RSS {relay['peak_rss_bytes'] / 2**20:.1f} MiB (USS {relay['peak_uss_bytes'] / 2**20:.1f})",
         "baseline": "-", "ratio": "-", "target": "-", "result": "-"},
        {"figure": "wire bytes per point (zstd)", "value": fmt(relay["wire_bytes_per_point"]),
         "baseline": "-", "ratio": "-", "target": "-", "result": "-"},
    ]
    rows += overhead.rows(steady, floor)
    rows += kafka_scale.rows(kafka)
    rows += ingest_kafka.rows(vendor)
    rows += client_metrics.rows(clients)
    rows += logs.rows(broker_logs)
    rows += prom_agent.rows(prom)
    print()
    print(table(rows))
    results = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "requests": REQUESTS,
        "points_per_request": points_per_request(),
        "relay": relay,
        "otel_sdk": sdk,
        "receiver": receiver,
        "mapping": maps,
        "policy": pol,
        "start_to_ready": start,
        "steady_state": steady,
        "import_floor": floor,
        "push_10k": push,
        "catch_up": catch,
        "kafka_2000_partitions": kafka,
        "ingest_kafka": vendor,
        "client_metrics": clients,
        "broker_logs": broker_logs,
        "prometheus_agent": prom,
        "ratios": {"throughput": throughput_ratio, "cpu_per_point": cpu_ratio},
        "table": rows,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    from bench.chart import draw

    draw(results, HERE / "results.png")
    print(f"\nbench: wrote {HERE / 'results.json'} and {HERE / 'results.png'}")


if __name__ == "__main__":
    main()
