"""The durable spool's async face: every collected or received request is on disk before it counts.

Owns: the interface the rest of the relay uses (append, lease, ack, dead_letter, backlog,
snapshot), when the byte cap and the age limit are enforced (eviction.Eviction says what
goes and counts it), the one thread all disk work runs on, and whether the spool takes new
data (`writable`). The queues themselves are queue.SignalQueue, one per signal under
<state_dir>/spool; data leaves them only when every destination has accepted it, or by a
counted drop (max_bytes, max_age, dead_letter). It is near 500 lines: the one
place where the writer thread, the recovery tick and the loop meet stays whole.

A full disk is not damage and never stops delivery: the spool keeps a reserve
(reserve.Reserve) and gives it up when recording a delivery, dropping an entry or opening
a queue meets a full disk. While the reserve is gone, or a queue could not be opened, or
the last write failed, new data is refused; a tick on the spool thread retries every
RECOVERY_INTERVAL until the disk has room again, so the spool recovers by itself.

An append does not write at once: it joins `_pending`, the writer task hands each batch
of them to the spool thread, and one transaction (one fsync) per queue commits the lot
(group commit); then the listeners (the shippers) are woken. An append may carry a
source's checkpoint (a tailed file's read position): it is written in the same
transaction as the entry, so the data and the position it was read up to are durable
together or not at all.

backlog() and snapshot() read the queue states from the event loop while the spool
thread changes them (in place, or by swapping a rolled-back state in): the GIL keeps
each field read whole, but one figure may mix two moments of a commit. They are
approximate by that much, which a status figure can afford.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import diskcache

from relay.config import SpoolSettings
from relay.otlp import SIGNALS, Signal
from relay.selfmetrics import SelfMetrics
from relay.spool import recovery
from relay.spool.deadletter import DeadLetters
from relay.spool.eviction import Eviction, total_bytes
from relay.spool.queue import DISK_ERRORS, MAX_ENTRY_BYTES, Cursor, Lease, QueueState, SignalQueue
from relay.spool.reserve import Reserve, free_bytes, is_no_space

log = logging.getLogger("relay.spool")

RECOVERY_INTERVAL = 1.0  # seconds between attempts to become writable again


class SpoolError(Exception):
    """A spool write failed; the data was not acknowledged."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Append(NamedTuple):
    signal: Signal
    payload: bytes  # empty with items 0: a checkpoint alone
    items: int
    checkpoint: tuple[str, bytes] | None
    done: asyncio.Future[None]


