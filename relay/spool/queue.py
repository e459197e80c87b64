"""One signal's on-disk queue, and the record format every reader of it shares.

Owns: the layout of one queue, its in-memory state (QueueState), its transaction (the
header is written on commit, the state restored on error), and the read-only view the
offline inspection opens beside a running relay.

Layout of one queue (all in SQLite, never in side files, so one fsync covers it):
  int seq > 0   -> the serialized OTLP request, as one zstd frame (level 1, its content size
                   in the frame header) or, if that would not be smaller, as it is. The first
                   bytes tell them apart: a zstd frame starts 28 b5 2f fd, an OTLP request
                   with a protobuf tag (0a: field 1), so spools written before entries were
                   compressed read as they are. read_value() is the one way a value is read.
  int -seq      -> entry meta: created time, items, size *as stored*, byte and item offsets
  "hdr"         -> head seq, next seq, bytes and items ever appended
  "cursor:<d>"  -> last seq destination d has accepted, with its offsets
  "ckpt:<k>"    -> a source's read position k (a tailed file's offset), written in the
                   same transaction as the entries read up to it
Offsets make every backlog figure O(1): bytes waiting = appended - cursor offset. Every
byte figure (offsets, backlog, max_bytes) counts bytes as stored, that is, what the disk holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import diskcache
import zstandard

from relay.config import SpoolSettings
from relay.otlp import Signal

_META = struct.Struct("<dIIQQ")  # created, items, size, byte offset, item offset
_HDR = struct.Struct("<QQQQ")  # head seq, next seq, bytes appended, items appended
_CUR = struct.Struct("<QQQ")  # seq, byte offset after it, item offset after it

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_LEVEL = 1  # scrapes shrink 5-10x; level 3: 3-5% smaller, up to a third more CPU
# The most an entry may inflate to: a frame declaring more is damaged (or hostile), never
# allocated. Appends larger than this are refused (Spool.append), so no real entry is.
MAX_ENTRY_BYTES = 256 << 20

DISK_ERRORS = (sqlite3.OperationalError, sqlite3.DatabaseError, OSError, diskcache.Timeout)

CACHE_SETTINGS: dict[str, Any] = {
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
    # the filesystem once the queue is empty (see SignalQueue.reclaim).
    "sqlite_auto_vacuum": 2,  # incremental
    "sqlite_secure_delete": "FAST",
    # After a checkpoint the write-ahead log is cut back to this, rather than keeping the
    # size of the largest burst it ever held.
    "sqlite_journal_size_limit": 4 << 20,
}


# With entries compressed, what a commit writes is mostly the pages it touches besides them,
# each written whole to the write-ahead log (and the log written in whole filesystem blocks):
# at 4 KiB pages an append and its delivery cost 37 KB of writes for a 10-series target.
# New queues are made with 1 KiB pages (existing ones keep theirs: a page size cannot change
# in WAL mode): 12.6 KB. Fewer than 1 KiB buys little more, the blocks being 4 KiB.
PAGE_SIZE = 1024

# diskcache keeps a row count and a byte total in its Settings table by triggers, and an
# index of expiry times: each append and each delivery rewrote those pages too (two of the
# four a small commit touches). The spool uses neither (no culling, no expiry: it keeps its
# own figures in the header), so they are dropped each time diskcache creates them on open.
_UNUSED_SCHEMA = ("TRIGGER Settings_count_insert", "TRIGGER Settings_count_delete", "TRIGGER Settings_size_insert",
                  "TRIGGER Settings_size_update", "TRIGGER Settings_size_delete", "INDEX Cache_expire_time")


def create_database(db: Path) -> None:
    """A new queue's database, made before diskcache opens it: the page size and the
    auto-vacuum mode can only be chosen before the first table, and in WAL mode not at all."""
    con = sqlite3.connect(str(db), isolation_level=None)
    try:
        con.executescript(f"PRAGMA page_size = {PAGE_SIZE};"
                          f"PRAGMA auto_vacuum = {CACHE_SETTINGS['sqlite_auto_vacuum']}; PRAGMA journal_mode = WAL;")
    finally:
        con.close()


def drop_unused_schema(db: Path) -> int:
    """Drop what diskcache made that the spool does not use; returns the file's page size."""
    con = sqlite3.connect(str(db), timeout=60, isolation_level=None)
    try:
        con.executescript("".join(f"DROP {what.split()[0]} IF EXISTS {what.split()[1]};" for what in _UNUSED_SCHEMA))
        return int(con.execute("PRAGMA page_size").fetchone()[0])
    finally:
        con.close()


