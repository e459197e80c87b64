"""What counts as damage (quarantine) and what as a full disk (release the reserve): the
pure classifiers, on the errors SQLite and the OS really raise; and the reserve file."""

from __future__ import annotations

import errno
import os
import sqlite3
import struct
from pathlib import Path

import pytest

from relay.spool import recovery
from relay.spool.reserve import Reserve, is_no_space


def sqlite_error(cls: type[sqlite3.Error], message: str, name: str, code: int) -> sqlite3.Error:
    e = cls(message)
    e.sqlite_errorname, e.sqlite_errorcode = name, code  # type: ignore[attr-defined]
    return e


FULL = sqlite_error(sqlite3.OperationalError, "database or disk is full", "SQLITE_FULL", 13)
SHM = sqlite_error(sqlite3.OperationalError, "disk I/O error", "SQLITE_IOERR_SHMSIZE", 4874)
BUSY = sqlite_error(sqlite3.OperationalError, "database is locked", "SQLITE_BUSY", 5)
IOERR = sqlite_error(sqlite3.OperationalError, "disk I/O error", "SQLITE_IOERR_READ", 266)
CORRUPT = sqlite_error(sqlite3.DatabaseError, "database disk image is malformed", "SQLITE_CORRUPT", 11)
NOTADB = sqlite_error(sqlite3.DatabaseError, "file is not a database", "SQLITE_NOTADB", 26)


@pytest.mark.parametrize("error", [FULL, SHM, BUSY, IOERR, OSError(errno.ENOSPC, "No space left on device"),
                                   OSError(errno.EACCES, "Permission denied")])
def test_a_full_disk_a_lock_or_an_io_error_is_not_damage(error: BaseException) -> None:
    assert not recovery.is_damage(error)


@pytest.mark.parametrize("error", [CORRUPT, NOTADB, recovery.Damaged("integrity check failed: *** page 7"),
                                   struct.error("unpack requires a buffer of 32 bytes")])
def test_sqlite_calling_the_file_corrupt_is_damage(error: BaseException) -> None:
    assert recovery.is_damage(error)


@pytest.mark.parametrize("error, full", [(FULL, True), (SHM, True), (OSError(errno.ENOSPC, "full"), True),
                                         (OSError(errno.EDQUOT, "quota"), True), (BUSY, False), (IOERR, False),
                                         (CORRUPT, False), (OSError(errno.EIO, "io"), False)])
def test_which_errors_mean_the_disk_is_full(error: BaseException, full: bool) -> None:
    assert is_no_space(error) is full


def test_the_integrity_check_of_a_real_file(tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (v BLOB)")
    con.executemany("INSERT INTO t VALUES (?)", [(os.urandom(3000),) for _ in range(200)])
    con.commit()
    con.close()
    recovery.integrity_check(db)  # healthy: no error
    with open(db, "r+b") as f:
        f.seek(db.stat().st_size // 2)
        f.write(os.urandom(16384))
    with pytest.raises(recovery.Damaged):
        recovery.integrity_check(db)


def test_the_reserve_is_made_released_and_made_again(tmp_path: Path) -> None:
    r = Reserve(tmp_path / "reserve", 1 << 20)
    assert not r.present
    assert r.ensure() and r.present
    st = (tmp_path / "reserve").stat()
    assert st.st_size == 1 << 20 and st.st_blocks * 512 >= 1 << 20, "allocated, not sparse"
    assert Reserve(tmp_path / "reserve", 1 << 20).present, "found again after a restart"
    assert r.release() and not (tmp_path / "reserve").exists()
    assert not r.release(), "nothing left to give"
    assert r.ensure() and (tmp_path / "reserve").exists()


def test_salvage_ends_on_a_tree_that_answers_out_of_order(tmp_path: Path) -> None:
    """A damaged B-tree can answer `rowid > n` with a row at or before n; stepping back to it
    looped forever (a real quarantined queue, tests/fixtures/SOURCES.md). Run in a child
    process, so a regression fails on the timeout instead of hanging the suite."""
    import shutil
    import subprocess
    import sys

    queue = tmp_path / "1-metrics"
    queue.mkdir()
    shutil.copyfile(Path(__file__).parents[1] / "fixtures" / "spool_damaged_tree" / "cache.db", queue / "cache.db")
    code = ("import sys; from pathlib import Path; from relay.spool.recovery import salvage; "
            "print(len(salvage(Path(sys.argv[1]))))")
    out = subprocess.run([sys.executable, "-c", code, str(queue)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 0, "the readable entries before the damage are kept"
