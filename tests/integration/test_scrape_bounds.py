"""A real relay scraping two hostile Prometheus targets on loopback (one serving a 50 MB body,
one a line of 100,000 labels) stays responsive: /healthz, polled through the bad scrapes,
always answers within 250 ms; its peak RSS stays within the body cap plus the margin that
docs/reliability.md states; both scrapes fail with a short error, counted."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.procs import Ingest, Relay, free_port, http_get, relay_config, wait_until

MiB = 1024 * 1024
CAP = 16 * MiB  # the default sources.prometheus.max_body_bytes
RSS_MARGIN = 48 * MiB  # docs/reliability.md, "Input bounds"
GOOD = b"# TYPE up gauge\nup 1\n"


class _Target(BaseHTTPRequestHandler):
    body = GOOD

    def do_GET(self) -> None:
        body = type(self).body
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()  # no Content-Length: the relay must stop reading by itself
        try:
            for i in range(0, len(body), 1 << 20):
                self.wfile.write(body[i:i + (1 << 20)])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the relay stopped reading at its cap

    def log_message(self, *args: Any) -> None:
        pass


def _serve(body: bytes) -> tuple[ThreadingHTTPServer, type[_Target]]:
    handler = type("T", (_Target,), {"body": GOOD})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_hostile_scrape_targets_do_not_stall_the_relay(tmp_path: Path) -> None:
    huge = b"".join(b'big_series{instance="host-%07d",job="node"} 1\n' % i for i in range(1_100_000))
    assert len(huge) > 50 * 1000 * 1000
    wide = ("wide{" + ",".join(f'l{i}="v"' for i in range(100_000)) + "} 1\n").encode()
    big_server, big = _serve(huge)
    wide_server, wide_handler = _serve(wide)
    urls = [f"http://127.0.0.1:{s.server_address[1]}/metrics" for s in (big_server, wide_server)]
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url, sources={
        "host": {"enabled": False}, "internal": {"enabled": False}, "discovery": {"kafka": False},
        # Lines as long as the wide one pass, so that its labels are what the relay refuses.
        "prometheus": {"interval": "500ms", "max_line_length": 2 * MiB,
                       "targets": [{"url": u, "mappings": []} for u in urls]}})
    relay = Relay(tmp_path, cfg)
    relay.start()
    try:
        names = [f"prometheus 127.0.0.1:{s.server_address[1]}" for s in (big_server, wide_server)]
        wait_until(lambda: all(relay.source(n)["successes"] >= 1 for n in names), what="a good scrape of each")
        rss_before = _kib(relay.pid, "VmRSS")
        errors_before = {n: relay.source(n)["errors"] for n in names}
        big.body, wide_handler.body = huge, wide

        worst = 0.0
        deadline = time.monotonic() + 60
        # Poll without pause: any stall of the loop shows as one slow answer.
        while not all(relay.source(n)["errors"] >= errors_before[n] + 3 for n in names):
            assert time.monotonic() < deadline, "the bad scrapes were not reported"
            started = time.monotonic()
            status, _ = http_get(relay.status_url + "/healthz", timeout=10)
            worst = max(worst, time.monotonic() - started)
            assert status == 200
        peak = _kib(relay.pid, "VmHWM")
        print(f"\nworst /healthz latency through the bad scrapes: {worst * 1000:.1f} ms; "
              f"RSS before {rss_before / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB (+{(peak - rss_before) / MiB:.1f})")
        assert worst < 0.25
        assert peak - rss_before < CAP + RSS_MARGIN

        big_err, wide_err = (relay.source(n)["last_error"] for n in names)
        assert "exceeds 16777216 bytes" in big_err and "sources.prometheus.max_body_bytes" in big_err
        assert "more than 128 labels" in wide_err and "sources.prometheus.max_labels_per_series" in wide_err
        for n, err in zip(names, (big_err, wide_err), strict=True):
            assert urls[names.index(n)] in err and len(err) < 300
            assert relay.metric("relay_source_errors_total", source=n) >= 3
        assert relay.alive()
    finally:
        relay.terminate()
        ingest.terminate()
        big_server.shutdown()
        wide_server.shutdown()
    assert "Traceback" not in relay.log()
