"""Secret values: reading them from files or the environment, and keeping them out of output.

Owns: the process-wide set of known secret strings. Every secret the relay reads is
registered here, and `redact()` (used by the log formatter, /status and error
messages) replaces each occurrence with `***` plus at most its last 4 characters.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

_lock = threading.Lock()
_known: set[str] = set()


class SecretError(Exception):
    """A secret could not be read safely; the message never contains the secret."""


def mask(secret: str) -> str:
    """How a secret is shown: '***' and at most its last 4 characters (none if short)."""
    return "***" + secret[-4:] if len(secret) >= 12 else "***"


def register(secret: str) -> None:
    # Very short strings would mask ordinary words; real keys are long.
    if len(secret) >= 6:
        with _lock:
            _known.add(secret)


def redact(text: str) -> str:
    if not _known:
        return text
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for s in known:
        if s in text:
            text = text.replace(s, mask(s))
    return text


def check_private_file(path: Path, what: str, allow_group: bool) -> None:
    """Refuse a secret file that others (or, if not allow_group, the group) can read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SecretError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise SecretError(f"{what} {path} cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretError(f"{what} {path} is not a regular file")
    forbidden = stat.S_IRWXO if allow_group else (stat.S_IRWXG | stat.S_IRWXO)
    if st.st_mode & forbidden:
        need = "0640 or 0600" if allow_group else "0600"
        raise SecretError(
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must not be readable by "
            f"{'others' if allow_group else 'group or others'} (chmod {need})"
        )


def read_secret(file: str | None, env: str | None, what: str) -> str | None:
    """Read a secret from a file (first line, stripped) or an environment variable."""
    value: str | None = None
    if file:
        path = Path(file)
        check_private_file(path, what, allow_group=True)
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise SecretError(f"{what} {path} cannot be read: {e.__class__.__name__}") from None
        if not value:
            raise SecretError(f"{what} {path} is empty")
    elif env:
        value = os.environ.get(env)
        if not value:
            raise SecretError(f"{what}: environment variable {env} is not set or empty")
        value = value.strip()
    if value:
        register(value)
    return value
