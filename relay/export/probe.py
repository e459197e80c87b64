"""The connection self-test of one destination, one step at a time.

Owns: the checks behind `telemetry-relay check-connection`, each with its own verdict and,
when it fails, the fix: DNS, TCP, the proxy (CONNECT and its credentials), TLS (chain,
pinned CA, host name, minimum version), HTTP, the clock against the answer's Date header,
the API key and the signature. The probe reaches the destination as the shipper does (the
same TLS context from relay/tls.py, the same choice of proxy, the same API key header, a
body prepared and signed by export/prepare.py and export/signing.py), but over a socket
it drives itself, so that each failure is pinned on its own step. What it sends is an
empty, signed metrics request to the destination's verify-only endpoint (/v1/verify),
which checks it as it would check data, stores nothing, and says what passed.
Steps after a failed one are skipped: each depends on the one before. The eight steps and
their failure analyses stay in one module (a little over 450 lines), so that the order in
which a connection is built reads from top to bottom.
The steps' records and the result file the running relay shows are probe_result.py.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import socket
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.config import DestinationSettings
from relay.export.prepare import prepare_blocking
from relay.export.probe_result import NETWORK_STEPS, Step, Verdict, skipped_after
from relay.export.response import error_detail
from relay.export.signing import Signer
from relay.secrets import redact
from relay.tls import client_context

__all__ = ["VERIFY_PATH", "Target", "check"]

VERIFY_PATH = "/v1/verify"
# The verifier's default freshness window (relay/ingest/verify.py); a destination that says
# its own window in the verify answer is judged by that one.
DEFAULT_WINDOW = 300.0
# A clock this far off still passes the signature window, but is worth fixing before it grows.
CLOCK_WARN_SECONDS = 5.0
MAX_ANSWER_BYTES = 64 * 1024

@dataclass
class Target:
    """One destination as the loaded config has it, with the credentials read beside it."""

    settings: DestinationSettings
    api_key: str | None = field(repr=False, default=None)
    api_key_source: str = "none configured"
    proxy_password: str | None = field(repr=False, default=None)
    signer: Signer | None = None


class _Failed(Exception):
    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


@dataclass
class _Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    local_time: float  # this host's clock half-way through the exchange

    def verify_report(self) -> dict[str, Any] | None:
        """The verify-only endpoint's account of the probe, when the answer is one."""
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            return None
        try:
            doc = json.loads(self.body)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) and isinstance(doc.get("checks"), dict) else None


