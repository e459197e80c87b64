"""What a destination's answer means: a pure classifier, no I/O, no state.

Owns: the verdict on each HTTP answer (`classify`) and on each transport error
(`classify_error`); the shipper only acts on it.
- 2xx: Accepted, with what an OTLP partial_success rejected (those items are not retried,
  per OTLP);
- 429, 502, 503, 504: Retry; for 429 and 503 after the Retry-After the destination asked for;
- 401, 403, 407: Retry too: credentials that are refused are an operator problem to fix,
  not a reason to throw the backlog away (/readyz says so);
- 413: Split, when the batch can still be halved;
- 3xx: Retry: a redirect is never followed (it would take signed, possibly credentialed
  data to a server the operator did not configure), and not counted as a delivery;
- any other status: Reject, so the batch goes to dead-letter with the reason;
- connection, TLS, proxy and timeout errors: Retry.
An error body is decoded as the google.rpc.Status that OTLP/HTTP specifies; a body that is
not one is shown as a short text excerpt.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from google.rpc import code_pb2, status_pb2

from relay.otlp import SIGNAL_INFO, Signal

__all__ = [
    "RETRY_AUTH", "RETRY_BUSY", "Accepted", "Reject", "Retry", "Split", "Verdict", "classify", "classify_error",
    "error_detail", "parse_retry_after",
]

RETRY_BUSY = frozenset({429, 502, 503, 504})
RETRY_AUTH = frozenset({401, 403, 407})
# Only these two define Retry-After as "come back then"; a gateway's 502/504 does not.
HONOURS_RETRY_AFTER = frozenset({429, 503})
EXCERPT_CHARS = 300

_REJECTED_FIELD: dict[Signal, str] = {
    "metrics": "rejected_data_points", "logs": "rejected_log_records", "traces": "rejected_spans",
}


@dataclass(frozen=True)
class Accepted:
    rejected_items: int = 0  # rejected in a partial success
    error_message: str = ""  # the partial success's explanation


@dataclass(frozen=True)
class Retry:
    reason: str  # label of relay_export_retries_total: http_503, redirect, tls, proxy, timeout, connection
    detail: str  # readable, for the log and /status
    after: float | None = None  # seconds the destination asked for (Retry-After), not capped


@dataclass(frozen=True)
class Split:
    detail: str


@dataclass(frozen=True)
class Reject:
    status: int
    detail: str


Verdict = Accepted | Retry | Split | Reject


def classify(status: int, headers: Mapping[str, str], body: bytes, signal: Signal, *,
             can_split: bool = True, now: float | None = None) -> Verdict:
    """The verdict on one HTTP answer. can_split: the batch has more than one entry."""
    if 200 <= status < 300:
        return _accepted(signal, body)
    if 300 <= status < 400:
        location = headers.get("Location") or "(no Location)"
        return Retry("redirect", f"vendor redirected to {location[:EXCERPT_CHARS]}; redirects are not followed "
                                 f"(HTTP {status}): point the endpoint at where it now lives")
    detail = f"HTTP {status}: {error_detail(body)}"
    if status in RETRY_BUSY or status in RETRY_AUTH:
        after = None
        if status in HONOURS_RETRY_AFTER:
            after = parse_retry_after(headers.get("Retry-After"), time.time() if now is None else now)
        if after is not None:
            detail += f" (Retry-After {after:g}s)"
        return Retry(f"http_{status}", detail, after)
    if status == 413 and can_split:
        return Split(detail)
    return Reject(status, detail)


def classify_error(e: BaseException, *, client_cert_may_be_missing: bool = False) -> Retry:
    """The verdict on a request that got no answer. client_cert_may_be_missing: HTTPS
    without a configured client certificate, so a dropped connection may mean one is required."""
    reason, detail = _describe_error(e)
    dropped = isinstance(e, aiohttp.ServerDisconnectedError) or (
        isinstance(e, aiohttp.ClientOSError) and not isinstance(e, aiohttp.ClientConnectorError)
    ) or "CERTIFICATE_REQUIRED" in str(e).upper()
    if dropped and client_cert_may_be_missing:
        # TLS 1.3 reports a missing client certificate only as a dropped or reset connection.
        detail += " (if the server requires a client certificate, set tls.client_cert_file)"
    return Retry(reason, detail)


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


def error_detail(body: bytes) -> str:
    """A readable account of an error body: its google.rpc.Status, else a text excerpt."""
    status = _rpc_status(body)
    if status is None:
        return _excerpt(body)
    code = code_pb2.Code.Name(status.code) if status.code in code_pb2.Code.values() else str(status.code)
    if not status.message:
        return code
    return f"{_excerpt(status.message.encode())} ({code})"


def _rpc_status(body: bytes) -> Any:
    """The body as a google.rpc.Status, or None when it is not one. Text never passes for one:
    a printable first byte is the tag of field 4 or higher, which Status does not have."""
    status = status_pb2.Status()
    try:
        status.ParseFromString(body)
    except DecodeError:
        return None
    if len(UnknownFieldSet(status)) or not (status.code or status.message):
        return None
    return status


def _accepted(signal: Signal, body: bytes) -> Accepted:
    if not body:
        return Accepted()
    resp: Any = SIGNAL_INFO[signal].response()
    try:
        resp.ParseFromString(body)
    except Exception:  # a non-OTLP 2xx body is not ours to judge: the data was accepted
        return Accepted()
    if not resp.HasField("partial_success"):
        return Accepted()
    ps = resp.partial_success
    return Accepted(int(getattr(ps, _REJECTED_FIELD[signal])), ps.error_message)


def _describe_error(e: BaseException) -> tuple[str, str]:
    """(retry reason, readable detail) of a request that failed without an answer."""
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


def _excerpt(body: bytes, limit: int = EXCERPT_CHARS) -> str:
    text = body[:limit].decode("utf-8", "replace").replace("\n", " ").strip()
    return text + ("..." if len(body) > limit else "") if text else "(empty body)"
