"""The Source interface and the runner that schedules one source and spools what it collects.

Owns: the collect-on-schedule loop, the rule that a collection counts only once it is
durably spooled (with the read position it came from, for a source that keeps one), each
source's status (last run, last error, points), the pool that starts runners into one
spool, and the frame the pull sources share (one HTTP target from its settings: name,
session, host name).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from google.protobuf.message import Message

from relay.otlp import Signal, count_items
from relay.secrets import redact
from relay.selfmetrics import SelfMetrics
from relay.source_settings import ScrapeTargetSettings
from relay.sources.scrape_http import ScrapeSession
from relay.spool import Spool, SpoolError

log = logging.getLogger("relay.sources")


@dataclass(frozen=True)
class Checkpointed:
    """A request and the read position it was read up to: the spool commits both in one
    transaction. No message: the position moved past data that made no record (filtered)."""

    message: Message | None
    key: str
    position: bytes


class Source(ABC):
    """Produces OTLP requests on a schedule."""

    name: str
    interval: float
    signal: Signal = "metrics"
    # A source that reads from a position (a tailed file) returns Checkpointed requests; its
    # runner hands it the positions the spool holds before its first run (restore) and
    # tells it each one that became durable (committed).
    checkpoints: bool = False

    @abstractmethod
    async def collect(self) -> Sequence[Message | Checkpointed]:
        """One collection run. Blocking work must run off the event loop."""

    def restore(self, saved: Mapping[str, bytes]) -> None:  # noqa: B027 - only for sources with checkpoints
        """Start from these positions (every checkpoint of this source's signal, by key)."""

    def committed(self, key: str, position: bytes) -> None:  # noqa: B027 - only for sources with checkpoints
        """The spool has this position durably, with the records read up to it."""

    async def close(self) -> None:  # noqa: B027 - optional hook; most sources hold nothing
        """Release connections; called when the source stops."""

    def details(self) -> dict[str, Any]:
        """Source-specific facts for /status (target, what discovery found, ...)."""
        return {}


class ScrapeSource(Source):
    """A source that pulls from one HTTP target (Jolokia, Prometheus), built from its settings."""

    def __init__(self, kind: str, target: ScrapeTargetSettings, password: str | None, interval: float,
                 timeout: float, base_resource: dict[str, Any], name: str | None) -> None:
        self.target = target
        self.interval = interval
        self.timeout = timeout
        self.url_parts = urlsplit(target.url)
        self.name = name or _default_name(kind, self.url_parts.hostname, self.url_parts.port, self.url_parts.path)
        self.host_name = base_resource.get("host.name", socket.gethostname())
        self._http = ScrapeSession(target.url, timeout, target.username, password, target.ca_file,
                                   target.insecure_skip_verify)

    async def close(self) -> None:
        await self._http.close()


class SourceRunner:
    def __init__(self, source: Source, spool: Spool, stats: SelfMetrics) -> None:
        self.source = source
        self.spool = spool
        self.stats = stats
        self.last_run: float | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_points = 0
        self.runs = 0
        self.successes = 0  # runs whose data is durably spooled
        self.errors = 0
        self.succeeded = asyncio.Event()  # set once a run's data was durably spooled
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"source-{self.source.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.source.close()

    async def _loop(self) -> None:
        interval = self.source.interval
        next_run = time.monotonic()
        restored = not self.source.checkpoints
        while True:
            if not restored:
                restored = await self._restore()
            if restored:
                await self.run_once()
            # Keep a fixed cadence; if a run overran, skip the missed slots instead of bunching.
            next_run += interval
            now = time.monotonic()
            if next_run < now:
                next_run = now + interval - ((now - next_run) % interval)
            await asyncio.sleep(next_run - now)

    async def _restore(self) -> bool:
        try:
            self.source.restore(await self.spool.checkpoints(self.source.signal))
        except SpoolError as e:  # nothing is read until its positions are known
            self._failed(f"read positions not loaded: {e}")
            return False
        return True

    async def run_once(self) -> None:
        name = self.source.name
        self.last_run = time.time()
        self.runs += 1
        self.stats.source_runs.labels(name).inc()
        try:
            messages = await self.source.collect()
            points = 0
            for msg in messages:
                if isinstance(msg, Checkpointed):
                    points += await self._append_checkpointed(msg)
                    continue
                # Counting and encoding a scrape's request take milliseconds: off the loop.
                n, payload = await asyncio.to_thread(_encoded, self.source.signal, msg)
                if n == 0:
                    continue
                await self.spool.append(self.source.signal, payload, n)
                points += n
        except SpoolError as e:
            self._failed(f"not spooled: {e}")
            return
        except Exception as e:  # a source bug or bad target must not stop the relay
            self._failed(f"{e.__class__.__name__}: {e}")
            return
        self.stats.points_collected.labels(name).inc(points)
        self.last_points = points
        self.successes += 1
        self.last_success = time.time()
        self.succeeded.set()
        if self.last_error is not None:
            log.info("source %s recovered", name)
        self.last_error = None

    async def _append_checkpointed(self, c: Checkpointed) -> int:
        n, payload = (0, b"") if c.message is None else await asyncio.to_thread(_encoded, self.source.signal, c.message)
        await self.spool.append(self.source.signal, payload, n, checkpoint=(c.key, c.position))
        self.source.committed(c.key, c.position)
        return n

    def _failed(self, message: str) -> None:
        self.errors += 1
        self.stats.source_errors.labels(self.source.name).inc()
        message = redact(message)
        if message != self.last_error:  # once per distinct error, not every interval
            log.warning("source %s: collection failed: %s", self.source.name, message)
        self.last_error = message

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.source.name,
            "interval_seconds": self.source.interval,
            "last_run": self.last_run,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "last_points": self.last_points,
            "runs": self.runs,
            "successes": self.successes,
            "errors": self.errors,
            "points_collected": self.stats.points_collected.total(source=self.source.name),
            **self.source.details(),
        }


class SourceRunners:
    """Starts runners that spool into one spool, and stops them (discovery's pool too)."""

    def __init__(self, spool: Spool, stats: SelfMetrics) -> None:
        self.spool = spool
        self.stats = stats

    def start(self, source: Source) -> SourceRunner:
        runner = SourceRunner(source, self.spool, self.stats)
        runner.start()
        return runner

    async def stop(self, runner: SourceRunner) -> None:
        await runner.stop()

    async def retire(self, runner: SourceRunner) -> None:
        """Stop a discovered source whose JVM is gone. Its self-metric series are named after
        that process (its pid), which will never run again: keeping them would grow /metrics
        and the self-metrics with every broker restart."""
        await runner.stop()
        self.stats.forget_source(runner.source.name)


# Paths the name leaves out: each agent's usual one. Another path is named, so that two targets
# behind one host and port (a proxy, an exporter with several endpoints) get series of their own
# in /status and the self-metrics.
_USUAL_PATHS = frozenset(("", "/", "/metrics", "/jolokia", "/jolokia/"))


def _default_name(kind: str, host: str | None, port: int | None, path: str) -> str:
    return f"{kind} {host}:{port}" + ("" if path in _USUAL_PATHS else path)


def _encoded(signal: Signal, msg: Message) -> tuple[int, bytes]:
    """How many items a collected message holds, and its bytes (none when it holds nothing);
    an EncodedRequest gives both without a decode."""
    n = count_items(signal, msg)
    return n, bytes(msg.SerializeToString()) if n else b""
