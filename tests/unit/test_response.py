"""The verdict on a destination's answer, without a relay process: every status class, the
Retry-After forms, partial successes, google.rpc.Status and plain-text error bodies, and the
transport errors of real connections on loopback."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from relay.export.response import (
    Accepted,
    Reject,
    Retry,
    Split,
    classify,
    classify_error,
    error_detail,
    parse_retry_after,
)
from relay.source_settings import ListenerTLSSettings
from relay.tls import server_context
from tests.certs import PKI

NOW = 1_700_000_000.0


def rpc_status(code: int, message: str) -> bytes:
    return bytes(status_pb2.Status(code=code, message=message).SerializeToString())


# -- 2xx ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 202, 204])
def test_2xx_without_a_body_is_accepted_whole(status: int) -> None:
    assert classify(status, {}, b"", "metrics") == Accepted(0, "")


def test_2xx_with_an_empty_otlp_response_is_accepted_whole() -> None:
    body = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
    assert classify(200, {}, body, "metrics") == Accepted(0, "")


def test_2xx_with_a_body_that_is_not_otlp_is_still_accepted() -> None:
    assert classify(200, {}, b"<html>ok</html>", "metrics") == Accepted(0, "")


def test_partial_success_reports_rejected_items_of_each_signal() -> None:
    metrics = metrics_service_pb2.ExportMetricsServiceResponse()
    metrics.partial_success.rejected_data_points = 5
    metrics.partial_success.error_message = "5 points had no name"
    logs = logs_service_pb2.ExportLogsServiceResponse()
    logs.partial_success.rejected_log_records = 3
    traces = trace_service_pb2.ExportTraceServiceResponse()
    traces.partial_success.rejected_spans = 2
    assert classify(200, {}, metrics.SerializeToString(), "metrics") == Accepted(5, "5 points had no name")
    assert classify(200, {}, logs.SerializeToString(), "logs") == Accepted(3, "")
    assert classify(200, {}, traces.SerializeToString(), "traces") == Accepted(2, "")


def test_partial_success_with_only_a_warning_rejects_nothing() -> None:
    resp = metrics_service_pb2.ExportMetricsServiceResponse()
    resp.partial_success.error_message = "deprecated attribute"
    assert classify(200, {}, resp.SerializeToString(), "metrics") == Accepted(0, "deprecated attribute")


# -- retried ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_waits_the_retry_after_seconds(status: int) -> None:
    v = classify(status, {"Retry-After": "7"}, b"slow down", "metrics", now=NOW)
    assert v == Retry(f"http_{status}", f"HTTP {status}: slow down (Retry-After 7s)", 7.0)


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    when = email.utils.formatdate(NOW + 30, usegmt=True)
    v = classify(503, {"Retry-After": when}, b"", "metrics", now=NOW)
    assert isinstance(v, Retry) and v.after == pytest.approx(30.0)
    past = email.utils.formatdate(NOW - 30, usegmt=True)
    assert classify(429, {"Retry-After": past}, b"", "metrics", now=NOW) == Retry(
        "http_429", "HTTP 429: (empty body) (Retry-After 0s)", 0.0)


def test_an_unreadable_retry_after_leaves_the_backoff_to_the_relay() -> None:
    assert classify(503, {"Retry-After": "soon"}, b"busy", "metrics") == Retry("http_503", "HTTP 503: busy", None)
    assert classify(429, {}, b"busy", "metrics") == Retry("http_429", "HTTP 429: busy", None)


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_are_retried_and_their_retry_after_is_not_a_promise(status: int) -> None:
    v = classify(status, {"Retry-After": "60"}, b"bad gateway", "logs")
    assert v == Retry(f"http_{status}", f"HTTP {status}: bad gateway", None)


@pytest.mark.parametrize("status", [401, 403, 407])
def test_refused_credentials_keep_the_backlog_and_retry(status: int) -> None:
    v = classify(status, {"Retry-After": "5"}, b"who are you", "traces")
    assert v == Retry(f"http_{status}", f"HTTP {status}: who are you", None)


# -- split and reject -------------------------------------------------------------------------------


def test_413_splits_a_batch_that_can_be_halved() -> None:
    assert classify(413, {}, b"too big", "metrics", can_split=True) == Split("HTTP 413: too big")


def test_413_for_a_single_entry_is_a_rejection() -> None:
    assert classify(413, {}, b"too big", "metrics", can_split=False) == Reject(413, "HTTP 413: too big")


@pytest.mark.parametrize("status", [400, 404, 409, 422, 500, 501, 505])
def test_other_statuses_are_permanent_rejections(status: int) -> None:
    assert classify(status, {"Retry-After": "1"}, b"no", "metrics") == Reject(status, f"HTTP {status}: no")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_retried_and_names_where_it_points(status: int) -> None:
    """A redirect is never followed (the shipper asks aiohttp not to), and it is no delivery:
    the batch stays spooled and is retried, and the operator is told where the vendor pointed."""
    verdict = classify(status, {"Location": "https://elsewhere.example/v1/metrics", "Retry-After": "1"}, b"moved",
                       "metrics")
    assert verdict == Retry("redirect", "vendor redirected to https://elsewhere.example/v1/metrics; redirects are "
                                        f"not followed (HTTP {status}): point the endpoint at where it now lives")
    assert isinstance(classify(status, {}, b"", "metrics"), Retry)


# -- error bodies -----------------------------------------------------------------------------------


def test_a_google_rpc_status_body_is_decoded() -> None:
    body = rpc_status(code_pb2.INVALID_ARGUMENT, "metric name is empty")
    assert classify(400, {}, body, "metrics") == Reject(400, "HTTP 400: metric name is empty (INVALID_ARGUMENT)")
    assert classify(401, {}, rpc_status(code_pb2.UNAUTHENTICATED, "bad key"), "metrics") == Retry(
        "http_401", "HTTP 401: bad key (UNAUTHENTICATED)", None)


def test_a_status_without_a_message_shows_its_code() -> None:
    assert error_detail(rpc_status(code_pb2.RESOURCE_EXHAUSTED, "")) == "RESOURCE_EXHAUSTED"
    assert error_detail(rpc_status(99, "")) == "99"


def test_a_long_status_message_is_cut_short() -> None:
    detail = error_detail(rpc_status(code_pb2.INTERNAL, "x" * 1000))
    assert detail == "x" * 300 + "... (INTERNAL)"


def test_a_body_that_is_not_a_status_is_shown_as_a_text_excerpt() -> None:
    assert error_detail(b"bad request: schema mismatch") == "bad request: schema mismatch"
    # Valid protobuf, but with fields a Status does not have: text (field 12, fixed64) ...
    assert error_detail(b"abcdefghi") == "abcdefghi"
    # ... or another message that shares a field number with Status.
    other = rpc_status(code_pb2.INTERNAL, "x") + b"abcdefghi"
    assert error_detail(other).endswith("xabcdefghi") and "INTERNAL" not in error_detail(other)
    assert error_detail(b"line one\nline two\n") == "line one line two"
    assert error_detail(b"") == "(empty body)"
    assert error_detail(b"y" * 1000) == "y" * 300 + "..."
    assert error_detail(b"\xff\xfebroken") == "\ufffd\ufffdbroken"


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("", NOW) is None
    assert parse_retry_after(" 12 ", NOW) == 12.0
    assert parse_retry_after("-3", NOW) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 0.0
    assert parse_retry_after(email.utils.formatdate(NOW + 90, usegmt=True), NOW) == pytest.approx(90.0)


# -- transport errors, from real connections on loopback --------------------------------------------


@contextmanager
def tcp_server(on_connect: Callable[[socket.socket], None], tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """A loopback server that hands each accepted connection to on_connect in a thread."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            if stop.is_set():  # the wake-up connection below
                conn.close()
                return
            with conn:
                try:
                    if tls is not None:
                        conn = tls.wrap_socket(conn, server_side=True)
                    on_connect(conn)
                except (OSError, ssl.SSLError):
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        socket.create_connection(srv.getsockname(), timeout=5).close()  # wakes the accept()
        t.join(5)
        srv.close()
        assert not t.is_alive()


