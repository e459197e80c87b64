"""The spool's format on disk: entries compressed (upgrade from raw entries, round trip,
damage and bombs, inspection, the byte cap counting bytes as stored), and what a commit
writes besides them (page size, diskcache's unused bookkeeping)."""

from __future__ import annotations

import asyncio
import sqlite3
import struct
import time
import tracemalloc
from pathlib import Path

import diskcache
import pytest
import zstandard

from relay.config import SpoolSettings
from relay.otlp import MetricsBuilder
from relay.selfmetrics import SelfMetrics
from relay.spool import Spool, inspect, recovery
from relay.spool.queue import CACHE_SETTINGS, MAX_ENTRY_BYTES, ZSTD_MAGIC, DamagedValue, read_value

MiB = 1024 * 1024


def request(n: int, series: int = 200) -> bytes:
    """A scrape-shaped metrics request: `series` gauges with attributes, as a source makes."""
    b = MetricsBuilder({"service.name": "kafka", "host.name": "broker-1"}, "telemetry-relay/test")
    m = b.gauge("kafka.partition.offset", "1")
    for i in range(series):
        b.point(m, float(n * 1000 + i), time.time_ns(), 0, {"topic": f"topic-{i % 17}", "partition": i})
    return bytes(b.finish().SerializeToString())


async def opened(path: Path, stats: SelfMetrics | None = None, **settings: object) -> Spool:
    spool = Spool(path, SpoolSettings(**settings), ["a"], stats or SelfMetrics())  # type: ignore[arg-type]
    await spool.open()
    return spool


def stored_values(state: Path) -> dict[int, bytes]:
    """What the metrics queue's database holds for each entry, read with SQLite alone."""
    con = sqlite3.connect(state / "spool" / "metrics" / "cache.db")
    try:
        return {k: v for k, v in con.execute("SELECT key, value FROM Cache WHERE key > 0") if isinstance(k, int)}
    finally:
        con.close()


def schema(state: Path) -> tuple[int, list[str]]:
    """The metrics queue's page size, and its triggers and indexes."""
    con = sqlite3.connect(state / "spool" / "metrics" / "cache.db")
    try:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type IN ('trigger', 'index') ORDER BY name")
        return int(con.execute("PRAGMA page_size").fetchone()[0]), [name for (name,) in rows]
    finally:
        con.close()


def write_bytes() -> int:
    line = next(x for x in Path("/proc/self/io").read_text().splitlines() if x.startswith("write_bytes:"))
    return int(line.split()[1])


def write_raw_spool(state: Path, payloads: list[bytes], items: int) -> None:
    """A metrics queue as the previous version wrote it: each request as it is, the meta
    (created, items, size, byte offset, item offset), the header, destination a's cursor."""
    cache = diskcache.Cache(str(state / "spool" / "metrics"), **CACHE_SETTINGS)
    offset = 0
    with cache.transact():
        for seq, p in enumerate(payloads, 1):
            cache.set(-seq, struct.pack("<dIIQQ", time.time(), items, len(p), offset, (seq - 1) * items))
            cache.set(seq, p)
            offset += len(p)
        cache.set("hdr", struct.pack("<QQQQ", 1, len(payloads) + 1, offset, len(payloads) * items))
        cache.set("cursor:a", struct.pack("<QQQ", 0, 0, 0))
    cache.close()


def replace_value(state: Path, seq: int, value: bytes) -> None:
    cache = diskcache.Cache(str(state / "spool" / "metrics"), **CACHE_SETTINGS)
    cache.set(seq, value)
    cache.close()


def test_entries_are_stored_compressed_and_delivered_as_they_came(tmp_path: Path) -> None:
    reqs = [request(n) for n in range(5)]

    async def main() -> None:
        s = await opened(tmp_path)
        for r in reqs:
            await s.append("metrics", r, 200)
        lease = await s.lease("a", "metrics", 0, 10 * MiB)
        assert lease is not None and [e.payload for e in lease.entries] == reqs
        stored = stored_values(tmp_path)
        assert all(v.startswith(ZSTD_MAGIC) for v in stored.values())
        # Every byte figure is what the disk holds, not the requests' size.
        assert s.snapshot()["bytes"] == sum(len(v) for v in stored.values()) == lease.size
        assert s.backlog("a") == (lease.size, 1000)
        assert lease.size * 3 < sum(map(len, reqs))
        await s.ack("a", lease)
        assert s.backlog("a") == (0, 0)
        await s.close()

    asyncio.run(main())