class Cursor(NamedTuple):
    """How far a destination has accepted: a seq and the byte and item offsets just after it."""

    seq: int
    bytes_after: int
    items_after: int


class EntryMeta(NamedTuple):
    created: float
    items: int
    size: int
    bytes_before: int  # bytes appended to the queue before this entry
    items_before: int


@dataclass
class Entry:
    """One spooled request. payload is the request itself (decompressed); size is what it
    takes on disk, which the offsets count. damaged: why the stored value does not
    decompress (payload then holds the stored bytes as found, for the dead-letter area)."""

    seq: int
    payload: bytes
    items: int
    created: float
    size: int = -1  # -1: len(payload), an entry stored as it is
    damaged: str | None = None

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.payload)


@dataclass
class Lease:
    """Consecutive entries handed to one destination; acking it moves its cursor to cursor_after."""

    signal: Signal
    first: int
    last: int
    entries: list[Entry]
    cursor_after: Cursor

    @property
    def items(self) -> int:
        return sum(e.items for e in self.entries)

    @property
    def size(self) -> int:
        """Bytes as stored (what the cursor offsets count)."""
        return sum(e.size for e in self.entries)

    def halves(self) -> tuple[Lease, Lease]:
        """This batch split in two (for a 413, or to isolate an undecodable entry), each half a
        lease with its own cursor. Offsets are cumulative over consecutive entries, so the first
        half's cursor is this one's less what the second half holds; nothing is made up."""
        if len(self.entries) < 2:
            raise ValueError("a lease of one entry cannot be halved")
        half = len(self.entries) // 2
        head, tail = self.entries[:half], self.entries[half:]
        after = self.cursor_after
        head_cursor = Cursor(head[-1].seq, after.bytes_after - sum(e.size for e in tail),
                             after.items_after - sum(e.items for e in tail))
        return (Lease(self.signal, head[0].seq, head[-1].seq, head, head_cursor),
                Lease(self.signal, tail[0].seq, tail[-1].seq, tail, after))


@dataclass
class QueueState:
    head: int = 1
    next_seq: int = 1
    appended_bytes: int = 0
    appended_items: int = 0
    head_bytes: int = 0  # byte offset of the head entry
    head_items: int = 0
    head_created: float | None = None
    cursors: dict[str, Cursor] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return self.appended_bytes - self.head_bytes

    @property
    def entries(self) -> int:
        return self.next_seq - self.head

    def backlog(self, dest: str) -> tuple[int, int]:
        """(bytes, items) destination `dest` has not yet accepted."""
        _, cb, ci = self.cursors[dest]
        return self.appended_bytes - max(cb, self.head_bytes), self.appended_items - max(ci, self.head_items)

    def copy(self) -> QueueState:
        return dataclasses.replace(self, cursors=dict(self.cursors))


class Store(Protocol):
    """What reading a queue needs: a diskcache.Cache, or the read-only view below."""

    def get(self, key: Any) -> Any: ...

    def iterkeys(self) -> Iterator[Any]: ...


def decode_meta(raw: bytes) -> EntryMeta:
    return EntryMeta._make(_META.unpack(raw))


def read_meta(store: Store, seq: int) -> EntryMeta | None:
    raw = store.get(-seq)
    return None if raw is None else decode_meta(raw)