def post_error(url: str, timeout: float = 5.0, proxy: str | None = None) -> BaseException:
    async def main() -> BaseException:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            try:
                async with session.post(url, data=b"x", proxy=proxy) as resp:
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                return e
        raise AssertionError("the request did not fail")

    return asyncio.run(main())


def read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk


def test_a_refused_connection_is_a_connection_retry() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    v = classify_error(post_error(f"http://127.0.0.1:{port}/v1/metrics"), client_cert_may_be_missing=True)
    assert v.reason == "connection" and v.after is None
    assert "client certificate" not in v.detail  # never connected: not a sign of mTLS


def test_a_dropped_connection_hints_at_a_missing_client_certificate_only_when_asked() -> None:
    with tcp_server(read_request) as port:
        e = post_error(f"http://127.0.0.1:{port}/v1/metrics")
    assert isinstance(e, aiohttp.ServerDisconnectedError)
    assert classify_error(e).reason == "connection"
    assert "tls.client_cert_file" not in classify_error(e).detail
    assert "set tls.client_cert_file" in classify_error(e, client_cert_may_be_missing=True).detail


def test_a_destination_that_does_not_answer_in_time_is_a_timeout() -> None:
    answered = threading.Event()
    with tcp_server(lambda conn: (read_request(conn), answered.wait(5))) as port:
        e = post_error(f"http://127.0.0.1:{port}/v1/metrics", timeout=0.3)
        answered.set()
    assert classify_error(e) == Retry("timeout", "request timed out")


def test_an_untrusted_certificate_is_a_tls_retry(tmp_path: Path) -> None:
    pair = PKI(tmp_path).issue("127.0.0.1", server=True)
    tls = server_context(ListenerTLSSettings(str(pair.cert), str(pair.key)))
    with tcp_server(read_request, tls) as port:
        v = classify_error(post_error(f"https://127.0.0.1:{port}/v1/metrics"))
    assert v.reason == "tls" and v.detail.startswith("TLS certificate verification failed:"), v


def test_a_proxy_that_refuses_the_tunnel_is_a_proxy_retry() -> None:
    def refuse(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")

    with tcp_server(refuse) as port:
        v = classify_error(post_error("https://127.0.0.1:9/v1/metrics", proxy=f"http://127.0.0.1:{port}"))
    assert v == Retry("proxy", "proxy refused the tunnel: HTTP 407 Proxy Authentication Required")


def test_an_unreachable_proxy_is_a_proxy_retry() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    v = classify_error(post_error("http://127.0.0.1:9/v1/metrics", proxy=f"http://127.0.0.1:{port}"))
    assert v.reason == "proxy" and v.detail.startswith("cannot reach the proxy:"), v
