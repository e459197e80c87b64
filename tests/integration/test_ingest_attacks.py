"""Attacks on the verifying ingest, built as an attacker would: from one genuine signed
request captured off the wire from a real relay, replayed and altered against a real
ingest subprocess on loopback. Each forgery must be refused with its reason and leave
nothing in the store; the genuine capture itself is accepted exactly once."""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.rpc import status_pb2
from http_message_signatures import HTTPMessageSigner, algorithms

from relay import config
from relay.compression import compress
from relay.export.signing import HttpRequestView, KeyResolver, KeyStore
from relay.otlp import MetricsBuilder
from tests.procs import Ingest, Relay, free_port, relay_config, wait_until

Headers = list[tuple[str, str]]


@dataclass
class Capture:
    path: str
    headers: Headers  # raw field lines, in wire order, names as sent
    body: bytes  # the body exactly as sent (compressed)
    key_id: str
    key_dir: Path
    trusted: Path

    def field(self, name: str) -> str:
        (value,) = [v for k, v in self.headers if k.lower() == name.lower()]
        return value


class CapturingServer:
    """A stand-in vendor on loopback: records the first request's raw field lines and body
    and answers every request 200, so the relay ships as it would to a real ingest."""

    def __init__(self) -> None:
        self.port = free_port()
        self.first: tuple[str, Headers, bytes] | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if outer.first is None:
                    outer.first = (self.path, list(self.headers.items()), body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> CapturingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def signed_relay(workdir: Path, endpoint: str, trusted: Path, env: dict[str, str] | None = None) -> Relay:
    """A relay (zstd, pass-through policy, so Content-Encoding and the policy header are
    sent) whose public key is exported into `trusted`."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = relay_config(workdir, endpoint, sources={"host": {"enabled": False}, "internal": {"interval": "200ms"}})
    relay = Relay(workdir, cfg, env=env)
    relay.keys("init")
    relay.keys("export", "--out", str(trusted))
    return relay


def relay_key_dir(relay: Relay) -> Path:
    return Path(config.key_dir(config.load(str(relay.config_path)).config))


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capture]:
    tmp = tmp_path_factory.mktemp("capture")
    trusted = tmp / "trusted"
    with CapturingServer() as server:
        relay = signed_relay(tmp / "relay", f"http://127.0.0.1:{server.port}", trusted)
        relay.start()
        try:
            wait_until(lambda: server.first is not None, what="one signed request captured")
        finally:
            relay.terminate()
    assert server.first is not None
    path, headers, body = server.first
    (kid,) = [p.stem for p in trusted.glob("*.pem")]
    yield Capture(path, headers, body, kid, relay_key_dir(relay), trusted)


def send(port: int, path: str, headers: Headers, body: bytes) -> tuple[int, str]:
    """POST exactly these field lines (repeats kept, Host as captured) and this body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            if name.lower() != "content-length":
                conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    if resp.getheader("Content-Type", "") != "application/x-protobuf":
        return resp.status, raw.decode(errors="replace")  # refused before the ingest's own code
    st = status_pb2.Status()
    st.ParseFromString(raw)
    return resp.status, st.message


def start_ingest(tmp: Path, trusted: Path, name: str = "ingest", port: int | None = None) -> Ingest:
    ingest = Ingest(tmp, port, ["--trusted-keys", str(trusted)], name=name)
    ingest.start()
    return ingest


def rejected(ingest: Ingest) -> dict[str, int]:
    return dict(ingest.stats()["rejected"])


def refused(ingest: Ingest, cap: Capture, headers: Headers, body: bytes, status: int, reason: str) -> str:
    """Send a forgery; assert its status, that it is counted under `reason`, and that nothing was stored."""
    before = rejected(ingest)
    got, message = send(ingest.port, cap.path, headers, body)
    after = rejected(ingest)
    assert (got, after.get(reason, 0) - before.get(reason, 0)) == (status, 1), (got, message, after)
    assert ingest.requests() == []
    return message


def accepted_once(ingest: Ingest, cap: Capture) -> None:
    assert send(ingest.port, cap.path, cap.headers, cap.body)[0] == 200
    (record,) = ingest.requests()
    assert record["key_id"] == cap.key_id
    assert record["policy_sha256"] == cap.field("X-Relay-Policy-SHA256")


def other_body() -> bytes:
    b = MetricsBuilder({"service.name": "forged"}, "attacker")
    b.point(b.gauge("forged.value", "1"), 666.0, time.time_ns())
    return compress(bytes(b.finish().SerializeToString()), "zstd")


def digest_of(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def fresh_input(cap: Capture) -> str:
    """The captured Signature-Input with a new created and nonce: what an attacker can write, not sign."""
    components = cap.field("Signature-Input").split(";", 1)[0]
    return (f'{components};created={int(time.time())};keyid="{cap.key_id}";alg="ed25519";'
            f'nonce="{secrets.token_urlsafe(16)}";tag="telemetry-relay"')


def test_second_signature_input_and_digest_cannot_smuggle_another_body(capture: Capture, tmp_path: Path) -> None:
    ingest = start_ingest(tmp_path, capture.trusted)
    try:
        forged = other_body()
        headers = [*capture.headers, ("Signature-Input", fresh_input(capture)),
                   ("Content-Digest", digest_of(forged))]
        message = refused(ingest, capture, headers, forged, 400, "duplicate_field")
        assert "more than once" in message
        # The same with the forged lines first, so neither "first wins" nor "last wins" helps.
        first = [("Signature-Input", fresh_input(capture)), ("Content-Digest", digest_of(forged)), *capture.headers]
        refused(ingest, capture, first, forged, 400, "duplicate_field")
        accepted_once(ingest, capture)
    finally:
        ingest.terminate()


# Content-Type is single-instance too; see below for who refuses it here.
SINGLE_INSTANCE = ["Signature", "Signature-Input", "Content-Digest", "Content-Encoding", "X-Relay-Policy-SHA256"]
PROTOBUF = "application/x-protobuf"


def test_each_signed_field_given_twice_is_refused(capture: Capture, tmp_path: Path) -> None:
    ingest = start_ingest(tmp_path, capture.trusted)
    try:
        for name in SINGLE_INSTANCE:
            # An exact repeat, and a repeat under another spelling of the name.
            for spelling in (name, name.lower()):
                headers = [*capture.headers, (spelling, capture.field(name))]
                message = refused(ingest, capture, headers, capture.body, 400, "duplicate_field")
                assert name.lower() in message.lower()
        # aiohttp's own parser already refuses a second Content-Type, before the ingest sees it.
        status, message = send(ingest.port, capture.path, [*capture.headers, ("Content-Type", PROTOBUF)],
                               capture.body)
        assert (status, ingest.requests()) == (400, []) and "Duplicate 'Content-Type'" in message
        # One field line that names the same label twice (the parser would merge them).
        for name in ("Signature-Input", "Signature"):
            value = capture.field(name)
            doubled = [(k, f"{value}, {value}" if k.lower() == name.lower() else v) for k, v in capture.headers]
            message = refused(ingest, capture, doubled, capture.body, 401, "malformed_signature")
            assert "twice" in message
        accepted_once(ingest, capture)
    finally:
        ingest.terminate()


def test_capture_replayed_after_the_ingest_is_killed_and_restarted_is_refused(
        capture: Capture, tmp_path: Path) -> None:
    ingest = start_ingest(tmp_path, capture.trusted)
    try:
        accepted_once(ingest, capture)
        assert send(ingest.port, capture.path, capture.headers, capture.body)[0] == 401
        assert rejected(ingest) == {"replay": 1}
        ingest.kill9()
        ingest = start_ingest(tmp_path, capture.trusted, port=ingest.port)
        assert send(ingest.port, capture.path, capture.headers, capture.body)[0] == 401
        assert rejected(ingest) == {"replay": 1}
        assert len(ingest.requests()) == 1
    finally:
        ingest.terminate()


def resigned(cap: Capture, leave_out: str) -> Headers:
    """The capture signed anew with the relay's own key over fewer components: what a
    careless (or compromised-config) client could send, to prove the ingest insists."""
    components = [c.strip('"') for c in cap.field("Signature-Input").split(";", 1)[0].split("=", 1)[1]
                  .strip("()").split()]
    components = [c for c in components if c != leave_out]
    key = KeyStore(cap.key_dir, 3600).current()
    url = f"http://{cap.field('Host')}{cap.path}"
    kept = [(k, v) for k, v in cap.headers if k.lower() not in ("signature", "signature-input")]
    msg = HttpRequestView("POST", url, dict(kept))
    resolver = KeyResolver(private={key.key_id: key.private})
    HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=resolver).sign(
        msg, key_id=key.key_id, nonce=secrets.token_urlsafe(16), label="relay", tag="telemetry-relay",
        covered_component_ids=components, use_existing_digest=True,
        created=datetime.datetime.fromtimestamp(int(time.time()), tz=datetime.UTC))
    return [*kept, ("Signature-Input", msg.headers["Signature-Input"]), ("Signature", msg.headers["Signature"])]


def test_signature_must_cover_content_encoding_and_the_policy_header_when_sent(
        capture: Capture, tmp_path: Path) -> None:
    ingest = start_ingest(tmp_path, capture.trusted)
    try:
        for header in ("content-encoding", "x-relay-policy-sha256"):
            message = refused(ingest, capture, resigned(capture, header), capture.body, 401, "uncovered_component")
            assert header in message
        # The same re-signing over every component is accepted: the refusals were for coverage.
        assert send(ingest.port, capture.path, resigned(capture, ""), capture.body)[0] == 200
        assert len(ingest.requests()) == 1
    finally:
        ingest.terminate()


CLOCK_AHEAD = '''"""Test only: this process's wall clock runs RELAY_TEST_CLOCK_AHEAD seconds fast."""
import os
import time

_ahead = float(os.environ["RELAY_TEST_CLOCK_AHEAD"])
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _ahead
time.time_ns = lambda: _time_ns() + int(_ahead * 1e9)
'''


def fast_clock_env(tmp: Path, seconds: float) -> dict[str, str]:
    site = tmp / "clock-ahead"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(CLOCK_AHEAD)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "RELAY_TEST_CLOCK_AHEAD": str(seconds)}


