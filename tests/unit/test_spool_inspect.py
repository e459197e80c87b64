"""Offline inspection reads a spool without writing a byte of it, beside a running Spool or not."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from relay.config import SpoolSettings
from relay.selfmetrics import SelfMetrics
from relay.spool import Spool
from relay.spool.inspect import oldest_entries, summary

MiB = 1024 * 1024
Files = dict[str, tuple[str, int, int]]


def files(state_dir: Path) -> Files:
    """Every file under the state directory: its content hash, size and mtime. Not the content
    of a -shm file: that is SQLite's shared-memory index, where every reader of a WAL database,
    read-only or not, takes a read mark to tell the writer what it still reads."""
    out = {}
    for p in sorted(state_dir.rglob("*")):
        if p.is_file():
            st = p.stat()
            digest = "" if p.name.endswith("-shm") else hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(state_dir))] = (digest, st.st_size, st.st_mtime_ns)
    return out


async def filled(state_dir: Path) -> Spool:
    """A spool with a backlog for two destinations, one delivery and one dead-letter record."""
    s = Spool(state_dir, SpoolSettings(), ["a", "b"], SelfMetrics())
    await s.open()
    for i in range(6):
        await s.append("metrics", f"metrics-{i}".encode(), i + 1)
    await s.append("logs", b"a log record", 1)
    lease = await s.lease("a", "metrics", 0, 20)
    assert lease is not None and len(lease.entries) == 2
    await s.dead_letter("a", lease, 400, "HTTP 400: bad")
    await s.ack("a", lease)
    return s


def test_inspection_beside_an_open_spool_writes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        s = await filled(tmp_path)
        try:
            before = files(tmp_path)
            assert any(name.endswith("cache.db-wal") for name in before), "the spool holds its queues open"
            info = summary(tmp_path)
            entries = oldest_entries(tmp_path, "metrics", 4)
            assert files(tmp_path) == before

            # And what it read is what the spool itself has.
            snap = s.snapshot()
            assert sum(q["entries"] for q in info["queues"].values()) == snap["entries"] == 7
            assert sum(q["bytes"] for q in info["queues"].values()) == snap["bytes"]
            metrics = info["queues"]["metrics"]
            assert metrics["destinations"]["a"] == {"acknowledged_up_to": 2, "backlog_bytes": 4 * len(b"metrics-0")}
            assert metrics["destinations"]["b"]["acknowledged_up_to"] == 0
            assert metrics["destinations"]["b"]["backlog_bytes"] == 6 * len(b"metrics-0")
            assert info["dead_letters"] == s.dead_letters() and info["dead_letters"][0]["items"] == 3
            assert info["quarantine"] == []
            assert [(e.seq, e.payload, e.items) for e in entries] == [
                (i + 1, f"metrics-{i}".encode(), i + 1) for i in range(4)
            ]
        finally:
            await s.close()

    asyncio.run(main())


def test_inspection_of_a_stopped_spool_creates_no_files(tmp_path: Path) -> None:
    async def main() -> None:
        await (await filled(tmp_path)).close()

    asyncio.run(main())
    before = files(tmp_path)
    assert not any(name.endswith(("-wal", "-shm")) for name in before), "a closed spool leaves no log beside it"
    info = summary(tmp_path)
    assert [e.payload for e in oldest_entries(tmp_path, "logs", 10)] == [b"a log record"]
    assert files(tmp_path) == before
    assert info["queues"]["metrics"]["entries"] == 6 and len(info["dead_letters"]) == 1
