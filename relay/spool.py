"""Durable spool: every collected or received request is on disk before it counts.

Owns: the on-disk queues (one diskcache Cache per signal under <state_dir>/spool),
each destination's cursor in them, the byte cap and age limit, and the dead-letter
area. Data leaves only when every destination has accepted it, or by a counted drop
(max_bytes, max_age, dead_letter).

Layout of one queue (all in SQLite, never in side files, so one fsync covers it):
  int seq > 0   -> the serialized OTLP request (raw bytes)
  int -seq      -> entry meta: created time, items, size, byte and item offsets
  "hdr"         -> head seq, next seq, bytes and items ever appended
  "cursor:<d>"  -> last seq destination d has accepted, with its offsets
Offsets make every backlog figure O(1): bytes waiting = appended - cursor offset.

All disk work runs on one dedicated thread; concurrent appends are group-committed
in one transaction (one fsync) per batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import shutil
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache

from relay.config import SpoolSettings
from relay.otlp import SIGNALS, Signal
from relay.stats import Stats

log = logging.getLogger("relay.spool")

_META = struct.Struct("<dIIQQ")  # created, items, size, byte offset, item offset
_HDR = struct.Struct("<QQQQ")  # head seq, next seq, bytes appended, items appended
_CUR = struct.Struct("<QQQ")  # seq, byte offset after it, item offset after it

_DISK_ERRORS = (sqlite3.OperationalError, sqlite3.DatabaseError, OSError, diskcache.Timeout)

_CACHE_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none",  # we evict ourselves, and count it
    "cull_limit": 0,
    "statistics": 0,
    "tag_index": 0,
    "size_limit": 2**62,
    "disk_min_file_size": 2**31,  # keep every value inside SQLite: side files are not fsynced
    "sqlite_mmap_size": 0,  # mapped pages would count against our RSS
    "sqlite_cache_size": 512,  # pages; the spool is written and read sequentially
    # A queue frees its oldest pages on every delivery. With SQLite's full auto-vacuum each
    # commit would move the newest pages into those holes, and with (Debian's default)
    # secure_delete every freed page would be zeroed through the WAL: four times the writes
    # of the data itself. Instead freed pages are reused by later appends and handed back to
    # the filesystem once the queue is empty (see _Queue.reclaim).
    "sqlite_auto_vacuum": 2,  # incremental
    "sqlite_secure_delete": "FAST",
    # After a checkpoint the write-ahead log is cut back to this, rather than keeping the
    # size of the largest burst it ever held.
    "sqlite_journal_size_limit": 4 << 20,
}


class SpoolError(Exception):
    """A spool write failed; the data was not acknowledged."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Entry:
    seq: int
    payload: bytes
    items: int
    created: float


@dataclass
class Lease:
    signal: Signal
    first: int
    last: int
    entries: list[Entry]
    cursor_after: tuple[int, int, int]  # cursor value once this lease is acked

    @property
    def items(self) -> int:
        return sum(e.items for e in self.entries)

    @property
    def size(self) -> int:
        return sum(len(e.payload) for e in self.entries)


@dataclass
class QueueState:
    head: int = 1
    tail: int = 1  # next seq to assign
    appended_bytes: int = 0
    appended_items: int = 0
    head_bytes: int = 0  # byte offset of the head entry
    head_items: int = 0
    head_created: float | None = None
    cursors: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return self.appended_bytes - self.head_bytes

    @property
    def entries(self) -> int:
        return self.tail - self.head


