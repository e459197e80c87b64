"""`telemetry-relay check-connection` as an operator runs it, a real subprocess each time:
every step is driven to fail against something real on loopback (a config with a missing
secret, a name that does not resolve, a refused port, a proxy asking for credentials, a TLS
server with a wrong chain or too old a TLS version, a server that answers no HTTP, a
server whose Date is 10 minutes off, an ingest that refuses the API key or does not know
the signing key), each with its own message and the later steps skipped; a healthy setup
(the reference ingest with TLS, an API key and trusted keys) passes every step, stores
nothing, and the running relay shows the result in /status."""

from __future__ import annotations

import email.utils
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.certs import PKI
from tests.integration.test_secure_shipping import Proxy
from tests.procs import CLI, Ingest, Relay, free_port, relay_config, serve_handler, wait_until

NO_PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")
ORDER = ["configuration", "dns", "tcp", "proxy", "tls", "http", "clock", "api_key", "signature"]


def relay_for(tmp_path: Path, endpoint: str, **dest: Any) -> Relay:
    """A relay config (not started) with a signing key, for one destination."""
    cfg = relay_config(tmp_path, endpoint, sources={"host": {"enabled": False}})
    cfg["destinations"][0].update(dest)
    relay = Relay(tmp_path, cfg)
    relay.keys("init")
    return relay


def check_connection(relay: Relay, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    """Run the command twice over: --json for the verdicts, and as text for what an operator reads."""
    environ = {k: v for k, v in os.environ.items() if k not in NO_PROXY_ENV}
    environ.update(env or {})
    args = [*CLI, "check-connection", "--config", str(relay.config_path)]
    p = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=90, env=environ)
    assert p.stdout, p.stderr
    text = subprocess.run(args, capture_output=True, text=True, timeout=90, env=environ)
    assert text.returncode == p.returncode, text.stdout + text.stderr
    return p.returncode, json.loads(p.stdout), text.stdout


