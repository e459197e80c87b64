"""Replay state for the verifier: the signature nonces seen within the freshness window.

Owns: the `NonceStore` interface the `Verifier` checks a nonce against (record it, or say
it was seen), and three stores behind it: `MemoryNonces` (forgotten on restart),
`FileNonces` (append-only files in a state directory, so a restart remembers them) and
`RedisNonces` (one Redis shared by every ingest replica: a nonce accepted by one is a
replay to all of them, and to any of them after a restart).

Nonces are kept in slices by expiry time, one slice per window length. A whole slice is
dropped (and its file deleted) once every nonce in it has expired, so pruning never walks
the live entries and no file is ever rewritten.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path
from typing import Protocol

log = logging.getLogger("relay.replay")


class NonceStore(Protocol):
    # True when `add` waits on the network: the ingest then verifies in a worker thread.
    blocking: bool

    def add(self, nonce: str, expires: float, now: float) -> bool:
        """Remember `nonce` until `expires`. False if it is already remembered (a replay).
        Raises NoncesUnavailable when the store cannot say (the ingest answers 503)."""
        ...


class NoncesUnavailable(Exception):
    """The replay state cannot be read or written just now: nothing may be accepted."""


class MemoryNonces:
    """Nonces in memory, in slices by expiry. Safe to call from several threads."""

    blocking = False

    def __init__(self, window: float) -> None:
        self.slice_seconds = max(window, 1.0)
        self._slices: dict[int, dict[str, float]] = {}
        self._lock = threading.Lock()

    def add(self, nonce: str, expires: float, now: float) -> bool:
        with self._lock:
            self._drop_expired(now)
            for entries in self._slices.values():
                seen = entries.get(nonce)
                if seen is not None and seen > now:
                    return False
            number = self._slice_of(expires)
            self._slices.setdefault(number, {})[nonce] = expires
            self._recorded(number, nonce, expires)
            return True

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._slices.values())

    def _slice_of(self, expires: float) -> int:
        return int(expires // self.slice_seconds)

    def _drop_expired(self, now: float) -> None:
        for number in [n for n in self._slices if (n + 1) * self.slice_seconds <= now]:
            del self._slices[number]
            self._dropped(number)

    # Hooks for a store that keeps the slices somewhere as well (called under the lock).
    def _recorded(self, number: int, nonce: str, expires: float) -> None:
        pass

    def _dropped(self, number: int) -> None:
        pass


class FileNonces(MemoryNonces):
    """MemoryNonces, with each slice also appended to <directory>/nonces-<slice>.log.

    Each nonce is written (one os.write to an O_APPEND file, no fsync) before `add`
    returns, so before the request is answered. A killed process loses nothing: the
    kernel holds the written bytes. A power cut or kernel crash can lose what the kernel
    had not yet flushed to disk (typically the last seconds, at most about 30 s by default
    Linux writeback); a request captured in those seconds could be replayed once after
    such a crash, within its window."""

    PREFIX = "nonces-"

    def __init__(self, directory: str | Path, window: float, now: float) -> None:
        super().__init__(window)
        self.dir = Path(directory)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._files: dict[int, int] = {}
        self._load(now)

    def _path(self, number: int) -> Path:
        return self.dir / f"{self.PREFIX}{number}.log"

    def _load(self, now: float) -> None:
        for path in sorted(self.dir.glob(f"{self.PREFIX}*.log")):
            number_text = path.stem.removeprefix(self.PREFIX)
            if not number_text.isdigit():
                continue
            number = int(number_text)
            if (number + 1) * self.slice_seconds <= now:
                path.unlink(missing_ok=True)
                continue
            entries = self._slices.setdefault(number, {})
            for line in path.read_text(encoding="ascii", errors="replace").splitlines():
                expires_text, _, nonce = line.partition(" ")
                try:
                    expires = float(expires_text)
                except ValueError:
                    continue  # a line torn by a crash mid-write
                if nonce and expires > now:
                    entries[nonce] = expires
        if self._slices:
            log.info("replay state: %d nonces still in their window, from %s", len(self), self.dir)

    def _recorded(self, number: int, nonce: str, expires: float) -> None:
        fd = self._files.get(number)
        if fd is None:
            fd = os.open(self._path(number), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._files[number] = fd
        os.write(fd, f"{math.ceil(expires)} {nonce}\n".encode("ascii", "replace"))

    def _dropped(self, number: int) -> None:
        fd = self._files.pop(number, None)
        if fd is not None:
            os.close(fd)
        self._path(number).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()


class RedisNonces:
    """Nonces in a Redis shared by every ingest replica, one key per nonce:
    `SET <prefix><nonce> 1 NX EXAT <expires>`. NX makes check-and-record one atomic step,
    so two replicas handed the same request at the same instant cannot both accept it;
    EXAT makes Redis forget the nonce when its signature could no longer pass the
    freshness check anyway, so nothing here ever prunes.

    Durability is Redis's: with `appendonly yes` (`appendfsync everysec`) a Redis restart
    loses at most the last second of nonces; the ingests themselves keep nothing, so an
    ingest restart loses none. Redis unreachable or failing: NoncesUnavailable, and the
    ingest refuses with 503 rather than accept a request it cannot check."""

    blocking = True

    def __init__(self, url: str, prefix: str = "relay:nonce:", timeout: float = 2.0) -> None:
        import redis

        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)

    def add(self, nonce: str, expires: float, now: float) -> bool:
        if expires <= now:
            return True  # already outside its window: the freshness check refuses it first
        try:
            return bool(self._redis.set(self.prefix + nonce, b"1", nx=True, exat=math.ceil(expires)))
        except self._errors as e:
            raise NoncesUnavailable(f"the shared replay state (Redis) is unavailable: {e}") from None

    def ping(self) -> None:
        """Raises NoncesUnavailable unless Redis answers (checked once at start)."""
        try:
            self._redis.ping()
        except self._errors as e:
            raise NoncesUnavailable(f"the shared replay state (Redis) is unavailable: {e}") from None

    def close(self) -> None:
        self._redis.close()
