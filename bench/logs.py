"""Broker log files: the relay's log source beside the OTel Collector's filelog receiver, same file, same run.

One Kafka-layout server.log of BENCH_LOG_LINES lines (a stack trace every 100th record, IP
addresses and host names in some) is read whole by:
- the relay: tail, parse (timestamp, severity, logger, one record per stack trace), spool
  with fsync and the read position, redact with the shipped policy, zstd, sign, POST;
- otelcol-contrib (the test dependency's binary): filelog with the same multiline rule and a
  regex parser for timestamp and severity, batch, otlphttp with zstd. It keeps no durable
  read position (no storage extension), redacts nothing and signs nothing.
Both ship to one sink on loopback that counts the records. Figures: lines per second from
process start to the last record at the sink, and CPU seconds per 100,000 lines (the
process's own user + system time), peak RSS beside USS, and the slowest answer to a liveness
probe every 50 ms (the relay's /healthz, answered on its event loop, so its worst stall; the
Collector's own /metrics beside it, as this build has no health_check extension). Also the
parse alone, in this process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import yaml
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

from bench.common import CLI, DEFAULT_POLICY, WORK, MemorySampler, free_port, wait
from relay.compression import decompress
from relay.otlp import count_items

LINES = int(os.environ.get("BENCH_LOG_LINES", "200000"))
TRACE_EVERY = 100  # records
PROBE_PERIOD = 0.05  # seconds between liveness probes
TRACE = ("java.io.IOException: Connection to 3 was disconnected before the response was read\n"
         "\tat org.apache.kafka.clients.NetworkClientUtils.sendAndReceive(NetworkClientUtils.java:99)\n"
         "\tat kafka.server.ReplicaFetcherBlockingSend.sendRequest(ReplicaFetcherBlockingSend.scala:113)\n"
         "\tat kafka.server.RemoteLeaderEndPoint.fetch(RemoteLeaderEndPoint.scala:79)\n"
         "\tat java.base/java.lang.Thread.run(Thread.java:840)\n")
MESSAGES = (
    "INFO [LogLoader partition=orders-{n}, dir=/var/lib/kafka/data] Loading producer state till offset {n} "
    "(org.apache.kafka.storage.internals.log.UnifiedLog)",
    "INFO [GroupCoordinator 1]: Member billing-{n}-0d3b (clientId=billing-{n}, groupId=payments) left "
    "(org.apache.kafka.coordinator.group.GroupMetadataManager)",
    "WARN [SocketServer listenerType=BROKER, nodeId=1] Unexpected error from /10.1.{m}.{k} "
    "(channelId=10.1.{m}.{k}:9092-10.2.0.{k}:58510-1-1); closing connection (org.apache.kafka.common.network.Selector)",
    "INFO [Partition orders-{n} broker=1] Log loaded for partition orders-{n} with initial high watermark {n} "
    "(kafka.cluster.Partition)",
    "INFO Awaiting socket connections on broker-{m}.corp.example:9092. (kafka.network.DataPlaneAcceptor)",
)

COLLECTOR = """\
receivers:
  filelog:
    include: [{log}]
    start_at: beginning
    multiline:
      line_start_pattern: '^\\['
    operators:
      - type: regex_parser
        regex: '^\\[(?P<time>[^\\]]+)\\] (?P<severity>[A-Z]+) '
        timestamp: {{parse_from: attributes.time, layout_type: strptime, layout: '%Y-%m-%d %H:%M:%S,%L'}}
        severity: {{parse_from: attributes.severity}}
processors:
  batch: {{}}
exporters:
  otlphttp:
    endpoint: {endpoint}
    compression: zstd
service:
  telemetry:
    logs: {{level: error}}
    metrics:
      level: basic
      readers: [{{pull: {{exporter: {{prometheus: {{host: 127.0.0.1, port: {port}}}}}}}}}]
  pipelines:
    logs: {{receivers: [filelog], processors: [batch], exporters: [otlphttp]}}
"""


def write_log(path: Path, lines: int) -> int:
    """A server.log of about `lines` lines; returns the number of records in it."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 3600))
    out, records, n = [], 0, 0
    while n < lines:
        msg = MESSAGES[records % len(MESSAGES)].format(n=records % 997, m=records % 251, k=records % 13)
        out.append(f"[{stamp},{records % 1000:03d}] {msg}\n")
        n += 1
        if records % TRACE_EVERY == 0:
            out.append(TRACE)
            n += TRACE.count("\n")
        records += 1
    path.write_text("".join(out))
    return records