class _Queue:
    """One signal's on-disk queue. Used only from the spool thread."""

    def __init__(self, directory: Path, signal: Signal, settings: SpoolSettings, destinations: Sequence[str]):
        self.signal = signal
        self.directory = directory
        self.freed_bytes = 0  # payload bytes deleted since the last reclaim
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._sync = 2 if settings.fsync == "always" else 1
        self.cache = diskcache.Cache(str(directory), timeout=60, sqlite_synchronous=self._sync, **_CACHE_SETTINGS)
        self.state = QueueState()
        hdr = self.cache.get("hdr")
        if hdr is not None:
            s = self.state
            s.head, s.tail, s.appended_bytes, s.appended_items = _HDR.unpack(hdr)
        self._load_head()
        with self.cache.transact():
            for key in list(self.cache.iterkeys()):
                if isinstance(key, str) and key.startswith("cursor:") and key[7:] not in destinations:
                    del self.cache[key]  # a destination removed from the config no longer holds data
            for dest in destinations:
                raw = self.cache.get(f"cursor:{dest}")
                if raw is None:
                    cur = (self.state.head - 1, self.state.head_bytes, self.state.head_items)
                    self.cache.set(f"cursor:{dest}", _CUR.pack(*cur))
                else:
                    cur = _CUR.unpack(raw)
                self.state.cursors[dest] = cur

    def _meta(self, seq: int) -> tuple[float, int, int, int, int] | None:
        raw = self.cache.get(-seq)
        return None if raw is None else _META.unpack(raw)

    def _load_head(self) -> None:
        s = self.state
        meta = self._meta(s.head) if s.head < s.tail else None
        if meta is None:
            s.head_bytes, s.head_items, s.head_created = s.appended_bytes, s.appended_items, None
        else:
            s.head_created, _, _, s.head_bytes, s.head_items = meta

    def _write_hdr(self) -> None:
        s = self.state
        self.cache.set("hdr", _HDR.pack(s.head, s.tail, s.appended_bytes, s.appended_items))

    def append(self, payload: bytes, items: int, now: float) -> None:
        s = self.state
        seq = s.tail
        self.cache.set(-seq, _META.pack(now, items, len(payload), s.appended_bytes, s.appended_items))
        self.cache.set(seq, payload)
        if s.head == s.tail:
            s.head_created = now
        s.tail += 1
        s.appended_bytes += len(payload)
        s.appended_items += items

    def pop_head(self) -> tuple[int, int, int, dict[str, int]]:
        """Remove the oldest entry; returns (seq, items, size, {dest: items lost})."""
        s = self.state
        seq = s.head
        meta = self._meta(seq)
        _, items, size, boff, ioff = meta if meta else (0.0, 0, 0, s.head_bytes, s.head_items)
        lost: dict[str, int] = {}
        for dest, (cseq, _, _) in s.cursors.items():
            if cseq < seq:
                lost[dest] = items
                s.cursors[dest] = (seq, boff + size, ioff + items)
                self.cache.set(f"cursor:{dest}", _CUR.pack(*s.cursors[dest]))
        self.cache.delete(seq)
        self.cache.delete(-seq)
        s.head += 1
        self._load_head()
        return seq, items, size, lost

    def read(self, after: int, max_bytes: int) -> list[Entry]:
        s = self.state
        seq = max(after + 1, s.head)
        out: list[Entry] = []
        total = 0
        while seq < s.tail:
            meta = self._meta(seq)
            payload = self.cache.get(seq)
            if meta is None or payload is None:
                break  # evicted under us; the caller re-reads from the new head
            if out and total + meta[2] > max_bytes:
                break
            out.append(Entry(seq, payload, meta[1], meta[0]))
            total += meta[2]
            seq += 1
        return out

    def cursor_after(self, seq: int) -> tuple[int, int, int]:
        meta = self._meta(seq)
        if meta is None:
            return (seq, self.state.head_bytes, self.state.head_items)
        return (seq, meta[3] + meta[2], meta[4] + meta[1])

    @contextlib.contextmanager
    def without_fsync(self) -> Iterator[None]:
        """A transaction whose loss on power failure costs a resend, never data: an
        acknowledgement. SQLite's WAL keeps it in order with the fsynced appends after it, and
        a process crash cannot lose it; only a power cut before the next fsync can, and then
        those entries are sent again (at-least-once). It halves the fsyncs of a drain."""
        if self._sync == 1:
            yield
            return
        self.cache.reset("sqlite_synchronous", 1, update=False)
        try:
            yield
        finally:
            self.cache.reset("sqlite_synchronous", self._sync, update=False)

    def ack(self, dest: str, cursor: tuple[int, int, int]) -> None:
        s = self.state
        if cursor[0] <= s.cursors[dest][0]:
            return
        s.cursors[dest] = cursor
        self.cache.set(f"cursor:{dest}", _CUR.pack(*cursor))
        # Entries every destination has accepted are no longer needed.
        done = min(c[0] for c in s.cursors.values())
        before = s.head_bytes
        while s.head <= done and s.head < s.tail:
            self.cache.delete(s.head)
            self.cache.delete(-s.head)
            s.head += 1
        self._load_head()
        self.freed_bytes += s.head_bytes - before

    def reclaim(self, pages: int = 4096) -> None:
        """Give up to `pages` pages of delivered entries back to the filesystem. Called when the
        queue is empty, so nothing live has to move; in steps (16 MiB at most), so that a
        drained 4 GiB backlog does not hold the spool thread for seconds at once."""
        self.freed_bytes = 0
        con = sqlite3.connect(str(self.directory / "cache.db"), timeout=60, isolation_level=None)
        try:
            if con.execute("PRAGMA freelist_count").fetchone()[0] < 256:
                return  # under 1 MiB: the next appends reuse it
            # executescript steps the pragma to completion (execute would free one page). The
            # checkpoint then moves the result into the file and empties the write-ahead log.
            con.executescript(f"PRAGMA synchronous = NORMAL; PRAGMA incremental_vacuum({int(pages)});"
                              "PRAGMA wal_checkpoint(TRUNCATE);")
        finally:
            con.close()

    def backlog(self, dest: str) -> tuple[int, int]:
        """(bytes, items) destination `dest` has not yet accepted."""
        s = self.state
        _, cb, ci = s.cursors[dest]
        return s.appended_bytes - max(cb, s.head_bytes), s.appended_items - max(ci, s.head_items)

    def close(self) -> None:
        self.cache.close()


