"""A reload builds the new pipeline before it touches the running one: a bad edit to a
mapping rule file leaves the relay up and shipping, and /status names the file."""

from __future__ import annotations

import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.procs import Ingest, Relay, free_port, relay_config, wait_until

RULES = """\
service_name: demo
prometheus:
  - series: [demo_requests_total]
    metric: demo.request.count
    type: counter
    unit: "{request}"
"""


class _Exposition(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(b"# TYPE demo_requests_total counter\ndemo_requests_total 42.0\n")

    def log_message(self, *args: Any) -> None:
        pass


def demo_points(ingest: Ingest) -> int:
    n = 0
    for rec in ingest.requests():
        for rm in rec["request"]["resourceMetrics"]:
            for sm in rm["scopeMetrics"]:
                for m in sm["metrics"]:
                    if m["name"] == "demo.request.count":
                        n += len(m["sum"]["dataPoints"])
    return n


def test_a_mapping_file_broken_before_sighup_leaves_the_old_pipeline_shipping(tmp_path: Path) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    rules = mappings / "demo.yaml"
    rules.write_text(RULES)
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Exposition)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url, sources={
        "host": {"enabled": False}, "internal": {"enabled": False}, "discovery": {"kafka": False},
        "mappings_dir": str(mappings),
        "prometheus": {"interval": "200ms", "targets": [{"url": url, "mappings": ["demo"]}]}})
    relay = Relay(tmp_path, cfg)
    relay.start()
    try:
        wait_until(lambda: demo_points(ingest), what="the mapped series at the ingest")
        last_reload = relay.status()["config"]["last_reload"]

        rules.write_text(RULES + "  - series: [demo_unclosed\n")  # a YAML syntax error
        relay.signal(signal.SIGHUP)
        err = wait_until(lambda: relay.status()["config"]["last_reload_error"], what="the failed reload in /status")
        assert str(rules) in err, err
        config = relay.status()["config"]
        assert config["last_reload"] == last_reload, "the failed reload did not count as one"
        assert config["last_reload_error_time"] >= last_reload

        # The old pipeline still runs: new data reaches the ingest after the refused reload.
        seen = demo_points(ingest)
        wait_until(lambda: demo_points(ingest) > seen, what="data shipped after the refused reload")
        assert relay.alive() and relay.readyz()[0] == 200
        assert "reload refused" in relay.log() and str(rules) in relay.log()

        # Once the file is fixed, the next SIGHUP goes through and clears the error.
        rules.write_text(RULES)
        relay.signal(signal.SIGHUP)
        wait_until(lambda: relay.status()["config"]["last_reload"] != last_reload, what="the good reload")
        assert relay.status()["config"]["last_reload_error"] is None
        seen = demo_points(ingest)
        wait_until(lambda: demo_points(ingest) > seen, what="data shipped by the new pipeline")
    finally:
        assert relay.terminate() == 0
        ingest.terminate()
        server.shutdown()
    assert "Traceback" not in relay.log()


def test_a_new_pipeline_that_cannot_start_gives_way_to_the_old_config(tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    ingest.start()
    relay = Relay(tmp_path, relay_config(tmp_path, ingest.url))
    relay.start()
    try:
        wait_until(lambda: relay.destination()["shipped_points"] > 0, what="first export")
        last_reload = relay.status()["config"]["last_reload"]
        # The file exists, so the config loads; its content is no CA bundle, so the
        # destination's TLS context cannot be built when its shipper starts.
        bogus_ca = tmp_path / "ca.pem"
        bogus_ca.write_text("not a certificate\n")
        cfg = dict(relay.cfg)
        cfg["destinations"] = [{**cfg["destinations"][0], "tls": {"ca_file": str(bogus_ca)}}]
        relay.write_config(cfg)
        relay.signal(signal.SIGHUP)
        err = wait_until(lambda: relay.status()["config"]["last_reload_error"], what="the failed start in /status")
        assert "did not start" in err and "the previous one runs again" in err, err
        assert relay.status()["config"]["last_reload"] == last_reload
        shipped = relay.destination()["shipped_points"]
        wait_until(lambda: relay.destination()["shipped_points"] > shipped, what="shipping under the old config")
        assert relay.destination()["tls"]["ca_file"] is None, "the old destination settings are back"
        assert relay.alive() and relay.readyz()[0] == 200
    finally:
        assert relay.terminate() == 0
        ingest.terminate()
    assert "Traceback" not in relay.log()