class Spool:
    """The async face of the spool. Every disk operation runs on the spool thread."""

    def __init__(self, state_dir: str | Path, settings: SpoolSettings, destinations: Sequence[str], stats: SelfMetrics):
        self.dir = Path(state_dir) / "spool"
        self.settings = settings
        self.destinations = list(destinations)
        self.stats = stats
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spool")
        self._queues: dict[Signal, SignalQueue] = {}
        self._deadletter: DeadLetters | None = None
        self._pending: list[_Append] = []
        self._writing = 0  # payload bytes of the batch the spool thread is writing now
        self._writer: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._listeners: list[Callable[[Signal], None]] = []
        self.last_error: str | None = None
        self.writable = True
        self.quarantined: list[dict[str, Any]] = []
        self._reserve = Reserve(self.dir / "reserve", settings.reserve_bytes)
        # Queues that exist on disk but could not be opened yet (the disk full, a lock), with
        # what a quarantine salvaged for them, if anything: retried on each recovery tick.
        self._unopened: dict[Signal, list[recovery.Salvaged]] = {}
        self._earlier_quarantine: list[dict[str, Any]] = []
        self._eviction = Eviction(settings.max_bytes, stats)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._on_spool_thread(self._open_sync)
        self._wakeup = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="spool-writer")

    def _open_sync(self) -> None:
        recovery.make_private_dir(self.dir)
        for signal in SIGNALS:
            if signal == "metrics" or (self.dir / signal).exists():
                self._unopened[signal] = []
        # Listed in /status until the operator removes them (see _quarantine_reports).
        self._earlier_quarantine = recovery.quarantined(self.dir.parent)
        self._recover_sync()

    def _with_room(self, fn: Callable[[], Any]) -> Any:
        """fn(), a write that frees space or must not wait for it; if it meets a full disk, the
        reserve is released and fn tried once more."""
        try:
            return fn()
        except DISK_ERRORS as e:
            if not (is_no_space(e) and self._reserve.release()):
                raise
            log.warning("the spool's filesystem is full: released the reserve (%d bytes) so deliveries can "
                        "still be recorded; new data is refused until there is room again", self._reserve.size)
            self._refuse("disk_full", e)
            return fn()

    def _open_queue_sync(self, signal: Signal) -> None:
        """Open one queue. A damaged one is quarantined and what can be read of it carried into
        a fresh one; a full disk or a lock only leaves it unopened, to be retried."""
        try:
            self._with_room(lambda: recovery.integrity_check(self.dir / signal / "cache.db"))
            q = self._with_room(lambda: SignalQueue(self.dir / signal, signal, self.settings, self.destinations))
        except Exception as e:
            if not recovery.is_damage(e):
                raise
            report, salvaged = recovery.quarantine(self.dir, signal, f"{e.__class__.__name__}: {e}")
            self.quarantined.append(report)
            self.stats.spool_quarantined.labels("salvage_failed" if report["salvage_error"] else "salvaged").inc()
            self._unopened[signal] = salvaged
            q = self._with_room(lambda: SignalQueue(self.dir / signal, signal, self.settings, self.destinations))
        salvaged = self._unopened.get(signal) or []
        try:
            if salvaged:
                with q.transaction():
                    for created, items, payload in salvaged:
                        q.append(payload, items, created)
        except BaseException:
            q.close()  # opened again, and the salvage carried, on the next try
            raise
        self._queues[signal] = q
        self._unopened.pop(signal, None)

    def _recover_sync(self) -> None:
        """Retry what a full disk (or a lock) held up: unopened queues, the dead-letter area,
        the reserve. Writable again once all of them are in place and the disk has room."""
        try:
            for signal in list(self._unopened):
                self._open_queue_sync(signal)
            if self._deadletter is None:
                self._deadletter = self._with_room(lambda: DeadLetters(self.dir / "deadletter", self.settings.fsync))
            self._ensure_reserve()
            # After a full disk, writable again only with a reserve's worth of room beyond
            # the reserve, so that the first appends do not fill it at once.
            if not self.writable and (self.last_error or "").startswith("disk_full") \
                    and free_bytes(self.dir) >= self._reserve.size:
                log.info("spool is writable again")
                self.writable, self.last_error = True, None
        except DISK_ERRORS as e:
            self._refuse(self._reason(e), e)
        finally:
            self._update_gauges()

    def _ensure_reserve(self) -> None:
        if not self._reserve.ensure():
            raise OSError(errno.ENOSPC, f"no room for the spool's reserve ({self._reserve.size} bytes)")

    def _healthy(self) -> bool:
        """Nothing for the recovery tick to do (read from the event loop)."""
        return self.writable and self._reserve.present and not self._unopened and self._deadletter is not None

    async def close(self) -> None:
        if self._writer:
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            self._writer = None
        # Appends still queued were never acknowledged; fail them rather than hang their callers.
        for a in self._pending:
            if not a.done.done():
                a.done.set_exception(SpoolError("closed", "spool is closing"))
        self._pending.clear()
        await self._on_spool_thread(self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        self._eviction.closing()
        for q in self._queues.values():
            q.close()
        if self._deadletter is not None:
            self._deadletter.close()

    async def _on_spool_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def add_listener(self, fn: Callable[[Signal], None]) -> None:
        """fn(signal) is called on the event loop after new data of that signal is durable."""
        self._listeners.append(fn)

    # -- append (group commit) ---------------------------------------------------------------------

    async def append(self, signal: Signal, payload: bytes, items: int, refuse_when_full: bool = False,
                     checkpoint: tuple[str, bytes] | None = None) -> None:
        """Return once the request is durably on disk. Raises SpoolError if it could not be.

        refuse_when_full: instead of evicting the oldest data to make room, refuse the new
        data (reason "full") so a pushing client can keep it and retry later.
        checkpoint: (key, value) written in the same transaction (see checkpoints()); with
        an empty payload and no items, only the checkpoint is written."""
        # Sizes here are the request's, before the spool compresses it: a bound on the disk
        # bytes it will take (the cap's unit), never below them.
        if len(payload) > min(self.settings.max_bytes // 2, MAX_ENTRY_BYTES):
            raise SpoolError("too_large", f"request of {len(payload)} bytes exceeds half the spool cap "
                                          f"(or {MAX_ENTRY_BYTES} bytes)")
        if refuse_when_full:
            # Queued and being-written batches count too: the batch on its way to disk is in
            # neither the queue state nor _pending until its write ends (counting it twice
            # meanwhile only refuses a little early; not counting it evicted accepted data).
            pending = sum(len(a.payload) for a in self._pending) + self._writing
            used = total_bytes(self._queues) + pending
            if used + len(payload) > self.settings.max_bytes:
                self.stats.spool_append_errors.labels("full").inc()
                raise SpoolError("full", f"spool is full ({used} of {self.settings.max_bytes} bytes)")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Append(signal, payload, items, checkpoint, fut))
        assert self._wakeup is not None, "spool not open"
        self._wakeup.set()
        await fut

    async def _write_loop(self) -> None:
        assert self._wakeup is not None
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), None if self._healthy() else RECOVERY_INTERVAL)
            except TimeoutError:
                try:
                    await self._on_spool_thread(self._recover_sync)
                except Exception:  # the writer must outlive any one recovery attempt
                    log.exception("spool recovery attempt failed")
                continue
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            self._writing = sum(len(a.payload) for a in batch)
            try:
                await self._on_spool_thread(self._append_sync, batch)
            except SpoolError as e:
                for a in batch:
                    if not a.done.done():
                        a.done.set_exception(e)
                continue
            finally:
                self._writing = 0
            for a in batch:
                if not a.done.done():
                    a.done.set_result(None)
            for signal in {a.signal for a in batch if a.items}:
                for fn in self._listeners:
                    fn(signal)

    def _append_sync(self, batch: list[_Append]) -> None:
        now = time.time()
        try:
            # No new data without the reserve: the room it holds is what lets deliveries free space.
            self._ensure_reserve()
            for signal in {a.signal for a in batch}:
                if signal not in self._queues:
                    self._unopened.setdefault(signal, [])
                    self._open_queue_sync(signal)
            # One transaction per queue: one fsync covers every append in the batch.
            for signal, q in self._queues.items():
                mine = [a for a in batch if a.signal == signal]
                if not mine:
                    continue
                with q.transaction():
                    for a in mine:
                        if a.payload or a.items:
                            q.append(a.payload, a.items, now)
                        if a.checkpoint is not None:
                            q.set_checkpoint(*a.checkpoint)
                    self._eviction.over_cap(self._queues, q)
        except DISK_ERRORS as e:
            self._note_write_failure(e)
            raise SpoolError(self._reason(e), f"spool write failed: {e}") from None
        if not self.writable:
            log.info("spool is writable again")
        self.writable, self.last_error = True, None
        for a in batch:
            self.stats.points_spooled.labels(a.signal).inc(a.items)
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
        self._refuse(reason, e)

    def _refuse(self, reason: str, e: BaseException) -> None:
        """Take no new data until the spool recovers."""
        if self.writable:  # log the transition once, not every failed write
            log.error("spool write failed (%s): %s; new data is refused until it recovers", reason, e)
        self.writable, self.last_error = False, f"{reason}: {e}"

    async def checkpoints(self, signal: Signal) -> dict[str, bytes]:
        """The checkpoints appends of this signal carried, the last one per key. Raises
        SpoolError while the queue that holds them cannot be opened (its data is unknown)."""
        return await self._on_spool_thread(self._checkpoints_sync, signal)  # type: ignore[no-any-return]

    def _checkpoints_sync(self, signal: Signal) -> dict[str, bytes]:
        if signal in self._unopened:
            raise SpoolError("unopened", f"the {signal} queue is not open yet: {self.last_error}")
        q = self._queues.get(signal)
        try:
            return q.checkpoints() if q is not None else {}
        except DISK_ERRORS as e:
            raise SpoolError(self._reason(e), f"spool read failed: {e}") from None

    # -- age limit ---------------------------------------------------------------------------------

    async def enforce_age(self, now: float | None = None) -> None:
        await self._on_spool_thread(self._enforce_age_sync, time.time() if now is None else now)

    def _enforce_age_sync(self, now: float) -> None:
        limit = now - self.settings.max_age
        try:
            for q in self._queues.values():
                if q.state.head_created is None or q.state.head_created >= limit:
                    continue
                self._with_room(functools.partial(self._eviction.older_than, q, limit))
            for q in self._queues.values():
                if not q.state.entries:  # a drained backlog's file shrinks a step at each pass
                    q.reclaim()
        except DISK_ERRORS as e:
            self._note_write_failure(e)
        self._update_gauges()

    # -- reading and acknowledging -----------------------------------------------------------------

    def signals(self) -> list[Signal]:
        return list(self._queues)

    def cursor(self, dest: str, signal: Signal) -> int:
        q = self._queues.get(signal)
        return q.state.cursors[dest].seq if q else 0

    async def lease(self, dest: str, signal: Signal, after: int, max_bytes: int) -> Lease | None:
        """Oldest entries after seq `after` (or the destination's cursor) up to max_bytes."""
        return await self._on_spool_thread(self._lease_sync, dest, signal, after, max_bytes)  # type: ignore[no-any-return]

    def _lease_sync(self, dest: str, signal: Signal, after: int, max_bytes: int) -> Lease | None:
        q = self._queues.get(signal)
        if q is None:
            return None
        after = max(after, q.state.cursors[dest].seq)
        while True:
            entries = q.read(after, max_bytes)
            if not entries:
                return None
            lease = Lease(signal, entries[0].seq, entries[-1].seq, entries, q.cursor_after(entries[-1].seq))
            if entries[0].damaged is None:
                self._eviction.leased(dest, signal, lease.last)
                return lease
            if after != q.state.cursors[dest].seq:
                # Batches before it are still on the wire: moving the cursor past the damaged
                # entry would acknowledge them too. It is put aside once they are.
                return None
            self._put_damaged_aside(dest, q, lease)
            after = lease.last

    def _put_damaged_aside(self, dest: str, q: SignalQueue, lease: Lease) -> None:
        """An entry whose stored value does not decompress (read() hands it over alone): to
        dead-letter for this destination, as found, and counted, as the shipper does with an
        entry that is not valid OTLP; the queue goes on past it."""
        entry = lease.entries[0]
        reason = f"spooled entry is damaged on disk: {entry.damaged}"
        log.error("%s: %s entry %d: %s; moved to dead-letter", dest, q.signal, entry.seq, reason)
        self._dead_letter_sync(dest, lease, 0, reason)
        self._ack_sync(dest, q.signal, lease.cursor_after)

    async def ack(self, dest: str, lease: Lease) -> None:
        """The destination has accepted (or we dead-lettered) every entry up to lease.last."""
        await self._on_spool_thread(self._ack_sync, dest, lease.signal, lease.cursor_after)

    def _ack_sync(self, dest: str, signal: Signal, cursor: Cursor) -> None:
        self._eviction.delivered(dest, signal, cursor.seq)
        q = self._queues[signal]

        def commit() -> None:
            with q.without_fsync(), q.transaction():
                q.ack(dest, cursor)

        try:
            self._with_room(commit)
            # A queue emptied after a backlog gives its space back; one emptied after each of a
            # steady trickle of small deliveries has little to give, and the appends reuse it.
            # Without the reserve every freed page counts: the filesystem needs it back.
            if not q.state.entries and (q.freed_bytes >= 4 << 20 or not self._reserve.present):
                q.reclaim(force=not self._reserve.present)
        except DISK_ERRORS as e:
            # An ack that did not persist only means a resend after restart: at-least-once.
            log.warning("spool could not record delivery for %s: %s", dest, e)
        self._update_gauges()

    async def dead_letter(self, dest: str, lease: Lease, status: int, reason: str) -> None:
        """Keep a permanently rejected batch aside, with the reason, and count it.
        The caller acknowledges it in order like any delivered lease."""
        await self._on_spool_thread(self._dead_letter_sync, dest, lease, status, reason)

    def _dead_letter_sync(self, dest: str, lease: Lease, status: int, reason: str) -> None:
        if self._deadletter is None:  # not opened yet (the disk full): the batch is dropped, counted
            log.error("could not write dead-letter record for %s: the dead-letter area is not open", dest)
        else:
            self._deadletter.put(dest, lease, status, reason)
        self._eviction.count(dest, "dead_letter", lease.items, len(lease.entries))

    def dead_letters(self) -> list[dict[str, Any]]:
        """Dead-letter records without their payloads (for status and the CLI)."""
        return self._deadletter.records() if self._deadletter is not None else []

    # -- status ------------------------------------------------------------------------------------

    def backlog(self, dest: str) -> tuple[int, int]:
        """(bytes, items) waiting for a destination, over all signals. O(1), from the loop;
        approximate while the spool thread commits (see the module docstring)."""
        b = i = 0
        for state in self._states():
            qb, qi = state.backlog(dest)
            b, i = b + qb, i + qi
        return b, i

    def snapshot(self) -> dict[str, Any]:
        states = self._states()
        return {
            "entries": sum(s.entries for s in states),
            "bytes": sum(s.bytes for s in states),
            "max_bytes": self.settings.max_bytes,
            "oldest_age_seconds": _oldest_age(states),
            "writable": self.writable,
            "last_error": self.last_error,
            "quarantined": self._quarantine_reports(),
            "dropped_points": {
                reason: v for reason, v in self.stats.points_dropped.by_label("reason").items() if v
            },
        }

    def _quarantine_reports(self) -> list[dict[str, Any]]:
        """This start's quarantine reports, and every older quarantine still on disk: a
        quarantined queue is listed until the operator removes it, never forgotten."""
        older = [{**q, "reason": "quarantined before this start"} for q in self._earlier_quarantine]
        return older + self.quarantined

    def _states(self) -> list[QueueState]:
        return [q.state for q in list(self._queues.values())]

    def _update_gauges(self) -> None:
        """Set the spool gauges from the queue states (on the spool thread, after each change)."""
        states = self._states()
        self.stats.spool_entries.set(sum(s.entries for s in states))
        self.stats.spool_bytes.set(sum(s.bytes for s in states))
        self.stats.spool_oldest_age.set(_oldest_age(states))
        for dest in self.destinations:
            self.stats.backlog_bytes.labels(dest).set(sum(s.backlog(dest)[0] for s in states))


def _oldest_age(states: list[QueueState]) -> float:
    oldest = min((s.head_created for s in states if s.head_created), default=None)
    return round(time.time() - oldest, 3) if oldest else 0.0
