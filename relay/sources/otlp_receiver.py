"""OTLP/HTTP receiver (default 127.0.0.1:4318): local SDKs and collectors push here.

Owns: POST /v1/metrics, /v1/logs and /v1/traces in protobuf or JSON, with gzip, zstd or
no Content-Encoding, and the OTLP/HTTP answers. A 200 is sent only once the spool has
the data durably on disk. Bad input is answered 400 (or 413, 415) with a google.rpc.Status
body and counted by reason; a full spool under when_full: block answers 503 with
Retry-After so well-behaved clients back off and keep their data.
"""

from __future__ import annotations

import hmac
import json
import logging
import ssl
from typing import Any, Literal

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, status_pb2

from relay.compression import BadEncoding, BodyTooLarge, decompress
from relay.config import OtlpReceiverSettings
from relay.otlp import SIGNAL_INFO, SIGNALS, BadJson, Signal, count_items, from_json
from relay.schema import split_host_port
from relay.secrets import redact
from relay.spool import Spool, SpoolError
from relay.stats import Stats
from relay.tls import server_context

log = logging.getLogger("relay.receiver")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
RETRY_AFTER_FULL = "5"
RETRY_AFTER_BUSY = "1"


class OtlpReceiver:
    name = "otlp"

    def __init__(self, settings: OtlpReceiverSettings, token: str | None, spool: Spool, stats: Stats,
                 when_full: Literal["block", "drop_oldest"]) -> None:
        self.settings = settings
        self.token = token
        self.spool = spool
        self.stats = stats
        self.when_full = when_full
        self._busy = 0
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        # aiohttp must not inflate bodies itself: it has no size cap for that.
        app = web.Application(client_max_size=self.settings.max_body_bytes + 1,
                              handler_args={"auto_decompress": False})
        for signal in SIGNALS:
            app.router.add_post(SIGNAL_INFO[signal].path, self._handler(signal))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = split_host_port(self.settings.listen)
        await web.TCPSite(self._runner, host, port, ssl_context=self._tls()).start()
        log.info("OTLP/HTTP receiver listening on %s://%s:%d%s", "https" if self.settings.tls.cert_file else "http",
                 host, port, " (bearer token required)" if self.token else "")

    def _tls(self) -> ssl.SSLContext | None:
        tls = self.settings.tls
        return server_context(tls) if tls.cert_file and tls.key_file else None

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

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
        try:
            wire = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject(signal, "too_large", 413,
                                f"body exceeds {self.settings.max_body_bytes} bytes", as_json)
        self.stats.receiver_bytes.labels(signal).inc(len(wire))
        try:
            body = decompress(wire, request.headers.get("Content-Encoding", ""), self.settings.max_body_bytes)
        except BodyTooLarge:
            return self._reject(signal, "too_large", 413,
                                f"decompressed body exceeds {self.settings.max_body_bytes} bytes", as_json)
        except BadEncoding as e:
            return self._reject(signal, "bad_encoding", 400, str(e), as_json)
        if len(body) > 1 << 20 and len(body) > self.settings.max_decompression_ratio * max(len(wire), 1):
            return self._reject(signal, "decompression_ratio", 413,
                                f"body inflates {len(body) / max(len(wire), 1):.0f} times; the limit is "
                                f"{self.settings.max_decompression_ratio:g}", as_json)
        if not body:
            return self._reject(signal, "empty", 400, "empty body", as_json)
        try:
            msg = from_json(signal, body) if as_json else self._parse(signal, body)
        except (BadJson, DecodeError) as e:
            reason = "bad_json" if as_json else "bad_protobuf"
            return self._reject(signal, reason, 400, f"cannot decode the {signal} request: {e}", as_json)
        items = count_items(signal, msg)
        if items:
            # Stored as protobuf whatever came in: one format in the spool and on the wire.
            payload = msg.SerializeToString() if as_json else body
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
    def _parse(signal: Signal, body: bytes) -> Message:
        msg = SIGNAL_INFO[signal].request()
        msg.ParseFromString(body)
        return msg

    @staticmethod
    def _ok(signal: Signal, as_json: bool) -> web.Response:
        resp = SIGNAL_INFO[signal].response()
        if as_json:
            return web.Response(text=json_format.MessageToJson(resp) or "{}", content_type=JSON)
        return web.Response(body=resp.SerializeToString(), content_type=PROTOBUF)

    def _reject(self, signal: Signal, reason: str, status: int, message: str, as_json: bool,
                retry_after: str | None = None) -> web.Response:
        self.stats.receiver_rejected.labels(signal, reason).inc()
        log.warning("OTLP %s request refused with %d (%s): %s", signal, status, reason, redact(message))
        code = {400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 413: code_pb2.RESOURCE_EXHAUSTED,
                415: code_pb2.INVALID_ARGUMENT, 503: code_pb2.UNAVAILABLE}.get(status, code_pb2.UNKNOWN)
        st = status_pb2.Status(code=code, message=message)
        headers = {"Retry-After": retry_after} if retry_after else None
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

