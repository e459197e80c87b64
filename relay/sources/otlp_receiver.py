"""OTLP/HTTP receiver (default 127.0.0.1:4318): local SDKs and collectors push here.

Owns: POST /v1/metrics, /v1/logs and /v1/traces in protobuf or JSON, with gzip, zstd or
no Content-Encoding, and the OTLP/HTTP answers. A 200 is sent only once the spool has
the data durably on disk. Bad input is answered 400 (or 408, 413, 415) with a google.rpc.Status
body and counted by reason; a full spool under when_full: block, or a full in-memory body
budget (otlp_body.py), answers 503 with Retry-After so well-behaved clients back off and keep
their data. Connections, timeouts and the Host check are the listener's (relay/listener.py).
"""

from __future__ import annotations

import hmac
import json
import logging
import ssl
from typing import Any, Literal

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2

from relay.compression import BadEncoding, BodyTooLarge, decompress
from relay.listener import Listener, ListenerLimits, is_loopback_host
from relay.otlp import SIGNAL_INFO, SIGNALS, BadJson, Signal, count_items, from_json, parse_request
from relay.secrets import redact
from relay.selfmetrics import SelfMetrics
from relay.source_settings import OtlpReceiverSettings
from relay.sources.otlp_body import BodyRefused, ByteBudget, HeldBody, read_body
from relay.spool import Spool, SpoolError
from relay.strict_yaml import split_host_port
from relay.tls import server_context

log = logging.getLogger("relay.receiver")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
RETRY_AFTER_FULL = "5"
RETRY_AFTER_BUSY = "1"


