"""Where the spool's disk writes go at the scrape load: a harness of the real Spool.

Appends broker-shaped scrape requests (bench.workload) through relay.spool.Spool with
fsync=always, each followed by the delivery the shipper would record (lease, ack), and
reports the payload bytes beside what the process wrote (/proc/self/io write_bytes). Run
under strace (`--strace`) it splits the writes by file: the write-ahead log, the main
database (checkpoints), the rest.

    .venv/bin/python -m bench.spool_writes [--cycles N] [--strace]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.workload import otlp_requests, points_per_request
from relay.config import SpoolSettings
from relay.selfmetrics import SelfMetrics
from relay.spool import Spool


def _write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


async def _cycles(state: Path, reqs: list[bytes], items: int) -> dict[str, float]:
    spool = Spool(state, SpoolSettings(max_bytes=512 << 20, fsync="always"), ["ingest"], SelfMetrics())
    await spool.open()
    w0, t0 = _write_bytes(), time.process_time()
    for req in reqs:
        await spool.append("metrics", req, items)
        lease = await spool.lease("ingest", "metrics", 0, 8 << 20)
        assert lease is not None
        await spool.ack("ingest", lease)
    cpu = time.process_time() - t0
    await spool.close()
    written = _write_bytes() - w0
    samples = items * len(reqs)
    raw = sum(len(r) for r in reqs)
    return {"requests": len(reqs), "samples": samples, "payload_bytes": raw,
            "write_bytes": written, "write_bytes_per_sample": written / samples,
            "payload_bytes_per_sample": raw / samples, "amplification": written / raw,
            "cpu_s_per_1000_samples": cpu / samples * 1000}


def _split(trace: Path) -> dict[str, int]:
    """Bytes written per file, from strace -y output (pwrite64/write with their fd paths)."""
    out: collections.Counter[str] = collections.Counter()
    pat = re.compile(r"(?:pwrite64|write)\(\d+<([^>]*)>.*\)\s+=\s+(\d+)")
    for line in trace.read_text(errors="replace").splitlines():
        m = pat.search(line)
        if m:
            name = Path(m.group(1)).name
            out[name if name.startswith("cache.db") else "other"] += int(m.group(2))
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=60)
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.strace:
        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp) / "trace"
            subprocess.run(["strace", "-f", "-y", "-qq", "-e", "trace=pwrite64,write", "-o", str(trace),
                            sys.executable, "-m", "bench.spool_writes", "--inner", "--cycles", str(a.cycles)],
                           check=True)
            print(json.dumps({"bytes_by_file": _split(trace)}, indent=1))
        return
    state = Path(tempfile.mkdtemp(prefix="spool-writes-", dir="/var/tmp"))
    try:
        print(json.dumps(asyncio.run(_cycles(state, otlp_requests(a.cycles), points_per_request())), indent=1))
    finally:
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
