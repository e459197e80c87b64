"""Following one log file through rotation: the state machine behind each tailed path.

Owns: reading new lines in budgeted chunks, rename rotation (a rotated file that still has
unread lines is finished first), copytruncate, delete-and-recreate, joining continuation
lines to their record, the volume controls (minimum severity, per-file rate limit, line and
record caps, the backlog limit of a file first seen), and each file's figures for /status.
Tail is one state machine whose invariants (a position is where the next whole record
starts) hold across all of it, so it stays whole, in one module of about 520 lines.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.sources.base import Checkpointed
from relay.sources.log_files import (
    KEY_PREFIX,
    Identity,
    Position,
    _open,
    _OpenFile,
    matches,
    rotated_siblings,
)
from relay.sources.log_parse import Header, Record, RecordBatch, logger_and_body, parse_header

log = logging.getLogger("relay.sources")

MULTILINE_WAIT = 1.0  # seconds without new data before a record's continuation is taken as complete
CHUNK = 256 * 1024
READ_BUDGET = 4 * 1024 * 1024  # bytes read from one file per collection; the rest waits for the next
REQUEST_BYTES = 512 * 1024  # body bytes per spooled request

# Why records were not shipped (`rotated_away` counts files, not records: what they still held is unknown).
DROP_REASONS = ("severity", "rate_limit", "binary", "record_too_large", "rotated_away")


@dataclass(frozen=True)
class FileRules:
    min_severity: int
    max_records_per_second: int
    max_line_bytes: int
    max_record_bytes: int
    initial_backlog_bytes: int


@dataclass
class _Pending:
    """A record whose lines are still coming."""

    header: Header
    start: int  # file offset of its first line
    lines: list[str] = field(default_factory=list)
    size: int = 0
    cut: bool = False  # continuation lines were dropped at max_record_bytes


class Tail:
    """One tailed path and the chain of files it names over time. Used from one thread at a time."""

    def __init__(self, path: str, rules: FileRules, saved: Position | None, history: bool) -> None:
        self.path = path
        self.key = KEY_PREFIX + path
        self.rules = rules
        self.file: _OpenFile | None = None
        self.rotated = False  # the open file is no longer at `path`: read it to its end, then move on
        self.read_pos = 0
        self.line_start = 0
        self.line_buf = bytearray()
        self.skipping = False
        self.pending: _Pending | None = None
        self.last_data = time.monotonic()
        self.durable = saved  # the position the spool has
        self.durable_raw = saved.encode() if saved is not None else None
        self.handed_out: bytes | None = None  # the last position returned in a Checkpointed
        self.seen_size = 0  # the open file's size when last looked at
        self._history = history  # a file with no saved position is history: the backlog limit applies
        self.records = 0
        self.lines = 0
        self.bytes_read = 0
        self.dropped: Counter[str] = Counter()
        self.truncated_lines = 0
        self.unparsed = 0
        self.backlog_skipped_bytes = 0
        self.last_record_time: float | None = None
        self.last_error: str | None = None
        self._tokens = float(2 * rules.max_records_per_second)
        self._tokens_at = 0
        self._batch: RecordBatch | None = None
        self._out: list[tuple[RecordBatch | None, Position]] = []
        self._finished: Position | None = None  # a rotated file read to its end, none after it yet
        self._resource: Mapping[str, Any] = {}

    # -- where to read ---------------------------------------------------------------------------

    def _start(self) -> None:
        """Open the file the position names (found again after a rotation), or the path."""
        pos = self._finished or self.durable
        self._reset_parse()
        if pos is not None and pos.finished_mtime_ns:
            self._open_next(pos)
            return
        f = _open(self.path)
        if pos is None:
            if f is None:
                self._history = False  # it appears later: everything in it is new
                return
            st = os.fstat(f.fd)
            if st.st_size == 0:
                # Nothing to know it by yet: wait as if after a file finished just before it.
                f.close()
                self._history = False
                self._finished = Position(Identity(0, 0, 0, ""), 0, False, st.st_mtime_ns - 1)
                return
            size = st.st_size
            if self._history and size > self.rules.initial_backlog_bytes:
                start = size - self.rules.initial_backlog_bytes
                self.backlog_skipped_bytes += start
                self._use(f, start, True, rotated=False)  # mid-line: from the next line start
            else:
                self._use(f, 0, False, rotated=False)
            return
        if f is not None and pos.ident.same_inode(os.fstat(f.fd)) and matches(f.fd, pos.ident) \
                and os.fstat(f.fd).st_size >= pos.offset:
            self._use(f, pos.offset, pos.skipping, rotated=False)
            return
        # Renamed away with unread lines, or truncated after a copy (copytruncate): found again
        # by inode and fingerprint, or by the fingerprint of the copy.
        found = self._find_moved(pos) or self._find_copy(pos)
        if found is not None:
            if f is not None:
                f.close()
            self._use(found, pos.offset, pos.skipping, rotated=True)
            return
        if f is not None:
            # Not the file last read, which is nowhere beside it: a new file (or one deleted and
            # created again), read from its start. The old one's unread end, if any, is gone.
            self._lost(f"the file last read as {self.path} is gone (rotated away, compressed or deleted)")
            self._use(f, 0, False, rotated=False)

    def _open_next(self, finished: Position) -> bool:
        """Open the file after a finished one: the oldest rotated after it, else the one at the
        path once it has a first line (an empty file has no fingerprint: were it copied and
        truncated before it is read, its first lines could not be found again). False: none yet."""
        i = finished.ident
        nxt = self._next_after((i.dev, i.ino, finished.finished_mtime_ns))
        if nxt is not None and not self.rotated and os.fstat(nxt.fd).st_size == 0:
            nxt.close()
            nxt = None
        if nxt is None:
            self._finished = finished
            return False
        self._use(nxt, 0, False, rotated=self.rotated)
        return True

    def _use(self, f: _OpenFile, offset: int, skipping: bool, rotated: bool) -> None:
        if self.file is not None and self.file is not f:
            self.file.close()
        self.file, self.rotated = f, rotated
        self.seen_size = 0
        self._finished = None
        self.read_pos = self.line_start = offset
        self.skipping = skipping
        self.line_buf.clear()

    def _find_moved(self, pos: Position) -> _OpenFile | None:
        for path, st in rotated_siblings(self.path):
            if pos.ident.same_inode(st):
                f = _open(path)
                if f is not None and pos.ident.same_inode(os.fstat(f.fd)) and matches(f.fd, pos.ident):
                    return f
                if f is not None:
                    f.close()
        return None

    def _find_copy(self, pos: Position) -> _OpenFile | None:
        """The newest sibling that begins as the saved file did and reaches its offset: the copy
        copytruncate made before it truncated the file."""
        best: tuple[int, str] | None = None
        for path, st in rotated_siblings(self.path):
            if st.st_size < pos.offset or pos.ident.same_inode(st):
                continue
            f = _open(path)
            if f is None:
                continue
            try:
                if matches(f.fd, pos.ident) and (best is None or st.st_mtime_ns > best[0]):
                    best = (st.st_mtime_ns, path)
            finally:
                f.close()
        return _open(best[1]) if best else None

    def _next_after(self, done: tuple[int, int, int]) -> _OpenFile | None:
        """After a rotated file: a sibling newer than it (rotated more than once since), oldest
        first, else the file now at the path, read from its start."""
        current = None
        try:
            current = os.stat(self.path)
        except OSError:
            pass
        newer = sorted(
            ((st.st_mtime_ns, st.st_ino), p) for p, st in rotated_siblings(self.path)
            if (st.st_dev, st.st_ino) != done[:2]
            and (current is None or (st.st_dev, st.st_ino) != (current.st_dev, current.st_ino))
            and (st.st_mtime_ns, st.st_ino) > (done[2], done[1])
        )
        for _, p in newer:
            f = _open(p)
            if f is not None:
                self.rotated = True
                return f
        self.rotated = False
        return _open(self.path)

    def _lost(self, why: str) -> None:
        self.dropped["rotated_away"] += 1
        log.warning("log file: %s; any lines it still held are lost", why)

    # -- reading ---------------------------------------------------------------------------------

    def read(self, now_ns: int, resource: Mapping[str, Any]) -> list[Checkpointed]:
        """New records since the last call, each request with the position it reads up to."""
        if self.handed_out is not None and self.handed_out != self.durable_raw:
            # The last positions handed out were not spooled: read again from the durable one.
            self.close()
        try:
            return self._read(now_ns, resource)
        except BaseException:
            self.close()  # whatever was read in this call is read again from the durable position
            raise

    def _read(self, now_ns: int, resource: Mapping[str, Any]) -> list[Checkpointed]:
        if self.file is None:
            self._start()
        self._out = []
        self._batch = None
        self._resource = resource
        budget = READ_BUDGET
        while self.file is not None and budget > 0:
            got = self._read_some(budget, now_ns)
            budget -= got
            if got:
                continue
            if not self._at_end(now_ns):
                break
        last = self._out[-1][1] if self._out else self._last_position()
        if self._batch is not None or self._position() != last:
            self._cut()  # records, or only a new position (lines filtered out, another file)
        checkpoints = [Checkpointed(b.finish() if b is not None else None, self.key, p.encode())
                       for b, p in self._out]
        self._out = []
        if checkpoints:
            self.handed_out = checkpoints[-1].position
        return checkpoints

    def _last_position(self) -> Position | None:
        if self.handed_out is not None:
            return Position.decode(self.handed_out)
        return self.durable

    def _read_some(self, budget: int, now_ns: int) -> int:
        f = self.file
        assert f is not None
        # A renamed file too: it may have been truncated (copytruncate) before it was renamed.
        try:
            size = os.fstat(f.fd).st_size
            same = size >= self.read_pos and f.refresh_fingerprint()
            self.seen_size = max(self.seen_size, size) if same else self.seen_size
        except OSError as e:
            self.last_error = f"{e.__class__.__name__}: {e}"
            return 0
        if not same:
            self._truncated()  # now reading the copy, or the file again from its start
            return self._read_some(budget, now_ns)
        try:
            data = os.pread(f.fd, min(CHUNK, budget), self.read_pos)
        except OSError as e:
            self.last_error = f"{e.__class__.__name__}: {e}"
            return 0
        if not data:
            return 0
        self.last_error = None
        self.last_data = time.monotonic()
        base = self.read_pos
        self.read_pos += len(data)
        self.bytes_read += len(data)
        self._lines(data, base, now_ns)
        return len(data)

    def _truncated(self) -> None:
        """The open file is shorter than where reading is, or begins otherwise: copytruncate.
        What was not read yet is in the copy, if it is still there; the file's new lines come
        after the copy (it is newer, or at the path). Without a copy, the file from its start."""
        f = self.file
        assert f is not None
        copy = self._find_copy(Position(f.ident, self.read_pos, self.skipping))
        if copy is not None:
            self._use(copy, self.read_pos, self.skipping, rotated=True)  # parsing carries on in the copy
            return
        if self.seen_size > self.read_pos:
            self._lost(f"{self.path} was truncated and no copy of its unread lines was found")
        self._finish_file()
        self.file = None  # the descriptor goes on, with the identity of what it holds now
        self._use(_OpenFile(f.path, f.fd, os.fstat(f.fd)), 0, False, rotated=self.rotated)

    def _at_end(self, now_ns: int) -> bool:
        """At the end of the open file. True if there is something else to read now."""
        f = self.file
        assert f is not None
        if self.rotated:
            self._finish_file()
            done = os.fstat(f.fd)
            f.close()
            self.file = None
            return self._open_next(Position(f.ident, 0, False, done.st_mtime_ns))
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        if st is not None and not f.ident.same_inode(st):
            # Renamed away (or deleted) and a new file in its place. Read the old one to its end
            # once more: lines may have reached it between the last read and the rename.
            self.rotated = True
            return True
        idle = time.monotonic() - self.last_data >= MULTILINE_WAIT
        if st is None and idle and os.fstat(f.fd).st_nlink == 0:
            # Deleted, and nothing new in it: let it go, or its disk space stays held by this
            # descriptor. A file created at the path later is read from its start.
            self.rotated = True
            return True
        if idle:
            self._flush_idle()
        return False

    def _finish_file(self) -> None:
        """The open file ends here: its last line and record are complete."""
        if self.line_buf and not self.skipping:
            line = bytes(self.line_buf)
            self.line_buf.clear()
            self._line(line, self.line_start, 0)
        self.line_buf.clear()
        self.skipping = False
        self._flush()

    def _flush_idle(self) -> None:
        if self.pending is not None:
            self._flush()
            if self._batch is not None:
                self._cut()

    def _lines(self, data: bytes, base: int, now_ns: int) -> None:
        limit = self.rules.max_line_bytes
        start = 0
        n = len(data)
        while start < n:
            nl = data.find(b"\n", start)
            if nl < 0:
                if not self.skipping:
                    self.line_buf += data[start:]
                    if len(self.line_buf) > limit:
                        head = bytes(self.line_buf[:limit])
                        self.line_buf.clear()
                        self.truncated_lines += 1
                        self._line(head, self.line_start, now_ns)
                        self.skipping = True
                return
            end = base + nl + 1
            if self.skipping:
                self.skipping = False
            else:
                if self.line_buf:
                    self.line_buf += data[start:nl]
                    line = bytes(self.line_buf)
                    self.line_buf.clear()
                else:
                    line = data[start:nl]
                if len(line) > limit:
                    line = line[:limit]
                    self.truncated_lines += 1
                self._line(line, self.line_start, now_ns)
            self.line_start = end
            start = nl + 1
            if self._batch is not None and self._batch.size >= REQUEST_BYTES:
                self._cut()

    def _line(self, raw: bytes, start: int, now_ns: int) -> None:
        self.lines += 1
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if b"\0" in raw:
            # A Kafka log holds no NUL: this is binary, or the zeroes a crash leaves in a file.
            self._flush()
            self.dropped["binary"] += 1
            return
        text = raw.decode("utf-8", "replace")
        header = parse_header(text)
        if header is not None:
            self._flush()
            self.pending = _Pending(header, start, size=len(raw))
            return
        p = self.pending
        if p is not None:
            if p.size + len(raw) > self.rules.max_record_bytes:
                if not p.cut:
                    self.dropped["record_too_large"] += 1
                p.cut = True
                return
            p.lines.append(text)
            p.size += len(raw) + 1
            return
        if not text.strip():
            return  # an empty line outside a record carries nothing
        self.unparsed += 1
        self._emit(Record(now_ns or time.time_ns(), 0, "", "", text))

    def _flush(self) -> None:
        p, self.pending = self.pending, None
        if p is None:
            return
        h = p.header
        logger, body = logger_and_body(h, p.lines)
        if h.severity_number < self.rules.min_severity:
            self.dropped["severity"] += 1
            return
        self._emit(Record(h.time_ns, h.severity_number, h.severity_text, logger, body))

    def _emit(self, r: Record) -> None:
        if not self._take_token(r.time_ns):
            self.dropped["rate_limit"] += 1
            return
        if self._batch is None:
            self._batch = RecordBatch(self._resource, os.path.basename(self.path))
        self._batch.add(r)
        self.records += 1
        self.last_record_time = r.time_ns / 1e9

    def _take_token(self, t_ns: int) -> bool:
        rate = self.rules.max_records_per_second
        if rate == 0:
            return True
        if t_ns > self._tokens_at:
            # By the records' own time: catching up a backlog is not a burst.
            if self._tokens_at:
                self._tokens = min(2.0 * rate, self._tokens + (t_ns - self._tokens_at) / 1e9 * rate)
            self._tokens_at = t_ns
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _position(self) -> Position | None:
        f = self.file
        if f is None:
            return self._finished or self._last_position()
        if self.pending is not None:
            return Position(f.ident, self.pending.start, False)
        if self.skipping:
            return Position(f.ident, self.read_pos, True)
        return Position(f.ident, self.line_start, False)

    def _cut(self) -> None:
        pos = self._position()
        if pos is None:
            return
        self._out.append((self._batch, pos))
        self._batch = None

    def _reset_parse(self) -> None:
        self.pending = None
        self.line_buf.clear()
        self.skipping = False

    def committed(self, position: bytes) -> None:
        self.durable, self.durable_raw = Position.decode(position), position
        self._history = False

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self._reset_parse()
        self.handed_out = None
        self._finished = None

    def snapshot(self) -> dict[str, Any]:
        f = self.file
        size = offset = None
        try:
            size = os.fstat(f.fd).st_size if f is not None else os.stat(self.path).st_size
        except OSError:
            pass
        pos = self._position()
        if f is not None and pos is not None:
            offset = pos.offset
        elif size is not None:
            offset = 0  # waiting for the file's first line (or for it to be read again)
        if f is not None:
            state = "finishing a rotated file" if self.rotated else "following"
        else:
            state = "missing" if size is None else "waiting for a first line"
        return {
            "path": self.path,
            "reading": f.path if f is not None else None,
            "state": state,
            "offset": offset,
            "size": size,
            "lag_bytes": max(0, size - offset) if size is not None and offset is not None else None,
            "durable_offset": self.durable.offset if self.durable is not None else None,
            "records": self.records,
            "lines": self.lines,
            "last_record_time": self.last_record_time,
            "dropped": {reason: self.dropped[reason] for reason in DROP_REASONS},
            "truncated_lines": self.truncated_lines,
            "unparsed_records": self.unparsed,
            "backlog_skipped_bytes": self.backlog_skipped_bytes,
            "last_error": self.last_error,
        }
