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
With a Kafka publisher (relay/ingest/kafka.py) each accepted request also goes into Kafka,
and is answered 200 only once Kafka acknowledged it (503 with Retry-After while Kafka or the
shared replay state is unavailable, nothing stored); above --rate-limit requests per second,
429 with Retry-After. GET /fleet is the fleet view (relay/ingest/fleet.py), as a page or JSON.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, status_pb2

from relay.compression import BadEncoding, BodyTooLarge, decompress
from relay.export import sequence
from relay.ingest import fleet as fleet_view
from relay.ingest import kafka, store
from relay.ingest.replay import NoncesUnavailable
from relay.ingest.verify import Rejected, Verifier
from relay.otlp import SIGNAL_INFO, SIGNALS, Signal, count_items
from relay.strict_yaml import split_host_port

log = logging.getLogger("relay.ingest")

_FLEET_PAGE = (Path(__file__).parent / "fleet.html").read_text(encoding="utf-8")

PROTOBUF = "application/x-protobuf"


def _status_body(code: int, message: str) -> bytes:
    return bytes(status_pb2.Status(code=code, message=message).SerializeToString())


# The checks a request passes, in the order _admit runs them (the probe's answer names them).
PROBE_CHECKS = ("api_key", "content_type", "signature", "sequence", "body")


class _Refusal(Exception):
    """A request failed one check: which one (PROBE_CHECKS), and the answer it gets. An
    unavailable refusal (the shared replay state is down) is a 503: the relay retries."""

    def __init__(self, check: str, status: int, reason: str, message: str, unavailable: bool = False) -> None:
        super().__init__(message)
        self.check, self.status, self.reason, self.message = check, status, reason, message
        self.unavailable = unavailable


@dataclass
class _Admitted:
    wire: bytes  # as received (compressed)
    body: bytes  # decompressed
    key_id: str | None
    msg: Message


