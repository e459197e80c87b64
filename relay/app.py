"""Builds the pipeline from settings and runs it: start, reload (SIGHUP), drain and stop.

Owns: wiring sources -> spool -> shippers (relay.sources.build makes the sources), the
status server (what it says is relay.status's), the maintenance tick (age limit, history,
systemd watchdog and STATUS), and the lifecycle. A reload that fails validation leaves
the running pipeline untouched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

from relay import __version__, systemd
from relay.config import Config, LoadedConfig, key_dir, policy_file
from relay.config import load as load_config
from relay.export.outbox import Outbox
from relay.export.shipper import Shipper
from relay.export.signing import KeyStore, Signer, SigningKeyError
from relay.identity import base_resource, instance_id
from relay.policy import PolicyHolder, load_secret
from relay.schema import SchemaError
from relay.server import StatusServer
from relay.sources.base import SourceRunner, SourceRunners
from relay.sources.build import build_sources, sources_for
from relay.sources.discovery import Discovery
from relay.sources.otlp_receiver import OtlpReceiver
from relay.spool import Spool
from relay.stats import Stats
from relay.status import HISTORY_INTERVAL, Snapshots, StatusModel

log = logging.getLogger("relay.app")

MAINTENANCE_INTERVAL = 1.0


class Relay:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.stats = Stats()
        self.status = StatusModel(self.snapshots)
        self.pipeline_started = 0.0
        self.spool: Spool | None = None
        self.runners: list[SourceRunner] = []
        self.shippers: list[Shipper] = []
        self.server: StatusServer | None = None
        self.last_reload: float = self.status.started
        self.last_reload_error: str | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._maintenance: asyncio.Task[None] | None = None
        self.resource: dict[str, Any] = {}
        self.signer: Signer | None = None
        self.receiver: OtlpReceiver | None = None
        self.discovery: Discovery | None = None
        self.policies: dict[str, PolicyHolder] = {}
        self.policy_secret = b""
        self.outbox = Outbox(loaded.config.policy.outbox_bytes)

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

    def _load_policies(self) -> None:
        """(Re)load every policy file in use; a bad file keeps its last good policy in force."""
        paths = {policy_file(self.config, d) for d in self.config.destinations}
        for path in paths:
            holder = self.policies.get(path)
            if holder is None:
                holder = self.policies[path] = PolicyHolder(path, self.policy_secret)
            holder.load()
        for path in list(self.policies):
            if path not in paths:
                del self.policies[path]

    async def _start_pipeline(self) -> None:
        assert self.spool is not None
        self.pipeline_started = time.time()
        for d in self.config.destinations:
            shipper = Shipper(
                d, self.loaded.api_keys.get(d.name), self.spool, self.stats, self.config.shutdown_timeout,
                signer=self.signer, proxy_password=self.loaded.proxy_passwords.get(d.name),
                policy=self.policies[policy_file(self.config, d)], outbox=self.outbox,
            )
            await shipper.start()
            self.shippers.append(shipper)
        pool = SourceRunners(self.spool, self.stats)
        cfg, resource = self.config, self.resource
        for source in build_sources(cfg, resource, self.stats, self.loaded.target_passwords):
            self.runners.append(pool.start(source))
        await self._start_receiver()
        if cfg.sources.discovery.kafka:
            self.discovery = Discovery(cfg.sources.discovery.interval,
                                       lambda found: sources_for(found, cfg, resource), pool)
            self.discovery.start()

    async def _start_receiver(self) -> None:
        o = self.config.sources.otlp
        if o.enabled:
            assert self.spool is not None
            self.receiver = OtlpReceiver(o, self.loaded.receiver_token, self.spool, self.stats,
                                         when_full=self.config.spool.when_full)
            await self.receiver.start()

    async def _stop_pipeline(self) -> None:
        if self.receiver:  # stop taking pushes first: nothing is acknowledged that is not spooled
            await self.receiver.stop()
            self.receiver = None
        if self.discovery:
            await self.discovery.stop()
            self.discovery = None
        await asyncio.gather(*(r.stop() for r in self.runners))
        self.runners = []
        await asyncio.gather(*(s.stop() for s in self.shippers))
        self.shippers = []

    async def start(self) -> None:
        cfg = self.config
        state = os.path.abspath(cfg.state_dir)
        os.makedirs(state, mode=0o700, exist_ok=True)
        self.resource = base_resource(instance_id(state, cfg.instance_id))
        self.signer = self._signer(self.loaded)
        self.policy_secret = load_secret(state)
        self._load_policies()
        self.spool = Spool(state, cfg.spool, [d.name for d in cfg.destinations], self.stats)
        await self.spool.open()
        self.status.sample_history()
        self.server = StatusServer(cfg.server.listen, self.status, self.stats.registry, self.outbox)
        await self.server.start()
        await self._start_pipeline()
        self._maintenance = asyncio.create_task(self._maintain(), name="maintenance")
        # READY=1 once data flows: the first collection is durably spooled (or, with no
        # sources, the receiver listens). A source that cannot collect at all must not keep
        # the unit from starting: after a while, report ready and let /readyz say why.
        if self.runners:
            waits = [asyncio.create_task(r.succeeded.wait()) for r in self.runners]
            done, pending = await asyncio.wait(waits, timeout=20.0, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            if not done:
                log.warning("no source has collected yet; reporting ready anyway, see /status")
        systemd.notify("READY=1", f"STATUS={self.status.summary_line()}")
        log.info(
            "telemetry-relay %s running: %d sources, destinations %s",
            __version__, len(self.runners), ", ".join(d.name for d in cfg.destinations),
        )

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        if os.environ.get("TELEMETRY_RELAY_DEBUG_HOOKS") == "1":
            # For the watchdog test only: SIGUSR2 wedges the event loop for a while.
            seconds = float(os.environ.get("TELEMETRY_RELAY_DEBUG_BLOCK_SECONDS", "2"))
            loop.add_signal_handler(signal.SIGUSR2, lambda: time.sleep(seconds))
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
        await self.stop()

    async def stop(self) -> None:
        systemd.notify("STOPPING=1")
        log.info("stopping: collection halted, letting in-flight requests finish (up to %gs)",
                 self.config.shutdown_timeout)
        if self._maintenance:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        await self._stop_pipeline()
        if self.spool:
            await self.spool.close()
        if self.server:
            await self.server.stop()
        log.info("stopped; unsent data stays in the spool for the next start")

    async def reload(self) -> None:
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={systemd.monotonic_usec()}")
        try:
            new = load_config(self.loaded.path)
            signer = self._signer(new)
        except (SchemaError, SigningKeyError) as e:
            self.last_reload_error = str(e)
            log.error("reload refused, the running config stays in force: %s", e)
            systemd.notify("READY=1")
            return
        for what, old_v, new_v in (
            ("state_dir", self.config.state_dir, new.config.state_dir),
            ("server.listen", self.config.server.listen, new.config.server.listen),
            ("sources.otlp.listen", self.config.sources.otlp.listen, new.config.sources.otlp.listen),
            ("spool", self.config.spool, new.config.spool),
            ("destination names", [d.name for d in self.config.destinations],
             [d.name for d in new.config.destinations]),
        ):
            if old_v != new_v:
                self.last_reload_error = f"{what} changed: it takes effect only after a restart"
                log.error("reload refused: %s; the running config stays in force", self.last_reload_error)
                systemd.notify("READY=1")
                return
        await self._stop_pipeline()
        self.loaded, self.signer = new, signer
        self._load_policies()
        await self._start_pipeline()
        self.last_reload, self.last_reload_error = time.time(), None
        log.info("configuration reloaded from %s", new.path)
        systemd.notify("READY=1", f"STATUS={self.status.summary_line()}")

    # -- periodic upkeep ---------------------------------------------------------------------------

    async def _maintain(self) -> None:
        watchdog = systemd.watchdog_interval()
        last_age_check = 0.0
        last_status = 0.0
        last_policy_check = 0.0
        last_sample = 0.0
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
        return Snapshots(
            taken=now,
            config={"path": self.loaded.path, "last_reload": self.last_reload,
                    "last_reload_error": self.last_reload_error},
            resource=self.resource,
            spool=self.spool.snapshot() if self.spool else None,
            destinations=[s.snapshot(now) for s in self.shippers],
            sources=[r.snapshot() for r in self.runners + (self.discovery.runners() if self.discovery else [])],
            discovery=self.discovery.snapshot() if self.discovery else None,
            receivers=[self.receiver.snapshot()] if self.receiver else [],
            policies=[h.snapshot() for h in self.policies.values()],
            pipeline_started=self.pipeline_started,
            ready_thresholds={d.name: d.ready_threshold for d in self.config.destinations},
        )