def steps(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (dest,) = doc["destinations"]
    assert [s["name"] for s in dest["steps"]] == ORDER
    return {s["name"]: s for s in dest["steps"]}


def assert_fails_at(rc: int, doc: dict[str, Any], text: str, step: str, *said: str) -> dict[str, Any]:
    """Exit 1; every step before `step` passed (or warned), `step` failed saying `said` and
    giving a fix, and every later step is skipped because of it."""
    assert rc == 1, doc
    by_name = steps(doc)
    at = ORDER.index(step)
    for name in ORDER[:at]:
        assert by_name[name]["status"] in ("ok", "warn"), (name, by_name[name])
    failed = by_name[step]
    assert failed["status"] == "fail", failed
    for s in said:
        assert s in failed["detail"], (s, failed)
    assert failed["fix"], failed
    for name in ORDER[at + 1:]:
        assert by_name[name]["status"] == "skipped", by_name[name]
        assert "because the" in by_name[name]["detail"], by_name[name]
    assert "FAIL" in text and f"fix: {failed['fix']}" in text
    assert ("skipped (because" in text) == (step != ORDER[-1])
    assert doc["ok"] is False
    return failed


def test_a_healthy_setup_passes_every_step_stores_nothing_and_shows_in_status(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki")
    server = pki.issue("ingest", server=True)
    api_key = "healthy-api-key-0123456789"
    key_file = tmp_path / "api-key"
    key_file.write_text(api_key + "\n")
    key_file.chmod(0o600)
    port = free_port()
    relay = relay_for(tmp_path, f"https://127.0.0.1:{port}", api_key_file=str(key_file),
                      tls={"ca_file": str(pki.ca.cert), "min_version": "1.3"})
    trusted = tmp_path / "trusted"
    relay.keys("export", "--out", str(trusted))
    ingest = Ingest(tmp_path, port, ["--tls-cert", str(server.cert), "--tls-key", str(server.key),
                                     "--trusted-keys", str(trusted), "--api-key-file", str(key_file)],
                    tls_ca=pki.ca.cert)
    ingest.start()
    try:
        rc, doc, text = check_connection(relay)
        assert rc == 0, text
        by_name = steps(doc)
        assert {n: s["status"] for n, s in by_name.items()} == dict.fromkeys(ORDER, "ok"), text
        assert "TLSv1.3" in by_name["tls"]["detail"] and str(pki.ca.cert) in by_name["tls"]["detail"]
        (kid,) = [p.stem for p in trusted.glob("*.pem")]
        assert kid in by_name["signature"]["detail"]
        assert "every step passed" in text
        # The probes were checked as data is, and none of them was stored or counted as data.
        stats = ingest.stats()
        assert stats["probes"] == {"received": 2, "passed": 2}
        assert stats["signals"]["metrics"]["requests"] == 0 and ingest.requests() == []
        assert api_key not in text and api_key not in json.dumps(doc)

        recorded = tmp_path / "state" / "connection-check.json"
        assert recorded.stat().st_mode & 0o777 == 0o644
        assert api_key not in recorded.read_text()
        relay.start()
        shown = wait_until(lambda: relay.status()["connection_check"], what="the self-test in /status")
        assert shown["ok"] is True and shown["destinations"][0]["name"] == "vendor"
    finally:
        relay.terminate()
        ingest.terminate()


def test_configuration_fails_when_a_secret_cannot_be_read(tmp_path: Path) -> None:
    relay = relay_for(tmp_path, "http://127.0.0.1:9", api_key_file=str(tmp_path / "no-such-key"))
    rc, doc, text = check_connection(relay)
    (dest,) = doc["destinations"]
    assert dest["name"] is None
    by_name = {s["name"]: s for s in dest["steps"]}
    assert rc == 1 and by_name["configuration"]["status"] == "fail"
    said = by_name["configuration"]["detail"]
    assert "api_key_file" in said and "does not exist" in said
    assert all(by_name[n]["status"] == "skipped" for n in ORDER[1:])
    assert "because the configuration step failed" in text


def test_dns_fails_for_a_name_that_does_not_resolve(tmp_path: Path) -> None:
    relay = relay_for(tmp_path, "https://vendor.example.invalid:443")
    failed = assert_fails_at(*check_connection(relay), "dns", "'vendor.example.invalid' does not resolve")
    assert "resolv.conf" in failed["fix"]


def test_tcp_fails_on_a_refused_port(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    relay = relay_for(tmp_path, f"http://127.0.0.1:{port}")
    assert_fails_at(*check_connection(relay), "tcp", f"127.0.0.1:{port} refused")


def test_tls_fails_on_a_chain_that_does_not_lead_to_the_pinned_ca(tmp_path: Path) -> None:
    theirs, ours = PKI(tmp_path / "pki-server", "server-ca"), PKI(tmp_path / "pki-pinned", "pinned-ca")
    server = theirs.issue("ingest", server=True)
    port = free_port()
    ingest = Ingest(tmp_path, port, ["--tls-cert", str(server.cert), "--tls-key", str(server.key)],
                    tls_ca=theirs.ca.cert)
    ingest.start()
    try:
        relay = relay_for(tmp_path, f"https://127.0.0.1:{port}", tls={"ca_file": str(ours.ca.cert)})
        failed = assert_fails_at(*check_connection(relay), "tls", "does not lead to the pinned CA", str(ours.ca.cert))
        assert "tls.ca_file" in failed["fix"]
        assert ingest.stats()["probes"]["received"] == 0
    finally:
        ingest.terminate()


@contextmanager
def tls12_only_server(pki: PKI) -> Iterator[int]:
    """A TLS server that speaks TLS 1.2 at most and closes each connection after the handshake."""
    cert = pki.issue("old-server", server=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert.cert, cert.key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                ctx.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_tls_fails_when_the_server_is_below_the_minimum_version(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki")
    with tls12_only_server(pki) as port:
        relay = relay_for(tmp_path, f"https://127.0.0.1:{port}",
                          tls={"ca_file": str(pki.ca.cert), "min_version": "1.3"})
        failed = assert_fails_at(*check_connection(relay), "tls", "does not speak TLS 1.3 or newer")
        assert "min_version" in failed["fix"]


@contextmanager
def silent_server() -> Iterator[int]:
    """Accepts TCP connections, reads what comes, and closes them without a word of HTTP."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_http_fails_when_the_server_answers_no_http(tmp_path: Path) -> None:
    with silent_server() as port:
        relay = relay_for(tmp_path, f"http://127.0.0.1:{port}")
        assert_fails_at(*check_connection(relay), "http", "no HTTP answer to POST", "/v1/verify")


def test_proxy_fails_when_it_asks_for_credentials(tmp_path: Path) -> None:
    proxy = Proxy(tmp_path, auth="relayuser:the-proxy-password")
    proxy.start()
    try:
        with silent_server() as port:
            relay = relay_for(tmp_path, f"https://127.0.0.1:{port}", proxy_url=proxy.url)
            failed = assert_fails_at(*check_connection(relay), "proxy", "asks for credentials (HTTP 407")
            assert "proxy_username" in failed["fix"]
            # With the credentials the tunnel opens, and the next failure is the endpoint's own
            # (it speaks no TLS).
            pw = tmp_path / "proxy-pw"
            pw.write_text("the-proxy-password\n")
            pw.chmod(0o600)
            cfg = relay.cfg
            cfg["destinations"][0].update(proxy_username="relayuser", proxy_password_file=str(pw))
            relay.write_config(cfg)
            rc, doc, text = check_connection(relay)
            assert rc == 1, text
            assert steps(doc)["proxy"]["status"] == "ok", text
            assert steps(doc)["tls"]["status"] == "fail", text
            assert "the-proxy-password" not in text
    finally:
        proxy.terminate()


@contextmanager
def server_with_clock_off(seconds: float) -> Iterator[str]:
    """An HTTP server whose every answer (200, empty) carries a Date this many seconds off."""

    class Handler(BaseHTTPRequestHandler):
        def date_time_string(self, timestamp: float | None = None) -> str:
            return email.utils.formatdate(time.time() + seconds, usegmt=True)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with serve_handler(Handler) as url:
        yield url


def test_clock_fails_when_the_servers_date_is_ten_minutes_off(tmp_path: Path) -> None:
    with server_with_clock_off(-600) as url:
        relay = relay_for(tmp_path, url)
        failed = assert_fails_at(*check_connection(relay), "clock", "s ahead of the destination's",
                                 "only within ±300s")
        assert 598 <= int(re.search(r"about (\d+)s ahead", failed["detail"]).group(1)) <= 602  # type: ignore[union-attr]
        assert "timedatectl" in failed["fix"]


def test_api_key_fails_when_the_ingest_refuses_it(tmp_path: Path) -> None:
    theirs, ours = tmp_path / "their-key", tmp_path / "our-key"
    theirs.write_text("the-key-the-vendor-expects-123\n")
    ours.write_text("a-key-that-is-wrong-456789\n")
    theirs.chmod(0o600)
    ours.chmod(0o600)
    ingest = Ingest(tmp_path, extra=["--api-key-file", str(theirs)])
    ingest.start()
    try:
        relay = relay_for(tmp_path, ingest.url, api_key_file=str(ours))
        rc, doc, text = check_connection(relay)
        failed = assert_fails_at(rc, doc, text, "api_key", "refused the API key", "HTTP 401")
        assert str(ours) in failed["fix"]
        assert "a-key-that-is-wrong-456789" not in text and "the-key-the-vendor-expects-123" not in text
    finally:
        ingest.terminate()


def test_signature_fails_when_the_ingest_does_not_know_the_key(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    stranger = relay_for(tmp_path / "other", "http://127.0.0.1:9")
    trusted = tmp_path / "trusted-other"
    stranger.keys("export", "--out", str(trusted))
    ingest = Ingest(tmp_path, extra=["--trusted-keys", str(trusted)])
    ingest.start()
    try:
        relay = relay_for(tmp_path, ingest.url)
        failed = assert_fails_at(*check_connection(relay), "signature", "unknown_key", "unregistered key")
        assert "keys show" in failed["fix"]
        assert ingest.requests() == []
    finally:
        ingest.terminate()


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="make test installs chromium and chromium-driver")
def test_the_status_page_shows_the_last_self_test(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from tests.integration.test_status_page import chrome

    port = free_port()  # nothing listens there: the self-test fails at TCP
    relay = relay_for(tmp_path, f"http://127.0.0.1:{port}")
    relay.start()
    driver = chrome(1280, 800)
    try:
        driver.get(relay.status_url + "/")
        line = driver.find_element(By.ID, "selftest")
        wait_until(lambda: "never run" in line.text, what="no self-test yet on the page")
        check_connection(relay)
        wait_until(lambda: "failed" in line.text, what="the failed self-test on the page")
        assert f"vendor: tcp: connection to the endpoint 127.0.0.1:{port} refused" in line.text
    finally:
        driver.quit()
        relay.terminate()


def test_a_bundle_destination_has_no_network_path_and_passes_on_a_writable_directory(tmp_path: Path) -> None:
    cfg = relay_config(tmp_path, "http://127.0.0.1:1", sources={"host": {"enabled": False}})
    cfg["destinations"] = [{"name": "offline", "kind": "bundle", "directory": str(tmp_path / "bundles")}]
    relay = Relay(tmp_path, cfg)
    relay.keys("init")
    rc, doc, text = check_connection(relay)
    assert rc == 0, text
    (dest,) = doc["destinations"]
    assert dest["endpoint"] == f"bundle:{tmp_path / 'bundles'}"
    assert [(s["name"], s["status"]) for s in dest["steps"]] == [("bundle", "ok")]
    assert "no network path" in text