class OtlpReceiver:
    name = "otlp"

    def __init__(self, settings: OtlpReceiverSettings, token: str | None, spool: Spool, stats: SelfMetrics,
                 when_full: Literal["block", "drop_oldest"]) -> None:
        self.settings = settings
        self.token = token
        self.spool = spool
        self.stats = stats
        self.when_full = when_full
        self._busy = 0
        self._budget = ByteBudget(settings.max_body_memory_bytes)
        self._listener: Listener | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        # aiohttp must not inflate bodies itself: it has no size cap for that.
        app = web.Application(client_max_size=self.settings.max_body_bytes + 1,
                              handler_args={"auto_decompress": False})
        for signal in SIGNALS:
            app.router.add_post(SIGNAL_INFO[signal].path, self._handler(signal))
        s = self.settings
        host, port = split_host_port(s.listen)
        # On loopback only local SDKs are expected, so any other Host is a browser page rebinding.
        self._listener = Listener("otlp", app, s.listen, ListenerLimits(s.header_timeout, s.idle_timeout,
                                                                          s.max_connections),
                                  self.stats, check_host=is_loopback_host(host), ssl_context=self._tls())
        await self._listener.start()
        log.info("OTLP/HTTP receiver listening on %s://%s:%d%s", "https" if self.settings.tls.cert_file else "http",
                 host, port, " (bearer token required)" if self.token else "")

    def _tls(self) -> ssl.SSLContext | None:
        tls = self.settings.tls
        return server_context(tls) if tls.cert_file and tls.key_file else None

    async def stop(self) -> None:
        if self._listener:
            await self._listener.stop()
            self._listener = None

    # -- requests ----------------------------------------------------------------------------------

    def _handler(self, signal: Signal) -> Any:
        async def handle(request: web.Request) -> web.Response:
            self._busy += 1
            try:
                return await self._receive(signal, request)
            finally:
                self._busy -= 1

        return handle

    async def _receive(self, signal: Signal, request: web.Request) -> web.Response:
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        as_json = ctype == JSON
        self.stats.receiver_requests.labels(signal).inc()
        if self._busy > self.settings.max_concurrent_requests:
            return self._reject(signal, "busy", 503, "too many concurrent requests", as_json, RETRY_AFTER_BUSY)
        if self.token is not None:
            auth = request.headers.get("Authorization", "")
            if not hmac.compare_digest(auth.encode(), f"Bearer {self.token}".encode()):
                return self._reject(signal, "unauthenticated", 401, "missing or wrong bearer token", as_json)
        if ctype not in (PROTOBUF, JSON):
            return self._reject(signal, "content_type", 415,
                                f"Content-Type must be {PROTOBUF} or {JSON}, got {ctype or 'none'!r}", as_json)
        # The bodies' bytes stay counted against the budget until the spool has them.
        async with HeldBody(self._budget) as held:
            try:
                wire = await read_body(request, held, self.settings.max_body_bytes, self.settings.body_timeout)
            except BodyRefused as e:
                return self._reject(signal, e.reason, e.status, e.message, as_json, e.retry_after,
                                    close=e.status == 408)
            return await self._accept(signal, request, wire, held, as_json)

    async def _accept(self, signal: Signal, request: web.Request, wire: bytes, held: HeldBody,
                      as_json: bool) -> web.Response:
        self.stats.receiver_bytes.labels(signal).inc(len(wire))
        try:
            body = decompress(wire, request.headers.get("Content-Encoding", ""), self.settings.max_body_bytes)
        except BodyTooLarge:
            return self._reject(signal, "too_large", 413,
                                f"decompressed body exceeds {self.settings.max_body_bytes} bytes", as_json)
        except BadEncoding as e:
            return self._reject(signal, "bad_encoding", 400, str(e), as_json)
        if body is not wire:
            try:
                await held.take(len(body), wait=0)  # already inflated: room now, or refuse
            except BodyRefused as e:
                return self._reject(signal, e.reason, e.status, e.message, as_json, e.retry_after)
        if len(body) > 1 << 20 and len(body) > self.settings.max_decompression_ratio * max(len(wire), 1):
            return self._reject(signal, "decompression_ratio", 413,
                                f"body inflates {len(body) / max(len(wire), 1):.0f} times; the limit is "
                                f"{self.settings.max_decompression_ratio:g}", as_json)
        if not body:
            return self._reject(signal, "empty", 400, "empty body", as_json)
        try:
            msg = from_json(signal, body) if as_json else parse_request(signal, body)
        except (BadJson, DecodeError) as e:
            reason = "bad_json" if as_json else "bad_protobuf"
            return self._reject(signal, reason, 400, f"cannot decode the {signal} request: {e}", as_json)
        except RecursionError:  # JSON nested deeper than the parser goes: hostile, not a server fault
            return self._reject(signal, "too_deep", 400, f"the {signal} request is nested too deeply", as_json)
        items = count_items(signal, msg)
        # Stored as protobuf whatever came in: one format in the spool and on the wire.
        payload = msg.SerializeToString() if as_json and items else body
        del msg  # not needed while the spool writes: a large request's parsed copy is freed now
        if items:
            try:
                await self.spool.append(signal, payload, items, refuse_when_full=self.when_full == "block")
            except SpoolError as e:
                retry = RETRY_AFTER_FULL
                return self._reject(signal, f"spool_{e.reason}", 503, f"not accepted, retry later: {e}",
                                    as_json, retry)
        self.stats.receiver_items.labels(signal).inc(items)
        self.stats.points_collected.labels(f"otlp_{signal}").inc(items)
        return self._ok(signal, as_json)

    @staticmethod
    def _ok(signal: Signal, as_json: bool) -> web.Response:
        resp = SIGNAL_INFO[signal].response()
        if as_json:
            return web.Response(text=json_format.MessageToJson(resp) or "{}", content_type=JSON)
        return web.Response(body=resp.SerializeToString(), content_type=PROTOBUF)

    def _reject(self, signal: Signal, reason: str, status: int, message: str, as_json: bool,
                retry_after: str | None = None, close: bool = False) -> web.Response:
        self.stats.receiver_rejected.labels(signal, reason).inc()
        log.warning("OTLP %s request refused with %d (%s): %s", signal, status, reason, redact(message))
        code = {400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 408: code_pb2.DEADLINE_EXCEEDED,
                413: code_pb2.RESOURCE_EXHAUSTED, 415: code_pb2.INVALID_ARGUMENT,
                503: code_pb2.UNAVAILABLE}.get(status, code_pb2.UNKNOWN)
        st = status_pb2.Status(code=code, message=message)
        headers = {"Retry-After": retry_after} if retry_after else {}
        if close:  # the rest of a body that is late may never come: do not wait for it
            headers["Connection"] = "close"
        if as_json:
            return web.Response(status=status, text=json.dumps(json_format.MessageToDict(st)),
                                content_type=JSON, headers=headers)
        return web.Response(status=status, body=st.SerializeToString(), content_type=PROTOBUF, headers=headers)

    # -- status ------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "listen": self.settings.listen, "signals": {}}
        for signal in SIGNALS:
            out["signals"][signal] = {
                "requests": self.stats.receiver_requests.total(signal=signal),
                "items": self.stats.receiver_items.total(signal=signal),
                "bytes": self.stats.receiver_bytes.total(signal=signal),
                "rejected": {reason: v for reason, v in
                             self.stats.receiver_rejected.by_label("reason", signal=signal).items() if v},
            }
        return out

