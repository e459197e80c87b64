"""Recovery of a damaged queue: integrity check, quarantine, salvage.

Owns: opening a queue at start so that a corrupt file never crash-loops the relay nor
empties it silently. The damaged directory is moved to <state_dir>/spool-quarantine/ and
kept as found, for a post-mortem; every entry still readable (and still valid OTLP) is
carried into a fresh queue. Also lists the quarantine for the offline inspection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from relay.config import SpoolSettings
from relay.otlp import Signal, count_items, parse_request
from relay.spool.queue import SignalQueue, decode_meta

log = logging.getLogger("relay.spool")


class Salvaged(NamedTuple):
    created: float
    items: int
    payload: bytes


def integrity_check(db: Path) -> None:
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


def open_queue(spool_dir: Path, signal: Signal, settings: SpoolSettings,
               destinations: Sequence[str]) -> tuple[SignalQueue, dict[str, Any] | None]:
    """Open one queue; a corrupt one is moved aside (quarantined), what can still be read
    of it is carried over into a fresh queue, and the relay goes on. Returns the queue and,
    if it was quarantined, the report of that for /status."""
    directory = spool_dir / signal
    try:
        integrity_check(directory / "cache.db")
        return SignalQueue(directory, signal, settings, destinations), None
    except (sqlite3.DatabaseError, ValueError, struct.error) as e:
        reason = f"{e.__class__.__name__}: {e}"
    quarantine = spool_dir.parent / "spool-quarantine" / f"{int(time.time())}-{signal}"
    quarantine.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.replace(directory, quarantine)
    salvaged = salvage(quarantine)
    size = _tree_size(quarantine)
    log.error("spool queue %s is unreadable (%s); moved to %s (%d bytes); %d entries recovered from it",
              signal, reason, quarantine, size, len(salvaged))
    q = SignalQueue(directory, signal, settings, destinations)
    with q.transaction():
        for created, items, payload in salvaged:
            q.append(payload, items, created)
    report = {"signal": signal, "path": str(quarantine), "bytes": size, "reason": reason,
              "recovered_entries": len(salvaged), "time": time.time()}
    return q, report


def quarantined(state_dir: Path) -> list[dict[str, Any]]:
    """Each quarantined queue directory with its size, oldest first."""
    qdir = state_dir / "spool-quarantine"
    if not qdir.is_dir():
        return []
    return [{"path": str(d), "bytes": _tree_size(d)} for d in sorted(qdir.iterdir())]


def _tree_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def salvage(directory: Path) -> list[Salvaged]:
    """Every entry still readable in a quarantined queue, oldest first.

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
        payload = payloads[seq]
        try:  # a row can be readable and its bytes still damaged: keep only valid requests
            parsed_items = count_items(signal, parse_request(signal, payload))
        except Exception:
            continue
        created, items = metas.get(seq, (time.time(), parsed_items))
        out.append(Salvaged(created, items, payload))
    return out
