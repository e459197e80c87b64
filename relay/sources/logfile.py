"""Log files (a broker's server.log and its siblings) as a source: tailed across rotation,
with durable read positions.

Owns: turning configured and discovered files (a path or a glob) into one Tail each
(log_tail.py; a file configured and discovered too is read once), restoring their read
positions from the spool's checkpoints at start, and collecting in a worker thread. Each
position is spooled in the same transaction as the records read up to it, so after a kill
-9 no line is lost and none is spooled twice (delivery stays at-least-once: a request on the
wire at a kill is sent again). File identity and positions are log_files.py; the layouts
and the records they become are log_parse.py.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from relay.source_settings import LogFileSettings, LogsSettings
from relay.sources.base import Checkpointed, Source
from relay.sources.log_files import COMPRESSED, KEY_PREFIX, Position
from relay.sources.log_parse import SEVERITY_NUMBERS
from relay.sources.log_tail import FileRules, Tail

log = logging.getLogger("relay.sources")


# path -> the source that tails it: a file configured and discovered too is read once.
_claimed: dict[str, LogFileSource] = {}


def file_rules(settings: LogsSettings, f: LogFileSettings) -> FileRules:
    severity = f.min_severity or settings.min_severity
    rate = f.max_records_per_second if f.max_records_per_second is not None else settings.max_records_per_second
    return FileRules(SEVERITY_NUMBERS[severity], rate, settings.max_line_bytes, settings.max_record_bytes,
                     settings.initial_backlog_bytes)


def expand(pattern: str) -> list[str]:
    """The files a configured path names now: itself, or a glob's matches less the rotated
    copies of other matches (server.log.1 beside server.log is read as part of server.log)."""
    if not glob.has_magic(pattern):
        return [pattern]
    found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p) and not p.endswith(COMPRESSED))
    names = set(found)
    return [p for p in found if not any(p != o and p.startswith(o) and p[len(o)] in ".-_" for o in names)]


class LogFileSource(Source):
    """Tails a set of files (paths or globs, each with its rules) into log records."""

    signal = "logs"
    checkpoints = True

    def __init__(self, name: str, files: Iterable[tuple[str, FileRules]], interval: float,
                 resource: Mapping[str, Any]) -> None:
        self.name = name
        self.interval = interval
        self.resource = dict(resource)
        self.files = list(files)
        self.tails: dict[str, Tail] = {}
        self._saved: dict[str, Position] = {}
        self._first_look = True
        self.waiting: list[str] = []  # paths another source already tails

    def restore(self, saved: Mapping[str, bytes]) -> None:
        for tail in self.tails.values():
            tail.close()
        self.tails.clear()
        self._saved = {}
        for key, raw in saved.items():
            if key.startswith(KEY_PREFIX):
                pos = Position.decode(raw)
                if pos is not None:
                    self._saved[key[len(KEY_PREFIX):]] = pos
        self._first_look = True

    def committed(self, key: str, position: bytes) -> None:
        tail = self.tails.get(key[len(KEY_PREFIX):])
        if tail is not None:
            tail.committed(position)

    async def collect(self) -> Sequence[Checkpointed]:
        return await asyncio.to_thread(self.collect_sync)

    def collect_sync(self) -> list[Checkpointed]:
        now_ns = time.time_ns()
        out: list[Checkpointed] = []
        self.waiting = []
        for pattern, rules in self.files:
            for path in expand(pattern):
                tail = self.tails.get(path)
                if tail is None:
                    owner = _claimed.setdefault(path, self)
                    if owner is not self:
                        self.waiting.append(path)
                        continue
                    tail = self.tails[path] = Tail(path, rules, self._saved.get(path), history=self._first_look)
                out.extend(tail.read(now_ns, self.resource))
        self._first_look = False
        return out

    async def close(self) -> None:
        for path, tail in self.tails.items():
            tail.close()
            if _claimed.get(path) is self:
                del _claimed[path]
        self.tails.clear()
        self._first_look = True

    def details(self) -> dict[str, Any]:
        return {"files": [t.snapshot() for t in list(self.tails.values())],
                "already_tailed_elsewhere": list(self.waiting)}
