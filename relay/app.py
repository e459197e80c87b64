"""Builds the pipeline from settings and runs it: start, reload (SIGHUP), drain and stop.

Owns: wiring sources -> spool -> shippers (relay.sources.build makes the sources), the
status server, the maintenance tick (age limit, gauges, systemd watchdog and STATUS),
and the lifecycle. A reload that fails validation leaves the running pipeline untouched.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
from collections import deque
from typing import Any

import psutil

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

log = logging.getLogger("relay.app")

MAINTENANCE_INTERVAL = 1.0
# The status page's sparklines: one sample every 10 s, 15 minutes of them, in memory.
HISTORY_INTERVAL = 10.0
HISTORY_SAMPLES = 90


class Relay:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.stats = Stats()
        self.started = time.time()
        self.spool: Spool | None = None
        self.runners: list[SourceRunner] = []
        self.shippers: list[Shipper] = []
        self.server: StatusServer | None = None
        self.last_reload: float = self.started
        self.last_reload_error: str | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._maintenance: asyncio.Task[None] | None = None
        self._process = psutil.Process()
        self.resource: dict[str, Any] = {}
        self.signer: Signer | None = None
        self.receiver: OtlpReceiver | None = None
        self.discovery: Discovery | None = None
        self.policies: dict[str, PolicyHolder] = {}
        self.policy_secret = b""
        self.outbox = Outbox(loaded.config.policy.outbox_bytes)
        # (time, {destination: (points shipped, bytes shipped)}, points dropped) samples.
        self.history: deque[tuple[float, dict[str, tuple[float, float]], float]] = deque(maxlen=HISTORY_SAMPLES)

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
        self._sample_history()
        self.server = StatusServer(cfg.server.listen, self.status, self.ready_problems, self.stats.registry,
                                   self.outbox)
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
        systemd.notify("READY=1", f"STATUS={self.summary_line()}")
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
        systemd.notify("READY=1", f"STATUS={self.summary_line()}")

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
                self._sample_history()
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
                systemd.notify(f"STATUS={self.summary_line()}")
            await asyncio.sleep(min(MAINTENANCE_INTERVAL, watchdog or MAINTENANCE_INTERVAL))

    # -- status ------------------------------------------------------------------------------------

    def ready_problems(self) -> list[str]:
        problems: list[str] = []
        if self.spool is None:
            return ["starting"]
        if not self.spool.writable:
            problems.append(f"spool is not writable: {self.spool.last_error}")
        now = time.time()
        for s in self.shippers:
            p = s.ready_problem(now)
            if p:
                problems.append(p)
        return problems

    def _sample_history(self) -> None:
        per_dest = {
            s.name: (Stats.total(self.stats.points_shipped, destination=s.name),
                     Stats.total(self.stats.bytes_shipped, destination=s.name))
            for s in self.shippers
        }
        self.history.append((time.time(), per_dest, Stats.total(self.stats.points_dropped)))

    def _history(self) -> dict[str, Any]:
        """Per destination, [time, points/s, bytes/s] between consecutive samples."""
        series: dict[str, list[list[float]]] = {}
        samples = list(self.history)
        for (t0, d0, _), (t1, d1, _) in itertools.pairwise(samples):
            dt = max(t1 - t0, 1e-6)
            for name, (p1, b1) in d1.items():
                p0, b0 = d0.get(name, (p1, b1))
                series.setdefault(name, []).append([round(t1, 3), round((p1 - p0) / dt, 3), round((b1 - b0) / dt, 3)])
        return {"interval_seconds": HISTORY_INTERVAL, "destinations": series}

    def verdict(self, problems: list[str]) -> dict[str, Any]:
        """healthy, degraded or failing, and why: what the status page's header says."""
        failing: list[str] = []
        degraded = list(problems)
        if self.spool is not None and not self.spool.writable:
            failing.append(f"the spool cannot be written: {self.spool.last_error}")
        for s in self.shippers:
            if s.policy is not None and s.policy.current is None:
                failing.append(f"destination {s.name}: no valid redaction policy, nothing ships")
        for r in self.runners + (self.discovery.runners() if self.discovery else []):
            if r.last_error:
                degraded.append(f"source {r.source.name}: {r.last_error}")
        for h in self.policies.values():
            if h.current is not None and h.error:
                degraded.append(f"policy edit refused, previous policy in force: {h.error}")
        if self.history:
            dropped = Stats.total(self.stats.points_dropped) - self.history[0][2]
            if dropped > 0:
                degraded.append(f"{dropped:.0f} points left the spool undelivered in the last 15 minutes")
        degraded = [d for d in degraded if d not in failing and not any(d in f for f in failing)]
        state = "failing" if failing else "degraded" if degraded else "healthy"
        return {"state": state, "reasons": failing + degraded}

    def summary_line(self) -> str:
        if self.spool is None:
            return "starting"
        snap = self.spool.snapshot()
        shipped = Stats.total(self.stats.points_shipped)
        ages = [time.time() - s.state.last_success for s in self.shippers if s.state.last_success]
        last = f"{min(ages):.0f}s ago" if ages else "never"
        return (
            f"shipped {shipped:.0f} points, backlog {snap['bytes']} B in {snap['entries']} entries, "
            f"last export {last}"
        )

    def status(self) -> dict[str, Any]:
        now = time.time()
        problems = self.ready_problems()
        mem = self._process.memory_info()
        return {
            "version": __version__,
            "uptime_seconds": round(now - self.started, 3),
            "ready": not problems,
            "problems": problems,
            "verdict": self.verdict(problems),
            "history": self._history(),
            "config": {
                "path": self.loaded.path,
                "last_reload": self.last_reload,
                "last_reload_error": self.last_reload_error,
            },
            "resource": self.resource,
            "process": {"pid": os.getpid(), "rss_bytes": mem.rss},
            "sources": [r.snapshot() for r in self.runners + (self.discovery.runners() if self.discovery else [])],
            "discovery": self.discovery.snapshot() if self.discovery else None,
            "receivers": [self.receiver.snapshot()] if self.receiver else [],
            "spool": self.spool.snapshot() if self.spool else None,
            "destinations": [s.snapshot(now) for s in self.shippers],
            "policies": [h.snapshot() for h in self.policies.values()],
        }
