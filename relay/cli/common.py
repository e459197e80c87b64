"""What the commands share: exit codes, the errors `main` turns into one line on stderr,
reading a running relay's status server, and the human formatters for durations, sizes
and ages.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from relay.export.signing import SigningKeyError
from relay.schema import SchemaError
from relay.secrets import SecretError
from relay.spool import UnsafeSpoolDirectory

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_STATUS_URL = "http://127.0.0.1:8788"


class CommandError(Exception):
    """A command cannot do what was asked; main prints the message and exits with exit_code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# The expected failures: main prints them as one line (secrets redacted), never a traceback.
USER_ERRORS = (SchemaError, SecretError, SigningKeyError, UnsafeSpoolDirectory, CommandError)


def exit_code(error: Exception) -> int:
    """Bad config, usage or secrets exit 2; a CommandError says its own code."""
    return error.exit_code if isinstance(error, CommandError) else EXIT_USAGE


def fetch(base: str, path: str) -> Any:
    """GET base+path from a running relay's status server and decode the JSON answer.

    An HTTP error answer is still decoded (a 503 /status says why the relay is not ready).
    Raises CommandError (exit 2) when no relay answers at base.
    """
    url = base.rstrip("/") + path
    try:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise CommandError(f"no relay answering at {base}: {getattr(e, 'reason', e)}", EXIT_USAGE) from None


def format_ago(ts: float | None, now: float) -> str:
    return "never" if not ts else f"{format_duration(now - ts)} ago"


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_utc(ts: float) -> str:
    """A timestamp as the commands print it: 'YYYY-MM-DD HH:MM:SS UTC'."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC"
