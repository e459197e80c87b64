"""Real processes for the tests: the relay and the reference ingest as subprocesses on
loopback, plus polling helpers with deadlines (no bare sleeps)."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

CLI = [sys.executable, "-m", "relay.cli"]
PASS_THROUGH_POLICY = Path(__file__).parent / "fixtures" / "policy-pass-through.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = pred()
            if value:
                return value
        except Exception as e:  # the process may not be up yet
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}" + (
        f" (last error: {last_exc!r})" if last_exc else ""))


def http_get(url: str, timeout: float = 5.0, ca: Path | None = None) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url: str, ca: Path | None = None) -> tuple[int, Any]:
    status, body = http_get(url, ca=ca)
    return status, json.loads(body)


@contextmanager
def json_server(answer: Callable[[str], tuple[int, Any]]) -> Iterator[str]:
    """A loopback HTTP server whose GETs are answered as JSON by answer(path) -> (status, document).
    Yields its base URL; shut down on exit."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, doc = answer(self.path)
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with serve_handler(Handler) as url:
        yield url


@contextmanager
def serve_handler(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threading HTTP server on a free loopback port with this handler; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Proc:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log_path, self.env = args, log, env
        self.p: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        env = {**os.environ, **(self.env or {})}
        self.p = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    @property
    def pid(self) -> int:
        assert self.p
        return self.p.pid

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def kill9(self) -> None:
        assert self.p
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def signal(self, sig: int) -> None:
        assert self.p
        self.p.send_signal(sig)

    def terminate(self, timeout: float = 20.0) -> int:
        if not self.p or self.p.poll() is not None:
            return self.p.returncode if self.p else 0
        self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Ingest(Proc):
    def __init__(self, workdir: Path, port: int | None = None, extra: list[str] | None = None,
                 tls_ca: Path | None = None, name: str = "ingest") -> None:
        self.port = port or free_port()
        self.store = workdir / f"{name}-store" if name != "ingest" else workdir / "store"
        self.tls_ca = tls_ca
        super().__init__(
            [*CLI, "ingest", "--listen", f"127.0.0.1:{self.port}", "--store", str(self.store), *(extra or [])],
            workdir / f"{name}.log",
        )

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        if "--client-ca" in self.args:  # mTLS: we hold no client certificate, so just wait for the port
            wait_until(lambda: port_open(self.port), what="ingest to listen")
            return
        wait_until(lambda: http_get(self.url + "/healthz", ca=self.tls_ca)[0] == 200,
                   what=f"ingest to listen; log:\n{self.log()}")

    def stats(self) -> Any:
        return get_json(self.url + "/stats", ca=self.tls_ca)[1]

    def requests(self, signal: str = "metrics") -> list[dict[str, Any]]:
        out = []
        for f in sorted(self.store.glob(f"{signal}-*.jsonl")):
            for line in f.read_text().splitlines():
                if line.strip():
                    out.append(json.loads(line))
        return out


def relay_config(workdir: Path, endpoint: str, **overrides: Any) -> dict[str, Any]:
    """A fast-cadence test config; overrides are merged one level deep."""
    cfg: dict[str, Any] = {
        "state_dir": str(workdir / "state"),
        "server": {"listen": f"127.0.0.1:{free_port()}"},
        "shutdown_timeout": "5s",
        "policy": {"file": str(PASS_THROUGH_POLICY), "watch_interval": "200ms"},
        # Discovery off unless a test asks for it: a broker elsewhere on the machine (the test
        # session's own real one, say) must not become part of every test's data.
        "sources": {"host": {"interval": "200ms"}, "internal": {"interval": "200ms"},
                    "otlp": {"listen": f"127.0.0.1:{free_port()}"}, "discovery": {"kafka": False}},
        "destinations": [{
            "name": "vendor", "endpoint": endpoint, "ready_threshold": "2s", "timeout": "5s",
            "retry": {"initial_backoff": "100ms", "max_backoff": "500ms"},
        }],
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    cfg["sources"].setdefault("otlp", {"listen": f"127.0.0.1:{free_port()}"})
    return cfg


class Relay(Proc):
    def __init__(self, workdir: Path, cfg: dict[str, Any], name: str = "relay",
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.config_path = workdir / f"{name}.yaml"
        self.write_config(cfg)
        super().__init__([*CLI, "run", "--config", str(self.config_path)], workdir / f"{name}.log", env)

    def keys(self, *args: str) -> str:
        """Run `telemetry-relay keys ...` against this relay's config."""
        p = subprocess.run([*CLI, "keys", *args, "--config", str(self.config_path)],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def write_config(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.config_path.write_text(yaml.safe_dump(cfg))

    @property
    def status_url(self) -> str:
        return "http://" + self.cfg["server"]["listen"]

    @property
    def otlp_url(self) -> str:
        return "http://" + self.cfg["sources"]["otlp"]["listen"]

    def start(self, wait_ready: bool = True) -> None:
        super().start()
        wait_until(lambda: self.alive() and http_get(self.status_url + "/healthz")[0] == 200,
                   what=f"relay to listen; log:\n{self.log()}")

    def status(self) -> Any:
        return get_json(self.status_url + "/status")[1]

    def readyz(self) -> tuple[int, Any]:
        return get_json(self.status_url + "/readyz")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a /metrics sample's values matching the labels."""
        _, body = http_get(self.status_url + "/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            sample = head.split("{")[0]
            if sample != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def source(self, name: str) -> dict[str, Any]:
        return next(s for s in self.status()["sources"] if s["name"] == name)

    def destination(self, name: str = "vendor") -> dict[str, Any]:
        return next(d for d in self.status()["destinations"] if d["name"] == name)
