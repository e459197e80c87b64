"""The bundle destination (`kind: bundle`): a shipper that writes into offline bundles.

Owns: where a bundle destination's requests go instead of the network: each one is
prepared, sequenced and signed exactly as the shipper would POST it (without the API key,
which a file must not carry), for bundle://offline.invalid/v1/<signal>, and added to the
open bundle in `directory` (export/bundle.py). Once it is fsynced there it counts as delivered, and
the spool acknowledges it like a 2xx. The open bundle is closed into its file once it holds
bundle_max_bytes or is bundle_max_age old, when the relay stops, and, after a crash, at
the next start. A write that fails (a full disk) is retried with backoff, like a vendor
that is down: the data waits in the spool.

Everything else, leasing, the policy (fail closed), in-order acknowledgement, status, is
the Shipper's. All bundle I/O runs on one thread of its own: an add cut short by
shutdown still finishes before the bundle is closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from relay.export.bundle import BundleBuilder, open_bundles, target_uri
from relay.export.prepare import PreparedRequest
from relay.export.response import Accepted, Retry, Verdict
from relay.export.shipper import Shipper
from relay.otlp import Signal
from relay.spool import Lease

log = logging.getLogger("relay.export")

__all__ = ["BundleDestination"]


class BundleDestination(Shipper):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.settings.directory and self.signer, "config.validate: a bundle destination has both"
        self.directory = Path(self.settings.directory)
        self._bundle: BundleBuilder | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"bundle-{self.name}")
        self._roller: asyncio.Task[None] | None = None
        self._closed = False
        self.bundles_closed = 0
        self.last_closed: str | None = None

    async def _on_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _open(self) -> None:
        await self._on_thread(self._recover)
        self._roller = asyncio.create_task(self._roll_by_age(), name=f"bundle-roll-{self.name}")

    async def _close(self) -> None:
        if self._closed:  # stop() after a failed start comes twice
            return
        self._closed = True
        if self._roller:
            self._roller.cancel()
            await asyncio.gather(self._roller, return_exceptions=True)
        await self._on_thread(self._close_open_bundle)
        self._executor.shutdown(wait=True)

    async def _send(self, lease: Lease, prepared: PreparedRequest) -> Verdict:
        assert self.signer is not None
        url = target_uri(lease.signal)
        headers = self._request_headers(lease, prepared)
        self.signer.sign("POST", url, headers)
        self.state.last_attempt = start = time.time()
        created = (min(e.created for e in lease.entries), max(e.created for e in lease.entries))
        counts = prepared.outcome.counts if prepared.outcome else {}
        try:
            await self._on_thread(self._add, lease.signal, url, headers, prepared.wire, lease, created, counts)
        except OSError as e:
            return Retry("bundle_write", f"cannot write to the bundle in {self.directory}: {e}")
        self.stats.export_latency.labels(self.name).observe(time.time() - start)
        return Accepted()

    # -- on the bundle thread ----------------------------------------------------------------------

    def _recover(self) -> None:
        """Close what a crash left open: every request in it was acknowledged."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for partial in open_bundles(self.directory):
            self._bundle = BundleBuilder.resume(partial)
            log.warning("%s: closing bundle %s, left open by an earlier run (%d requests)",
                        self.name, self._bundle.id, len(self._bundle.heads))
            self._close_open_bundle()
            if self._bundle is not None:
                raise OSError(f"cannot close the bundle left open in {partial}")

    def _add(self, signal: Signal, url: str, headers: Mapping[str, str], wire: bytes, lease: Lease,
             created: tuple[float, float], counts: Mapping[tuple[str, str], int]) -> None:
        if self._bundle is None:
            self._bundle = BundleBuilder.begin(self.directory, "destination", self.name, self.instance)
        self._bundle.add(signal, url, headers, wire, first=lease.first, last=lease.last, items=lease.items,
                         created=created, redactions=counts)
        if self._bundle.size >= self.settings.bundle_max_bytes:
            self._close_open_bundle()

    def _close_open_bundle(self) -> None:
        """Close the open bundle into its file. A failure is logged and the bundle stays open,
        to be closed again later: its requests are safe in it already."""
        b = self._bundle
        if b is None:
            return
        try:
            path = b.close(self.signer.keys if self.signer else [])
        except OSError as e:
            log.warning("%s: cannot close bundle %s yet (%s); it stays open and is closed later", self.name, b.id, e)
            return
        self._bundle = None
        if path is not None:
            self.bundles_closed += 1
            self.last_closed = path.name
            log.info("%s: wrote bundle %s (%d requests, %d bytes)", self.name, path, len(b.heads), b.size)

    def _close_if_old(self) -> None:
        if self._bundle is not None and time.time() - self._bundle.opened >= self.settings.bundle_max_age:
            self._close_open_bundle()

    async def _roll_by_age(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.settings.bundle_max_age / 4))
            try:
                await self._on_thread(self._close_if_old)
            except Exception:  # the roller must outlive any one failure
                log.exception("%s: closing an old bundle failed", self.name)

    # -- status ------------------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        snap = super().snapshot(now)
        b = self._bundle
        snap["bundle"] = {
            "directory": str(self.directory), "closed": self.bundles_closed, "last_closed": self.last_closed,
            "open": b.id if b else None, "open_requests": len(b.heads) if b else 0, "open_bytes": b.size if b else 0,
        }
        return snap
