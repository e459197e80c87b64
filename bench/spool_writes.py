"""Where the spool's disk writes go at the scrape load: a harness of the real Spool.

Appends broker-shaped scrape requests (bench.workload) through relay.spool.Spool with
fsync=always, each followed by the delivery the shipper would record (lease, ack), and
reports the payload bytes beside what the process wrote (/proc/self/io write_bytes). Run
under strace (`--strace`) it splits the writes by file: the write-ahead log, the main
database (checkpoints), the rest.

    .venv/bin/python -m bench.spool_writes [--cycles N] [--points N] [--strace | --pages]

--pages keeps the write-ahead log from being checkpointed during the run, then reads it:
the pages each commit wrote, by what they hold (SQLite's dbstat: the Cache table's leaves,
its overflow pages, which hold the entries, its indexes, diskcache's Settings row, the
database header page, free pages).

--points 10 gives the fixed cost of one append and its delivery (a target of 10 series);
the default is a broker scrape of 5,000 points.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.workload import RESOURCE, otlp_requests, points_per_request
from relay.config import SpoolSettings
from relay.otlp import MetricsBuilder
from relay.selfmetrics import SelfMetrics
from relay.spool import Spool


def _write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


async def _cycles(state: Path, reqs: list[bytes], items: int, pages: bool = False) -> dict[str, Any]:
    spool = Spool(state, SpoolSettings(max_bytes=512 << 20, fsync="always"), ["ingest"], SelfMetrics())
    await spool.open()
    if pages:  # the harness alone: a log never checkpointed holds every frame of the run
        await spool.append("metrics", reqs[0], items)
        spool._queues["metrics"].cache.reset("sqlite_wal_autocheckpoint", 0, update=False)
    w0, t0 = _write_bytes(), time.process_time()
    for req in reqs:
        await spool.append("metrics", req, items)
        lease = await spool.lease("ingest", "metrics", 0, 8 << 20)
        assert lease is not None
        await spool.ack("ingest", lease)
    cpu = time.process_time() - t0
    by_page = _wal_pages(state / "spool" / "metrics") if pages else None
    await spool.close()
    written = _write_bytes() - w0
    samples = items * len(reqs)
    raw = sum(len(r) for r in reqs)
    return {"requests": len(reqs), "samples": samples, "payload_bytes": raw,
            "write_bytes": written, "write_bytes_per_sample": written / samples,
            "payload_bytes_per_sample": raw / samples, "amplification": written / raw,
            "cpu_s_per_1000_samples": cpu / samples * 1000,
            **({"wal_bytes_per_cycle_by_page_kind": {k: v / len(reqs) for k, v in by_page.items()}}
               if by_page else {})}


def _wal_pages(queue: Path) -> dict[str, int]:
    """WAL bytes (frame headers included) by what their page holds now."""
    wal = (queue / "cache.db-wal").read_bytes()
    page_size = int.from_bytes(wal[8:12], "big")
    con = sqlite3.connect(f"{(queue / 'cache.db').as_uri()}?mode=ro", uri=True)
    try:
        kind = {pageno: ("header page" if pageno == 1 else f"{name} {ptype}")
                for name, pageno, ptype in con.execute("SELECT name, pageno, pagetype FROM dbstat")}
    finally:
        con.close()
    out: collections.Counter[str] = collections.Counter()
    frame = 24 + page_size
    for off in range(32, len(wal) - frame + 1, frame):
        out[kind.get(int.from_bytes(wal[off:off + 4], "big"), "free page")] += frame
    return dict(out.most_common())


def _small_requests(count: int, points: int) -> list[bytes]:
    out = []
    for i in range(count):
        b = MetricsBuilder(RESOURCE, "telemetry-relay/prometheus", "0.1.0")
        m = b.gauge("seq_value", "1")
        for p in range(points):
            b.point(m, float(i * points + p), time.time_ns(), 0, {"series": str(p)})
        out.append(bytes(b.finish().SerializeToString()))
    return out


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
    ap.add_argument("--points", type=int, default=0, help="points per request (default: a broker scrape)")
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--pages", action="store_true")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.strace:
        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp) / "trace"
            subprocess.run(["strace", "-f", "-y", "-qq", "-e", "trace=pwrite64,write", "-o", str(trace),
                            sys.executable, "-m", "bench.spool_writes", "--inner", "--cycles", str(a.cycles),
                            "--points", str(a.points)],
                           check=True)
            print(json.dumps({"bytes_by_file": _split(trace)}, indent=1))
        return
    state = Path(tempfile.mkdtemp(prefix="spool-writes-", dir="/var/tmp"))
    try:
        if a.points:
            reqs, items = _small_requests(a.cycles, a.points), a.points
        else:
            reqs, items = otlp_requests(a.cycles), points_per_request()
        print(json.dumps(asyncio.run(_cycles(state, reqs, items, a.pages)), indent=1))
    finally:
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
