"""Health and status server (default 127.0.0.1:8788).

Owns: / (the status page, one self-contained HTML file), /healthz (the loop is alive),
/readyz (200 only when config is loaded, the spool is writable and every destination is
keeping up), /status (JSON for scripts and the `status` command), /outbox (what was
shipped) and /metrics (Prometheus text of the self-metrics). What /status and /readyz say
is the status model's (relay.status); this module only serves it. It is served behind the
listener's limits (relay/listener.py), with its Host check always on: /status holds the
host name and machine id, which no web page may read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.export.outbox import Outbox
from relay.listener import Listener, ListenerLimits
from relay.secrets import redact
from relay.selfmetrics import SelfMetrics
from relay.status import StatusModel

log = logging.getLogger("relay.server")

_PAGE = (Path(__file__).parent / "status_page.html").read_text(encoding="utf-8")
# Operators, scripts and a Prometheus scraper: a few connections, each quick.
LIMITS = ListenerLimits(header_timeout=10.0, idle_timeout=30.0, max_connections=64)


def _json(data: Any, status: int = 200) -> web.Response:
    # Redact at the edge too: any secret that slipped into a status string stays masked.
    text = redact(json.dumps(data, indent=2, sort_keys=True, default=str))
    return web.Response(text=text, status=status, content_type="application/json")


class StatusServer:
    def __init__(self, listen: str, model: StatusModel, stats: SelfMetrics, outbox: Outbox | None = None) -> None:
        self._outbox = outbox
        self.listen = listen
        self._model = model
        self._stats = stats
        self._listener: Listener | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status_handler)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/outbox", self._outbox_handler)
        self._listener = Listener("status", app, self.listen, LIMITS, self._stats, check_host=True)
        await self._listener.start()
        log.info("status server listening on http://%s:%d", self._listener.host, self._listener.port)

    async def stop(self) -> None:
        if self._listener:
            await self._listener.stop()
            self._listener = None

    async def _page(self, _: web.Request) -> web.Response:
        # One self-contained file: no external assets, for air-gapped hosts.
        return web.Response(text=_PAGE, content_type="text/html", headers={
            "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
            "Cache-Control": "no-store",
        })

    async def _healthz(self, _: web.Request) -> web.Response:
        return _json({"status": "alive"})

    async def _readyz(self, _: web.Request) -> web.Response:
        problems = self._model.ready_problems()
        if problems:
            return _json({"ready": False, "reasons": problems}, status=503)
        return _json({"ready": True, "reasons": []})

    async def _status_handler(self, _: web.Request) -> web.Response:
        return _json(self._model.document())

    async def _outbox_handler(self, request: web.Request) -> web.Response:
        """The last shipped requests, decoded from the bytes sent (redacted), newest last, each
        with the fields that did not decode as known ones. ?last=N&payload=0|1&wire=0|1"""
        if self._outbox is None:
            return _json([])
        try:
            last = max(0, min(1000, int(request.query.get("last", "10"))))
        except ValueError:
            return _json({"error": "last must be a whole number"}, status=400)
        with_payload = request.query.get("payload", "1") != "0"
        with_wire = request.query.get("wire", "0") == "1"
        items = self._outbox.last(last)
        # Decoding and JSON-encoding payloads is CPU work: keep it off the event loop.
        data = await asyncio.to_thread(lambda: [Outbox.describe(s, with_payload, with_wire) for s in items])
        return _json(data)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._stats.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