def test_a_spool_written_with_raw_entries_still_delivers_after_the_upgrade(tmp_path: Path) -> None:
    old = [request(n) for n in range(3)]
    write_raw_spool(tmp_path, old, 200)

    async def main() -> None:
        s = await opened(tmp_path)
        assert s.snapshot()["entries"] == 3 and s.backlog("a") == (sum(map(len, old)), 600)
        new = request(9)
        await s.append("metrics", new, 200)  # a compressed entry after the raw ones
        lease = await s.lease("a", "metrics", 0, 10 * MiB)
        assert lease is not None and [e.payload for e in lease.entries] == [*old, new]
        assert lease.size == s.snapshot()["bytes"] == sum(map(len, old)) + len(stored_values(tmp_path)[4])
        await s.ack("a", lease)
        assert s.snapshot()["entries"] == 0 and s.backlog("a") == (0, 0)
        await s.close()

    asyncio.run(main())
    # It keeps its page size (WAL mode cannot change it); diskcache's bookkeeping is gone.
    assert schema(tmp_path) == (4096, ["Cache_key_raw", "sqlite_autoindex_Settings_1"])


def test_a_new_queue_has_small_pages_and_none_of_diskcaches_bookkeeping(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path)
        await s.append("metrics", request(0), 200)
        await s.close()
        s = await opened(tmp_path)  # diskcache makes its triggers again on open: dropped again
        lease = await s.lease("a", "metrics", 0, MiB)
        assert lease is not None and lease.entries[0].items == 200
        await s.close()

    asyncio.run(main())
    assert schema(tmp_path) == (1024, ["Cache_key_raw", "sqlite_autoindex_Settings_1"])


def test_an_append_and_its_delivery_write_little_besides_the_entry(tmp_path: Path) -> None:
    """A target of ten series, scraped and delivered 50 times: what reaches the disk per
    cycle (the fsynced append, then the acknowledgement). 37 KB with 4 KiB pages and
    diskcache's triggers and expiry index; about 13 KB without."""
    small = [request(n, series=10) for n in range(50)]

    async def main() -> None:
        s = await opened(tmp_path, fsync="always")
        await s.append("metrics", small[0], 10)
        before = write_bytes()
        for r in small:
            await s.append("metrics", r, 10)
            lease = await s.lease("a", "metrics", 0, MiB)
            assert lease is not None
            await s.ack("a", lease)
        per_cycle = (write_bytes() - before) / len(small)
        await s.close()
        if per_cycle == 0:
            pytest.skip("the filesystem under tmp_path counts no block writes (tmpfs)")
        assert per_cycle < 20_000, f"{per_cycle:.0f} bytes written per append and delivery"

    asyncio.run(main())


def bomb_declaring(declared: int, inflates_to: int) -> bytes:
    """A zstd frame whose header declares `declared` bytes (4-byte field) but whose blocks
    inflate to `inflates_to`."""
    frame = zstandard.ZstdCompressor(level=1).compress(b"\0" * inflates_to)
    assert frame[4] & 0xC0 == 0x80 and not frame[4] & 0x20  # 4-byte content size after a window byte
    return frame[:6] + struct.pack("<I", declared) + frame[10:]


def test_a_bomb_or_a_damaged_frame_is_refused_without_inflating_it() -> None:
    values = (bomb_declaring(1000, 64 * MiB),  # lies about its size
              bomb_declaring(MAX_ENTRY_BYTES + 1, 64 * MiB),  # too large to allocate
              zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (8 * MiB)),  # no size
              ZSTD_MAGIC + b"\xff" * 40)  # garbage after the magic
    tracemalloc.start()
    try:
        for value in values:
            try:
                read_value(value)
                raise AssertionError(f"read {value[:12].hex()} as an entry")
            except DamagedValue:
                pass
        assert tracemalloc.get_traced_memory()[1] < 4 * MiB
    finally:
        tracemalloc.stop()


