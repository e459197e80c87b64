"""Reference vendor ingest: the receiving half that `make run`, the tests and the benchmarks use.

Owns: accepting OTLP/HTTP protobuf on /v1/{metrics,logs,traces}, verifying each request's
RFC 9421 signature and Content-Digest against trusted keys with the `Verifier` (which
records the nonce in its replay state before the answer; 401/400 otherwise, counted by
reason, never stored), bounded decompression (413 above the cap), decoding, proper OTLP
responses, and storing each accepted request, with the key id that signed it and the
relay instance and sequence range it carried (relay/ingest/store.py). /stats reports counts.
POST /v1/verify takes a relay's connection probe (`telemetry-relay check-connection`):
an OTLP metrics request, checked as data is (key, content type, size, signature with its
nonce, encoding, decoding), answered with the status data would get and a JSON account of
each check; it is never stored or counted as data.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, status_pb2

from relay.compression import BadEncoding, BodyTooLarge, decompress
from relay.export import sequence
from relay.ingest import store
from relay.ingest.verify import Rejected, Verifier
from relay.otlp import SIGNAL_INFO, SIGNALS, Signal, count_items
from relay.schema import split_host_port

log = logging.getLogger("relay.ingest")

PROTOBUF = "application/x-protobuf"


def _status_body(code: int, message: str) -> bytes:
    return bytes(status_pb2.Status(code=code, message=message).SerializeToString())


class Ingest:
    def __init__(
        self, store: str | None, api_key: str | None = None, max_body: int = 64 * 1024 * 1024,
        verifier: Verifier | None = None,
    ) -> None:
        self.store = Path(store) if store else None
        self.api_key = api_key
        self.verifier = verifier
        self.max_body = max_body
        self.counts: dict[str, dict[str, float]] = {
            s: {"requests": 0, "items": 0, "bytes": 0, "header_bytes": 0, "first_at": 0.0, "last_at": 0.0}
            for s in SIGNALS
        }
        self.rejected: dict[str, int] = {}
        self.probes = {"received": 0, "passed": 0}  # connection probes on /v1/verify: never data
        self._write_lock = asyncio.Lock()
        if self.store:
            self.store.mkdir(parents=True, exist_ok=True)

    def app(self) -> web.Application:
        # We decompress ourselves, with a size cap: aiohttp would inflate without one.
        app = web.Application(client_max_size=self.max_body + 1024, handler_args={"auto_decompress": False})
        for signal in SIGNALS:
            app.router.add_post(SIGNAL_INFO[signal].path, self._handler(signal))
        app.router.add_post("/v1/verify", self._verify_probe)
        app.router.add_get("/stats", self._stats)
        app.router.add_get("/healthz", self._healthz)
        return app

    def _reject(self, reason: str, status: int, message: str) -> web.Response:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        log.warning("rejected request (%s): %s", reason, message)
        code = code_pb2.UNAUTHENTICATED if status == 401 else code_pb2.INVALID_ARGUMENT
        if reason in ("too_large",):
            code = code_pb2.RESOURCE_EXHAUSTED
        return web.Response(status=status, body=_status_body(code, message), content_type=PROTOBUF)

    def _handler(self, signal: Signal) -> Any:
        async def handle(request: web.Request) -> web.Response:
            return await self.receive(signal, request)

        return handle

    def _authorized(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        auth = request.headers.get("Authorization", "")
        return hmac.compare_digest(auth.encode(), f"Bearer {self.api_key}".encode())

    async def receive(self, signal: Signal, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._reject("unauthenticated", 401, "missing or wrong bearer token")
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != PROTOBUF:
            return self._reject("content_type", 415, f"unsupported Content-Type {ctype!r}")
        try:
            wire = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject("too_large", 413, "request body too large")
        key_id = None
        if self.verifier is not None:
            try:
                key_id = self.verifier.verify(request.method, str(request.url), request.headers, wire)
            except Rejected as e:
                return self._reject(e.reason, e.status, str(e))
        try:
            _check_sequence(request.headers)
        except ValueError as e:
            return self._reject("bad_sequence", 400, str(e))
        try:
            body = decompress(wire, request.headers.get("Content-Encoding", ""), self.max_body)
        except BodyTooLarge as e:
            return self._reject("too_large", 413, str(e))
        except BadEncoding as e:
            return self._reject("bad_encoding", 400, str(e))
        msg = SIGNAL_INFO[signal].request()
        try:
            msg.ParseFromString(body)
        except DecodeError as e:
            return self._reject("bad_protobuf", 400, f"cannot decode {signal} request: {e}")
        items = count_items(signal, msg)
        if self.store:
            await self._store(signal, msg, request, key_id)
        c = self.counts[signal]
        c["requests"] += 1
        c["items"] += items
        c["bytes"] += len(wire)
        # Request line and headers as they crossed the wire (signature headers included).
        c["header_bytes"] += len(request.method) + len(request.path_qs) + 11 + sum(
            len(k) + len(v) + 4 for k, v in request.raw_headers)
        c["last_at"] = time.time()
        c["first_at"] = c["first_at"] or c["last_at"]
        resp = SIGNAL_INFO[signal].response()
        return web.Response(body=resp.SerializeToString(), content_type=PROTOBUF)

    async def _verify_probe(self, request: web.Request) -> web.Response:
        """A connection probe, checked as data is checked; the first failing check ends it."""
        checks: dict[str, dict[str, Any]] = {}
        self.probes["received"] += 1

        def answer(status: int, failed: tuple[str, str, str] | None = None) -> web.Response:
            if failed:
                check, reason, message = failed
                checks[check] = {"passed": False, "reason": reason, "detail": message}
                log.warning("connection probe failed its %s check (%s): %s", check, reason, message)
            else:
                self.probes["passed"] += 1
            doc = {"checks": checks, "stored": False, "window_seconds": self.verifier.window if self.verifier else None,
                   "failed": {"check": failed[0], "reason": failed[1], "message": failed[2]} if failed else None}
            return web.json_response(doc, status=status)

        if not self._authorized(request):
            return answer(401, ("api_key", "unauthenticated", "missing or wrong bearer token"))
        checks["api_key"] = {"passed": True, "detail": "accepted" if self.api_key else "none required"}
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != PROTOBUF:
            return answer(415, ("content_type", "content_type", f"unsupported Content-Type {ctype!r}"))
        try:
            wire = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return answer(413, ("body", "too_large", "request body too large"))
        if self.verifier is None:
            checks["signature"] = {"passed": False, "detail": "this ingest verifies no signatures (no --trusted-keys)"}
        else:
            try:
                key_id = self.verifier.verify(request.method, str(request.url), request.headers, wire)
            except Rejected as e:
                return answer(e.status, ("signature", e.reason, str(e)))
            checks["signature"] = {"passed": True, "key_id": key_id, "detail": f"verified, key id {key_id}"}
        try:
            body = decompress(wire, request.headers.get("Content-Encoding", ""), self.max_body)
            SIGNAL_INFO["metrics"].request().ParseFromString(body)
        except BodyTooLarge as e:
            return answer(413, ("body", "too_large", str(e)))
        except BadEncoding as e:
            return answer(400, ("body", "bad_encoding", str(e)))
        except DecodeError as e:
            return answer(400, ("body", "bad_protobuf", f"cannot decode a metrics request: {e}"))
        checks["body"] = {"passed": True, "detail": f"{len(wire)} bytes, decoded as an OTLP metrics request"}
        return answer(200)

    async def _store(self, signal: Signal, msg: Message, request: web.Request, key_id: str | None) -> None:
        assert self.store is not None
        record = store.record(request.headers, key_id, "live")
        # JSON-encoding a large request is CPU work: keep it off the loop.
        line = await asyncio.to_thread(store.encode_line, record, msg)
        path = store.path_for(self.store, signal)
        async with self._write_lock:
            await asyncio.to_thread(store.append, path, line)

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response({"signals": self.counts, "rejected": self.rejected, "probes": self.probes})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})


def _check_sequence(headers: Any) -> None:
    """The sequence headers, when a request carries them, in their form (ValueError otherwise)."""
    for name, parse in ((sequence.SEQUENCE_HEADER, sequence.parse_range),
                        (sequence.INSTANCE_HEADER, sequence.parse_instance)):
        value = headers.get(name)
        if value is not None:
            parse(value)


async def serve(listen: str, ingest: Ingest, stop: asyncio.Event, tls: ssl.SSLContext | None = None) -> None:
    runner = web.AppRunner(ingest.app(), access_log=None)
    await runner.setup()
    host, port = split_host_port(listen)
    await web.TCPSite(runner, host, port, ssl_context=tls).start()
    scheme = "https" if tls else "http"
    log.info(
        "ingest listening on %s://%s:%d, %s, storing in %s", scheme, host, port,
        f"verifying signatures against {len(ingest.verifier.trusted)} trusted keys" if ingest.verifier
        else "NOT verifying signatures", ingest.store or "(nowhere)",
    )
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