def describe(state_dir: str | Path) -> dict[str, Any]:
    """What is in a spool, read-only (the relay may be running): per signal the entries, bytes,
    oldest entry and each destination's cursor; the dead-letter records; the quarantine."""
    base = Path(state_dir) / "spool"
    out: dict[str, Any] = {"queues": {}, "dead_letters": [], "quarantine": []}
    for signal in SIGNALS:
        directory = base / signal
        if not (directory / "cache.db").exists():
            continue
        cache = diskcache.Cache(str(directory), timeout=60)
        try:
            hdr = cache.get("hdr")
            head, tail, appended, _ = _HDR.unpack(hdr) if hdr else (1, 1, 0, 0)
            head_meta = cache.get(-head) if head < tail else None
            head_off = _META.unpack(head_meta)[3] if head_meta else appended
            oldest = _META.unpack(head_meta)[0] if head_meta else None
            cursors = {}
            for key in cache.iterkeys():
                if isinstance(key, str) and key.startswith("cursor:"):
                    seq, boff, _ = _CUR.unpack(cache.get(key))
                    cursors[key[7:]] = {"acknowledged_up_to": seq, "backlog_bytes": appended - max(boff, head_off)}
        finally:
            cache.close()
        out["queues"][signal] = {"entries": tail - head, "bytes": appended - head_off,
                                 "oldest": oldest, "destinations": cursors}
    if (base / "deadletter" / "cache.db").exists():
        dl = diskcache.Cache(str(base / "deadletter"), timeout=60)
        try:
            for key in dl.iterkeys():
                rec = dl.get(key)
                if rec:
                    out["dead_letters"].append({k: v for k, v in rec.items() if k != "payloads"})
        finally:
            dl.close()
    qdir = Path(state_dir) / "spool-quarantine"
    if qdir.is_dir():
        for d in sorted(qdir.iterdir()):
            size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
            out["quarantine"].append({"path": str(d), "bytes": size})
    return out


def read_entries(state_dir: str | Path, signal: Signal, limit: int) -> list[Entry]:
    """The oldest `limit` entries of one signal's queue, read-only, for the CLI (the relay may be
    running: SQLite lets a reader in beside the writer)."""
    directory = Path(state_dir) / "spool" / signal
    if not (directory / "cache.db").exists():
        return []
    cache = diskcache.Cache(str(directory), timeout=60)
    try:
        hdr = cache.get("hdr")
        if hdr is None:
            return []
        head, tail, _, _ = _HDR.unpack(hdr)
        out = []
        for seq in range(head, min(tail, head + limit)):
            meta, payload = cache.get(-seq), cache.get(seq)
            if meta is None or payload is None:
                continue
            created, items, _, _, _ = _META.unpack(meta)
            out.append(Entry(seq, payload, items, created))
        return out
    finally:
        cache.close()


def _integrity_check(db: Path) -> None:
    """Raise sqlite3.DatabaseError if an existing queue file is damaged (a torn write, a bad disk)."""
    if not db.exists():
        return
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute("PRAGMA quick_check").fetchone()
    finally:
        con.close()
    if row is None or row[0] != "ok":
        raise sqlite3.DatabaseError(f"integrity check failed: {row[0] if row else 'no answer'}")