class Sink:
    """OTLP/HTTP logs on loopback: counts records, answers 200. Nothing verified or kept."""

    def __init__(self) -> None:
        self.records = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                raw = decompress(body, self.headers.get("Content-Encoding", ""), 256 << 20)
                req = logs_service_pb2.ExportLogsServiceRequest()
                req.ParseFromString(raw)
                with sink._lock:
                    sink.records += count_items("logs", req)
                answer = logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.records = 0

    def stop(self) -> None:
        self.server.shutdown()


class Prober:
    """Asks a process's liveness endpoint every PROBE_PERIOD seconds while in use; the slowest
    answer after the first is its worst stall (the relay's /healthz is answered on its event
    loop; the Collector's own /metrics, served beside its pipeline, is the same probe beside it)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst: float | None = None
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(PROBE_PERIOD):
            start = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=60) as r:
                    r.read()
            except OSError:
                continue  # not listening yet (or already gone): no answer, no stall measured
            took = time.monotonic() - start
            self.answers += 1
            self.worst = took if self.worst is None else max(self.worst, took)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(65)


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def _run(args: list[str], sink: Sink, records: int, log: Path, probe: str) -> dict[str, Any]:
    """Start a process, wait until the sink has every record; its wall time, CPU, peak RSS and
    USS, and its slowest answer to the liveness probe at `probe`."""
    sink.reset()
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    p = psutil.Process(proc.pid)
    try:
        with MemorySampler(proc.pid) as mem, Prober(probe) as prober:
            wait(lambda: sink.records >= records or proc.poll() is not None, 600, f"every record from {args[0]}")
            if proc.poll() is not None:
                raise SystemExit(f"bench: {args[0]} exited; see {log}")
            wall = time.monotonic() - started
            cpu = _cpu(p)
        peak = mem.result()
        return {"seconds": wall, "cpu_s": cpu, "peak_rss_bytes": peak["peak_rss_bytes"],
                "peak_uss_bytes": peak["peak_uss_bytes"], "peak_pss_bytes": peak["peak_pss_bytes"],
                "records": sink.records, "worst_probe_s": prober.worst, "probe_answers": prober.answers}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _relay(work: Path, log: Path, sink: Sink, records: int) -> dict[str, Any]:
    state, port = work / "relay-state", free_port()
    shutil.rmtree(state, ignore_errors=True)
    cfg = {
        "state_dir": str(state), "log_level": "warning",
        "server": {"listen": f"127.0.0.1:{port}"},
        "policy": {"file": str(DEFAULT_POLICY)},
        "sources": {"host": {"enabled": False}, "internal": {"enabled": False}, "otlp": {"enabled": False},
                    "discovery": {"kafka": False},
                    "logs": {"interval": "100ms", "max_records_per_second": 0, "initial_backlog_bytes": "4GiB",
                             "files": [{"path": str(log)}]}},
        "destinations": [{"name": "sink", "endpoint": sink.url, "linger": "0s"}],
    }
    path = work / "relay-logs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return _run([*CLI, "run", "--config", str(path)], sink, records, work / "relay-logs.log",
                f"http://127.0.0.1:{port}/healthz")


def _collector(work: Path, log: Path, sink: Sink, records: int) -> dict[str, Any] | None:
    from tests.integration.test_otlp_receiver import otelcol_binary

    binary = otelcol_binary()
    if binary is None:
        return None
    os.chmod(binary, 0o755)
    path = work / "otelcol-logs.yaml"
    port = free_port()
    path.write_text(COLLECTOR.format(log=log, endpoint=sink.url, port=port))
    return _run([binary, "--config", str(path)], sink, records, work / "otelcol-logs.log",
                f"http://127.0.0.1:{port}/metrics")


def _parse_only(log: Path) -> dict[str, Any]:
    """The log source's read-and-parse alone (no spool, no policy, no network), in this process."""
    from relay.sources.log_tail import FileRules, Tail

    tail = Tail(str(log), FileRules(0, 0, 64 * 1024, 1 << 20, 4 << 30), None, history=False)
    start_cpu, start = time.process_time(), time.monotonic()
    records = 0
    while True:
        got = tail.read(time.time_ns(), {"service.name": "kafka"})
        records += sum(count_items("logs", c.message) for c in got if c.message is not None)
        for c in got:
            tail.committed(c.position)
        if not got:
            tail.last_data -= 10  # the last record: complete
            got = tail.read(time.time_ns(), {"service.name": "kafka"})
            records += sum(count_items("logs", c.message) for c in got if c.message is not None)
            break
    tail.close()
    return {"seconds": time.monotonic() - start, "cpu_s": time.process_time() - start_cpu, "records": records}


