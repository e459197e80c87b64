"""The hardened HTTP listener under the OTLP receiver and the status server.

Owns: what a client can hold of a listener before and between its requests: the header
timeout (a new connection must send a whole request head in time), the idle (keep-alive)
timeout, the cap on open connections (at the cap the oldest idle connection is closed
first, so a flood of idle sockets cannot use up the relay's file descriptors), and the
Host check that stops a web page in the operator's browser from reading a loopback
listener through DNS rebinding (421, counted, logged once).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from relay.selfmetrics import SelfMetrics
from relay.strict_yaml import split_host_port

log = logging.getLogger("relay.listener")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A refused body still in flight is read (and dropped) this long, so an honest client that
# sent too much sees the 413 rather than a reset; a hostile one is cut off soon after.
LINGER_SECONDS = 2.0
# Each listener may use at most this share of the process's file descriptors, so sources,
# the spool and the shipper always have some left.
NOFILE_SHARE = 4


@dataclass(frozen=True)
class ListenerLimits:
    header_timeout: float
    idle_timeout: float
    max_connections: int


def connection_cap(configured: int) -> int:
    """The configured cap, lowered to a share of the open-file limit this process runs under."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(8, min(configured, soft // NOFILE_SHARE))


def is_loopback_host(host: str) -> bool:
    """localhost, or an address in 127.0.0.0/8 or ::1."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_allowed(header: str | None, listen_host: str) -> bool:
    """Whether a request's Host header names this listener: a loopback name or address, or
    the configured listen address. A page served from another name (DNS rebinding) has its
    own name here; the port is the listener's whatever the name, so it is not compared."""
    if not header:
        return False
    header = header.strip()
    if header.startswith("["):  # [v6]:port
        name = header[1:].split("]", 1)[0]
    else:
        name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    listen = listen_host.lower().strip("[]")
    if is_loopback_host(name) or name.lower() == listen:
        return True
    # A wildcard listener is reached by the host's own addresses; an address, unlike a name,
    # cannot be rebound to another server, so a page can only send it to the relay itself.
    return listen in ("0.0.0.0", "::", "") and _is_address(name)


class Listener:
    """An aiohttp application served on host:port behind those limits.

    name labels relay_http_refused_total and the log; check_host turns the Host check on."""

    def __init__(self, name: str, app: web.Application, listen: str, limits: ListenerLimits, stats: SelfMetrics,
                 check_host: bool, ssl_context: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.limits = limits
        self.host, self.port = split_host_port(listen)
        self._ssl = ssl_context
        self._stats = stats
        self._check_host = check_host
        self._host_refusal_logged = False
        self._cap = connection_cap(limits.max_connections)
        self._busy: set[RequestHandler] = set()
        # Every connection, oldest first, from its accept to its close.
        self._open: dict[RequestHandler, _Tracked] = {}
        # New connections whose first request head has not arrived yet.
        self._awaiting_head: set[RequestHandler] = set()
        app.middlewares.insert(0, self._guard)
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=limits.idle_timeout,
                                     lingering_time=LINGER_SECONDS)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, self.host, self.port, ssl=self._ssl,
                                                reuse_address=True)
        if self._cap < self.limits.max_connections:
            log.warning("%s: at most %d open connections (not %d): the open-file limit is %d; raise "
                        "LimitNOFILE", self.name, self._cap, self.limits.max_connections,
                        resource.getrlimit(resource.RLIMIT_NOFILE)[0])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()
        self._server = None

    # -- connections -------------------------------------------------------------------------------

    def _accept(self) -> asyncio.BaseProtocol:
        """The protocol for a new connection: aiohttp's, once there is room for it."""
        server = self._runner.server
        assert server is not None
        # Counted from here, not from aiohttp's list: a burst of accepts is made before any connects.
        if sum(not c.closing for c in self._open.values()) >= self._cap:
            self._stats.http_refused.labels(self.name, "connections").inc()
            idle = next((c for h, c in self._open.items()  # oldest first
                         if not c.closing and h.transport is not None and h not in self._busy), None)
            if idle is None:
                return _Refuse()  # every connection is mid-request: the newcomer waits its turn
            idle.shed()
        handler = server()
        self._open[handler] = conn = _Tracked(handler, self._lost)
        self._awaiting_head.add(handler)
        asyncio.get_running_loop().call_later(self.limits.header_timeout, self._header_deadline, handler)
        return conn

    def _lost(self, handler: RequestHandler) -> None:
        self._open.pop(handler, None)
        self._awaiting_head.discard(handler)

    def _header_deadline(self, handler: RequestHandler) -> None:
        """A connection that has not sent one whole request head by now is a slow (or no) client."""
        if handler in self._awaiting_head:
            self._awaiting_head.discard(handler)
            if handler in self._open:
                self._open[handler].shed()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = request.protocol
        self._awaiting_head.discard(conn)
        self._busy.add(conn)
        try:
            if self._check_host and not host_allowed(request.headers.get("Host"), self.host):
                return self._refuse_host(request)
            return await handler(request)
        finally:
            self._busy.discard(conn)

    def _refuse_host(self, request: web.Request) -> web.Response:
        self._stats.http_refused.labels(self.name, "host").inc()
        if not self._host_refusal_logged:  # a rebinding page retries endlessly: say it once
            self._host_refusal_logged = True
            log.warning("%s: refused a request for Host %r (421): only loopback names and %s are served; a web "
                        "page may be trying to read this listener (DNS rebinding). Further refusals are counted "
                        "in relay_http_refused_total, not logged", self.name,
                        request.headers.get("Host", "")[:100], self.host)
        return web.Response(status=421, text="misdirected request: this listener serves only its own host names\n",
                            headers={"Connection": "close"})


class _Refuse(asyncio.Protocol):
    """Closes a connection at once: the listener is full of requests in progress."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Tracked(asyncio.Protocol):
    """aiohttp's protocol for one connection, passed every event, telling the listener when it ends."""

    def __init__(self, handler: RequestHandler, lost: Callable[[RequestHandler], None]) -> None:
        self.handler = handler
        self.closing = False
        self._lost = lost

    def shed(self) -> None:
        self.closing = True
        self.handler.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.handler.data_received(data)

    def eof_received(self) -> None:
        self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(self.handler)
        self.handler.connection_lost(exc)
