"""`make run`: the relay and the reference ingest on loopback, with an embedded dev config.

Owns: the newcomer's first run. Writes the dev config and a throwaway API key under
./.dev, starts `telemetry-relay ingest` and `telemetry-relay run` as child processes,
prints where to look, and stops them on Ctrl-C. With KAFKA=1 it first starts a real Kafka
broker with traffic (the test harness, tests/kafka/harness.py, as a child process), which
the relay finds by discovery as it would on a customer's host.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

INGEST_LISTEN = "127.0.0.1:4319"
STATUS_URL = "http://127.0.0.1:8788"

DEV_CONFIG = """\
# Embedded dev config written by `make run`. Host and self metrics every 10 s,
# shipped to the reference ingest on loopback.
state_dir: {state}
log_level: info
sources:
  host: {{interval: 10s}}
  internal: {{interval: 10s}}
spool:
  max_bytes: 64MiB
policy:
  file: {policy}
destinations:
  - name: local-ingest
    endpoint: http://{ingest}
    api_key_file: {key}
    compression: zstd
    ready_threshold: 60s
"""

# With KAFKA=1: the broker is found within seconds and read every 10 s through both agents.
KAFKA_SOURCES = """\
  discovery: {kafka: true, interval: 5s}
  jolokia: {interval: 10s}
  prometheus: {interval: 10s, passthrough_unmapped: false}
"""
ROOT = Path(__file__).resolve().parents[1]


def _start_kafka(dev: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]] | None:
    """The harness's broker with traffic; None (after saying why) if it did not come up."""
    workdir = dev / "kafka"
    ready = workdir / "ready.json"
    ready.unlink(missing_ok=True)
    print("make run: starting a real Kafka broker (the first time takes a minute) ...", flush=True)
    kafka = subprocess.Popen([sys.executable, "-m", "tests.kafka.harness", "run", "--workdir", str(workdir)],
                             cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and kafka.poll() is None:
        if ready.exists():
            return kafka, json.loads(ready.read_text())
        time.sleep(0.5)
    print(f"make run: the Kafka broker did not start; see {workdir}/kafka/server.log", file=sys.stderr)
    if kafka.poll() is None:
        kafka.terminate()
        kafka.wait(60)
    return None


def _wait_http(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def main() -> int:
    dev = Path(".dev").resolve()
    dev.mkdir(exist_ok=True)
    key = dev / "api-key"
    if not key.exists():
        key.write_text(secrets.token_urlsafe(32) + "\n")
    os.chmod(key, 0o600)
    store = dev / "ingest"
    config = dev / "relay.yaml"
    policy = Path(__file__).resolve().parents[1] / "configs" / "policy.yaml"
    text = DEV_CONFIG.format(state=dev / "state", ingest=INGEST_LISTEN, key=key, policy=policy)
    kafka: tuple[subprocess.Popen[bytes], dict[str, str]] | None = None
    if os.environ.get("KAFKA") not in (None, "", "0"):
        kafka = _start_kafka(dev)
        if kafka is None:
            return 1
        text = text.replace("  internal: {interval: 10s}\n", "  internal: {interval: 10s}\n" + KAFKA_SOURCES)
    config.write_text(text)

    exe = [sys.executable, "-m", "relay.cli"]
    # The relay's signing key, registered with the ingest as a vendor would do it.
    trusted = dev / "trusted-keys"
    for step in (["keys", "init"], ["keys", "export", "--out", str(trusted)]):
        subprocess.run([*exe, *step, "--config", str(config)], check=True, stdout=subprocess.DEVNULL)
    ingest = subprocess.Popen(
        [*exe, "ingest", "--listen", INGEST_LISTEN, "--store", str(store), "--api-key-file", str(key),
         "--trusted-keys", str(trusted)]
    )
    children = [ingest] + ([kafka[0]] if kafka else [])
    if not _wait_http(f"http://{INGEST_LISTEN}/healthz", time.monotonic() + 15):
        print("make run: the reference ingest did not start (is port 4319 taken?)", file=sys.stderr)
        _stop(children)
        return 1
    relay = subprocess.Popen([*exe, "run", "--config", str(config)])
    children.insert(0, relay)
    if not _wait_http(f"{STATUS_URL}/healthz", time.monotonic() + 15):
        print("make run: the relay did not start (is port 8788 taken?)", file=sys.stderr)
        _stop(children)
        return 1
    print(
        "\n"
        "telemetry-relay is running with the dev config.\n"
        f"  status:        curl {STATUS_URL}/status   (or: .venv/bin/telemetry-relay status)\n"
        f"  readiness:     curl {STATUS_URL}/readyz\n"
        f"  self-metrics:  curl {STATUS_URL}/metrics\n"
        f"  ingest store:  {store}/metrics-YYYY-MM-DD.jsonl (one OTLP JSON request per line)\n"
        f"  signing key:   .venv/bin/telemetry-relay keys show --config {config}\n"
        f"  config:        {config}\n"
        "Host metrics arrive every 10 s. Press Ctrl-C to stop.\n",
        flush=True,
    )
    if kafka:
        info = kafka[1]
        print(
            f"Kafka {info['version']} broker on {info['bootstrap']} (pid {info['pid']}), with traffic; the relay\n"
            f"finds it by discovery within seconds and reads it every 10 s through both agents:\n"
            f"  Jolokia:       {info['jolokia']}\n"
            f"  JMX exporter:  {info['exporter']}\n"
            f"  broker log:    {info['log']}\n"
            f"  kafka.* metrics: grep -o '\"kafka[.][a-z_.]*\"' {store}/metrics-*.jsonl | sort | uniq -c\n",
            flush=True,
        )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(p.poll() is None for p in children):
        time.sleep(0.2)
    _stop(children)
    return 0 if stopping else 1


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for p in children:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in children:
        try:
            p.wait(timeout=60)  # a broker takes a while to shut down cleanly
        except subprocess.TimeoutExpired:
            p.kill()


if __name__ == "__main__":
    sys.exit(main())