class DamagedValue(Exception):
    """A stored value that does not decompress to a request (a damaged disk, or a hostile file)."""


def encode_value(payload: bytes, compressor: zstandard.ZstdCompressor) -> bytes:
    """An entry's value as stored: a zstd frame, or the payload itself if that is no smaller."""
    frame = compressor.compress(payload)
    # A payload that itself starts like a frame (never an OTLP request) is stored as a frame
    # always, so the first bytes never mislead read_value().
    return frame if len(frame) < len(payload) or payload.startswith(ZSTD_MAGIC) else payload


def read_value(stored: bytes) -> bytes:
    """The request an entry's stored value holds. Raises DamagedValue; never inflates past the
    size the frame declares, nor past MAX_ENTRY_BYTES (a bomb is refused before allocation)."""
    if not stored.startswith(ZSTD_MAGIC):
        return stored  # stored as it is (and every entry written before compression)
    try:
        declared = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as e:
        raise DamagedValue(f"bad zstd frame header: {e}") from None
    if declared < 0 or declared > MAX_ENTRY_BYTES:  # -1: unknown; the spool always writes it
        raise DamagedValue(f"zstd frame declares {declared} bytes (at most {MAX_ENTRY_BYTES})")
    try:
        # With a declared content size, python-zstandard allocates exactly that and fails if
        # the data would inflate past it.
        out = zstandard.ZstdDecompressor().decompress(stored, max_output_size=declared)
    except zstandard.ZstdError as e:
        raise DamagedValue(f"zstd frame does not decompress: {e}") from None
    if len(out) != declared:
        raise DamagedValue(f"zstd frame inflates to {len(out)} bytes, not the {declared} it declares")
    return out


def read_entry(store: Store, seq: int) -> tuple[EntryMeta, Entry] | None:
    """One entry with its meta, or None if it is not (or no longer) there. A value that does
    not decompress comes back flagged `damaged`, with the bytes as stored."""
    meta, stored = read_meta(store, seq), store.get(seq)
    if meta is None or stored is None:
        return None
    try:
        payload, damaged = read_value(stored), None
    except DamagedValue as e:
        payload, damaged = stored, str(e)
    return meta, Entry(seq, payload, meta.items, meta.created, len(stored), damaged)


def load_head(store: Store, s: QueueState) -> None:
    """Set the head entry's offsets and age in `s` from its meta."""
    meta = read_meta(store, s.head) if s.head < s.next_seq else None
    if meta is None:
        s.head_bytes, s.head_items, s.head_created = s.appended_bytes, s.appended_items, None
    else:
        s.head_created, s.head_bytes, s.head_items = meta.created, meta.bytes_before, meta.items_before


def read_header(store: Store) -> QueueState | None:
    """The state as the header has it (head, next seq, totals appended); None if there is none."""
    hdr = store.get("hdr")
    if hdr is None:
        return None
    s = QueueState()
    s.head, s.next_seq, s.appended_bytes, s.appended_items = _HDR.unpack(hdr)
    return s


def load_state(store: Store) -> QueueState:
    """A queue's state as its header, head entry and cursors have it on disk."""
    s = read_header(store) or QueueState()
    load_head(store, s)
    for key in store.iterkeys():
        if isinstance(key, str) and key.startswith("cursor:"):
            s.cursors[key[7:]] = Cursor._make(_CUR.unpack(store.get(key)))
    return s