class _Probe:
    """The steps for one destination; each returns (verdict, detail) or raises _Failed."""

    def __init__(self, target: Target) -> None:
        self.t = target
        s = target.settings
        self.url = urllib.parse.urlsplit(s.endpoint or "")
        self.https = self.url.scheme == "https"
        self.host = self.url.hostname or ""
        self.port = self.url.port or (443 if self.https else 80)
        self.proxy = _proxy_for(s)
        self.proxy_url = urllib.parse.urlsplit(self.proxy) if self.proxy else None
        self.timeout = min(float(s.timeout), 15.0)
        self.sock: socket.socket | None = None
        self.answer: _Answer | None = None

    def steps(self) -> list[tuple[str, Callable[[], tuple[Verdict, str]]]]:
        run = {"dns": self.dns, "tcp": self.tcp, "proxy": self.through_proxy, "tls": self.tls, "http": self.http,
               "clock": self.clock, "api_key": self.api_key, "signature": self.signature}
        return [(name, run[name]) for name in NETWORK_STEPS]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    # -- the network path --------------------------------------------------------------------------

    @property
    def _first_hop(self) -> tuple[str, int, str]:
        """Where the relay opens its connection: the proxy when one applies, else the endpoint."""
        if self.proxy_url:
            return self.proxy_url.hostname or "", self.proxy_url.port or 80, "proxy"
        return self.host, self.port, "endpoint"

    def dns(self) -> tuple[Verdict, str]:
        host, port, what = self._first_hop
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            key = "proxy_url" if what == "proxy" else "endpoint"
            raise _Failed(f"the {what} host {host!r} does not resolve: {e.strerror}",
                          f"check the host name in {key}, and this host's resolver (/etc/resolv.conf, "
                          "/etc/hosts)") from None
        addresses = ", ".join(dict.fromkeys(str(i[4][0]) for i in infos))
        note = f"; the proxy resolves {self.host}" if what == "proxy" else ""
        return "ok", f"{host} -> {addresses}{note}"

    def tcp(self) -> tuple[Verdict, str]:
        host, port, what = self._first_hop
        try:
            self.sock = socket.create_connection((host, port), timeout=self.timeout)
        except ConnectionRefusedError:
            raise _Failed(f"connection to the {what} {host}:{port} refused: nothing listens there, or a "
                          "firewall rejects it",
                          f"check the port in {'proxy_url' if what == 'proxy' else 'endpoint'}; ask the network "
                          f"team whether outbound TCP to {host}:{port} is allowed") from None
        except TimeoutError:
            raise _Failed(f"no answer from the {what} {host}:{port} within {self.timeout:g}s: a firewall may drop "
                          "the packets",
                          f"ask the network team to allow outbound TCP to {host}:{port}, or go through the "
                          "site's proxy (proxy_url)") from None
        except OSError as e:
            raise _Failed(f"cannot connect to the {what} {host}:{port}: {e.strerror or e}",
                          "check this host's routes and firewall") from None
        peer = self.sock.getpeername()
        return "ok", f"connected to the {what} {peer[0]}:{peer[1]}"

    def through_proxy(self) -> tuple[Verdict, str]:
        if not self.proxy_url:
            bypass = bool(urllib.request.proxy_bypass(self.host)) and bool(
                self.t.settings.proxy_url or urllib.request.getproxies().get(self.url.scheme))
            return "ok", "no proxy: NO_PROXY exempts the endpoint" if bypass else "no proxy: connecting directly"
        shown = _without_userinfo(self.proxy_url)
        if not self.https:
            return "ok", f"plain HTTP through {shown}: the proxy forwards each request (no tunnel)"
        assert self.sock is not None
        target = f"{self.host}:{self.port}"
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        auth = self._proxy_authorization()
        if auth:
            head += f"Proxy-Authorization: {auth}\r\n"
        try:
            self.sock.sendall((head + "\r\n").encode())
            status, reason = _read_connect_answer(self.sock)
        except OSError as e:
            raise _Failed(f"the proxy {shown} dropped the connection during CONNECT: {e}",
                          "check that proxy_url names an HTTP proxy (CONNECT), not a SOCKS proxy or a web server"
                          ) from None
        if status == 200:
            return "ok", f"{shown} opened a tunnel to {target}"
        if status == 407:
            user = self.t.settings.proxy_username or self.proxy_url.username
            if user:
                raise _Failed(f"the proxy {shown} refused the credentials of user {user!r} (HTTP 407 {reason})",
                              "check proxy_username and the password in proxy_password_file with the proxy's "
                              "administrators")
            raise _Failed(f"the proxy {shown} asks for credentials (HTTP 407 {reason})",
                          "set proxy_username and proxy_password_file for this destination")
        if status == 403:
            raise _Failed(f"the proxy {shown} does not allow connections to {target} (HTTP 403 {reason})",
                          f"ask the proxy's administrators to allow {target}")
        if status in (502, 503, 504):
            raise _Failed(f"the proxy {shown} cannot reach {target} (HTTP {status} {reason})",
                          "check the endpoint's host and port; the proxy's own DNS, routes or firewall may "
                          "block it")
        raise _Failed(f"the proxy {shown} refused the tunnel to {target}: HTTP {status} {reason}",
                      "check proxy_url with the proxy's administrators")

    def _proxy_authorization(self) -> str | None:
        assert self.proxy_url is not None
        user = self.t.settings.proxy_username
        password = self.t.proxy_password or ""
        if not user and self.proxy_url.username:  # credentials in HTTPS_PROXY itself
            user = urllib.parse.unquote(self.proxy_url.username)
            password = urllib.parse.unquote(self.proxy_url.password or "")
        if not user:
            return None
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def tls(self) -> tuple[Verdict, str]:
        if not self.https:
            return "warn", "plain HTTP: no TLS, so what leaves can be read and altered on the way"
        assert self.sock is not None
        tls = self.t.settings.tls
        try:
            ctx = client_context(tls)
        except (OSError, ssl.SSLError) as e:
            raise _Failed(f"cannot load the TLS files: {e}",
                          "check tls.ca_file, tls.client_cert_file and tls.client_key_file") from None
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname=self.host)
        except ssl.SSLCertVerificationError as e:
            raise self._certificate_failure(e) from None
        except ssl.SSLError as e:
            raise _handshake_failure(e, tls.min_version) from None
        except OSError as e:
            raise _Failed(f"the connection dropped during the TLS handshake: {e}",
                          "check that the endpoint's port speaks TLS (https), and that no device on the path "
                          "cuts TLS connections") from None
        assert isinstance(self.sock, ssl.SSLSocket)
        cert = self.sock.getpeercert() or {}
        trusted = f"the CA in tls.ca_file ({tls.ca_file})" if tls.ca_file else "the system trust store"
        detail = f"{self.sock.version()}, certificate {_cert_names(cert)}"
        if tls.insecure_skip_verify:
            return "warn", detail + "; NOT VERIFIED (tls.insecure_skip_verify)"
        return "ok", detail + f", verified against {trusted}"

    def _certificate_failure(self, e: ssl.SSLCertVerificationError) -> _Failed:
        tls = self.t.settings.tls
        code, message = e.verify_code, e.verify_message
        if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
            return _Failed(f"the certificate does not name {self.host!r}: {message}",
                           "use in the endpoint the host name the vendor's certificate names (its subjectAltName)")
        if code in (9, 10):  # not yet valid, expired
            return _Failed(f"the server's certificate is outside its validity: {message}",
                           "check this host's clock; if it is right, the vendor has to renew the certificate")
        if tls.ca_file:
            return _Failed(f"the certificate chain does not lead to the pinned CA in tls.ca_file ({tls.ca_file}): "
                           f"{message}",
                           "put the vendor's CA bundle in tls.ca_file; if a TLS-inspecting proxy sits on the path, "
                           "exempt the endpoint from inspection")
        return _Failed(f"the certificate chain is not trusted by this host's trust store: {message}",
                       "set tls.ca_file to the vendor's CA bundle, or exempt the endpoint from TLS inspection on "
                       "the path")

    def http(self) -> tuple[Verdict, str]:
        assert self.sock is not None
        s = self.t.settings
        base = (s.endpoint or "").rstrip("/")
        url = base + VERIFY_PATH
        prepared = prepare_blocking("metrics", [b""], None, s.compression, sign=True)
        headers = prepared.headers()
        if self.t.api_key:
            headers["Authorization"] = f"Bearer {self.t.api_key}"
        if self.t.signer is not None and prepared.digest:
            self.t.signer.sign("POST", url, headers)
        target = urllib.parse.urlsplit(url).path
        if self.proxy_url and not self.https:
            target = url  # a forwarding proxy takes the absolute URL
            auth = self._proxy_authorization()
            if auth:
                headers["Proxy-Authorization"] = auth
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        conn.sock = self.sock
        sent = time.time()
        try:
            conn.request("POST", target, body=prepared.wire, headers=headers)
            resp = conn.getresponse()
            body = resp.read(MAX_ANSWER_BYTES)
        except (OSError, http.client.HTTPException) as e:
            hint = "" if s.tls.client_cert_file or not self.https else (
                " (a server that requires a client certificate drops the connection: set tls.client_cert_file)")
            raise _Failed(f"no HTTP answer to POST {url}: {e.__class__.__name__}: {e}{hint}",
                          "check that the endpoint is the vendor's OTLP/HTTP base URL") from None
        self.answer = _Answer(resp.status, resp.headers, body, (sent + time.time()) / 2)
        status, what = resp.status, f"HTTP {resp.status} from POST {url}"
        if 300 <= status < 400:
            raise _Failed(f"{what}: redirected to {resp.headers.get('Location')}; the relay never follows redirects",
                          "point the endpoint at where the vendor's ingest now lives")
        if status == 407:
            raise _Failed(f"{what}: the proxy asks for credentials",
                          "set proxy_username and proxy_password_file for this destination")
        if status >= 500:
            raise _Failed(f"{what}: the destination answers but does not take data: {error_detail(body)}",
                          "try again later; if it lasts, tell the vendor")
        if status == 404:
            return "warn", f"{what}: the destination has no verify-only endpoint"
        return "ok", what

    # -- what the destination made of the probe ----------------------------------------------------

    def _window(self) -> float:
        assert self.answer is not None
        report = self.answer.verify_report()
        window = report.get("window_seconds") if report else None
        return float(window) if isinstance(window, int | float) else DEFAULT_WINDOW

    def clock(self) -> tuple[Verdict, str]:
        assert self.answer is not None
        date = self.answer.headers.get("Date")
        if not date:
            return "warn", "the answer has no Date header: the clocks cannot be compared"
        try:
            theirs = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return "warn", f"the answer's Date header {date!r} is not an HTTP date: the clocks cannot be compared"
        # A Date header is truncated to the second: the server's clock stood within that second.
        offset = self.answer.local_time - (theirs + 0.5)
        window = self._window()
        side = "ahead of" if offset > 0 else "behind"
        said = f"this host's clock is about {abs(offset):.0f}s {side} the destination's"
        fix = "synchronise this host's clock (chrony, systemd-timesyncd or ntpd: timedatectl status)"
        if abs(offset) > window:
            raise _Failed(f"{said}: signatures are accepted only within ±{window:g}s, so every request is "
                          "refused", fix)
        if abs(offset) > CLOCK_WARN_SECONDS:
            return "warn", f"{said} (signatures are accepted within ±{window:g}s)"
        return "ok", f"{said} (signatures are accepted within ±{window:g}s)"

    def _failed_check(self) -> dict[str, Any] | None:
        report = self.answer.verify_report() if self.answer else None
        failed = report.get("failed") if report else None
        return failed if isinstance(failed, dict) else None

    def api_key(self) -> tuple[Verdict, str]:
        assert self.answer is not None
        status = self.answer.status
        if status == 404:
            return "skipped", "the destination has no verify-only endpoint: the key is checked only when data goes"
        failed = self._failed_check()
        refused = status in (401, 403) and (failed is None or failed.get("check") == "api_key")
        if refused:
            said = redact(error_detail(self.answer.body)) if failed is None else str(failed.get("message"))
            if self.t.api_key:
                raise _Failed(f"the destination refused the API key from {self.t.api_key_source} (HTTP {status}: "
                              f"{said})", f"check the key in {self.t.api_key_source} with the vendor")
            raise _Failed(f"the destination wants an API key (HTTP {status}: {said})",
                          "put the key the vendor gave you in a file and set api_key_file (or api_key_env)")
        if self.t.api_key:
            return "ok", f"the key from {self.t.api_key_source} was accepted"
        return "ok", "none configured, and the destination asks for none"

    def signature(self) -> tuple[Verdict, str]:
        assert self.answer is not None
        if self.answer.status == 404:
            return "skipped", "the destination has no verify-only endpoint: signatures are checked only on data"
        report = self.answer.verify_report()
        failed = self._failed_check()
        if failed is not None and failed.get("check") == "signature":
            raise _signature_failure(str(failed.get("reason")), str(failed.get("message")), self.t.signer)
        if failed is not None:
            raise _Failed(f"the destination refused the probe at its {failed.get('check')} check: "
                          f"{failed.get('message')}",
                          "a proxy or gateway on the path may alter requests; tell the vendor what it says")
        checked = report.get("checks", {}).get("signature") if report else None
        if self.t.signer is None:
            return "warn", "requests are not signed (signing.enabled: false)"
        if not isinstance(checked, dict):
            return "warn", (f"the destination accepted the probe (HTTP {self.answer.status}) but did not say "
                            "whether it checked the signature")
        if not checked.get("passed"):
            return "warn", f"the destination does not check signatures: {checked.get('detail')}"
        return "ok", f"verified by the destination: key id {checked.get('key_id')}"


