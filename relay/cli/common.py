"""What the commands share: exit codes, the errors `main` turns into one line on stderr,
reading a running relay's status server, escaping text that came from outside before it
is printed, and the human formatters for durations, sizes and ages.

JSON output needs no escaping: json.dumps (ensure_ascii, its default) writes every
control character and everything beyond ASCII as a \\uXXXX escape.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

from relay.export.signing import SigningKeyError
from relay.secrets import SecretError
from relay.spool import UnsafeSpoolDirectory
from relay.strict_yaml import SchemaError

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
    """Bad config, usage, secrets or an unsafe spool directory exit 2; a CommandError says its own code."""
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


# C0 controls, DEL and C1 controls: what a terminal acts on (colours, cursor moves, window
# titles, ...) instead of showing.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def escape_controls(value: object) -> str:
    """A value that came from outside (a relay's /status or outbox, the spool, a vendor's
    answer, a file) as it is safe to print: each control character, newline included, shown
    as \\xNN, so the value can neither drive the operator's terminal nor fake a line of output.
    """
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def escape_strings(doc: Any) -> Any:
    """A decoded JSON document (a relay's /status, its outbox, the spool summary) with every
    string in it, keys included, passed through escape_controls: the formatters then print
    any field of it safely, the ones added later too.
    """
    if isinstance(doc, str):
        return escape_controls(doc)
    if isinstance(doc, dict):
        return {escape_controls(k): escape_strings(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [escape_strings(v) for v in doc]
    return doc


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
