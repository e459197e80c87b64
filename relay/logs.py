"""Logging setup: journald with structured fields under systemd, readable stderr lines
otherwise; secrets masked in every record, and a per-message rate limit against floods.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time

from relay.secrets import redact


class RedactingFormatter(logging.Formatter):
    """Formats normally, then masks every registered secret, tracebacks included."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RateLimitFilter(logging.Filter):
    """At most `burst` records per message template per `window` seconds; the next
    record after a quiet spell says how many were suppressed."""

    def __init__(self, burst: int = 10, window: float = 60.0) -> None:
        super().__init__()
        self.burst, self.window = burst, window
        self._seen: dict[tuple[str, str], list[float]] = {}  # key -> [window start, count, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        state = self._seen.get(key)
        if state is None or now - state[0] > self.window:
            suppressed = int(state[2]) if state else 0
            self._seen[key] = [now, 1, 0]
            if len(self._seen) > 2000:  # bound memory for pathological callers
                self._seen.clear()
            if suppressed:
                record.msg = f"{record.msg} (and {suppressed} similar messages suppressed)"
            return True
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False


class JournalFields(logging.Filter):
    """Structured journald fields: COMPONENT (the logger), ERROR_CLASS (an exception's type)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.COMPONENT = record.name.removeprefix("relay.")
        if record.exc_info and record.exc_info[0] is not None:
            record.ERROR_CLASS = record.exc_info[0].__name__
        return True


def _journal_handler() -> logging.Handler | None:
    """A JournalHandler when running under systemd with systemd-python installed."""
    if not (os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID")):
        return None
    try:
        journal = importlib.import_module("systemd.journal")
    except ImportError:
        return None
    handler: logging.Handler = journal.JournalHandler(SYSLOG_IDENTIFIER="telemetry-relay")
    handler.addFilter(JournalFields())
    handler.setFormatter(RedactingFormatter("%(message)s"))
    return handler


def setup(level: str = "info", stream: object = None) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = (None if stream else _journal_handler()) or logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if not isinstance(handler.formatter, RedactingFormatter):
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RateLimitFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp logs every access at INFO; the relay's own counters say more.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
