"""Shipper: moves spooled requests to one destination over OTLP/HTTP.

Owns: per destination and signal, a worker that leases the oldest spooled entries (up to
max_request_bytes), has them prepared (export/prepare.py; again only if the policy changes),
POSTs them with the range of entries they carry (export/sequence.py), acts on the verdict
(export/response.py) and acknowledges strictly in order; pacing (linger,
max_bytes_per_second), backoff, supervision and the destination's status.
429/502/503/504, 401/403/407, redirects (never followed) and connection errors are retried
forever with capped, fully jittered exponential backoff (honouring Retry-After): no retry
deadline ever drops data.
A 413 splits the batch; other 4xx/5xx dead-letter it.
Another kind of destination keeps all of this and replaces the transport: _open, _close
and _send (export/bundle_destination.py writes into offline bundles).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiohttp
from google.protobuf.message import DecodeError

from relay.config import DestinationSettings
from relay.export import sequence
from relay.export.outbox import Outbox
from relay.export.prepare import PreparedRequest, prepare
from relay.export.response import Accepted, Reject, Retry, Split, Verdict, classify, classify_error
from relay.export.signing import Signer
from relay.otlp import SIGNAL_INFO, Signal
from relay.policy import Outcome, PolicyHolder
from relay.secrets import redact
from relay.selfmetrics import SelfMetrics
from relay.spool import Lease, Spool
from relay.tls import client_context

log = logging.getLogger("relay.export")


class _Stopping(Exception):
    """Raised inside a delivery when shutdown abandons it (the batch stays spooled)."""


@dataclass
class DestinationState:
    name: str
    endpoint: str
    last_success: float | None = None
    last_attempt: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    consecutive_failures: int = 0
    backoff_until: float | None = None
    in_flight: int = 0


class Shipper:
    def __init__(
        self, settings: DestinationSettings, api_key: str | None, spool: Spool, stats: SelfMetrics,
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
        self.instance = sequence.spool_instance(spool.dir)  # X-Relay-Instance
        self.state = DestinationState(settings.name, settings.target)
        self._workers: dict[Signal, asyncio.Task[None]] = {}
        self._data: dict[Signal, asyncio.Event] = {}
        self._stopping = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        # Token bucket for max_bytes_per_second: the time before which the next send waits.
        self._rate_next = 0.0

    @property
    def name(self) -> str:
        return self.settings.name

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._open()
        self.spool.add_listener(self._on_data)
        for signal in self.spool.signals():
            self._start_worker(signal)

    async def _open(self) -> None:
        """Make ready to send: the HTTP session (a bundle destination opens its directory instead)."""
        if self.settings.tls.insecure_skip_verify:
            log.warning("%s: TLS CERTIFICATE VERIFICATION IS OFF (tls.insecure_skip_verify): anyone on the path "
                        "can read and alter what this relay sends", self.name)
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        connector = aiohttp.TCPConnector(limit=self.settings.in_flight * 3 + 2, ssl=client_context(self.settings.tls))
        # trust_env: HTTPS_PROXY / NO_PROXY apply when no explicit proxy_url is configured.
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=True)
        self._proxy_url, self._proxy_auth = self._proxy()

    def _proxy(self) -> tuple[str | None, aiohttp.BasicAuth | None]:
        """The explicit proxy for this destination, unless NO_PROXY exempts its host."""
        url = self.settings.proxy_url
        host = urllib.parse.urlsplit(self.settings.endpoint or "").hostname or ""
        if not url or urllib.request.proxy_bypass(host):
            return None, None
        auth = None
        if self.settings.proxy_username:
            auth = aiohttp.BasicAuth(self.settings.proxy_username, self.proxy_password or "")
        return url, auth

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
        await self._close()

    async def _close(self) -> None:
        if self._session:
            await self._session.close()

    async def _sleep_unless_stopping(self, seconds: float) -> bool:
        """Sleep for seconds; False, at once, when shutdown begins instead."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return True
        return False

    # -- the per-signal worker ---------------------------------------------------------------------

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
                await self._ship_signal(signal)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._record_failure("internal", f"internal error: {e.__class__.__name__}: {e}")
                log.exception("%s: %s worker failed; restarting it (nothing is lost: data stays spooled)",
                              self.name, signal)
                await self._sleep_unless_stopping(1.0)

    async def _ship_signal(self, signal: Signal) -> None:
        """Lease, deliver up to in_flight batches at once, and acknowledge them in order."""
        inflight: deque[tuple[Lease, asyncio.Task[None]]] = deque()
        after = self.spool.cursor(self.name, signal)
        data = self._data[signal]
        try:
            while True:
                # Fail closed: without a valid redaction policy nothing is prepared for sending.
                while self._no_policy() and await self._sleep_unless_stopping(1.0):
                    pass
                while not self._stopping.is_set() and len(inflight) < self.settings.in_flight:
                    lease = await self.spool.lease(self.name, signal, after, self.settings.max_request_bytes)
                    if lease is None:
                        break
                    after = lease.last
                    task = asyncio.create_task(self._deliver(lease))
                    self.state.in_flight += 1  # until the delivery ends, however it ends
                    task.add_done_callback(self._delivery_ended)
                    inflight.append((lease, task))
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
                        await self._sleep_unless_stopping(self.settings.linger)
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

    def _delivery_ended(self, _: asyncio.Task[None]) -> None:
        self.state.in_flight -= 1

    def _no_policy(self) -> bool:
        """Configured with a redaction policy, but none is valid now: nothing may ship."""
        return self.policy is not None and self.policy.current is None

    # -- one delivery ------------------------------------------------------------------------------

    async def _deliver(self, lease: Lease) -> None:
        """Deliver one lease: returns once it was accepted, dead-lettered or redacted to nothing;
        raises _Stopping when shutdown abandons it."""
        attempt = 0
        prepared: PreparedRequest | None = None
        while True:
            if self._no_policy():
                raise _Stopping()  # the policy went away under us: leave the batch in the spool
            policy = self.policy.current if self.policy else None
            if prepared is None or policy is not prepared.policy:
                # First attempt, or the policy changed while this batch waited to be retried:
                # prepare it afresh, so a tightened policy covers batches already in retry too.
                try:
                    prepared = await prepare(lease.signal, [e.payload for e in lease.entries], policy,
                                             self.settings.compression, sign=self.signer is not None)
                except DecodeError:
                    await self._undecodable(lease)
                    return
                if prepared.nothing_left:
                    self._count_redactions(prepared.outcome)
                    return  # counted per rule, and nothing to send
            await self._rate_limit(len(prepared.wire))
            verdict = await self._send(lease, prepared)
            if isinstance(verdict, Retry):
                self._record_failure(verdict.reason, verdict.detail)
                await self._back_off(attempt, verdict.after)
                attempt += 1
                continue
            if isinstance(verdict, Split):
                log.warning("%s: HTTP 413 for %d entries; splitting the batch", self.name, len(lease.entries))
                await self._deliver_halves(lease)
                return
            if isinstance(verdict, Accepted):
                self._accepted(lease, prepared, verdict)
            else:
                await self._dead_letter(lease, verdict)
            self._record_sent(lease.signal, prepared)
            return

    async def _back_off(self, attempt: int, retry_after: float | None) -> None:
        """Wait before the next attempt: as long as the destination asked (capped), else the
        jittered backoff; raises _Stopping when shutdown begins."""
        r = self.settings.retry
        if retry_after is not None:
            delay = min(retry_after, r.max_retry_after)
        else:
            cap = min(r.max_backoff, r.initial_backoff * (r.multiplier ** min(attempt, 60)))
            delay = random.uniform(r.initial_backoff / 2, cap)  # full jitter, with a small floor
        self.state.backoff_until = time.time() + delay
        try:
            if not await self._sleep_unless_stopping(delay):
                raise _Stopping()
        finally:
            self.state.backoff_until = None

    async def _deliver_halves(self, lease: Lease) -> None:
        """Deliver a batch as two halves, one after the other (each may be halved again)."""
        for part in lease.halves():
            await self._deliver(part)

    async def _undecodable(self, lease: Lease) -> None:
        """A spooled entry that is not valid OTLP (a damaged disk, say) must not block the queue:
        halve the batch until the bad entries stand alone, and move those to dead-letter."""
        if len(lease.entries) > 1:
            await self._deliver_halves(lease)
            return
        reason = "spooled entry is not a valid OTLP protobuf request (damaged on disk?)"
        self._record_failure("undecodable", reason, retry=False)
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
        if start > now and not await self._sleep_unless_stopping(start - now):
            raise _Stopping()

    async def _send(self, lease: Lease, prepared: PreparedRequest) -> Verdict:
        """One attempt: sign, POST, and the verdict on what came back. The one step a
        destination kind replaces (export/bundle.py writes the request to a file instead)."""
        assert self._session is not None and self.settings.endpoint
        url = self.settings.endpoint + SIGNAL_INFO[lease.signal].path
        self.state.last_attempt = start = time.time()
        try:
            async with self._session.post(
                url, data=prepared.wire, headers=self._headers(url, lease, prepared),
                proxy=self._proxy_url, proxy_auth=self._proxy_auth,
                allow_redirects=False,  # a 3xx is reported, not followed: see response.classify
            ) as resp:
                status, headers, body = resp.status, resp.headers, await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            https_without_cert = url.startswith("https:") and not self.settings.tls.client_cert_file
            return classify_error(e, client_cert_may_be_missing=https_without_cert)
        self.stats.export_latency.labels(self.name).observe(time.time() - start)
        return classify(status, headers, body, lease.signal, can_split=len(lease.entries) > 1)

    def _headers(self, url: str, lease: Lease, prepared: PreparedRequest) -> dict[str, str]:
        h = self._request_headers(lease, prepared)
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        if self.signer and prepared.digest:
            # Signed per attempt: the replay window needs a fresh `created` and nonce.
            self.signer.sign("POST", url, h)
        return h

    def _request_headers(self, lease: Lease, prepared: PreparedRequest) -> dict[str, str]:
        """What describes the request, before credentials and the signature: the body's
        headers and the spool entries it carries (the same on every retry)."""
        return {**prepared.headers(), **sequence.headers(self.instance, lease.first, lease.last)}

    # -- bookkeeping -------------------------------------------------------------------------------

    def _accepted(self, lease: Lease, prepared: PreparedRequest, verdict: Accepted) -> None:
        st = self.state
        if st.consecutive_failures:
            log.info("%s: export recovered after %d failed attempts", self.name, st.consecutive_failures)
        st.last_success = time.time()
        st.consecutive_failures = 0
        if verdict.rejected_items or verdict.error_message:
            self.stats.points_rejected.labels(self.name).inc(verdict.rejected_items)
            log.warning("%s: destination rejected %d %s items in a partial success: %s",
                        self.name, verdict.rejected_items, lease.signal, redact(verdict.error_message[:500]))
        self.stats.points_shipped.labels(self.name).inc(lease.items - verdict.rejected_items)
        self.stats.requests_shipped.labels(self.name).inc()
        self.stats.bytes_shipped.labels(self.name).inc(len(prepared.wire))

    async def _dead_letter(self, lease: Lease, verdict: Reject) -> None:
        """A permanent rejection: keep the batch aside with the reason, and move on."""
        self._record_failure(f"http_{verdict.status}", verdict.detail, retry=False)
        log.error("%s: %s permanently rejected %d %s items; moved to dead-letter",
                  self.name, verdict.detail, lease.items, lease.signal)
        await self.spool.dead_letter(self.name, lease, verdict.status, verdict.detail)

    def _record_sent(self, signal: Signal, prepared: PreparedRequest) -> None:
        """The batch left the host, whatever the destination then made of it: count what the
        policy did to it, and keep it in the outbox for review."""
        self._count_redactions(prepared.outcome)
        if self.outbox is not None:
            self.outbox.add(self.name, signal, len(prepared.body), prepared.wire, prepared.encoding,
                            prepared.policy_sha)

    def _count_redactions(self, outcome: Outcome | None) -> None:
        for (rule, action), n in (outcome.counts.items() if outcome else ()):
            self.stats.redactions.labels(self.name, rule, action).inc(n)

    def _record_failure(self, reason: str, detail: str, retry: bool = True) -> None:
        """Log, count and show one failure; with retry, the caller backs off and tries again."""
        st = self.state
        detail = redact(detail)
        first = st.consecutive_failures == 0
        st.consecutive_failures += 1
        st.last_error, st.last_error_time = detail, time.time()
        if retry:
            self.stats.export_retries.labels(self.name, reason).inc()
            # Log the first failure of a streak and then every 50th, not every retry.
            if first or st.consecutive_failures % 50 == 0:
                log.warning("%s: export failed (%s), will retry (failure %d in a row)",
                            self.name, detail, st.consecutive_failures)

    # -- status ------------------------------------------------------------------------------------

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
            "redactions": self._redactions_by_rule(),
            "last_success": st.last_success,
            "last_success_age_seconds": round(now - st.last_success, 3) if st.last_success else None,
            "last_error": st.last_error,
            "last_error_time": st.last_error_time,
            "consecutive_failures": st.consecutive_failures,
            "backoff_seconds": round(max(0.0, st.backoff_until - now), 3) if st.backoff_until else 0.0,
            "in_flight": st.in_flight,
            "backlog_bytes": backlog_bytes,
            "backlog_items": backlog_items,
            "shipped_points": self.stats.points_shipped.total(destination=self.name),
            "shipped_requests": self.stats.requests_shipped.total(destination=self.name),
            "shipped_bytes": self.stats.bytes_shipped.total(destination=self.name),
            "rejected_points": self.stats.points_rejected.total(destination=self.name),
            "dropped_points": _nonzero(self.stats.points_dropped.by_label("reason", destination=self.name)),
            "retries": _nonzero(self.stats.export_retries.by_label("reason", destination=self.name)),
        }

    def _redactions_by_rule(self) -> dict[str, dict[str, float]]:
        """Per rule: items and attributes dropped, hashed, masked, merged."""
        out: dict[str, dict[str, float]] = {}
        for (rule, action), v in self.stats.redactions.by("rule", "action", destination=self.name).items():
            if v:
                out.setdefault(rule, {})[action] = v
        return out


def _nonzero(counts: dict[str, float]) -> dict[str, float]:
    """The entries that counted something."""
    return {k: v for k, v in counts.items() if v}


def _redact_url(url: str) -> str:
    """A URL with any user:password@ part masked."""
    parts = urllib.parse.urlsplit(url)
    if parts.password or parts.username:
        netloc = "***@" + (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return redact(url)
