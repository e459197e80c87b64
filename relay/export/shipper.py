"""Shipper: moves spooled requests to one destination over OTLP/HTTP.

Owns: per destination and signal, leasing the oldest spooled entries, merging them by
byte concatenation up to max_request_bytes, compressing once, POSTing, and then
acknowledging in order. Retries 429/502/503/504, 401/403 and connection errors forever
with capped, fully jittered exponential backoff (honouring Retry-After): no retry
deadline ever drops data. A 413 splits the batch; other 4xx/5xx dead-letter it.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import ssl
import time
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from google.protobuf.message import DecodeError

from relay import __version__
from relay.compression import compress
from relay.config import DestinationSettings
from relay.export.outbox import Outbox
from relay.export.signing import Signer, content_digest
from relay.otlp import SIGNAL_INFO, Signal
from relay.policy import Outcome, Policy, PolicyHolder
from relay.secrets import redact
from relay.spool import Lease, Spool
from relay.stats import Stats

log = logging.getLogger("relay.export")

RETRYABLE = {429, 502, 503, 504}
# Credentials the vendor refuses are an operator problem to fix, not a reason to throw
# the backlog away: keep it and retry, and say so in /readyz.
RETRY_AUTH = {401, 403, 407}
THREAD_COMPRESS_BYTES = 64 * 1024


class _Stopping(Exception):
    """Raised inside a delivery when shutdown abandons its backoff."""


@dataclass
class DestinationState:
    name: str
    endpoint: str
    started: float = field(default_factory=time.time)
    last_success: float | None = None
    last_attempt: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    consecutive_failures: int = 0
    backoff_until: float | None = None
    in_flight: int = 0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class Shipper:
    def __init__(
        self, settings: DestinationSettings, api_key: str | None, spool: Spool, stats: Stats,
        shutdown_timeout: float, signer: Signer | None = None, proxy_password: str | None = None,
        policy: PolicyHolder | None = None, outbox: Outbox | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.outbox = outbox
        self.api_key = api_key
        self.signer = signer
        self.proxy_password = proxy_password
        self.spool = spool
        self.stats = stats
        self.shutdown_timeout = shutdown_timeout
        self.state = DestinationState(settings.name, settings.endpoint)
        self._workers: dict[Signal, asyncio.Task[None]] = {}
        self._data: dict[Signal, asyncio.Event] = {}
        self._stopping = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        # Token bucket for max_bytes_per_second: the time before which the next send waits.
        self._rate_next = 0.0

    @property
    def name(self) -> str:
        return self.settings.name

    def _ssl_context(self) -> ssl.SSLContext:
        tls = self.settings.tls
        # With ca_file only that bundle is trusted (a pinned private CA); else the system store.
        ctx = ssl.create_default_context(cafile=tls.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        if tls.client_cert_file and tls.client_key_file:
            ctx.load_cert_chain(tls.client_cert_file, tls.client_key_file)
        if tls.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            log.warning(
                "%s: TLS CERTIFICATE VERIFICATION IS OFF (tls.insecure_skip_verify): anyone on the path can "
                "read and alter what this relay sends", self.name,
            )
        return ctx

    def _proxy(self) -> tuple[str | None, aiohttp.BasicAuth | None]:
        """The explicit proxy for this destination, unless NO_PROXY exempts its host."""
        url = self.settings.proxy_url
        host = urllib.parse.urlsplit(self.settings.endpoint).hostname or ""
        if not url or urllib.request.proxy_bypass(host):
            return None, None
        auth = None
        if self.settings.proxy_username:
            auth = aiohttp.BasicAuth(self.settings.proxy_username, self.proxy_password or "")
        return url, auth

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        connector = aiohttp.TCPConnector(limit=self.settings.in_flight * 3 + 2, ssl=self._ssl_context())
        # trust_env: HTTPS_PROXY / NO_PROXY apply when no explicit proxy_url is configured.
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=True)
        self._proxy_url, self._proxy_auth = self._proxy()
        self.spool.add_listener(self._on_data)
        for signal in self.spool.signals():
            self._start_worker(signal)

    def _on_data(self, signal: Signal) -> None:
        if self._stopping.is_set():
            return
        if signal not in self._workers:
            self._start_worker(signal)
        self._data[signal].set()

    def _start_worker(self, signal: Signal) -> None:
        self._data[signal] = asyncio.Event()
        self._data[signal].set()
        self._workers[signal] = asyncio.create_task(self._supervise(signal), name=f"ship-{self.name}-{signal}")

    async def _supervise(self, signal: Signal) -> None:
        """Keep a worker alive: a bug or a disk error must not stop shipping for good."""
        while not self._stopping.is_set():
            try:
                await self._run(signal)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._failed("internal", f"internal error: {e.__class__.__name__}: {e}", 0)
                log.exception("%s: %s worker failed; restarting it (nothing is lost: data stays spooled)",
                              self.name, signal)
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=1.0)
                except TimeoutError:
                    pass

    async def stop(self) -> None:
        """Stop leasing; let requests on the wire finish within shutdown_timeout, then abandon.
        Nothing is lost: unacknowledged entries stay in the spool."""
        self._stopping.set()
        for ev in self._data.values():
            ev.set()
        tasks = list(self._workers.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session:
            await self._session.close()

    # -- the per-signal worker ---------------------------------------------------------------------

    async def _run(self, signal: Signal) -> None:
        inflight: deque[tuple[Lease, asyncio.Task[None]]] = deque()
        after = self.spool.cursor(self.name, signal)
        data = self._data[signal]
        try:
            while True:
                # Fail closed: without a valid redaction policy nothing is prepared for sending.
                while self.policy is not None and self.policy.current is None and not self._stopping.is_set():
                    try:
                        await asyncio.wait_for(self._stopping.wait(), timeout=1.0)
                    except TimeoutError:
                        pass
                while not self._stopping.is_set() and len(inflight) < self.settings.in_flight:
                    lease = await self.spool.lease(self.name, signal, after, self.settings.max_request_bytes)
                    if lease is None:
                        break
                    after = lease.last
                    inflight.append((lease, asyncio.create_task(self._deliver(lease))))
                if not inflight:
                    if self._stopping.is_set():
                        return
                    data.clear()
                    try:
                        await asyncio.wait_for(data.wait(), timeout=5.0)
                    except TimeoutError:
                        continue
                    # New data after an empty queue: let more arrive, so that a steady trickle
                    # of pushes leaves in a few requests a second (a backlog never waits here).
                    if self.settings.linger > 0:
                        try:
                            await asyncio.wait_for(self._stopping.wait(), timeout=self.settings.linger)
                        except TimeoutError:
                            pass
                    continue
                # Acknowledge strictly in order, so the cursor never passes an unsent entry.
                lease, task = inflight[0]
                try:
                    await task
                except _Stopping:
                    return
                inflight.popleft()
                await self.spool.ack(self.name, lease)
        finally:
            for _, task in inflight:
                task.cancel()
            self.state.in_flight = 0

    async def _deliver(self, lease: Lease) -> None:
        """Deliver one lease: returns once it was accepted or dead-lettered."""
        self.state.in_flight += 1
        try:
            await self._deliver_entries(lease)
        finally:
            self.state.in_flight -= 1

    def _prepare(self, lease: Lease, policy: Policy | None) -> tuple[bytes, bytes, Outcome | None]:
        """Merge, redact and compress one batch: (redacted body, wire bytes, policy outcome)."""
        body = b"".join(e.payload for e in lease.entries)
        outcome = None
        if policy is not None:
            body, outcome = policy.apply(lease.signal, body)
        return body, compress(body, self.settings.compression), outcome

    async def _deliver_entries(self, lease: Lease) -> None:
        attempt = 0
        prepared: tuple[bytes, bytes, Outcome | None, str | None] | None = None
        prepared_for: Policy | None = None
        while True:
            policy = self.policy.current if self.policy else None
            if self.policy is not None and policy is None:
                raise _Stopping()  # the policy went away under us: leave the batch in the spool
            if prepared is None or policy is not prepared_for:
                # First attempt, or the policy changed while this batch waited to be retried:
                # prepare it afresh, so a tightened policy covers batches already in retry too.
                try:
                    if sum(len(e.payload) for e in lease.entries) >= THREAD_COMPRESS_BYTES:
                        body, wire, outcome = await asyncio.to_thread(self._prepare, lease, policy)
                    else:
                        body, wire, outcome = self._prepare(lease, policy)
                except DecodeError:
                    await self._undecodable(lease)
                    return
                prepared = (body, wire, outcome, content_digest(wire) if self.signer else None)
                prepared_for = policy
                if outcome is not None and outcome.items_out == 0:
                    self._count_redactions(outcome)
                    return  # the policy let nothing of this batch out: done, counted per rule
            body, wire, outcome, digest = prepared
            await self._rate_limit(len(wire))
            policy_sha = policy.sha256 if policy else None
            result, delay = await self._attempt(lease, wire, digest, attempt, policy_sha)
            if result == "done":
                if outcome is not None:
                    self._count_redactions(outcome)
                if self.outbox is not None:
                    self.outbox.add(self.name, lease.signal, len(body), wire, self.settings.compression, policy_sha)
                return
            if result == "split":
                for part in lease.halves():
                    await self._deliver_entries(part)
                return
            attempt += 1
            self.state.backoff_until = time.time() + delay
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            except TimeoutError:
                continue
            finally:
                self.state.backoff_until = None
            raise _Stopping()

    async def _undecodable(self, lease: Lease) -> None:
        """A spooled entry that is not valid OTLP (a damaged disk, say) must not block the queue:
        halve the batch until the bad entries stand alone, and move those to dead-letter."""
        if len(lease.entries) > 1:
            for part in lease.halves():
                await self._deliver_entries(part)
            return
        reason = "spooled entry is not a valid OTLP protobuf request (damaged on disk?)"
        self._failed("undecodable", reason, 0, retry=False)
        log.error("%s: %s entry %d: %s; moved to dead-letter", self.name, lease.signal, lease.first, reason)
        await self.spool.dead_letter(self.name, lease, 0, reason)

    async def _rate_limit(self, nbytes: int) -> None:
        """Space sends so that at most max_bytes_per_second leave, on average."""
        rate = self.settings.max_bytes_per_second
        if not rate:
            return
        now = time.monotonic()
        start = max(now, self._rate_next)
        self._rate_next = start + nbytes / rate
        if start > now:
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=start - now)
            except TimeoutError:
                return
            raise _Stopping()

    def _count_redactions(self, outcome: Outcome) -> None:
        for (rule, action), n in outcome.counts.items():
            self.stats.redactions.labels(self.name, rule, action).inc(n)

    def _headers(self, url: str, digest: str | None, policy_sha: str | None = None) -> dict[str, str]:
        h = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": f"telemetry-relay/{__version__}",
        }
        if self.settings.compression != "none":
            h["Content-Encoding"] = self.settings.compression
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        if policy_sha:
            # Provenance: which policy this body passed through; covered by the signature.
            h["X-Relay-Policy-SHA256"] = policy_sha
        if self.signer and digest:
            h["Content-Digest"] = digest
            self.signer.sign("POST", url, h)
        return h

    def _backoff(self, attempt: int) -> float:
        r = self.settings.retry
        cap = min(r.max_backoff, r.initial_backoff * (r.multiplier ** min(attempt, 60)))
        return random.uniform(r.initial_backoff / 2, cap)  # full jitter, with a small floor

    async def _attempt(self, lease: Lease, wire: bytes, digest: str | None, attempt: int,
                       policy_sha: str | None = None) -> tuple[str, float]:
        """One POST. Returns ('done'|'split'|'retry', delay before the retry)."""
        assert self._session is not None
        url = self.settings.endpoint + SIGNAL_INFO[lease.signal].path
        st = self.state
        st.last_attempt = start = time.time()
        try:
            async with self._session.post(
                url, data=wire, headers=self._headers(url, digest, policy_sha), proxy=self._proxy_url,
                proxy_auth=self._proxy_auth,
            ) as resp:
                status = resp.status
                text = await resp.read()
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            reason, detail = _classify(e)
            dropped = isinstance(e, aiohttp.ServerDisconnectedError) or (
                isinstance(e, aiohttp.ClientOSError) and not isinstance(e, aiohttp.ClientConnectorError)
            ) or "CERTIFICATE_REQUIRED" in str(e).upper()
            if dropped and url.startswith("https:") and not self.settings.tls.client_cert_file:
                # TLS 1.3 reports a missing client certificate only as a dropped or reset connection.
                detail += " (if the server requires a client certificate, set tls.client_cert_file)"
            return "retry", self._failed(reason, detail, attempt)
        self.stats.export_latency.labels(self.name).observe(time.time() - start)

        if 200 <= status < 300:
            self._succeeded(lease, wire, text)
            return "done", 0.0
        detail = f"HTTP {status}: {_excerpt(text)}"
        if status in RETRYABLE or status in RETRY_AUTH:
            delay = self._failed(f"http_{status}", detail, attempt)
            ra = parse_retry_after(retry_after, time.time())
            if ra is not None and status in (429, 503):
                delay = min(ra, self.settings.retry.max_retry_after)
                st.last_error = f"{detail} (Retry-After {ra:g}s)"
            return "retry", delay
        if status == 413 and len(lease.entries) > 1:
            log.warning("%s: HTTP 413 for %d entries; splitting the batch", self.name, len(lease.entries))
            return "split", 0.0
        # A permanent rejection: keep the batch aside with the reason, and move on.
        self._failed(f"http_{status}", detail, attempt, retry=False)
        log.error(
            "%s: %s permanently rejected %d %s items; moved to dead-letter",
            self.name, detail, lease.items, lease.signal,
        )
        await self.spool.dead_letter(self.name, lease, status, detail)
        return "done", 0.0

    def _succeeded(self, lease: Lease, wire: bytes, body: bytes) -> None:
        st = self.state
        if st.consecutive_failures:
            log.info("%s: export recovered after %d failed attempts", self.name, st.consecutive_failures)
        st.last_success = time.time()
        st.consecutive_failures = 0
        rejected = self._partial_rejections(lease.signal, body)
        self.stats.points_shipped.labels(self.name).inc(lease.items - rejected)
        self.stats.requests_shipped.labels(self.name).inc()
        self.stats.bytes_shipped.labels(self.name).inc(len(wire))

    def _partial_rejections(self, signal: Signal, body: bytes) -> int:
        """Count items an OTLP partial_success rejected. They are not retried (per OTLP)."""
        if not body:
            return 0
        resp = SIGNAL_INFO[signal].response()
        try:
            resp.ParseFromString(body)
        except Exception:  # a non-OTLP 2xx body is not our problem to parse
            return 0
        if not resp.HasField("partial_success"):
            return 0
        ps: Any = resp.partial_success
        field_name = {"metrics": "rejected_data_points", "logs": "rejected_log_records", "traces": "rejected_spans"}
        rejected = int(getattr(ps, field_name[signal]))
        if rejected or ps.error_message:
            self.stats.points_rejected.labels(self.name).inc(rejected)
            log.warning(
                "%s: destination rejected %d %s items in a partial success: %s",
                self.name, rejected, signal, redact(ps.error_message[:500]),
            )
        return rejected

    def _failed(self, reason: str, detail: str, attempt: int, retry: bool = True) -> float:
        st = self.state
        detail = redact(detail)
        first = st.consecutive_failures == 0
        st.consecutive_failures += 1
        st.last_error, st.last_error_time = detail, time.time()
        if retry:
            self.stats.export_retries.labels(self.name, reason).inc()
            # Log the first failure of a streak and then every 50th, not every retry.
            if first or st.consecutive_failures % 50 == 0:
                log.warning(
                    "%s: export failed (%s), will retry (failure %d in a row)",
                    self.name, detail, st.consecutive_failures,
                )
        return self._backoff(attempt)

    def _redactions(self) -> dict[str, dict[str, float]]:
        """Per rule: items and attributes dropped, hashed, masked, merged."""
        out: dict[str, dict[str, float]] = {}
        for metric in self.stats.redactions.collect():
            for smp in metric.samples:
                if smp.name.endswith("_total") and smp.labels.get("destination") == self.name and smp.value:
                    out.setdefault(smp.labels["rule"], {})[smp.labels["action"]] = smp.value
        return out

    # -- status ------------------------------------------------------------------------------------

    def ready_problem(self, now: float) -> str | None:
        """Why this destination makes the relay not ready, or None."""
        if self.policy is not None and self.policy.current is None:
            return f"destination {self.name}: no valid redaction policy, nothing ships: {self.policy.error}"
        backlog_bytes, backlog_items = self.spool.backlog(self.name)
        if backlog_items == 0:
            return None
        since = max(self.state.last_success or 0.0, self.state.started)
        if now - since <= self.settings.ready_threshold:
            return None
        err = f"; last error: {self.state.last_error}" if self.state.last_error else ""
        return (
            f"destination {self.name}: no successful export for {now - since:.0f}s "
            f"with {backlog_items} items ({backlog_bytes} bytes) waiting{err}"
        )

    def snapshot(self, now: float) -> dict[str, Any]:
        st = self.state
        backlog_bytes, backlog_items = self.spool.backlog(self.name)
        tls = self.settings.tls
        return {
            "name": st.name,
            "endpoint": redact(st.endpoint),
            "tls": {
                "verify": not tls.insecure_skip_verify, "ca_file": tls.ca_file,
                "client_certificate": bool(tls.client_cert_file), "min_version": tls.min_version,
            },
            "proxy": _redact_url(self.settings.proxy_url) if self.settings.proxy_url else "environment",
            "signing_key_ids": self.signer.key_ids if self.signer else [],
            "policy": self.policy.snapshot() if self.policy else None,
            "redactions": self._redactions(),
            "last_success": st.last_success,
            "last_success_age_seconds": round(now - st.last_success, 3) if st.last_success else None,
            "last_error": st.last_error,
            "last_error_time": st.last_error_time,
            "consecutive_failures": st.consecutive_failures,
            "backoff_seconds": round(max(0.0, st.backoff_until - now), 3) if st.backoff_until else 0.0,
            "in_flight": st.in_flight,
            "backlog_bytes": backlog_bytes,
            "backlog_items": backlog_items,
            "shipped_points": Stats.total(self.stats.points_shipped, destination=self.name),
            "shipped_requests": Stats.total(self.stats.requests_shipped, destination=self.name),
            "shipped_bytes": Stats.total(self.stats.bytes_shipped, destination=self.name),
            "rejected_points": Stats.total(self.stats.points_rejected, destination=self.name),
            "dropped_points": {
                k: v for k, v in Stats.by_label(self.stats.points_dropped, "reason", destination=self.name).items()
                if v
            },
            "retries": {
                k: v for k, v in Stats.by_label(self.stats.export_retries, "reason", destination=self.name).items()
                if v
            },
        }


def _redact_url(url: str) -> str:
    """A URL with any user:password@ part masked."""
    parts = urllib.parse.urlsplit(url)
    if parts.password or parts.username:
        netloc = "***@" + (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return redact(url)


def _classify(e: BaseException) -> tuple[str, str]:
    """(retry reason, readable detail) of a failed request."""
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        return "tls", f"TLS certificate verification failed: {e.certificate_error}"
    if isinstance(e, aiohttp.ClientSSLError):
        return "tls", f"TLS handshake failed: {e}"
    if isinstance(e, aiohttp.ClientHttpProxyError):
        return "proxy", f"proxy refused the tunnel: HTTP {e.status} {e.message}"
    if isinstance(e, aiohttp.ClientProxyConnectionError):
        return "proxy", f"cannot reach the proxy: {e}"
    if isinstance(e, TimeoutError):
        return "timeout", "request timed out"
    return "connection", f"{e.__class__.__name__}: {e}"


def _excerpt(body: bytes, limit: int = 300) -> str:
    text = body[:limit].decode("utf-8", "replace").replace("\n", " ").strip()
    return text + ("..." if len(body) > limit else "") if text else "(empty body)"
