"""Eviction: the byte cap and the age limit, and the accounting of every entry they drop.

Owns: which entries go (the oldest across all queues while the spool is over
spool.max_bytes; those older than spool.max_age) and how each drop is counted, per
destination and reason. An entry already handed to a shipper and not yet acknowledged
is a loss only if its delivery then fails, so its count is held back until the ack
says otherwise (`delivered`). Runs on the spool thread, inside the callers' transactions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from relay.otlp import Signal
from relay.selfmetrics import SelfMetrics
from relay.spool.queue import SignalQueue

log = logging.getLogger("relay.spool")


def total_bytes(queues: Mapping[Signal, SignalQueue]) -> int:
    return sum(q.state.bytes for q in queues.values())


class Eviction:
    def __init__(self, max_bytes: int, stats: SelfMetrics) -> None:
        self.max_bytes = max_bytes
        self.stats = stats
        # Per (destination, signal): the newest seq leased, and the entries evicted while leased.
        self._leased_upto: dict[tuple[str, Signal], int] = {}
        self._evicted_in_flight: dict[tuple[str, Signal], dict[int, tuple[int, str]]] = {}

    def leased(self, dest: str, signal: Signal, upto: int) -> None:
        key = (dest, signal)
        self._leased_upto[key] = max(self._leased_upto.get(key, 0), upto)

    def delivered(self, dest: str, signal: Signal, upto: int) -> None:
        """Evicted while on the wire, and delivered after all: not a loss."""
        pending = self._evicted_in_flight.get((dest, signal))
        if pending:
            for seq in [s for s in pending if s <= upto]:
                del pending[seq]

    def closing(self) -> None:
        """Evicted while in flight and never acknowledged: lost after all, so counted now."""
        for (dest, _), pending in self._evicted_in_flight.items():
            for items, reason in pending.values():
                self.count(dest, reason, items)
        self._evicted_in_flight.clear()

    def over_cap(self, queues: Mapping[Signal, SignalQueue], current: SignalQueue) -> None:
        """Evict the oldest entries across all queues until under the cap. `current` is inside
        the caller's transaction; any other queue is written in a transaction of its own."""
        while total_bytes(queues) > self.max_bytes:
            victim = min((q for q in queues.values() if q.state.entries), key=lambda q: q.state.head_created or 0.0)
            if victim is current:
                self.drop_head(victim, "max_bytes")
            else:
                with victim.transaction():
                    self.drop_head(victim, "max_bytes")

    def older_than(self, q: SignalQueue, limit: float) -> None:
        with q.transaction():
            while q.state.head_created is not None and q.state.head_created < limit:
                self.drop_head(q, "max_age")

    def drop_head(self, q: SignalQueue, reason: str) -> None:
        seq, items, _, lost = q.pop_head()
        for dest, n in lost.items():
            if seq <= self._leased_upto.get((dest, q.signal), 0):
                self._evicted_in_flight.setdefault((dest, q.signal), {})[seq] = (n, reason)
                continue
            self.count(dest, reason, n)
        if lost:
            log.warning("spool dropped entry %s/%d (%d items) by %s for %s",
                        q.signal, seq, items, reason, ", ".join(sorted(lost)))

    def count(self, dest: str, reason: str, items: int, entries: int = 1) -> None:
        self.stats.points_dropped.labels(dest, reason).inc(items)
        self.stats.entries_dropped.labels(dest, reason).inc(entries)
