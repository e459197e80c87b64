"""The service-manager contract: sd_notify messages on a socket the test owns, the watchdog fed
from the event loop, and the unit file verified by systemd-analyze."""

from __future__ import annotations

import itertools
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.procs import Ingest, Relay, relay_config, wait_until

ROOT = Path(__file__).parents[2]


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET; records (time, field) pairs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            now = time.time()  # wall clock, comparable with /status times
            for line in data.decode().splitlines():
                self.messages.append((now, line))

    def times(self, field: str) -> list[float]:
        return [t for t, line in list(self.messages) if line == field or line.startswith(field)]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def test_notify_ready_status_watchdog_reload_and_stop(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url, sources={"host": {"interval": "500ms"}, "internal": {"interval": "1s"},
                                                     "discovery": {"kafka": False}})
    relay = Relay(tmp_path, cfg, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000",
                                      "TELEMETRY_RELAY_DEBUG_HOOKS": "1",
                                      "TELEMETRY_RELAY_DEBUG_BLOCK_SECONDS": "1.5"})
    try:
        relay.start()
        ready_at = wait_until(lambda: notify.times("READY=1"), what="READY=1")[0]
        # READY only once data flows: a source had already spooled a collection.
        successes = [s["last_success"] for s in relay.status()["sources"] if s["last_success"]]
        assert successes and min(successes) <= ready_at
        # READY follows the first durable collection of any source; host's first run may come just after.
        wait_until(lambda: relay.source("host")["successes"] >= 1, what="a host collection")
        assert notify.times("STATUS=shipped"), "a one-line STATUS summary"
        # WATCHDOG_USEC=0.4 s: pings every 0.2 s from the loop.
        wait_until(lambda: len([t for t in notify.times("WATCHDOG=1") if t > ready_at]) >= 8, what="pings")
        pings = [t for t in notify.times("WATCHDOG=1") if t > ready_at]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 0.9, gaps

        relay.signal(signal.SIGHUP)
        wait_until(lambda: notify.times("RELOADING=1"), what="RELOADING=1")
        assert any(line.startswith("MONOTONIC_USEC=") for _, line in notify.messages)
        reload_at = notify.times("RELOADING=1")[0]
        wait_until(lambda: [t for t in notify.times("READY=1") if t > reload_at], what="READY=1 after the reload")

        # A wedged event loop stops the pings (so systemd would restart the relay).
        blocked_at = time.time()
        relay.signal(signal.SIGUSR2)
        wait_until(lambda: [t for t in notify.times("WATCHDOG=1") if t > blocked_at + 1.4], timeout=10,
                   what="pings to resume after the block")
        after = sorted(t for t in notify.times("WATCHDOG=1") if t > blocked_at)
        assert after[0] - blocked_at >= 1.2, "no WATCHDOG=1 while the loop was blocked"

        assert relay.terminate() == 0
        assert notify.times("STOPPING=1")
    finally:
        relay.terminate()
        ingest.terminate()
        notify.close()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is part of Debian's systemd")
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = (ROOT / "systemd" / "telemetry-relay.service").read_text()
    assert "ExecStart=/opt/telemetry-relay/bin/telemetry-relay run --config /etc/telemetry-relay/relay.yaml" in unit
    # verify insists the ExecStart binary exists: point it at this checkout's, nothing else changes.
    exe = ROOT / ".venv" / "bin" / "telemetry-relay"
    copy = tmp_path / "telemetry-relay.service"
    copy.write_text(unit.replace("/opt/telemetry-relay/bin/telemetry-relay", str(exe)))
    p = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "", p.stderr
    for line in ("Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "ProtectSystem=strict", "CapabilityBoundingSet=\n", "NoNewPrivileges=yes",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallFilter=@system-service",
                 "MemoryMax=", "StateDirectory=telemetry-relay", "ConfigurationDirectory=telemetry-relay",
                 "PrivateTmp=yes", "ProtectHome=yes"):
        assert line in unit, line
