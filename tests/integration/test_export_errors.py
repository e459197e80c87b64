"""How the shipper treats each answer a vendor can give, against a real relay process."""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

from tests.procs import Relay, relay_config, wait_until
from tests.vendor import Arrival, Vendor

OK = (200, {}, b"")


def start_relay(tmp_path: Path, vendor: Vendor) -> Relay:
    cfg = relay_config(tmp_path, vendor.url, sources={"host": {"enabled": False}, "internal": {"interval": "200ms"}})
    relay = Relay(tmp_path, cfg)
    relay.start()
    return relay


def test_400_moves_the_batch_to_dead_letter_and_counts_it(tmp_path: Path) -> None:
    def respond(i: int, a: Arrival) -> tuple[int, dict[str, str], bytes]:
        return (400, {}, b"bad request: schema mismatch") if i == 0 else OK

    with Vendor(respond) as vendor:
        relay = start_relay(tmp_path, vendor)
        try:
            wait_until(lambda: len(vendor.accepted()) >= 3, what="exports after the rejection")
            dest = relay.destination()
            rejected = vendor.arrivals[0]
            assert dest["dropped_points"] == {"dead_letter": rejected.items}
            assert relay.status()["spool"]["dropped_points"] == {"dead_letter": rejected.items}
            assert relay.metric("relay_entries_dropped_total", reason="dead_letter") >= 1
            assert "HTTP 400: bad request: schema mismatch" in (dest["last_error"] or "")
            # Not retried: that body never came again.
            assert [a.digest for a in vendor.arrivals].count(rejected.digest) == 1
            # The operator can see it, with the reason, while the relay runs.
            import subprocess

            from tests.procs import CLI

            p = subprocess.run([*CLI, "spool", "--config", str(relay.config_path)], capture_output=True,
                               text=True, timeout=60)
            assert p.returncode == 0, p.stderr
            assert "dead letters: 1" in p.stdout and "status 400: HTTP 400: bad request: schema mismatch" in p.stdout
            assert f"{rejected.items} items" in p.stdout
        finally:
            relay.terminate()
    assert "moved to dead-letter" in relay.log()


def test_429_waits_for_retry_after(tmp_path: Path) -> None:
    def respond(i: int, a: Arrival) -> tuple[int, dict[str, str], bytes]:
        return (429, {"Retry-After": "2"}, b"slow down") if i == 0 else OK

    with Vendor(respond) as vendor:
        relay = start_relay(tmp_path, vendor)
        try:
            wait_until(lambda: len(vendor.accepted()) >= 1, what="the retry")
            first, second = vendor.arrivals[0], vendor.arrivals[1]
            assert second.digest == first.digest, "the same batch is retried"
            # The relay's own backoff is at most 0.5 s here; 2 s proves Retry-After was honoured.
            assert second.time - first.time >= 1.9
            assert relay.metric("relay_export_retries_total", reason="http_429") == 1
        finally:
            relay.terminate()


def test_503_backs_off_and_retries_until_accepted(tmp_path: Path) -> None:
    def respond(i: int, a: Arrival) -> tuple[int, dict[str, str], bytes]:
        return (503, {}, b"unavailable") if i < 4 else OK

    with Vendor(respond) as vendor:
        relay = start_relay(tmp_path, vendor)
        try:
            wait_until(lambda: len(vendor.accepted()) >= 2, what="success after 503s")
            first = vendor.arrivals[0]
            retried = vendor.arrivals[:5]
            assert all(a.digest == first.digest for a in retried), "one batch retried until accepted"
            gaps = [b.time - a.time for a, b in itertools.pairwise(retried)]
            assert all(0.04 <= g <= 1.5 for g in gaps), gaps
            assert relay.metric("relay_export_retries_total", reason="http_503") == 4
            assert relay.destination()["dropped_points"] == {}
        finally:
            relay.terminate()


def test_partial_success_is_counted_and_not_retried(tmp_path: Path) -> None:
    resp = metrics_service_pb2.ExportMetricsServiceResponse()
    resp.partial_success.rejected_data_points = 5
    resp.partial_success.error_message = "5 points had no name"
    body = resp.SerializeToString()

    def respond(i: int, a: Arrival) -> tuple[int, dict[str, str], bytes]:
        return (200, {}, body) if i < 2 else OK

    with Vendor(respond) as vendor:
        relay = start_relay(tmp_path, vendor)
        try:
            wait_until(lambda: len(vendor.arrivals) >= 4, what="several exports")
            dest = relay.destination()
            assert dest["rejected_points"] == 10
            counts = collections.Counter(a.digest for a in vendor.arrivals)
            assert max(counts.values()) == 1, "partially rejected batches are not sent again"
            shipped = sum(a.items for a in vendor.arrivals[:4]) - 10
            wait_until(lambda: relay.destination()["shipped_points"] >= shipped, what="shipped count")
        finally:
            relay.terminate()
    assert "5 points had no name" in relay.log()


def test_requests_carry_otlp_headers_and_bearer_token(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text("s3cr3t-api-key-0123456789\n")
    key.chmod(0o600)
    with Vendor(lambda i, a: OK) as vendor:
        cfg = relay_config(tmp_path, vendor.url, sources={"host": {"enabled": False}})
        cfg["destinations"][0]["api_key_file"] = str(key)
        relay = Relay(tmp_path, cfg)
        relay.start()
        try:
            wait_until(lambda: vendor.arrivals, what="an export")
            h = vendor.arrivals[0].headers
            assert h["Content-Type"] == "application/x-protobuf"
            assert h["Content-Encoding"] == "zstd"
            assert h["Authorization"] == "Bearer s3cr3t-api-key-0123456789"
            assert vendor.arrivals[0].path == "/v1/metrics"
        finally:
            relay.terminate()
    assert "s3cr3t-api-key-0123456789" not in relay.log()