def check(target: Target) -> list[Step]:
    """Every network step for one destination, in order; after a failure the rest are skipped."""
    probe = _Probe(target)
    out: list[Step] = []
    failed: str | None = None
    try:
        for name, step in probe.steps():
            if failed:
                out.append(skipped_after(failed, name))
                continue
            try:
                status, detail = step()
            except _Failed as e:
                out.append(Step(name, "fail", redact(e.detail), e.fix))
                failed = name
                continue
            out.append(Step(name, status, redact(detail)))
    finally:
        probe.close()
    return out


def _signature_failure(reason: str, message: str, signer: Signer | None) -> _Failed:
    said = f"the destination refused the signature ({reason}): {message}"
    if reason == "unknown_key":
        key = signer.key_ids[0] if signer else "(none)"
        return _Failed(said, f"register the relay's public key (key id {key}) with the vendor: telemetry-relay "
                             "keys show prints it")
    if reason in ("expired", "clock_skew"):
        return _Failed(said, "synchronise this host's clock (timedatectl status)")
    if reason == "missing_signature":
        return _Failed(said, "turn signing on (signing.enabled: true) and create the key: telemetry-relay keys init")
    if reason == "bad_digest":
        return _Failed(said, "something on the path alters request bodies (a TLS-inspecting proxy or a "
                             "gateway): exempt the endpoint from it")
    return _Failed(said, "a proxy or gateway on the path may alter the signed headers; tell the vendor what it says")


