"""A scriptable vendor endpoint: a real aiohttp server on loopback, in a thread of the
test process, that answers each request as the test says and records what arrived."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from relay.compression import decompress
from relay.otlp import count_items, parse_request
from tests.loopback import LoopbackApp
from tests.procs import free_port


@dataclass
class Arrival:
    time: float
    path: str
    headers: dict[str, str]
    digest: str
    items: int
    status: int
    body: bytes = b""


Responder = Callable[[int, Arrival], tuple[int, dict[str, str], bytes]]


@dataclass
class Vendor(LoopbackApp):
    responder: Responder
    port: int = field(default_factory=free_port)
    arrivals: list[Arrival] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/metrics", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        wire = await request.read()
        body = decompress(wire, request.headers.get("Content-Encoding", ""), 64 << 20)
        msg = parse_request("metrics", body)
        arrival = Arrival(time.monotonic(), request.path, dict(request.headers),
                          hashlib.sha256(body).hexdigest(), count_items("metrics", msg), 0, body)
        status, headers, resp = self.responder(len(self.arrivals), arrival)
        if status == -1:  # drop the connection without an answer
            if request.transport is not None:
                request.transport.close()
            self.arrivals.append(arrival)
            raise ConnectionResetError("vendor dropped the connection")
        if status >= 1000:  # answer slowly: status + 1000 * seconds
            await asyncio.sleep((status // 1000) / 10)
            status %= 1000
        arrival.status = status
        self.arrivals.append(arrival)
        return web.Response(status=status, headers=headers, body=resp,
                            content_type="application/x-protobuf")

    def accepted(self) -> list[Arrival]:
        return [a for a in self.arrivals if 200 <= a.status < 300]
