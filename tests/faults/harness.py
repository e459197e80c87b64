"""The fault suite's harness: a steady stream of numbered data points pushed into a relay over
OTLP/HTTP, and the accounting at the end: which numbers were acknowledged, which arrived,
which twice, and what the relay says it dropped and why."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relay.otlp import MetricsBuilder
from tests.procs import Ingest, Relay, relay_config, wait_until

# FAULT_SCALE=full (make test-faults) runs the long version; the default fits `make test`.
FULL = os.environ.get("FAULT_SCALE") == "full"
RESULTS: list[dict[str, Any]] = []


def scale(small: int, full: int) -> int:
    return full if FULL else small


QUIET = {"host": {"enabled": False}, "internal": {"enabled": False}, "discovery": {"kafka": False}}


def config(tmp_path: Path, endpoint: str, state: Path | None = None, **dest: Any) -> dict[str, Any]:
    """A relay that only takes pushes, into one destination, in small batches."""
    cfg = relay_config(tmp_path, endpoint, sources=QUIET)
    if state is not None:
        cfg["state_dir"] = str(state)
    cfg["destinations"][0].update({"max_request_bytes": "16KiB", **dest})
    return cfg


def drained(relay: Relay) -> bool:
    d = relay.destination()
    return d["backlog_items"] == 0 and d["in_flight"] == 0


def finish(relay: Relay, ingest: Ingest, pusher: Pusher, timeout: float = 60) -> Counter[int]:
    wait_until(lambda: drained(relay), timeout=timeout, what="the backlog to drain")
    return delivered(ingest)


def tmpfs(path: Path, size: str) -> None:
    """A small filesystem of its own at `path`, to fill up."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> int:
    """Write zeros to `path` until its filesystem is full; returns how many bytes it took."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                written += f.write(chunk)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return written


# The space reserve the relays on a small tmpfs keep back (the default, 8 MiB, would not fit).
RESERVE = "512KiB"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")


def numbered_request(first: int, count: int, metric: str = "fault.seq") -> bytes:
    """One OTLP request carrying the numbers first .. first+count-1 (one gauge point each)."""
    b = MetricsBuilder({"service.name": "fault-suite"}, "fault")
    m = b.gauge(metric, "1")
    now = time.time_ns()
    for n in range(first, first + count):
        b.point(m, n, now, attrs={"n": n % 7})
    return bytes(b.finish().SerializeToString())


@dataclass
class Pusher:
    """Pushes `per_request` numbers every `period` seconds; records which were acknowledged (200)."""

    url: str
    per_request: int = 50
    period: float = 0.02
    start_at: int = 0  # several pushers use disjoint number ranges
    sent: int = 0
    acked: set[int] = field(default_factory=set)
    answers: Counter[int] = field(default_factory=Counter)

    def start(self) -> Pusher:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        n = self.start_at
        while not self._stop.is_set():
            body = numbered_request(n, self.per_request)
            req = urllib.request.Request(self.url + "/v1/metrics", data=body, method="POST",
                                         headers={"Content-Type": "application/x-protobuf"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    code = r.status
            except urllib.error.HTTPError as e:
                code = e.code
            except OSError:
                code = 0  # the relay is down: not acknowledged
            self.answers[code] += 1
            if code == 200:
                self.acked.update(range(n, n + self.per_request))
            n += self.per_request
            self.sent = n - self.start_at
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def delivered(ingest: Ingest, metric: str = "fault.seq") -> Counter[int]:
    out: Counter[int] = Counter()
    if not ingest.store.exists():
        return out
    for f in ingest.store.glob("metrics-*.jsonl"):
        for line in f.read_text().splitlines():
            rec = json.loads(line)["request"]
            for rm in rec.get("resourceMetrics", []):
                for sm in rm.get("scopeMetrics", []):
                    for m in sm.get("metrics", []):
                        if m["name"] == metric:
                            for dp in m["gauge"]["dataPoints"]:
                                out[int(dp["asInt"])] += 1
    return out


def peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def record(scenario: str, pusher: Pusher | None, got: Counter[int], dropped: dict[str, float], rss: int,
           **extra: Any) -> dict[str, Any]:
    """One row of the table. `lost` counts acknowledged points that did not arrive; the
    `unexplained` part is what no counted drop (spool cap, age, dead-letter, damaged disk)
    accounts for, and must be zero."""
    acked = pusher.acked if pusher else set()
    drops = {k: int(v) for k, v in dropped.items() if v}
    lost = len(acked - set(got))
    row = {
        "scenario": scenario,
        "sent": pusher.sent if pusher else 0,
        "acknowledged": len(acked),
        "delivered": len(set(got)),
        "duplicates": sum(c - 1 for c in got.values() if c > 1),
        "lost": lost,
        "unexplained": max(0, lost - sum(drops.values())),
        "dropped": drops,
        "peak_rss_mib": round(rss / 2**20, 1),
        **extra,
    }
    RESULTS.append(row)
    return row


def dropped_by_reason(relay: Relay) -> dict[str, float]:
    return {reason: relay.metric("relay_points_dropped_total", reason=reason)
            for reason in ("max_bytes", "max_age", "dead_letter")}
