"""The queue's own transaction, and the lease halves the shipper splits a batch into."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from relay.config import SpoolSettings
from relay.selfmetrics import SelfMetrics
from relay.spool import Cursor, Spool
from relay.spool.queue import SignalQueue, open_readonly, read_header

MiB = 1024 * 1024


def queue(tmp_path: Path) -> SignalQueue:
    return SignalQueue(tmp_path / "metrics", "metrics", SpoolSettings(), ["a"])


def header_on_disk(tmp_path: Path) -> tuple[int, int, int, int] | None:
    """The header as another reader of the file sees it (what a restart would load)."""
    with open_readonly(tmp_path / "metrics") as store:
        assert store is not None
        s = read_header(store)
    return None if s is None else (s.head, s.next_seq, s.appended_bytes, s.appended_items)


def test_a_committed_transaction_writes_the_header_with_it(tmp_path: Path) -> None:
    q = queue(tmp_path)
    try:
        assert header_on_disk(tmp_path) is None  # a new queue has no header until its first commit
        with q.transaction():
            q.append(b"first", 3, time.time())
            q.append(b"second", 4, time.time())
        assert header_on_disk(tmp_path) == (1, 3, len(b"firstsecond"), 7)
    finally:
        q.close()
    reopened = queue(tmp_path)
    try:
        assert (reopened.state.next_seq, reopened.state.entries, reopened.state.bytes) == (3, 2, 11)
    finally:
        reopened.close()


def test_a_failed_transaction_rolls_back_the_state_and_leaves_the_header_as_it_was(tmp_path: Path) -> None:
    q = queue(tmp_path)
    try:
        with q.transaction():
            q.append(b"kept", 2, time.time())
        before, header = q.state.copy(), header_on_disk(tmp_path)
        with pytest.raises(RuntimeError), q.transaction():
            q.append(b"lost", 5, time.time())
            q.ack("a", q.cursor_after(1))  # moves the cursor and deletes entry 1
            raise RuntimeError("a failure inside the transaction")
        assert q.state == before
        assert header_on_disk(tmp_path) == header == (1, 2, 4, 2)
        assert [e.payload for e in q.read(0, MiB)] == [b"kept"]  # entry 1 is back, entry 2 never was
    finally:
        q.close()
    reopened = queue(tmp_path)
    try:
        assert reopened.state == before
    finally:
        reopened.close()


def test_lease_halves_carry_their_true_cursors_and_dead_letter_as_batches(tmp_path: Path) -> None:
    stats = SelfMetrics()

    async def main() -> None:
        s = Spool(tmp_path, SpoolSettings(), ["a"], stats)
        await s.open()
        payloads = [os.urandom(n) for n in (10, 20, 30, 40, 50)]  # incompressible: stored as they are
        for i, p in enumerate(payloads):
            await s.append("metrics", p, i + 1)
        lease = await s.lease("a", "metrics", 0, MiB)
        assert lease is not None and len(lease.entries) == 5
        head, tail = lease.halves()
        assert [e.seq for e in head.entries] == [1, 2] and (head.first, head.last) == (1, 2)
        assert [e.seq for e in tail.entries] == [3, 4, 5] and (tail.first, tail.last) == (3, 5)
        assert tail.cursor_after == lease.cursor_after == Cursor(5, 150, 15)
        # The first half's cursor is the one the spool gives a lease of just those entries.
        alone = await s.lease("a", "metrics", 0, 30)
        assert alone is not None and [e.seq for e in alone.entries] == [1, 2]
        assert head.cursor_after == alone.cursor_after == Cursor(2, 30, 3)
        with pytest.raises(ValueError):
            alone.halves()[0].halves()

        await s.dead_letter("a", head, 400, "HTTP 400: first half")
        await s.ack("a", head)
        assert s.backlog("a") == (120, 12)
        records = s.dead_letters()
        assert [(r["first_seq"], r["last_seq"], r["items"]) for r in records] == [(1, 2, 3)]
        await s.close()

    asyncio.run(main())
    assert stats.points_dropped.total(reason="dead_letter") == 3
    assert stats.entries_dropped.total(reason="dead_letter") == 2


def test_a_checkpoint_commits_with_the_entries_it_was_written_with_or_not_at_all(tmp_path: Path) -> None:
    q = queue(tmp_path)
    try:
        with q.transaction():
            q.append(b"lines 1-10", 10, time.time())
            q.set_checkpoint("log:/var/log/kafka/server.log", b"offset 100")
        with pytest.raises(RuntimeError), q.transaction():
            q.append(b"lines 11-20", 10, time.time())
            q.set_checkpoint("log:/var/log/kafka/server.log", b"offset 200")
            raise RuntimeError("the disk failed before the commit")
        assert q.checkpoints() == {"log:/var/log/kafka/server.log": b"offset 100"}
        assert header_on_disk(tmp_path) == (1, 2, len(b"lines 1-10"), 10)
    finally:
        q.close()


def test_spool_checkpoints_survive_a_reopen_and_may_move_without_an_entry(tmp_path: Path) -> None:
    async def main() -> None:
        s = Spool(tmp_path, SpoolSettings(), ["a"], SelfMetrics())
        await s.open()
        assert await s.checkpoints("logs") == {}  # no logs queue yet: nothing was ever read
        await s.append("logs", b"records", 2, checkpoint=("f", b"1"))
        await s.append("logs", b"", 0, checkpoint=("f", b"2"))  # lines filtered out: position only
        await s.append("logs", b"more", 1, checkpoint=("g", b"7"))
        await s.close()
        s = Spool(tmp_path, SpoolSettings(), ["a"], SelfMetrics())
        await s.open()
        assert await s.checkpoints("logs") == {"f": b"2", "g": b"7"}
        assert s.snapshot()["entries"] == 2  # the position-only append wrote no entry
        lease = await s.lease("a", "logs", 0, MiB)
        assert lease is not None and [e.payload for e in lease.entries] == [b"records", b"more"]
        await s.close()

    asyncio.run(main())
