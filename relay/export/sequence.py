"""Request sequence numbers: which spool entries a request carries, and from which spool.

Owns: the two headers every relay request carries (online or in a bundle), both covered
by its signature (signing.COVERED_WHEN_PRESENT):
  X-Relay-Sequence: <first>-<last>   the spool entry seqs of the signal's queue in the body;
                                     persisted and monotonic, so a retry (after a lost 200,
                                     a restart) carries the same numbers and a 413 split two
                                     sub-ranges of them
  X-Relay-Instance: <id>             a random id made with the spool and kept in it
                                     (<state_dir>/spool/instance-id): a wiped spool, whose
                                     seqs start again from 1, gets a new one
The vendor tells requests apart by (instance, signal, range); see docs/wire-protocol.md.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

__all__ = ["INSTANCE_HEADER", "SEQUENCE_HEADER", "format_range", "headers", "parse_instance", "parse_range",
           "read_instance", "spool_instance"]

SEQUENCE_HEADER = "X-Relay-Sequence"
INSTANCE_HEADER = "X-Relay-Instance"
INSTANCE_FILE = "instance-id"

_RANGE = re.compile(r"^([1-9][0-9]{0,18})-([1-9][0-9]{0,18})$")
_INSTANCE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def format_range(first: int, last: int) -> str:
    return f"{first}-{last}"


def parse_range(value: str) -> tuple[int, int]:
    """(first, last) of an X-Relay-Sequence value. Raises ValueError unless it is
    `<first>-<last>` with 1 <= first <= last."""
    m = _RANGE.match(value.strip())
    if not m or int(m.group(1)) > int(m.group(2)):
        raise ValueError(f"{SEQUENCE_HEADER} must be <first>-<last> with 1 <= first <= last, got {value[:80]!r}")
    return int(m.group(1)), int(m.group(2))


def parse_instance(value: str) -> str:
    """An X-Relay-Instance value, checked for form. Raises ValueError."""
    if not _INSTANCE.match(value.strip()):
        raise ValueError(f"{INSTANCE_HEADER} must be 8 to 64 letters, digits, '-' or '_', got {value[:80]!r}")
    return value.strip()


def headers(instance: str, first: int, last: int) -> dict[str, str]:
    return {SEQUENCE_HEADER: format_range(first, last), INSTANCE_HEADER: instance}


def read_instance(spool_dir: Path) -> str | None:
    """This spool's instance id, or None while it has none (the read-only commands never make one)."""
    try:
        return parse_instance((spool_dir / INSTANCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def spool_instance(spool_dir: Path) -> str:
    """This spool's instance id, made (random, fsynced) the first time the relay ships from it."""
    existing = read_instance(spool_dir)
    if existing:
        return existing
    value = secrets.token_urlsafe(16)
    tmp = spool_dir / f"{INSTANCE_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, spool_dir / INSTANCE_FILE)
    return value
