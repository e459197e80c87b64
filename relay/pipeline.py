"""One config generation's running parts: shippers, sources, the OTLP receiver, discovery.

Owns: building all of them from a loaded config before any starts (that is where the
mapping rule files are read and compiled, so a reload can fail before it stops anything),
starting them in order, and stopping them in the reverse order. What outlives a reload
(the spool, the self-metrics, the resource, the outbox) is handed in as `Shared`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from relay.config import LoadedConfig, policy_file
from relay.export.outbox import Outbox
from relay.export.shipper import Shipper
from relay.export.signing import Signer
from relay.policy import PolicyHolder
from relay.selfmetrics import SelfMetrics
from relay.sources.base import Source, SourceRunner, SourceRunners
from relay.sources.build import build_sources, sources_for
from relay.sources.discovery import Discovery
from relay.sources.otlp_receiver import OtlpReceiver
from relay.spool import Spool


@dataclass(frozen=True)
class Shared:
    """What every pipeline generation writes to and reports through; a reload keeps it."""

    spool: Spool
    stats: SelfMetrics
    resource: dict[str, Any]
    outbox: Outbox


class Pipeline:
    """Built whole, then started. Stopping is safe before (or after a failed) start: each part's stop() is."""

    def __init__(self, shippers: list[Shipper], sources: list[Source], receiver: OtlpReceiver | None,
                 discovery: Discovery | None, pool: SourceRunners) -> None:
        self.shippers = shippers
        self.sources = sources
        self.receiver = receiver
        self.discovery = discovery
        self._pool = pool
        self._runners: list[SourceRunner] = []
        self.started = 0.0

    @property
    def runners(self) -> list[SourceRunner]:
        """The configured sources' runners."""
        return list(self._runners)

    @property
    def all_runners(self) -> list[SourceRunner]:
        """The configured sources' runners, then discovery's."""
        return self._runners + (self.discovery.runners() if self.discovery else [])

    async def start(self) -> None:
        self.started = time.time()
        try:
            for shipper in self.shippers:
                await shipper.start()
            self._runners = [self._pool.start(source) for source in self.sources]
            if self.discovery:
                self.discovery.start()
            if self.receiver:
                await self.receiver.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.receiver:  # stop taking pushes first: nothing is acknowledged that is not spooled
            await self.receiver.stop()
        if self.discovery:
            await self.discovery.stop()
        await asyncio.gather(*(self._pool.stop(r) for r in self._runners))
        self._runners = []
        # Side by side: each shipper may take up to shutdown_timeout to finish what is on the wire.
        await asyncio.gather(*(s.stop() for s in self.shippers))


def build(loaded: LoadedConfig, shared: Shared, signer: Signer | None, policies: dict[str, PolicyHolder],
          sources: list[Source] | None = None) -> Pipeline:
    """A pipeline for a config, not started. Reads and compiles the mapping rule files
    (unless handed the sources to run again); raises SchemaError when one does not load."""
    cfg, spool, stats = loaded.config, shared.spool, shared.stats
    kinds: dict[str, type[Shipper]] = {"https": Shipper}
    if any(d.kind == "bundle" for d in cfg.destinations):  # tarfile and the bundle format only then
        from relay.export.bundle_destination import BundleDestination

        kinds["bundle"] = BundleDestination
    shippers = [
        kinds[d.kind](
            d, loaded.api_keys.get(d.name), spool, stats, cfg.shutdown_timeout, signer=signer,
            proxy_password=loaded.proxy_passwords.get(d.name), policy=policies[policy_file(cfg, d)],
            outbox=shared.outbox)
        for d in cfg.destinations
    ]
    if sources is None:
        sources = build_sources(cfg, shared.resource, stats, loaded.target_passwords)
    o = cfg.sources.otlp
    receiver = OtlpReceiver(o, loaded.receiver_token, spool, stats, when_full=cfg.spool.when_full) \
        if o.enabled else None
    pool = SourceRunners(spool, stats)
    discovery = None
    if cfg.sources.discovery.kafka:
        discovery = Discovery(cfg.sources.discovery.interval,
                              lambda found: sources_for(found, cfg, shared.resource), pool)
    return Pipeline(shippers, sources, receiver, discovery, pool)
