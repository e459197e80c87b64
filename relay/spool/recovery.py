"""Recovery of a damaged queue: integrity check, quarantine, salvage.

Owns: telling damage from a disk that is merely full or busy, and what is done about
damage, so that a corrupt file never crash-loops the relay nor empties it silently. Only
damage quarantines: an integrity check that answers "not ok" (or SQLite calling the file
corrupt or not a database). A full disk, a lock or an I/O error says nothing about the
file and never moves a healthy queue aside; the spool retries those. A damaged directory
is moved to <state_dir>/spool-quarantine/ and kept as found, for a post-mortem; every
entry still readable (and still valid OTLP) is handed back to be carried into a fresh
queue. If the salvage itself fails, the report says so. Also lists the quarantine, for
/status and the offline inspection, and makes sure, before anything is opened, that the
spool directory is a private directory of its own (never a link to somewhere else).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sqlite3
import struct
import time
from pathlib import Path
from typing import Any, NamedTuple

from relay.otlp import SIGNALS, Signal, count_items, parse_request
from relay.spool.queue import decode_meta, read_value

log = logging.getLogger("relay.spool")


class UnsafeSpoolDirectory(Exception):
    """The spool directory (or a queue directory in it) is a symbolic link: the relay does
    not follow it, since it would write raw local data, and chmod, outside state_dir."""


def make_private_dir(spool_dir: Path) -> None:
    """<state_dir>/spool, mode 0700 (raw local data: private to the service user). A
    symbolic link there, or for a queue in it, is refused rather than followed."""
    for path in [spool_dir, *(spool_dir / name for name in (*SIGNALS, "deadletter"))]:
        if path.is_symlink():
            raise UnsafeSpoolDirectory(f"{path} is a symbolic link; the spool must be a directory of "
                                       "its own inside state_dir (point state_dir itself elsewhere instead)")
    spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(spool_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):  # replaced by a link since the check above
            raise UnsafeSpoolDirectory(f"{spool_dir} is not a directory of its own") from None
        raise
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


# SQLite's own verdicts on a file's contents (primary result codes); every other code is
# about the disk or a lock: SQLITE_FULL, SQLITE_BUSY, SQLITE_IOERR, SQLITE_CANTOPEN, ...
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


class Damaged(Exception):
    """A queue file is damaged: it is quarantined."""


class Salvaged(NamedTuple):
    created: float
    items: int
    payload: bytes


def is_damage(e: BaseException) -> bool:
    """Whether an error opening a queue means its file is damaged (quarantine it), rather
    than that the disk is full, busy or failing (leave it be and retry)."""
    if isinstance(e, Damaged | ValueError | struct.error):  # the last two: our records do not decode
        return True
    code = getattr(e, "sqlite_errorcode", None)
    return isinstance(e, sqlite3.DatabaseError) and code is not None and code & 0xFF in (_SQLITE_CORRUPT,
                                                                                         _SQLITE_NOTADB)


def integrity_check(db: Path) -> None:
    """Raise Damaged if an existing queue file is damaged (a torn write, a bad disk). Any
    other error (the disk full, the file locked) is raised as it is: it is not damage."""
    if not db.exists():
        return
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as e:
        if is_damage(e):
            raise Damaged(f"integrity check failed: {e}") from None
        raise
    finally:
        con.close()
    if row is None or row[0] != "ok":
        raise Damaged(f"integrity check failed: {row[0] if row else 'no answer'}")


def quarantine(spool_dir: Path, signal: Signal, reason: str) -> tuple[dict[str, Any], list[Salvaged]]:
    """Move a damaged queue aside and read what can still be read of it. Returns the report
    for /status and the salvaged entries, oldest first. A salvage that fails (the disk full,
    say) leaves the quarantine as it is, and the report says why nothing was recovered."""
    directory = spool_dir / signal
    target = spool_dir.parent / "spool-quarantine" / f"{int(time.time())}-{signal}"
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.replace(directory, target)
    salvage_error = None
    try:
        salvaged = salvage(target)
    except (OSError, sqlite3.Error) as e:
        salvaged, salvage_error = [], f"{e.__class__.__name__}: {e}"
        for name in ("salvage.db", "salvage.db-wal", "salvage.db-shm"):  # a copy cut short by the error
            with contextlib.suppress(OSError):
                (target / name).unlink()
    size = _tree_size(target)
    if salvage_error:
        log.error("spool queue %s is unreadable (%s); moved to %s (%d bytes); the salvage failed (%s): "
                  "nothing recovered yet, the quarantine is kept as found", signal, reason, target, size,
                  salvage_error)
    else:
        log.error("spool queue %s is unreadable (%s); moved to %s (%d bytes); %d entries recovered from it",
                  signal, reason, target, size, len(salvaged))
    report = {"signal": signal, "path": str(target), "bytes": size, "reason": reason,
              "recovered_entries": len(salvaged), "salvage_error": salvage_error, "time": time.time()}
    return report, salvaged


def quarantined(state_dir: Path) -> list[dict[str, Any]]:
    """Each quarantined queue directory with its size, oldest first."""
    qdir = state_dir / "spool-quarantine"
    if not qdir.is_dir():
        return []
    return [{"path": str(d), "bytes": _tree_size(d)} for d in sorted(qdir.iterdir())]


def _tree_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def salvage(directory: Path) -> list[Salvaged]:
    """Every entry still readable in a quarantined queue, oldest first. Raises OSError if
    the working copy cannot be made (no room for it).

    Works on a copy (the quarantine stays as found, for a post-mortem). A file cut short is
    padded back to the length its header states, so SQLite reads what is left instead of
    refusing the whole file; then rows are read one by one, skipping damaged pages."""
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
    except sqlite3.DatabaseError:  # not readable at all; an OSError (no room for the copy) is raised
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
            if row[0] <= rowid:  # a damaged tree can answer out of order: never step back
                rowid, misses = rowid + 1, misses + 1
                continue
            rowid, misses = row[0], 0
            key, value = row[1], row[2]
            if not isinstance(key, int) or not isinstance(value, bytes):
                continue
            if key > 0:
                payloads[key] = value
            else:
                with contextlib.suppress(struct.error):  # not an entry's meta after all
                    meta = decode_meta(value)
                    metas[-key] = (meta.created, meta.items)
    finally:
        con.close()
        for name in ("salvage.db", "salvage.db-wal", "salvage.db-shm"):
            (directory / name).unlink(missing_ok=True)
    out = []
    for seq in sorted(payloads):
        try:  # a row can be readable and its bytes still damaged: keep only valid requests
            payload = read_value(payloads[seq])
            parsed_items = count_items(signal, parse_request(signal, payload))
        except Exception:  # DamagedValue, or not a request
            continue
        created, items = metas.get(seq, (time.time(), parsed_items))
        out.append(Salvaged(created, items, payload))
    return out
