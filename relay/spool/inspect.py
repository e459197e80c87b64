"""Offline inspection of a spool for the CLI (`telemetry-relay spool`, `policy test --from-spool`,
`bundle export`).

Owns: reading a spool directory without writing to it, while the relay may be running
beside it (SQLite lets a `mode=ro` reader in beside the writer; see queue.ReadOnlyStore).
The record format is decoded by the queue module, not here, so both read it one way:
every entry comes back as the request it holds, decompressed. An entry whose stored value
does not decompress (damaged) is left out of the oldest entries, and a backlog stops short
of it (the running relay puts it aside, to dead-letter, when it comes to ship it).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from relay.otlp import SIGNALS, Signal
from relay.spool import deadletter, recovery
from relay.spool.queue import Entry, load_state, open_readonly, read_entry, read_header


def summary(state_dir: str | Path) -> dict[str, Any]:
    """What is in a spool: per signal the entries, bytes, oldest entry and each destination's
    cursor; the dead-letter records (without payloads); the quarantine."""
    base = Path(state_dir) / "spool"
    out: dict[str, Any] = {"queues": {}, "dead_letters": [], "quarantine": recovery.quarantined(Path(state_dir))}
    for signal in SIGNALS:
        with open_readonly(base / signal) as store:
            if store is None:
                continue
            s = load_state(store)
        cursors = {dest: {"acknowledged_up_to": c.seq, "backlog_bytes": s.backlog(dest)[0]}
                   for dest, c in s.cursors.items()}
        out["queues"][signal] = {"entries": s.entries, "bytes": s.bytes, "oldest": s.head_created,
                                 "destinations": cursors}
    with open_readonly(base / "deadletter") as store:
        if store is not None:
            out["dead_letters"] = deadletter.records(store)
    return out


def oldest_entries(state_dir: str | Path, signal: Signal, limit: int) -> list[Entry]:
    """The oldest `limit` entries of one signal's queue (fewer if some were delivered meanwhile)."""
    with open_readonly(Path(state_dir) / "spool" / signal) as store:
        s = read_header(store) if store is not None else None
        if store is None or s is None:
            return []
        found = (read_entry(store, seq) for seq in range(s.head, min(s.next_seq, s.head + limit)))
        return [entry for _, entry in filter(None, found) if entry.damaged is None]


@contextlib.contextmanager
def backlog(state_dir: str | Path, signal: Signal, destination: str) -> Iterator[Iterator[Entry]]:
    """The entries of one signal's queue that `destination` has not accepted yet, oldest
    first, read lazily within one read transaction: a consistent view while the relay runs."""
    with open_readonly(Path(state_dir) / "spool" / signal) as store:
        s = load_state(store) if store is not None else None
        cursor = s.cursors.get(destination) if s is not None else None
        if store is None or s is None or cursor is None:
            yield iter(())
            return
        found = (read_entry(store, seq) for seq in range(max(cursor.seq + 1, s.head), s.next_seq))
        yield itertools.takewhile(lambda e: e.damaged is None, (entry for _, entry in filter(None, found)))
