"""The relay's lifecycle: start, reload (SIGHUP), drain and stop.

Owns: the order things start and stop in (spool, status server, pipeline), the signer
and the policies in force, the reload that builds the new pipeline (relay.pipeline)
before it stops the running one and swaps only once the build succeeded, and the
maintenance tick (age limit, policy files, history, systemd watchdog and STATUS). A
reload that fails (config, keys, mapping rule files) leaves the running pipeline
untouched, and /status says why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

from relay import __version__, allocator, systemd
from relay.config import Config, LoadedConfig, key_dir, policy_file
from relay.config import load as load_config
from relay.export.outbox import Outbox
from relay.export.probe_result import load_result as last_connection_check
from relay.export.signing import KeyStore, Signer, SigningKeyError
from relay.identity import base_resource, instance_id
from relay.pipeline import Pipeline, Shared, build
from relay.policy import PolicyHolder, load_secret
from relay.selfmetrics import SelfMetrics
from relay.server import StatusServer
from relay.sources.base import SourceRunner
from relay.spool import Spool
from relay.status import HISTORY_INTERVAL, Snapshots, StatusModel
from relay.strict_yaml import SchemaError

log = logging.getLogger("relay.app")

MAINTENANCE_INTERVAL = 1.0
# A source that cannot collect at all must not keep the unit from starting for longer.
FIRST_COLLECTION_TIMEOUT = 20.0
# Settings a running relay cannot change: they name what it holds open.
RESTART_ONLY = ("state_dir", "server.listen", "sources.otlp.listen", "spool", "destination names")


class Relay:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.stats = SelfMetrics()
        self.status = StatusModel(self.snapshots)
        self.spool: Spool | None = None
        self.shared: Shared | None = None  # what every pipeline generation writes to
        self.pipeline: Pipeline | None = None
        self.server: StatusServer | None = None
        self.resource: dict[str, Any] = {}
        self.signer: Signer | None = None
        self.policies: dict[str, PolicyHolder] = {}
        self.policy_secret = b""
        self.outbox = Outbox(loaded.config.policy.outbox_bytes)
        self.last_reload: float = self.status.started
        self.last_reload_error: str | None = None
        self.last_reload_error_time: float | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._maintenance: asyncio.Task[None] | None = None

    @property
    def config(self) -> Config:
        return self.loaded.config

    # -- building ----------------------------------------------------------------------------------

    def _signer(self, loaded: LoadedConfig) -> Signer | None:
        """The signer for the keys in force (the first key is created if there is none)."""
        s = loaded.config.signing
        if not s.enabled:
            log.warning("request signing is disabled (signing.enabled: false)")
            return None
        return Signer(KeyStore(key_dir(loaded.config), s.rotation_overlap).ensure())

    def _policies_for(self, config: Config) -> dict[str, PolicyHolder]:
        """The policies a config uses, each (re)loaded; a bad file keeps its last good policy in force."""
        paths = {policy_file(config, d) for d in config.destinations}
        holders = {path: holder for path, holder in self.policies.items() if path in paths}
        for path in paths:
            holder = holders.get(path)
            if holder is None:
                holder = holders[path] = PolicyHolder(path, self.policy_secret)
            holder.load()
        return holders

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        state = os.path.abspath(cfg.state_dir)
        os.makedirs(state, mode=0o700, exist_ok=True)
        self.resource = base_resource(instance_id(state, cfg.instance_id))
        self.signer = self._signer(self.loaded)
        self.policy_secret = load_secret(state)
        self.policies = self._policies_for(cfg)
        self.spool = Spool(state, cfg.spool, [d.name for d in cfg.destinations], self.stats)
        await self.spool.open()
        self.shared = Shared(self.spool, self.stats, self.resource, self.outbox)
        self.status.sample_history()
        self.server = StatusServer(cfg.server.listen, self.status, self.stats, self.outbox)
        await self.server.start()
        self.pipeline = build(self.loaded, self.shared, self.signer, self.policies)
        await self.pipeline.start()
        allocator.settle()  # as the sources begin, so that they reuse what the loaders left
        self._maintenance = asyncio.create_task(self._maintain(), name="maintenance")
        await self._first_collection(self.pipeline.runners)
        systemd.notify("READY=1", f"STATUS={self.status.summary_line()}")
        log.info(
            "telemetry-relay %s running: %d sources, destinations %s",
            __version__, len(self.pipeline.runners), ", ".join(d.name for d in cfg.destinations),
        )

    @staticmethod
    async def _first_collection(runners: list[SourceRunner]) -> None:
        """READY=1 once data flows: the first collection is durably spooled (or, with no
        sources, at once). After FIRST_COLLECTION_TIMEOUT report ready anyway, and let
        /readyz say why nothing collects."""
        if not runners:
            return
        waits = [asyncio.create_task(r.succeeded.wait()) for r in runners]
        done, pending = await asyncio.wait(waits, timeout=FIRST_COLLECTION_TIMEOUT,
                                           return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        if not done:
            log.warning("no source has collected yet; reporting ready anyway, see /status")

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        if os.environ.get("TELEMETRY_RELAY_DEBUG_HOOKS") == "1":
            # For the watchdog test only: SIGUSR2 wedges the event loop for a while.
            seconds = float(os.environ.get("TELEMETRY_RELAY_DEBUG_BLOCK_SECONDS", "2"))
            loop.add_signal_handler(signal.SIGUSR2, lambda: time.sleep(seconds))
        try:
            await self.start()
            while not self._stop.is_set():
                reload_wait = asyncio.create_task(self._reload.wait())
                stop_wait = asyncio.create_task(self._stop.wait())
                await asyncio.wait([reload_wait, stop_wait], return_when=asyncio.FIRST_COMPLETED)
                reload_wait.cancel()
                stop_wait.cancel()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    await self.reload()
        finally:
            # Whatever failed (a start, a swap), the spool is closed and in-flight work counted.
            await self.stop()

    async def stop(self) -> None:
        systemd.notify("STOPPING=1")
        log.info("stopping: collection halted, letting in-flight requests finish (up to %gs)",
                 self.config.shutdown_timeout)
        if self._maintenance:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        if self.pipeline:
            await self.pipeline.stop()
            self.pipeline = None
        if self.spool:
            await self.spool.close()
        if self.server:
            await self.server.stop()
        log.info("stopped; unsent data stays in the spool for the next start")

    async def reload(self) -> None:
        """Build the new pipeline beside the running one; swap only once it is built."""
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={systemd.monotonic_usec()}")
        try:
            new = load_config(self.loaded.path)
            changed = _restart_only_change(self.config, new.config)
            if changed:
                raise _Refused(f"{changed} changed: it takes effect only after a restart")
            signer = self._signer(new)
            policies = self._policies_for(new.config)
            assert self.shared is not None
            pipeline = build(new, self.shared, signer, policies)
            allocator.settle()
        except (SchemaError, SigningKeyError, _Refused) as e:
            self._reload_failed(str(e))
            return
        except Exception as e:  # a bad edit never takes the relay down, whatever it trips over
            self._reload_failed(f"{e.__class__.__name__}: {e}")
            return
        if await self._swap(new, signer, policies, pipeline):
            self.last_reload, self.last_reload_error, self.last_reload_error_time = time.time(), None, None
            log.info("configuration reloaded from %s", new.path)
        systemd.notify("READY=1", f"STATUS={self.status.summary_line()}")

    async def _swap(self, new: LoadedConfig, signer: Signer | None, policies: dict[str, PolicyHolder],
                    pipeline: Pipeline) -> bool:
        """Stop the running pipeline, start the built one. They share the spool and the
        receiver's port, so the old one stops first. Should the new one not start (a TLS
        file, the port), the old pipeline runs again, with its sources as they were."""
        old = self.pipeline
        if old:
            await old.stop()
        try:
            await pipeline.start()
        except Exception as e:
            self._reload_failed(f"the new configuration did not start ({e.__class__.__name__}: {e}); "
                                "the previous one runs again")
            assert self.shared is not None
            self.pipeline = build(self.loaded, self.shared, self.signer, self.policies, old.sources if old else None)
            await self.pipeline.start()  # should this fail too, run_forever stops the relay
            return False
        self.pipeline = pipeline
        self.loaded, self.signer, self.policies = new, signer, policies
        return True

    def _reload_failed(self, error: str) -> None:
        self.last_reload_error, self.last_reload_error_time = error, time.time()
        log.error("reload refused, the running config stays in force: %s", error)
        systemd.notify("READY=1")

    # -- periodic upkeep ---------------------------------------------------------------------------

    async def _maintain(self) -> None:
        watchdog = systemd.watchdog_interval()
        last_age_check = last_status = last_policy_check = last_sample = 0.0
        while True:
            now = time.monotonic()
            if now - last_sample >= HISTORY_INTERVAL:
                last_sample = now
                self.status.sample_history()
            if now - last_policy_check >= self.config.policy.watch_interval:
                last_policy_check = now
                for holder in list(self.policies.values()):
                    if holder.changed_on_disk():
                        holder.load()
            if watchdog:
                # Fed from the loop itself: a wedged loop stops these and systemd restarts us.
                systemd.notify("WATCHDOG=1")
            if now - last_age_check >= 30.0 and self.spool:
                last_age_check = now
                await self.spool.enforce_age()
            if now - last_status >= 10.0:
                last_status = now
                systemd.notify(f"STATUS={self.status.summary_line()}")
            await asyncio.sleep(min(MAINTENANCE_INTERVAL, watchdog or MAINTENANCE_INTERVAL))

    # -- what the status model reads ---------------------------------------------------------------

    def snapshots(self) -> Snapshots:
        """Each running component's own snapshot, for the status model."""
        now = time.time()
        p = self.pipeline
        return Snapshots(
            taken=now,
            config={"path": self.loaded.path, "last_reload": self.last_reload,
                    "last_reload_error": self.last_reload_error,
                    "last_reload_error_time": self.last_reload_error_time},
            resource=self.resource,
            spool=self.spool.snapshot() if self.spool else None,
            destinations=[s.snapshot(now) for s in p.shippers] if p else [],
            sources=[r.snapshot() for r in p.all_runners] if p else [],
            discovery=p.discovery.snapshot() if p and p.discovery else None,
            receivers=[p.receiver.snapshot()] if p and p.receiver else [],
            policies=[h.snapshot() for h in self.policies.values()],
            connection_check=last_connection_check(self.config.state_dir),
            pipeline_started=p.started if p else 0.0,
            ready_thresholds={d.name: d.ready_threshold for d in self.config.destinations},
        )


class _Refused(Exception):
    """A reload asks for what only a restart can do."""


def _restart_only_change(old: Config, new: Config) -> str | None:
    """The first of RESTART_ONLY that differs between two configs, or None."""
    def values(c: Config) -> tuple[Any, ...]:
        return (c.state_dir, c.server.listen, c.sources.otlp.listen, c.spool, [d.name for d in c.destinations])

    for what, a, b in zip(RESTART_ONLY, values(old), values(new), strict=True):
        if a != b:
            return what
    return None