def test_relay_clock_a_little_fast_is_accepted_and_far_ahead_refused_as_clock_skew(tmp_path: Path) -> None:
    trusted = tmp_path / "trusted"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    slightly = signed_relay(tmp_path / "six", endpoint, trusted, env=fast_clock_env(tmp_path, 6))
    far = signed_relay(tmp_path / "far", endpoint, trusted, env=fast_clock_env(tmp_path, 400))
    slightly_id, far_id = (KeyStore(relay_key_dir(r), 3600).current().key_id for r in (slightly, far))
    ingest = start_ingest(tmp_path, trusted, port=port)  # after both keys are exported: it loads them at start
    slightly.start()
    far.start()
    try:
        wait_until(lambda: any(r["key_id"] == slightly_id for r in ingest.requests()),
                   what="the relay 6 s fast to be accepted")
        wait_until(lambda: rejected(ingest).get("clock_skew", 0) >= 1, what="a clock_skew refusal")
        wait_until(lambda: "clock" in (far.destination()["last_error"] or ""),
                   what="the far-ahead relay's status to show the clock skew")
        error = far.destination()["last_error"]
        assert "HTTP 401" in error and "ahead" in error and "300" in error, error
        assert {r["key_id"] for r in ingest.requests()} == {slightly_id}
        assert far_id not in {r["key_id"] for r in ingest.requests()}
        assert set(rejected(ingest)) == {"clock_skew"}
    finally:
        for r in (slightly, far):
            r.terminate()
        ingest.terminate()