def _salvage(directory: Path) -> list[tuple[float, int, bytes]]:
    """(created, items, payload) of every entry still readable in a quarantined queue, oldest first.

    Works on a copy (the quarantine stays as found, for a post-mortem). A file cut short is
    padded back to the length its header states, so SQLite reads what is left instead of
    refusing the whole file; then rows are read one by one, skipping damaged pages."""
    from relay.otlp import count_items, parse_request

    db = directory / "cache.db"
    if not db.exists():
        return []
    copy = directory / "salvage.db"
    shutil.copyfile(db, copy)
    for suffix in ("-wal", "-shm"):  # a write-ahead log beside it still holds committed data
        if (directory / f"cache.db{suffix}").exists():
            shutil.copyfile(directory / f"cache.db{suffix}", directory / f"salvage.db{suffix}")
    payloads: dict[int, bytes] = {}
    metas: dict[int, tuple[float, int]] = {}
    signal: Any = directory.name.split("-", 1)[-1]
    try:
        with open(copy, "r+b") as f:
            header = f.read(100)
            page_size = int.from_bytes(header[16:18], "big") or 65536
            pages = int.from_bytes(header[28:32], "big")
            size = f.seek(0, os.SEEK_END)
            if header[:16] == b"SQLite format 3\x00" and pages * page_size > size:
                f.write(b"\0" * (pages * page_size - size))
        con = sqlite3.connect(str(copy))
    except (OSError, sqlite3.DatabaseError):
        copy.unlink(missing_ok=True)
        return []
    try:
        rowid, misses = 0, 0
        while misses < 10_000:
            try:
                row = con.execute("SELECT rowid, key, value FROM Cache WHERE rowid > ? ORDER BY rowid LIMIT 1",
                                  (rowid,)).fetchone()
            except sqlite3.DatabaseError:
                rowid, misses = rowid + 1, misses + 1  # a damaged page: step past it
                continue
            if row is None:
                break
            rowid, misses = row[0], 0
            key, value = row[1], row[2]
            if not isinstance(key, int) or not isinstance(value, bytes):
                continue
            if key > 0:
                payloads[key] = value
            elif len(value) == _META.size:
                created, items, _, _, _ = _META.unpack(value)
                metas[-key] = (created, items)
    finally:
        con.close()
        for name in ("salvage.db", "salvage.db-wal", "salvage.db-shm"):
            (directory / name).unlink(missing_ok=True)
    out = []
    for seq in sorted(payloads):
        payload = payloads[seq]
        try:  # a row can be readable and its bytes still damaged: keep only valid requests
            parsed_items = count_items(signal, parse_request(signal, payload))
        except Exception:
            continue
        created, items = metas.get(seq, (time.time(), parsed_items))
        out.append((created, items, payload))
    return out