def bench_logs() -> dict[str, Any]:
    work = WORK / "logs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "server.log"
    records = write_log(log, LINES)
    lines = sum(1 for _ in log.open("rb"))
    sink = Sink()
    try:
        parse = _parse_only(log)
        relay = _relay(work, log, sink, records)
        collector = _collector(work, log, sink, records)
    finally:
        sink.stop()
    out: dict[str, Any] = {"lines": lines, "records": records, "bytes": log.stat().st_size, "parse_only": parse,
                           "relay": relay, "otelcol": collector}
    for name in ("parse_only", "relay", "otelcol"):
        r = out[name]
        if r:
            r["lines_per_s"] = lines / r["seconds"]
            r["cpu_s_per_100k_lines"] = r["cpu_s"] / lines * 100_000
    return out


def rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    def fmt(v: float) -> str:
        return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"

    def mem(r: dict[str, Any]) -> str:
        return f"RSS {r['peak_rss_bytes'] / 2**20:.1f} MiB (USS {r['peak_uss_bytes'] / 2**20:.1f})"

    def probe(r: dict[str, Any]) -> str:
        if r.get("worst_probe_s") is None:
            return "no answer (the probe found nothing listening)"
        return f"{r['worst_probe_s'] * 1000:.0f} ({r['probe_answers']} answers)"

    relay, col, parse = r["relay"], r["otelcol"], r["parse_only"]
    col_lines = fmt(col["lines_per_s"]) + " (otelcol filelog, no spool/redaction/signing)" if col else "-"
    col_cpu = f"{col['cpu_s_per_100k_lines']:.2f} (otelcol filelog)" if col else "-"
    return [
        {"figure": f"broker logs: lines/s tailed, parsed, spooled, redacted, shipped ({r['lines']:,} lines)",
         "value": fmt(relay["lines_per_s"]), "baseline": col_lines,
         "ratio": f"{relay['lines_per_s'] / col['lines_per_s']:.2f}x" if col else "-", "target": "-", "result": "-"},
        {"figure": "broker logs: CPU seconds per 100,000 lines", "value": f"{relay['cpu_s_per_100k_lines']:.2f}",
         "baseline": col_cpu,
         "ratio": f"{relay['cpu_s_per_100k_lines'] / col['cpu_s_per_100k_lines']:.2f}x" if col else "-",
         "target": "-", "result": "-"},
        {"figure": "  broker logs: read and parse alone (lines/s, CPU s per 100,000 lines)",
         "value": f"{fmt(parse['lines_per_s'])}, {parse['cpu_s_per_100k_lines']:.2f}", "baseline": "-",
         "ratio": "-", "target": "-", "result": "-"},
        {"figure": "  broker logs: peak memory", "value": mem(relay),
         "baseline": f"{mem(col)} (otelcol)" if col else "-",
         "ratio": f"{relay['peak_rss_bytes'] / col['peak_rss_bytes']:.2f}x" if col else "-",
         "target": "-", "result": "-"},
        {"figure": "  broker logs: slowest liveness answer during the run (ms; the relay's worst event-loop stall)",
         "value": probe(relay), "baseline": f"{probe(col)} (otelcol /metrics)" if col else "-",
         "ratio": f"{relay['worst_probe_s'] / col['worst_probe_s']:.2f}x"
         if col and relay.get("worst_probe_s") and col.get("worst_probe_s") else "-",
         "target": "-", "result": "-"},
    ]


if __name__ == "__main__":
    import json

    result = bench_logs()
    print(json.dumps(result, indent=2))
    from bench.run import table

    print(table(rows(result)))