def _handshake_failure(e: ssl.SSLError, min_version: str) -> _Failed:
    text = str(e).upper()
    if "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER_FAILURE" in text:
        return _Failed(f"the server does not answer TLS: {e.reason}",
                       "the port speaks plain HTTP: use http:// or the vendor's TLS port")
    if "PROTOCOL_VERSION" in text or "UNSUPPORTED_PROTOCOL" in text or "NO_PROTOCOLS" in text:
        return _Failed(f"the server does not speak TLS {min_version} or newer ({e.reason})",
                       "ask the vendor for TLS 1.3; lower tls.min_version to 1.2 only if your security "
                       "policy allows it")
    return _Failed(f"the TLS handshake failed: {e.reason or e}",
                   "if the server requires a client certificate, set tls.client_cert_file and tls.client_key_file")


def _cert_names(cert: dict[str, Any]) -> str:
    def cn(name: Any) -> str:
        for rdn in name or ():
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return "?"

    sans = ", ".join(v for _, v in cert.get("subjectAltName", ()))
    names = sans or cn(cert.get("subject"))
    return f"for {names} issued by {cn(cert.get('issuer'))}, valid until {cert.get('notAfter')}"


def _read_connect_answer(sock: socket.socket) -> tuple[int, str]:
    """The status of a proxy's answer to CONNECT; only the head is read, the tunnel follows it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)  # byte by byte: nothing of the tunnel may be read past the head
        if not chunk:
            raise ConnectionResetError("closed before the end of its answer")
        data += chunk
        if len(data) > MAX_ANSWER_BYTES:
            raise ConnectionResetError("an answer head longer than 64 KiB")
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionResetError(f"not an HTTP answer: {line[:80]!r}")
    return int(parts[1]), parts[2] if len(parts) > 2 else ""


def _proxy_for(s: DestinationSettings) -> str | None:
    """The proxy the shipper uses: proxy_url, else HTTPS_PROXY/HTTP_PROXY; none when NO_PROXY
    exempts the endpoint's host."""
    url = urllib.parse.urlsplit(s.endpoint or "")
    if urllib.request.proxy_bypass(url.hostname or ""):
        return None
    return s.proxy_url or urllib.request.getproxies().get(url.scheme) or None


def _without_userinfo(url: urllib.parse.SplitResult) -> str:
    netloc = (url.hostname or "") + (f":{url.port}" if url.port else "")
    return urllib.parse.urlunsplit(url._replace(netloc=netloc))


