"""Redirects against a real relay: a scrape target's redirect never carries its credentials
to another origin, and a vendor's redirect is never followed nor counted as a delivery."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.procs import Relay, free_port, relay_config, wait_until
from tests.vendor import Arrival, Vendor

EXPOSITION = b"# TYPE app_requests_total counter\napp_requests_total 7.0\n"
CREDENTIALS = "Basic " + base64.b64encode(b"scraper:s3cret-scrape-pw").decode()


@contextmanager
def http_server(routes: dict[str, tuple[int, dict[str, str], bytes]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A threaded HTTP server answering GET path -> (status, headers, body); yields its base URL
    and the list of requests it saw (path and Authorization)."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
            status, headers, body = routes.get(self.path, (404, {}, b"not here"))
            self.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_scrape_redirect_to_another_origin_gets_no_credentials(tmp_path: Path) -> None:
    password = tmp_path / "scrape-password"
    password.write_text("s3cret-scrape-pw\n")
    password.chmod(0o600)
    with http_server({"/metrics": (200, {"Content-Type": "text/plain"}, EXPOSITION)}) as (elsewhere, elsewhere_seen), \
         http_server({"/metrics": (302, {"Location": f"{elsewhere}/metrics"}, b"")}) as (leaving, _), \
         http_server({"/metrics": (302, {"Location": "/v2/metrics"}, b""),
                      "/v2/metrics": (200, {"Content-Type": "text/plain"}, EXPOSITION)}) as (staying, staying_seen):
        target = {"username": "scraper", "password_file": str(password), "mappings": []}
        cfg = relay_config(tmp_path, "http://127.0.0.1:9", sources={
            "host": {"enabled": False}, "internal": {"enabled": False}, "discovery": {"kafka": False},
            "prometheus": {"interval": "300ms", "targets": [{"url": f"{leaving}/metrics", **target},
                                                            {"url": f"{staying}/metrics", **target}]}})
        relay = Relay(tmp_path, cfg)
        relay.start()
        leaving_name = "prometheus " + leaving.removeprefix("http://")
        staying_name = "prometheus " + staying.removeprefix("http://")
        try:
            src = wait_until(lambda: next(s for s in relay.status()["sources"]
                                          if s["name"] == leaving_name and s["last_error"]),
                             what="the cross-origin redirect to fail the scrape")
            assert f"redirected to another origin, {elsewhere}" in src["last_error"], src["last_error"]
            assert relay.metric("relay_source_errors_total", source=leaving_name) >= 1
            # The same-origin redirect is followed, with the credentials, and collects.
            wait_until(lambda: relay.metric("relay_points_collected_total", source=staying_name) > 0,
                       what="the same-origin redirect to be followed")
            assert {"path": "/v2/metrics", "authorization": CREDENTIALS} in staying_seen
            assert relay.source(staying_name)["last_error"] is None
            runs = relay.metric("relay_source_runs_total", source=leaving_name)
            wait_until(lambda: relay.metric("relay_source_runs_total", source=leaving_name) >= runs + 2,
                       what="more scrapes of the redirecting target")
        finally:
            relay.terminate()
        assert elsewhere_seen == [], "the other origin was never asked, so it never saw the credentials"
    assert "s3cret-scrape-pw" not in relay.log()


def test_a_vendor_redirect_is_reported_retried_and_never_followed(tmp_path: Path) -> None:
    def elsewhere_answers(i: int, a: Arrival) -> tuple[int, dict[str, str], bytes]:
        return 200, {}, b""

    with Vendor(elsewhere_answers) as elsewhere:
        moved = {"on": True}
        location = f"{elsewhere.url}/v1/metrics"

        def vendor_answers(i: int, a: Arrival) -> tuple[int, dict[str, str], bytes]:
            return (307, {"Location": location}, b"") if moved["on"] else (200, {}, b"")

        with Vendor(vendor_answers) as vendor:
            cfg = relay_config(tmp_path, vendor.url, sources={"host": {"enabled": False},
                                                              "internal": {"interval": "200ms"}})
            relay = Relay(tmp_path, cfg)
            relay.start()
            try:
                wait_until(lambda: relay.metric("relay_export_retries_total", reason="redirect") >= 3,
                           what="the redirect to be retried")
                dest = relay.destination()
                assert dest["last_error"].startswith(f"vendor redirected to {location}; redirects are not followed")
                assert dest["shipped_points"] == 0 and dest["shipped_requests"] == 0, "a redirect is no delivery"
                assert dest["backlog_items"] > 0 and dest["dropped_points"] == {}
                assert elsewhere.arrivals == [], "the redirect was followed"
                moved["on"] = False  # the operator fixed the endpoint (or the vendor its redirect)
                wait_until(lambda: relay.destination()["shipped_points"] > 0, what="delivery once it stops")
            finally:
                relay.terminate()
        assert elsewhere.arrivals == []
