"""Helpers shared by the benchmark modules: ports, JSON over HTTP, waiting with a deadline."""

from __future__ import annotations

import json
import socket
import sys
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
