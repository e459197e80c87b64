from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from relay.config import SpoolSettings
from relay.selfmetrics import SelfMetrics
from relay.spool import Spool

MiB = 1024 * 1024


def run(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(fn())  # type: ignore[arg-type]


async def opened(path: Path, dests: list[str], stats: SelfMetrics | None = None, **settings: object) -> Spool:
    spool = Spool(path, SpoolSettings(**settings), dests, stats or SelfMetrics())  # type: ignore[arg-type]
    await spool.open()
    return spool


def test_oldest_first_ack_and_survives_reopen(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path, ["a"])
        for i in range(10):
            await s.append("metrics", f"payload-{i}".encode(), i + 1)
        lease = await s.lease("a", "metrics", 0, 30)
        assert lease is not None
        assert [e.payload for e in lease.entries] == [b"payload-0", b"payload-1", b"payload-2"]
        assert lease.items == 6
        await s.ack("a", lease)
        assert s.backlog("a") == (sum(len(f"payload-{i}") for i in range(3, 10)), sum(range(4, 11)))
        await s.close()

        s = await opened(tmp_path, ["a"])
        assert s.snapshot()["entries"] == 7
        lease = await s.lease("a", "metrics", 0, 10 * MiB)
        assert lease is not None and lease.entries[0].payload == b"payload-3" and len(lease.entries) == 7
        await s.ack("a", lease)
        assert s.snapshot()["entries"] == 0 and s.snapshot()["bytes"] == 0
        await s.close()

    run(main)
    mode = os.stat(tmp_path / "spool").st_mode & 0o777
    assert mode == 0o700


def test_entry_leaves_only_when_every_destination_accepted(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path, ["a", "b"])
        for _i in range(4):
            await s.append("metrics", os.urandom(100), 10)  # incompressible: stored as they are
        la = await s.lease("a", "metrics", 0, MiB)
        assert la is not None
        await s.ack("a", la)
        assert s.backlog("a") == (0, 0) and s.backlog("b") == (400, 40)
        assert s.snapshot()["entries"] == 4
        lb = await s.lease("b", "metrics", 0, 250)
        assert lb is not None and len(lb.entries) == 2
        await s.ack("b", lb)
        assert s.snapshot()["entries"] == 2
        await s.close()

    run(main)


def test_byte_cap_evicts_oldest_and_counts_exactly(tmp_path: Path) -> None:
    stats = SelfMetrics()

    async def main() -> None:
        s = await opened(tmp_path, ["a"], stats, max_bytes=MiB)
        payload = os.urandom(50 * 1024)  # incompressible: 50 KiB on disk each
        for _ in range(60):
            await s.append("metrics", payload, 7)
        snap = s.snapshot()
        assert snap["bytes"] <= MiB
        assert snap["bytes"] > MiB - len(payload)  # within one entry of the cap
        kept = snap["entries"]
        evicted = 60 - kept
        assert stats.entries_dropped.total(reason="max_bytes") == evicted
        assert stats.points_dropped.total(reason="max_bytes") == evicted * 7
        lease = await s.lease("a", "metrics", 0, 10 * MiB)
        assert lease is not None and lease.first == evicted + 1  # the oldest kept entry
        await s.close()

    run(main)


def test_max_age_drops_old_entries(tmp_path: Path) -> None:
    stats = SelfMetrics()

    async def main() -> None:
        s = await opened(tmp_path, ["a"], stats, max_age=3600)
        await s.append("metrics", b"old", 3)
        await s.enforce_age(now=time.time() + 1800)
        assert s.snapshot()["entries"] == 1
        await s.enforce_age(now=time.time() + 7200)
        assert s.snapshot()["entries"] == 0
        assert stats.points_dropped.total(reason="max_age") == 3
        await s.close()

    run(main)


def test_concurrent_appends_are_all_durable(tmp_path: Path) -> None:
    stats = SelfMetrics()

    async def main() -> None:
        s = await opened(tmp_path, ["a"], stats)
        await asyncio.gather(*(s.append("metrics", f"{i}".encode(), 1) for i in range(300)))
        await s.close()
        s = await opened(tmp_path, ["a"], stats)
        lease = await s.lease("a", "metrics", 0, 10 * MiB)
        assert lease is not None
        assert sorted(int(e.payload) for e in lease.entries) == list(range(300))
        await s.close()

    run(main)
    assert stats.points_spooled.total() == 300


def test_large_values_stay_inside_sqlite(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path, ["a"])
        await s.append("metrics", os.urandom(3 * MiB), 1)
        await s.close()

    run(main)
    files = {p.name for p in (tmp_path / "spool" / "metrics").iterdir()}
    assert files <= {"cache.db", "cache.db-wal", "cache.db-shm"}, files


def test_dead_letter_keeps_the_batch_with_its_reason(tmp_path: Path) -> None:
    stats = SelfMetrics()

    async def main() -> None:
        s = await opened(tmp_path, ["a"], stats)
        await s.append("metrics", b"rejected", 4)
        lease = await s.lease("a", "metrics", 0, MiB)
        assert lease is not None
        await s.dead_letter("a", lease, 400, "HTTP 400: bad")
        await s.ack("a", lease)
        records = s.dead_letters()
        assert len(records) == 1 and records[0]["status"] == 400 and records[0]["reason"] == "HTTP 400: bad"
        assert records[0]["items"] == 4
        assert s.snapshot()["entries"] == 0
        await s.close()

    run(main)
    assert stats.points_dropped.total(reason="dead_letter") == 4


def test_signals_have_separate_queues(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path, ["a"])
        await s.append("logs", b"log", 1)
        await s.append("metrics", b"metric", 1)
        assert set(s.signals()) == {"metrics", "logs"}
        lease = await s.lease("a", "logs", 0, MiB)
        assert lease is not None and [e.payload for e in lease.entries] == [b"log"]
        await s.close()

    run(main)


def test_a_drained_backlog_gives_its_disk_space_back(tmp_path: Path) -> None:
    db = tmp_path / "spool" / "metrics" / "cache.db"

    def on_disk() -> int:  # the database and its write-ahead log
        return sum(p.stat().st_size for p in db.parent.iterdir() if p.name.startswith("cache.db"))

    async def main() -> None:
        s = await opened(tmp_path, ["a"])
        payload = os.urandom(256 * 1024)  # incompressible, like nothing real, so sizes are plain
        for _ in range(96):
            await s.append("metrics", payload, 1)
        full = on_disk()
        assert full > 24 * MiB
        while (lease := await s.lease("a", "metrics", 0, 4 * MiB)) is not None:
            await s.ack("a", lease)
        # Emptied: each pass (after an ack, and the periodic age check) hands back a step.
        deadline = time.monotonic() + 10
        while on_disk() > 2 * MiB and time.monotonic() < deadline:
            await s.enforce_age()
        await s.close()
        assert on_disk() < 2 * MiB, f"{on_disk()} bytes left of {full}"

    run(main)


def test_refusing_when_full_never_evicts_what_was_accepted(tmp_path: Path) -> None:
    """Pushes that arrive while an earlier batch is being written must count it: otherwise
    they are accepted, the write goes over the cap, and accepted data is evicted. A consumer
    keeps the spool hovering at its cap, so the writers cross it again and again."""
    from relay.spool import SpoolError

    stats = SelfMetrics()

    async def main() -> None:
        s = await opened(tmp_path, ["a"], stats, max_bytes=MiB)
        payload = os.urandom(40 * 1024)  # incompressible: what it takes on disk is its length
        accepted = refused = 0
        done = asyncio.Event()

        async def writer() -> None:
            nonlocal accepted, refused
            for _ in range(150):
                try:
                    await s.append("metrics", payload, 1, refuse_when_full=True)
                    accepted += 1
                except SpoolError:
                    refused += 1
                    await asyncio.sleep(0.001)

        async def consumer() -> None:
            while not done.is_set():
                lease = await s.lease("a", "metrics", 0, 2 * len(payload))
                if lease is not None:
                    await s.ack("a", lease)
                await asyncio.sleep(0.002)

        drain = asyncio.create_task(consumer())
        await asyncio.gather(*(writer() for _ in range(8)))
        done.set()
        await drain
        assert refused > 0 and accepted > 0
        assert stats.points_dropped.total(reason="max_bytes") == 0, f"{accepted} accepted"
        await s.close()

    run(main)
