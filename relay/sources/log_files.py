"""Log files as the tail sees them: which file is which, and where reading stopped.

Owns: a file's identity (device, inode and a fingerprint of its first bytes, so a file
deleted and recreated, or copied by copytruncate, is told apart from the one read before),
the durable read position (Position: which file, what offset, encoded for the spool's
checkpoint), opening a file safely (a regular file only, no link followed into /proc or a
device) and finding its rotated siblings (server.log.1, dated names; compressed ones are
never read).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from typing import NamedTuple

log = logging.getLogger("relay.sources")

FINGERPRINT_BYTES = 1024
KEY_PREFIX = "log:"  # a file's checkpoint key in the spool: KEY_PREFIX + its path
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")


class Identity(NamedTuple):
    dev: int
    ino: int
    fp_len: int
    fp: str  # hex digest of the first fp_len bytes

    def same_inode(self, st: os.stat_result) -> bool:
        return (self.dev, self.ino) == (st.st_dev, st.st_ino)


class Position(NamedTuple):
    """The checkpoint of one tailed path: which file, and where its next record starts. With
    `finished_mtime_ns`, between files: `ident` was rotated and read to its end, and the next
    is the oldest file rotated after it, else the one at the path, from its start."""

    ident: Identity
    offset: int
    skipping: bool  # inside a line cut at max_line_bytes: the rest of it up to a newline is skipped
    finished_mtime_ns: int = 0

    def encode(self) -> bytes:
        return json.dumps({"dev": self.ident.dev, "ino": self.ident.ino, "fp_len": self.ident.fp_len,
                           "fp": self.ident.fp, "offset": self.offset, "skipping": self.skipping,
                           "finished_mtime_ns": self.finished_mtime_ns}).encode()

    @staticmethod
    def decode(raw: bytes) -> Position | None:
        try:
            d = json.loads(raw)
            return Position(Identity(int(d["dev"]), int(d["ino"]), int(d["fp_len"]), str(d["fp"])),
                            int(d["offset"]), bool(d["skipping"]), int(d.get("finished_mtime_ns", 0)))
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: the file is treated as one never seen


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def fingerprint(fd: int) -> tuple[int, str]:
    head = os.pread(fd, FINGERPRINT_BYTES, 0)
    return len(head), _digest(head)


def matches(fd: int, ident: Identity) -> bool:
    """Whether an open file still begins with the bytes the identity was taken from."""
    return _digest(os.pread(fd, ident.fp_len, 0)) == ident.fp if ident.fp_len else True


class _OpenFile:
    """One file being read: its descriptor, identity and where reading is in it."""

    def __init__(self, path: str, fd: int, st: os.stat_result) -> None:
        self.path, self.fd = path, fd
        fp_len, fp = fingerprint(fd)
        self.ident = Identity(st.st_dev, st.st_ino, fp_len, fp)

    def refresh_fingerprint(self) -> bool:
        """False if the file no longer begins as it did (truncated, maybe written again);
        else the fingerprint grows with the file up to FINGERPRINT_BYTES."""
        if not matches(self.fd, self.ident):
            return False
        if self.ident.fp_len < FINGERPRINT_BYTES:
            fp_len, fp = fingerprint(self.fd)
            if fp_len > self.ident.fp_len:
                self.ident = self.ident._replace(fp_len=fp_len, fp=fp)
        return True

    def close(self) -> None:
        os.close(self.fd)


def _open(path: str) -> _OpenFile | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        return _OpenFile(path, fd, st)
    except OSError:
        os.close(fd)
        return None


def rotated_siblings(path: str) -> list[tuple[str, os.stat_result]]:
    """Files beside `path` named after it (server.log.1, server.log.2024-05-01-10, server.log-20240501),
    not compressed: where rotation puts it."""
    d, base = os.path.split(path)
    out: list[tuple[str, os.stat_result]] = []
    try:
        names = os.listdir(d or ".")
    except OSError:
        return out
    for name in names:
        if name == base or not name.startswith(base) or name.endswith(COMPRESSED):
            continue
        if name[len(base)] not in ".-_":
            continue
        full = os.path.join(d, name)
        try:
            st = os.stat(full)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append((full, st))
    return out