def test_a_damaged_entry_goes_to_dead_letter_counted_and_the_queue_goes_on(tmp_path: Path) -> None:
    stats = SelfMetrics()
    reqs = [request(n) for n in range(3)]

    async def main() -> None:
        s = await opened(tmp_path, stats)
        for r in reqs:
            await s.append("metrics", r, 200)
        await s.close()
        replace_value(tmp_path, 2, bomb_declaring(1000, 64 * MiB))

        s = await opened(tmp_path, stats)
        first = await s.lease("a", "metrics", 0, 10 * MiB)
        assert first is not None and [e.payload for e in first.entries] == reqs[:1]  # stops short of it
        # While entry 1 is on the wire, the damaged one is not put aside (that would ack 1).
        assert await s.lease("a", "metrics", first.last, 10 * MiB) is None
        await s.ack("a", first)
        rest = await s.lease("a", "metrics", first.last, 10 * MiB)
        assert rest is not None and [e.payload for e in rest.entries] == reqs[2:]
        [record] = s.dead_letters()
        assert (record["first_seq"], record["items"]) == (2, 200) and "damaged" in record["reason"]
        await s.ack("a", rest)
        assert s.snapshot()["entries"] == 0
        await s.close()

    asyncio.run(main())
    assert stats.points_dropped.total(reason="dead_letter") == 200
    assert stats.entries_dropped.total(reason="dead_letter") == 1


def test_inspection_and_salvage_read_the_requests_not_the_frames(tmp_path: Path) -> None:
    reqs = [request(n) for n in range(4)]

    async def main() -> None:
        s = await opened(tmp_path)
        for r in reqs:
            await s.append("metrics", r, 200)
        await s.close()

    asyncio.run(main())
    assert [e.payload for e in inspect.oldest_entries(tmp_path, "metrics", 10)] == reqs
    with inspect.backlog(tmp_path, "metrics", "a") as waiting:
        assert [e.payload for e in waiting] == reqs
    assert [s.payload for s in recovery.salvage(tmp_path / "spool" / "metrics")] == reqs

    replace_value(tmp_path, 3, ZSTD_MAGIC + b"\xff" * 40)
    assert [e.payload for e in inspect.oldest_entries(tmp_path, "metrics", 10)] == [reqs[0], reqs[1], reqs[3]]
    with inspect.backlog(tmp_path, "metrics", "a") as waiting:
        assert [e.payload for e in waiting] == reqs[:2]  # stops short of the damaged entry
    assert [s.payload for s in recovery.salvage(tmp_path / "spool" / "metrics")] == [reqs[0], reqs[1], reqs[3]]


def test_the_byte_cap_bounds_the_bytes_on_disk(tmp_path: Path) -> None:
    stats = SelfMetrics()
    reqs = [request(n, series=2000) for n in range(40)]
    raw = len(reqs[0])

    async def main() -> None:
        s = await opened(tmp_path, stats, max_bytes=MiB)
        # Far more than the cap of requests, and less than it on disk: nothing is evicted.
        fit = MiB // raw + 4
        for r in reqs[:fit]:
            await s.append("metrics", r, 2000)
        assert fit * raw > MiB and stats.entries_dropped.total(reason="max_bytes") == 0
        for r in reqs[fit:] * 6:
            await s.append("metrics", r, 2000)
        snap = s.snapshot()
        on_disk = stored_values(tmp_path)
        assert snap["bytes"] == sum(map(len, on_disk.values())) <= MiB
        assert snap["bytes"] > MiB - max(map(len, on_disk.values()))  # within one entry of the cap
        evicted = fit + len(reqs[fit:]) * 6 - snap["entries"]
        assert evicted > 0 and stats.entries_dropped.total(reason="max_bytes") == evicted
        await s.close()

    asyncio.run(main())