class Spool:
    """The async face of the spool. Every disk operation runs on the spool thread."""

    def __init__(self, state_dir: str | Path, settings: SpoolSettings, destinations: Sequence[str], stats: Stats):
        self.dir = Path(state_dir) / "spool"
        self.settings = settings
        self.destinations = list(destinations)
        self.stats = stats
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spool")
        self._queues: dict[Signal, _Queue] = {}
        self._deadletter: diskcache.Cache | None = None
        self._pending: list[tuple[Signal, bytes, int, asyncio.Future[None]]] = []
        self._writing = 0  # payload bytes of the batch the spool thread is writing now
        self._writer: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._listeners: list[Callable[[Signal], None]] = []
        self.last_error: str | None = None
        self.writable = True
        self.quarantined: list[dict[str, Any]] = []
        # Entries handed to a shipper and not yet acknowledged: evicting one of those is a loss
        # only if its delivery then fails, so it is counted when that is known, not before.
        self._leased_upto: dict[tuple[str, Signal], int] = {}
        self._evicted_in_flight: dict[tuple[str, Signal], dict[int, tuple[int, str]]] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open_sync)
        self._wakeup = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="spool-writer")

    def _open_sync(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)  # raw local data: private to the service user
        for signal in SIGNALS:
            if signal == "metrics" or (self.dir / signal).exists():
                self._queues[signal] = self._open_queue(signal)
        self._deadletter = diskcache.Cache(
            str(self.dir / "deadletter"), timeout=60,
            sqlite_synchronous=2 if self.settings.fsync == "always" else 1, **_CACHE_SETTINGS,
        )
        self._update_gauges()

    def _open_queue(self, signal: Signal) -> _Queue:
        """Open one queue; a corrupt one is moved aside (quarantined), what can still be read
        of it is carried over into a fresh queue, and the relay goes on: no crash loop and no
        silent empty restart."""
        directory = self.dir / signal
        try:
            _integrity_check(directory / "cache.db")
            return _Queue(directory, signal, self.settings, self.destinations)
        except (sqlite3.DatabaseError, ValueError, struct.error) as e:
            reason = f"{e.__class__.__name__}: {e}"
        quarantine = self.dir.parent / "spool-quarantine" / f"{int(time.time())}-{signal}"
        quarantine.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(directory, quarantine)
        salvaged = _salvage(quarantine)
        size = sum(p.stat().st_size for p in quarantine.rglob("*") if p.is_file())
        log.error("spool queue %s is unreadable (%s); moved to %s (%d bytes); %d entries recovered from it",
                  signal, reason, quarantine, size, len(salvaged))
        q = _Queue(directory, signal, self.settings, self.destinations)
        with q.cache.transact():
            for created, items, payload in salvaged:
                q.append(payload, items, created)
            q._write_hdr()
        self.quarantined.append({"signal": signal, "path": str(quarantine), "bytes": size, "reason": reason,
                                 "recovered_entries": len(salvaged), "time": time.time()})
        return q

    async def close(self) -> None:
        if self._writer:
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            self._writer = None
        # Appends still queued were never acknowledged; fail them rather than hang their callers.
        for _, _, _, fut in self._pending:
            if not fut.done():
                fut.set_exception(SpoolError("closed", "spool is closing"))
        self._pending.clear()
        await self._run(self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        # Evicted while in flight and never acknowledged: lost after all, so counted now.
        for (dest, _), pending in self._evicted_in_flight.items():
            for items, reason in pending.values():
                self._count_drop(dest, reason, items)
        self._evicted_in_flight.clear()
        for q in self._queues.values():
            q.close()
        if self._deadletter is not None:
            self._deadletter.close()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def add_listener(self, fn: Callable[[Signal], None]) -> None:
        """fn(signal) is called on the event loop after new data of that signal is durable."""
        self._listeners.append(fn)

    # -- append (group commit) ---------------------------------------------------------------------

    async def append(self, signal: Signal, payload: bytes, items: int, refuse_when_full: bool = False) -> None:
        """Return once the request is durably on disk. Raises SpoolError if it could not be.

        refuse_when_full: instead of evicting the oldest data to make room, refuse the new
        data (reason "full") so a pushing client can keep it and retry later."""
        if len(payload) > self.settings.max_bytes // 2:
            raise SpoolError("too_large", f"request of {len(payload)} bytes exceeds half the spool cap")
        if refuse_when_full:
            # Queued and being-written batches count too: the batch on its way to disk is in
            # neither the queue state nor _pending until its write ends (counting it twice
            # meanwhile only refuses a little early; not counting it evicted accepted data).
            pending = sum(len(p) for _, p, _, _ in self._pending) + self._writing
            used = self._total_bytes() + pending
            if used + len(payload) > self.settings.max_bytes:
                self.stats.spool_append_errors.labels("full").inc()
                raise SpoolError("full", f"spool is full ({used} of {self.settings.max_bytes} bytes)")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((signal, payload, items, fut))
        assert self._wakeup is not None, "spool not open"
        self._wakeup.set()
        await fut

    async def _write_loop(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            self._writing = sum(len(p) for _, p, _, _ in batch)
            try:
                await self._run(self._append_sync, [(s, p, n) for s, p, n, _ in batch])
            except SpoolError as e:
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            finally:
                self._writing = 0
            for *_, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            for signal in {s for s, *_ in batch}:
                for fn in self._listeners:
                    fn(signal)

    def _append_sync(self, items: list[tuple[Signal, bytes, int]]) -> None:
        now = time.time()
        try:
            for signal in {s for s, _, _ in items}:
                if signal not in self._queues:
                    self._queues[signal] = _Queue(self.dir / signal, signal, self.settings, self.destinations)
            with self._atomic():
                # One transaction per queue: one fsync covers every append in the batch.
                for signal, q in self._queues.items():
                    mine = [(p, n) for s, p, n in items if s == signal]
                    if not mine:
                        continue
                    with q.cache.transact():
                        for payload, n in mine:
                            q.append(payload, n, now)
                        self._evict_over_cap(q)
                        q._write_hdr()
        except _DISK_ERRORS as e:
            self._note_write_failure(e)
            raise SpoolError(self._reason(e), f"spool write failed: {e}") from None
        if not self.writable:
            log.info("spool is writable again")
        self.writable, self.last_error = True, None
        for signal, _, n in items:
            self.stats.points_spooled.labels(signal).inc(n)
        self._update_gauges()

    @staticmethod
    def _reason(e: BaseException) -> str:
        text = str(e).lower()
        if "full" in text or getattr(e, "errno", None) == 28:
            return "disk_full"
        if isinstance(e, diskcache.Timeout):
            return "locked"
        return "io_error"

    def _note_write_failure(self, e: BaseException) -> None:
        reason = self._reason(e)
        self.stats.spool_append_errors.labels(reason).inc()
        if self.writable:  # log the transition once, not every failed write
            log.error("spool write failed (%s): %s; new data is refused until it recovers", reason, e)
        self.writable, self.last_error = False, f"{reason}: {e}"

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[None]:
        """Keep the in-memory queue states in step with disk: a failed transaction rolled
        back on disk, so roll them back too."""
        saved = {s: dataclasses.replace(q.state, cursors=dict(q.state.cursors)) for s, q in self._queues.items()}
        try:
            yield
        except BaseException:
            for s, state in saved.items():
                self._queues[s].state = state
            raise

    def _total_bytes(self) -> int:
        return sum(q.state.bytes for q in self._queues.values())

    def _evict_over_cap(self, current: _Queue) -> None:
        # Evict the oldest entries across all queues until under the cap. Other queues are
        # written in their own transaction.
        while self._total_bytes() > self.settings.max_bytes:
            victim = min(
                (q for q in self._queues.values() if q.state.entries),
                key=lambda q: q.state.head_created or 0.0,
            )
            if victim is current:
                self._drop_head(victim, "max_bytes")
            else:
                with victim.cache.transact():
                    self._drop_head(victim, "max_bytes")
                    victim._write_hdr()

    def _drop_head(self, q: _Queue, reason: str) -> None:
        seq, items, _, lost = q.pop_head()
        for dest, n in lost.items():
            if seq <= self._leased_upto.get((dest, q.signal), 0):
                self._evicted_in_flight.setdefault((dest, q.signal), {})[seq] = (n, reason)
                continue
            self._count_drop(dest, reason, n)
        if lost:
            log.warning(
                "spool dropped entry %s/%d (%d items) by %s for %s",
                q.signal, seq, items, reason, ", ".join(sorted(lost)),
            )

    def _count_drop(self, dest: str, reason: str, items: int) -> None:
        self.stats.points_dropped.labels(dest, reason).inc(items)
        self.stats.entries_dropped.labels(dest, reason).inc()

    # -- age limit ---------------------------------------------------------------------------------

    async def enforce_age(self, now: float | None = None) -> None:
        await self._run(self._enforce_age_sync, time.time() if now is None else now)

    def _enforce_age_sync(self, now: float) -> None:
        limit = now - self.settings.max_age
        try:
            with self._atomic():
                for q in self._queues.values():
                    if q.state.head_created is None or q.state.head_created >= limit:
                        continue
                    with q.cache.transact():
                        while q.state.head_created is not None and q.state.head_created < limit:
                            self._drop_head(q, "max_age")
                        q._write_hdr()
            for q in self._queues.values():
                if not q.state.entries:  # a drained backlog's file shrinks a step at each pass
                    q.reclaim()
        except _DISK_ERRORS as e:
            self._note_write_failure(e)
        self._update_gauges()

    # -- reading and acknowledging -----------------------------------------------------------------

    def signals(self) -> list[Signal]:
        return list(self._queues)

    def cursor(self, dest: str, signal: Signal) -> int:
        q = self._queues.get(signal)
        return q.state.cursors[dest][0] if q else 0

    async def lease(self, dest: str, signal: Signal, after: int, max_bytes: int) -> Lease | None:
        """Oldest entries after seq `after` (or the destination's cursor) up to max_bytes."""
        return await self._run(self._lease_sync, dest, signal, after, max_bytes)  # type: ignore[no-any-return]

    def _lease_sync(self, dest: str, signal: Signal, after: int, max_bytes: int) -> Lease | None:
        q = self._queues.get(signal)
        if q is None:
            return None
        after = max(after, q.state.cursors[dest][0])
        entries = q.read(after, max_bytes)
        if not entries:
            return None
        key = (dest, signal)
        self._leased_upto[key] = max(self._leased_upto.get(key, 0), entries[-1].seq)
        return Lease(signal, entries[0].seq, entries[-1].seq, entries, q.cursor_after(entries[-1].seq))

    async def ack(self, dest: str, lease: Lease) -> None:
        """The destination has accepted (or we dead-lettered) every entry up to lease.last."""
        await self._run(self._ack_sync, dest, lease.signal, lease.cursor_after)

    def _ack_sync(self, dest: str, signal: Signal, cursor: tuple[int, int, int]) -> None:
        pending = self._evicted_in_flight.get((dest, signal))
        if pending:  # evicted while on the wire, and delivered after all: not a loss
            for seq in [s for s in pending if s <= cursor[0]]:
                del pending[seq]
        q = self._queues[signal]
        try:
            with self._atomic(), q.without_fsync(), q.cache.transact():
                q.ack(dest, cursor)
                q._write_hdr()
            # A queue emptied after a backlog gives its space back; one emptied after each of a
            # steady trickle of small deliveries has little to give, and the appends reuse it.
            if not q.state.entries and q.freed_bytes >= 4 << 20:
                q.reclaim()
        except _DISK_ERRORS as e:
            # An ack that did not persist only means a resend after restart: at-least-once.
            log.warning("spool could not record delivery for %s: %s", dest, e)
        self._update_gauges()

    async def dead_letter(self, dest: str, lease: Lease, status: int, reason: str) -> None:
        """Keep a permanently rejected batch aside, with the reason, and count it.
        The caller acknowledges it in order like any delivered lease."""
        await self._run(self._dead_letter_sync, dest, lease, status, reason)

    def _dead_letter_sync(self, dest: str, lease: Lease, status: int, reason: str) -> None:
        assert self._deadletter is not None
        record = {
            "time": time.time(), "destination": dest, "signal": lease.signal, "status": status,
            "reason": reason[:2000], "first_seq": lease.first, "last_seq": lease.last,
            "items": lease.items, "payloads": [e.payload for e in lease.entries],
        }
        try:
            self._deadletter.set(f"{dest}:{lease.signal}:{lease.first}:{time.time_ns()}", record)
        except _DISK_ERRORS as e:
            log.error("could not write dead-letter record for %s: %s", dest, e)
        self.stats.points_dropped.labels(dest, "dead_letter").inc(lease.items)
        self.stats.entries_dropped.labels(dest, "dead_letter").inc(len(lease.entries))

    def dead_letters(self) -> list[dict[str, Any]]:
        """Dead-letter records without their payloads (for status and the CLI)."""
        assert self._deadletter is not None
        out = []
        for key in self._deadletter.iterkeys():
            rec = self._deadletter.get(key)
            if rec:
                out.append({k: v for k, v in rec.items() if k != "payloads"})
        return out

    # -- status ------------------------------------------------------------------------------------

    def backlog(self, dest: str) -> tuple[int, int]:
        """(bytes, items) waiting for a destination, over all signals. Safe from the loop: O(1)."""
        b = i = 0
        for q in list(self._queues.values()):
            qb, qi = q.backlog(dest)
            b, i = b + qb, i + qi
        return b, i

    def snapshot(self) -> dict[str, Any]:
        qs = list(self._queues.values())
        oldest = min((q.state.head_created for q in qs if q.state.head_created), default=None)
        return {
            "entries": sum(q.state.entries for q in qs),
            "bytes": sum(q.state.bytes for q in qs),
            "max_bytes": self.settings.max_bytes,
            "oldest_age_seconds": round(time.time() - oldest, 3) if oldest else 0.0,
            "writable": self.writable,
            "last_error": self.last_error,
            "quarantined": self.quarantined,
            "dropped_points": {
                reason: v for reason, v in Stats.by_label(self.stats.points_dropped, "reason").items() if v
            },
        }

    def _update_gauges(self) -> None:
        snap = self.snapshot()
        self.stats.spool_entries.set(snap["entries"])
        self.stats.spool_bytes.set(snap["bytes"])
        self.stats.spool_oldest_age.set(snap["oldest_age_seconds"])
        for dest in self.destinations:
            self.stats.backlog_bytes.labels(dest).set(self.backlog(dest)[0])
