"""The dead-letter area: batches a destination permanently rejected, kept with the reason.

Owns: the record written for a rejected lease (<state_dir>/spool/deadletter, one diskcache
entry per batch, keyed destination:signal:first seq:time) and the one way of listing those
records without their payloads, for /status, the CLI and the offline inspection alike.
Counting the rejected items is the spool's, like every other drop.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import diskcache

from relay.spool.queue import CACHE_SETTINGS, DISK_ERRORS, Lease, Store

log = logging.getLogger("relay.spool")


def records(store: Store) -> list[dict[str, Any]]:
    """Every dead-letter record in `store`, without its payloads."""
    out = []
    for key in store.iterkeys():
        rec = store.get(key)
        if rec:
            out.append({k: v for k, v in rec.items() if k != "payloads"})
    return out


class DeadLetters:
    """The dead-letter store the spool writes. Used only from the spool thread."""

    def __init__(self, directory: Path, fsync: str):
        self.cache = diskcache.Cache(str(directory), timeout=60, sqlite_synchronous=2 if fsync == "always" else 1,
                                     **CACHE_SETTINGS)

    def put(self, dest: str, lease: Lease, status: int, reason: str) -> None:
        """Keep the lease's payloads aside with the answer that rejected them. A failed write
        is logged, not raised: the batch is dropped either way, and counted by the caller."""
        record = {
            "time": time.time(), "destination": dest, "signal": lease.signal, "status": status,
            "reason": reason[:2000], "first_seq": lease.first, "last_seq": lease.last,
            "items": lease.items, "payloads": [e.payload for e in lease.entries],
        }
        try:
            self.cache.set(f"{dest}:{lease.signal}:{lease.first}:{time.time_ns()}", record)
        except DISK_ERRORS as e:
            log.error("could not write dead-letter record for %s: %s", dest, e)

    def records(self) -> list[dict[str, Any]]:
        return records(self.cache)

    def close(self) -> None:
        self.cache.close()
