"""`make run`: the relay and the reference ingest on loopback, with an embedded dev config.

Owns: the newcomer's first run. Writes the dev config and a throwaway API key under
./.dev, starts `telemetry-relay ingest` and `telemetry-relay run` as child processes,
prints where to look, and stops both on Ctrl-C.
"""

from __future__ import annotations

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
    config.write_text(DEV_CONFIG.format(state=dev / "state", ingest=INGEST_LISTEN, key=key, policy=policy))

    exe = [sys.executable, "-m", "relay.cli"]
    # The relay's signing key, registered with the ingest as a vendor would do it.
    trusted = dev / "trusted-keys"
    for step in (["keys", "init"], ["keys", "export", "--out", str(trusted)]):
        subprocess.run([*exe, *step, "--config", str(config)], check=True, stdout=subprocess.DEVNULL)
    ingest = subprocess.Popen(
        [*exe, "ingest", "--listen", INGEST_LISTEN, "--store", str(store), "--api-key-file", str(key),
         "--trusted-keys", str(trusted)]
    )
    if not _wait_http(f"http://{INGEST_LISTEN}/healthz", time.monotonic() + 15):
        print("make run: the reference ingest did not start (is port 4319 taken?)", file=sys.stderr)
        ingest.terminate()
        return 1
    relay = subprocess.Popen([*exe, "run", "--config", str(config)])
    if not _wait_http(f"{STATUS_URL}/healthz", time.monotonic() + 15):
        print("make run: the relay did not start (is port 8788 taken?)", file=sys.stderr)
        for p in (relay, ingest):
            p.terminate()
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
        "Host metrics arrive every 10 s. Press Ctrl-C to stop both.\n",
        flush=True,
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and relay.poll() is None and ingest.poll() is None:
        time.sleep(0.2)
    for p in (relay, ingest):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in (relay, ingest):
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
