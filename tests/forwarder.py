"""A scriptable hop between a relay and the ingest: a real aiohttp server on loopback, in a
thread of the test process, that forwards each request byte for byte (the Host header kept,
so the relay's signature still verifies at the ingest) or does what the test says instead:
answer 200 without forwarding (the request is lost in transit), or forward and then drop
the connection before the answer (a lost 200: the relay retries what the ingest has)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from aiohttp import web

from tests.loopback import LoopbackApp
from tests.procs import free_port

Action = Literal["forward", "swallow", "lose_answer"]
HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass
class Forwarder(LoopbackApp):
    target: str  # the ingest's base URL
    decide: Callable[[int, str, dict[str, str]], Action] = lambda i, path, headers: "forward"
    port: int = field(default_factory=free_port)
    seen: list[tuple[str, str, Action]] = field(default_factory=list)  # (path, X-Relay-Sequence, action)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def on_start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30))

    async def on_stop(self) -> None:
        await self._session.close()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{path:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        wire = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        action = self.decide(len(self.seen), request.path, headers)
        self.seen.append((request.path, headers.get("X-Relay-Sequence", ""), action))
        if action == "swallow":
            return web.Response(status=200, body=b"", content_type="application/x-protobuf")
        try:
            async with self._session.post(self.target + request.path, data=wire, headers=headers) as r:
                body = await r.read()
                answer = web.Response(status=r.status, body=body, headers={
                    k: v for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}})
        except aiohttp.ClientError:
            answer = web.Response(status=502, body=b"the ingest did not answer")
        if action == "lose_answer" and request.transport is not None:
            request.transport.close()
            raise ConnectionResetError("the answer was lost on the way back")
        return answer