class Ingest:
    def __init__(
        self, store: str | None, api_key: str | None = None, max_body: int = 64 * 1024 * 1024,
        verifier: Verifier | None = None, publisher: kafka.KafkaPublisher | None = None,
        fleet: fleet_view.Fleet | None = None, ledger: kafka.KafkaLedger | None = None, retry_after: int = 5,
        rate_limit: float = 0.0,
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
        self.publisher = publisher
        # Fed here unless a Kafka ledger feeds it from the topics (then it sees every replica's records).
        self.fleet = fleet or fleet_view.Fleet()
        self.ledger = ledger
        self.fleet_fed_here = ledger is None
        self.retry_after = retry_after
        self.unavailable: dict[str, int] = {}
        # Requests per second on the data paths (0: no limit); above it, 429 with Retry-After.
        self.rate_limit = rate_limit
        self._tokens, self._refilled = rate_limit, time.monotonic()
        if self.store:
            self.store.mkdir(parents=True, exist_ok=True)

    def app(self) -> web.Application:
        # We decompress ourselves, with a size cap: aiohttp would inflate without one.
        app = web.Application(client_max_size=self.max_body + 1024, handler_args={"auto_decompress": False})
        for signal in SIGNALS:
            app.router.add_post(SIGNAL_INFO[signal].path, self._handler(signal))
        app.router.add_post("/v1/verify", self._verify_probe)
        app.router.add_get("/stats", self._stats)
        app.router.add_get("/fleet", self._fleet)
        app.router.add_get("/fleet.json", self._fleet_json)
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

    def _within_rate(self) -> bool:
        """A token bucket holding one second's worth of requests."""
        if not self.rate_limit:
            return True
        now = time.monotonic()
        self._tokens = min(self.rate_limit, self._tokens + (now - self._refilled) * self.rate_limit)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def _admit(self, signal: Signal, request: web.Request) -> _Admitted:
        """Every check a request passes before anything of it is kept or published, in order.
        Live requests and connection probes both come through here. Raises _Refusal."""
        if not self._authorized(request):
            raise _Refusal("api_key", 401, "unauthenticated", "missing or wrong bearer token")
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != PROTOBUF:
            raise _Refusal("content_type", 415, "content_type", f"unsupported Content-Type {ctype!r}")
        try:
            wire = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Refusal("body", 413, "too_large", "request body too large") from None
        key_id = None
        if self.verifier is not None:
            try:
                if self.verifier.nonces.blocking:  # a shared replay store: its round trip stays off the loop
                    key_id = await asyncio.to_thread(
                        self.verifier.verify, request.method, str(request.url), request.headers, wire)
                else:
                    key_id = self.verifier.verify(request.method, str(request.url), request.headers, wire)
            except Rejected as e:
                raise _Refusal("signature", e.status, e.reason, str(e)) from None
            except NoncesUnavailable as e:
                raise _Refusal("signature", 503, "replay_state", str(e), unavailable=True) from None
        try:
            _check_sequence(request.headers)
        except ValueError as e:
            raise _Refusal("sequence", 400, "bad_sequence", str(e)) from None
        try:
            body = decompress(wire, request.headers.get("Content-Encoding", ""), self.max_body)
        except BodyTooLarge as e:
            raise _Refusal("body", 413, "too_large", str(e)) from None
        except BadEncoding as e:
            raise _Refusal("body", 400, "bad_encoding", str(e)) from None
        msg = SIGNAL_INFO[signal].request()
        try:
            msg.ParseFromString(body)
        except DecodeError as e:
            raise _Refusal("body", 400, "bad_protobuf", f"cannot decode {signal} request: {e}") from None
        return _Admitted(wire, body, key_id, msg)

    async def receive(self, signal: Signal, request: web.Request) -> web.Response:
        if not self._within_rate():
            self.unavailable["rate_limited"] = self.unavailable.get("rate_limited", 0) + 1
            return web.Response(status=429, body=_status_body(code_pb2.RESOURCE_EXHAUSTED, "over the request rate"),
                                content_type=PROTOBUF, headers={"Retry-After": str(self.retry_after)})
        try:
            a = await self._admit(signal, request)
        except _Refusal as e:
            return self._unavailable(e.reason, e.message) if e.unavailable else self._reject(e.reason, e.status,
                                                                                             e.message)
        wire, body, key_id, msg = a.wire, a.body, a.key_id, a.msg
        items = count_items(signal, msg)
        headers = kafka.record_headers(request.headers, key_id, items, *fleet_view.request_facts(signal, msg))
        if self.publisher is not None:
            try:
                await self.publisher.publish(signal, body, key_id or "", list(headers.items()))
            except kafka.RecordTooLarge as e:
                return self._reject("too_large", 413, str(e))
            except kafka.KafkaUnavailable as e:
                return self._unavailable("kafka", str(e))
        if self.fleet_fed_here:
            self.fleet.observe(signal, {k: v.decode() for k, v in headers.items()}, time.time())
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
        """A connection probe, checked as data is checked (by _admit); the first failing check
        ends it. The answer accounts for each check; nothing is stored or published."""
        self.probes["received"] += 1
        no_signatures = {"passed": False, "detail": "this ingest verifies no signatures (no --trusted-keys)"}
        try:
            a = await self._admit("metrics", request)
        except _Refusal as e:
            # What ran before the failing check passed.
            passed = PROBE_CHECKS[:PROBE_CHECKS.index(e.check)] if e.check in PROBE_CHECKS else ()
            checks: dict[str, dict[str, Any]] = {c: {"passed": True, "detail": "passed"} for c in passed}
            if "signature" in passed and self.verifier is None:
                checks["signature"] = no_signatures
            checks[e.check] = {"passed": False, "reason": e.reason, "detail": e.message}
            log.warning("connection probe failed its %s check (%s): %s", e.check, e.reason, e.message)
            return self._probe_answer(e.status, checks, (e.check, e.reason, e.message))
        self.probes["passed"] += 1
        return self._probe_answer(200, {
            "api_key": {"passed": True, "detail": "accepted" if self.api_key else "none required"},
            "content_type": {"passed": True, "detail": PROTOBUF},
            "signature": no_signatures if a.key_id is None else
            {"passed": True, "key_id": a.key_id, "detail": f"verified, key id {a.key_id}"},
            "sequence": {"passed": True, "detail": "well formed or absent"},
            "body": {"passed": True, "detail": f"{len(a.wire)} bytes, decoded as an OTLP metrics request"},
        }, None)

    def _probe_answer(self, status: int, checks: dict[str, dict[str, Any]],
                      failed: tuple[str, str, str] | None) -> web.Response:
        doc = {"checks": checks, "stored": False, "window_seconds": self.verifier.window if self.verifier else None,
               "failed": {"check": failed[0], "reason": failed[1], "message": failed[2]} if failed else None}
        return web.json_response(doc, status=status)

    async def _store(self, signal: Signal, msg: Message, request: web.Request, key_id: str | None) -> None:
        assert self.store is not None
        record = store.record(request.headers, key_id, "live")
        # JSON-encoding a large request is CPU work: keep it off the loop.
        line = await asyncio.to_thread(store.encode_line, record, msg)
        path = store.path_for(self.store, signal)
        async with self._write_lock:
            await asyncio.to_thread(store.append, path, line)

    def _unavailable(self, what: str, message: str) -> web.Response:
        """Nothing was stored: the relay keeps the data and retries after Retry-After."""
        self.unavailable[what] = self.unavailable.get(what, 0) + 1
        log.warning("answered 503 (%s): %s", what, message)
        return web.Response(status=503, body=_status_body(code_pb2.UNAVAILABLE, message), content_type=PROTOBUF,
                            headers={"Retry-After": str(self.retry_after)})

    async def _fleet(self, request: web.Request) -> web.Response:
        if "text/html" in request.headers.get("Accept", ""):
            return web.Response(text=_FLEET_PAGE, content_type="text/html", headers={
                "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                                           "style-src 'unsafe-inline'; connect-src 'self'"})
        return await self._fleet_json(request)

    async def _fleet_json(self, _: web.Request) -> web.Response:
        doc = self.fleet.view()
        doc["source"] = "kafka" if not self.fleet_fed_here else "this ingest"
        if self.ledger is not None:
            doc["ledger"] = self.ledger.stats()
        return web.json_response(doc, headers={"Cache-Control": "no-store"})

    async def _stats(self, _: web.Request) -> web.Response:
        doc: dict[str, Any] = {"signals": self.counts, "rejected": self.rejected, "probes": self.probes,
                               "unavailable": self.unavailable}
        if self.publisher is not None:
            doc["kafka"] = self.publisher.stats()
        return web.json_response(doc)

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
    if ingest.publisher is not None:
        ingest.publisher.start()
        if ingest.ledger is not None:
            ingest.ledger.start(ingest.publisher.ensure_topics)
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
        if ingest.ledger is not None:
            ingest.ledger.close()
        if ingest.publisher is not None:
            await asyncio.to_thread(ingest.publisher.close)
