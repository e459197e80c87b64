"""Helpers shared by the benchmark modules: ports, JSON over HTTP, waiting with a deadline."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
WORK = HERE / "work"
CLI = [sys.executable, "-m", "relay.cli"]
DEFAULT_POLICY = HERE.parent / "configs" / "policy.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait(pred: Any, timeout: float, what: str) -> None:
    """Poll pred until it is true; a benchmark that cannot proceed stops with a message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"bench: timed out waiting for {what}")


def peak_rss(pid: int) -> int:
    """A process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_split(pid: int) -> dict[str, int]:
    """A process's resident memory split into private (heap, RssAnon) and file-backed pages
    (RssFile: the interpreter's and libraries' code, shared with every process mapping them)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("RssAnon", "RssFile", "RssShmem"):
            out[key] = int(line.split()[1]) * 1024
    return out


def memory_now(pid: int) -> dict[str, int]:
    """Resident memory of a process now, in bytes: rss, uss (pages only this process maps:
    what killing it would free) and pss (shared pages divided among the processes mapping
    them, as the Datadog Agent's memory gates count), from /proc/<pid>/smaps_rollup."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[key] = int(parts[0]) * 1024
    return {"rss": fields.get("Rss", 0), "pss": fields.get("Pss", 0),
            "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)}


class MemorySampler:
    """Samples a process's RSS, USS and PSS every `period` seconds in a thread while in use.
    Peak RSS comes from the kernel's own high-water mark (VmHWM), exact; peak USS and PSS are
    the highest samples, so a spike shorter than a period can be missed (the result says the
    period)."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        self.pid, self.period = pid, period
        self.samples: list[dict[str, int]] = []
        self._hwm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(memory_now(self.pid))
            except (OSError, ValueError):
                return
            self._stop.wait(self.period)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.result()  # read VmHWM while the process is still there
        self._stop.set()
        self._thread.join(5)

    def result(self) -> dict[str, float]:
        """peak_rss_bytes (VmHWM), avg_rss_bytes, peak_uss_bytes, avg_uss_bytes, peak_pss_bytes."""
        try:
            self._hwm = max(self._hwm, peak_rss(self.pid))
        except OSError:
            pass
        s = self.samples or [{"rss": 0, "uss": 0, "pss": 0}]
        return {"peak_rss_bytes": max(self._hwm, *(x["rss"] for x in s)),
                "avg_rss_bytes": sum(x["rss"] for x in s) / len(s),
                "peak_uss_bytes": max(x["uss"] for x in s), "avg_uss_bytes": sum(x["uss"] for x in s) / len(s),
                "peak_pss_bytes": max(x["pss"] for x in s), "sample_period_s": self.period}