class SignalQueue:
    """One signal's on-disk queue. Used only from the spool thread."""

    def __init__(self, directory: Path, signal: Signal, settings: SpoolSettings, destinations: Sequence[str]):
        self.signal = signal
        self.directory = directory
        self.freed_bytes = 0  # payload bytes deleted since the last reclaim
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._sync = 2 if settings.fsync == "always" else 1
        if not (directory / "cache.db").exists():
            create_database(directory / "cache.db")
        self.cache = diskcache.Cache(str(directory), timeout=60, sqlite_synchronous=self._sync, **CACHE_SETTINGS)
        self.page_size = drop_unused_schema(directory / "cache.db")
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)  # content size in each frame
        self.state = load_state(self.cache)
        with self.cache.transact():
            for dest in [d for d in self.state.cursors if d not in destinations]:
                del self.cache[f"cursor:{dest}"]  # a destination removed from the config no longer holds data
                del self.state.cursors[dest]
            for dest in destinations:
                if dest not in self.state.cursors:
                    self._set_cursor(dest, Cursor(self.state.head - 1, self.state.head_bytes, self.state.head_items))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One SQLite transaction; on commit the header is written with it. If anything inside
        fails, SQLite rolls the disk back, and this rolls the in-memory state back to match."""
        saved = self.state.copy()
        try:
            with self.cache.transact():
                yield
                s = self.state
                self.cache.set("hdr", _HDR.pack(s.head, s.next_seq, s.appended_bytes, s.appended_items))
        except BaseException:
            self.state = saved
            raise

    def _set_cursor(self, dest: str, cursor: Cursor) -> None:
        self.state.cursors[dest] = cursor
        self.cache.set(f"cursor:{dest}", _CUR.pack(*cursor))

    def append(self, payload: bytes, items: int, now: float) -> None:
        s = self.state
        seq = s.next_seq
        stored = encode_value(payload, self._compressor)
        self.cache.set(-seq, _META.pack(now, items, len(stored), s.appended_bytes, s.appended_items))
        self.cache.set(seq, stored)
        if s.head == s.next_seq:
            s.head_created = now
        s.next_seq += 1
        s.appended_bytes += len(stored)
        s.appended_items += items

    def set_checkpoint(self, key: str, value: bytes) -> None:
        self.cache.set(f"ckpt:{key}", value)

    def checkpoints(self) -> dict[str, bytes]:
        """Every source read position this queue holds, by key."""
        return {key[5:]: self.cache.get(key) for key in self.cache.iterkeys()
                if isinstance(key, str) and key.startswith("ckpt:")}

    def pop_head(self) -> tuple[int, int, int, dict[str, int]]:
        """Remove the oldest entry; returns (seq, items, size, {dest: items lost})."""
        s = self.state
        seq = s.head
        meta = read_meta(self.cache, seq) or EntryMeta(0.0, 0, 0, s.head_bytes, s.head_items)
        lost: dict[str, int] = {}
        for dest, cursor in list(s.cursors.items()):
            if cursor.seq < seq:
                lost[dest] = meta.items
                self._set_cursor(dest, Cursor(seq, meta.bytes_before + meta.size, meta.items_before + meta.items))
        self.cache.delete(seq)
        self.cache.delete(-seq)
        s.head += 1
        load_head(self.cache, s)
        return seq, meta.items, meta.size, lost

    def read(self, after: int, max_bytes: int) -> list[Entry]:
        """Consecutive entries after `after`, up to max_bytes of requests (decompressed: what
        a destination's batch holds). A damaged entry comes alone, so the caller can put it
        aside without holding back the good ones around it."""
        s = self.state
        seq = max(after + 1, s.head)
        out: list[Entry] = []
        total = 0
        while seq < s.next_seq:
            found = read_entry(self.cache, seq)
            if found is None:
                break  # evicted under us; the caller re-reads from the new head
            _, entry = found
            if out and (entry.damaged or total + len(entry.payload) > max_bytes):
                break
            out.append(entry)
            if entry.damaged:
                break
            total += len(entry.payload)
            seq += 1
        return out

    def cursor_after(self, seq: int) -> Cursor:
        meta = read_meta(self.cache, seq)
        if meta is None:
            return Cursor(seq, self.state.head_bytes, self.state.head_items)
        return Cursor(seq, meta.bytes_before + meta.size, meta.items_before + meta.items)

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

    def ack(self, dest: str, cursor: Cursor) -> None:
        s = self.state
        if cursor.seq <= s.cursors[dest].seq:
            return
        self._set_cursor(dest, cursor)
        # Entries every destination has accepted are no longer needed.
        done = min(c.seq for c in s.cursors.values())
        before = s.head_bytes
        while s.head <= done and s.head < s.next_seq:
            self.cache.delete(s.head)
            self.cache.delete(-s.head)
            s.head += 1
        load_head(self.cache, s)
        self.freed_bytes += s.head_bytes - before

    def reclaim(self, step: int = 16 << 20, force: bool = False) -> None:
        """Give up to `step` bytes of delivered entries' pages back to the filesystem. Called
        when the queue is empty, so nothing live has to move; in steps, so that a drained
        4 GiB backlog does not hold the spool thread for seconds at once. `force`: even a
        little is worth giving back (the disk is full)."""
        self.freed_bytes = 0
        pages = max(1, step // self.page_size)
        con = sqlite3.connect(str(self.directory / "cache.db"), timeout=60, isolation_level=None)
        try:
            if not force and con.execute("PRAGMA freelist_count").fetchone()[0] * self.page_size < 1 << 20:
                return  # under 1 MiB: the next appends reuse it
            # On a full disk the write-ahead log may hold the very room the vacuum needs (a write
            # that failed leaves it long): empty it first. Then the vacuum, in parts, each
            # checkpointed, so the log never holds more than one part's pages: 1 MiB when the
            # disk is full. executescript steps each pragma to completion (execute would free
            # one page); the checkpoint moves the result into the file and empties the log.
            con.executescript("PRAGMA synchronous = NORMAL; PRAGMA wal_checkpoint(TRUNCATE);")
            part = max(1, (1 << 20) // self.page_size) if force else pages
            for _ in range(0, pages, part):
                if not con.execute("PRAGMA freelist_count").fetchone()[0]:
                    break
                con.executescript(f"PRAGMA incremental_vacuum({int(part)}); PRAGMA wal_checkpoint(TRUNCATE);")
        finally:
            con.close()

    def close(self) -> None:
        self.cache.close()


class ReadOnlyStore:
    """A diskcache directory read through SQLite alone, writing nothing: no Settings row, no
    schema, no new files. diskcache.Cache writes on open, so the offline inspection uses this.

    Beside a running relay the write-ahead log exists and a `mode=ro` reader shares it, as
    SQLite's WAL allows. With no writer the log was checkpointed and removed on close; then
    the file is opened immutable, since a `mode=ro` reader would create the -wal and -shm
    files (and, run as root, leave them root-owned in the service user's directory)."""

    def __init__(self, directory: Path):
        db = directory / "cache.db"
        immutable = "" if (directory / "cache.db-wal").exists() else "&immutable=1"
        self._con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro{immutable}", uri=True, timeout=60,
                                    isolation_level=None)
        # One read transaction for the view's life: the header, the entries and the cursors it
        # reads all come from the same commit, so no figure mixes two states.
        self._con.execute("BEGIN")
        self._disk = diskcache.Disk(str(directory))  # diskcache's own key and value codec

    def get(self, key: Any) -> Any:
        db_key, raw = self._disk.put(key)
        row = self._con.execute("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = ?",
                                (db_key, raw)).fetchone()
        if row is None:
            return None
        try:
            return self._disk.fetch(*row, False)
        except OSError:
            return None  # a side file deleted under us: gone, as for diskcache.Cache.get

    def iterkeys(self) -> Iterator[Any]:
        rows = self._con.execute("SELECT key, raw FROM Cache ORDER BY key, raw").fetchall()
        return (self._disk.get(key, raw) for key, raw in rows)

    def close(self) -> None:
        self._con.close()


@contextlib.contextmanager
def open_readonly(directory: Path) -> Iterator[ReadOnlyStore | None]:
    """The read-only view of a queue (or the dead-letter area); None if it has no database."""
    if not (directory / "cache.db").exists():
        yield None
        return
    store = ReadOnlyStore(directory)
    try:
        yield store
    finally:
        store.close()
