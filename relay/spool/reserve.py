"""The space reserve: room kept back on the spool's filesystem for the writes that free space.

Owns: <state_dir>/spool/reserve, a preallocated file of `spool.reserve_bytes`, and when it
is made and given up. A full disk must never keep the relay from recording a delivery,
deleting an entry or opening its queues: each of those writes needs a little room in
SQLite's write-ahead log first, and without it a relay whose own spool filled the disk
would stay stuck. So while the reserve is in place the spool takes new data; when one of
those writes meets a full disk the reserve is released, the write is retried and commits;
and until the reserve can be made again, the spool takes no new data, so the room freed
by deliveries goes back to the filesystem and is not refilled.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class Reserve:
    """The reserve file. Used only from the spool thread."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        try:
            self.present = path.stat().st_size >= size
        except FileNotFoundError:
            self.present = False

    def ensure(self) -> bool:
        """Make the reserve if it is not there; False if the filesystem has no room for it."""
        if self.present:
            return True
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            # Allocated blocks, not a sparse file: the room has to be really held.
            os.posix_fallocate(fd, 0, self.size)
        except OSError as e:
            if e.errno not in NO_SPACE:
                raise
            with contextlib.suppress(OSError):
                self.path.unlink()  # a part-made reserve would hold room nobody can use
            return False
        finally:
            os.close(fd)
        self.present = True
        return True

    def release(self) -> bool:
        """Give the reserve's room back to the filesystem; False if it was not there to give."""
        if not self.present:
            return False
        self.path.unlink(missing_ok=True)
        self.present = False
        return True


def free_bytes(directory: Path) -> int:
    """Room left on the filesystem of `directory` for an unprivileged writer."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


# SQLITE_IOERR_SHMSIZE: no room to make the shared-memory file a reader of a WAL file needs.
_SQLITE_NO_SPACE = ("SQLITE_FULL", "SQLITE_IOERR_SHMSIZE")


def is_no_space(e: BaseException) -> bool:
    """Whether a disk error means the filesystem is full (ENOSPC, or SQLite saying so)."""
    if getattr(e, "errno", None) in NO_SPACE:
        return True
    return getattr(e, "sqlite_errorname", None) in _SQLITE_NO_SPACE or "disk is full" in str(e).lower()
