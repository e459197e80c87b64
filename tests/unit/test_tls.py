"""The TLS contexts of relay/tls.py, proved by real handshakes on loopback: CA pinning,
verification on by default and off only when asked, the minimum version, mutual TLS, and
the scrapes' use of the client context."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from relay.config import TLSSettings
from relay.source_settings import ListenerTLSSettings
from relay.sources.scrape_http import ScrapeSession
from relay.tls import client_context, server_context
from tests.certs import PKI, Pair
from tests.procs import free_port


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str | None:
    """Connect client to server and exchange one message; the client's error, or None.
    The server answers with the CN of the client certificate it saw ("-" for none)."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(4)
                peer = tls.getpeercert()
                cn = dict(x[0] for x in peer["subject"])["commonName"] if peer else "-"
                tls.sendall(str(cn).encode())
        except (OSError, ssl.SSLError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with socket.create_connection(srv.getsockname(), timeout=5) as raw, \
                client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"ping")
            answer = tls.recv(100)
            if not answer:
                return "the server closed the connection"
            return None if answer == b"-" else answer.decode()
    except (OSError, ssl.SSLError) as e:
        return f"{e.__class__.__name__}: {e}"
    finally:
        t.join(5)
        srv.close()
        assert not t.is_alive()


@pytest.fixture()
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path / "ca")


@pytest.fixture()
def server_pair(pki: PKI) -> Pair:
    return pki.issue("127.0.0.1", server=True)


def listener(pair: Pair, client_ca: Path | None = None) -> ssl.SSLContext:
    return server_context(ListenerTLSSettings(str(pair.cert), str(pair.key), str(client_ca) if client_ca else None))


def test_a_pinned_ca_is_trusted_where_the_system_store_is_not(pki: PKI, server_pair: Pair) -> None:
    assert handshake(listener(server_pair), client_context(TLSSettings(ca_file=str(pki.ca.cert)))) is None
    refused = handshake(listener(server_pair), client_context(TLSSettings()))
    assert refused is not None and "CERTIFICATE_VERIFY_FAILED" in refused


def test_a_certificate_from_another_ca_is_refused(tmp_path: Path, server_pair: Pair) -> None:
    other = PKI(tmp_path / "other", name="other-ca")
    refused = handshake(listener(server_pair), client_context(TLSSettings(ca_file=str(other.ca.cert))))
    assert refused is not None and "CERTIFICATE_VERIFY_FAILED" in refused


def test_verification_is_off_only_when_asked(server_pair: Pair) -> None:
    ctx = client_context(TLSSettings(insecure_skip_verify=True))
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    assert handshake(listener(server_pair), ctx) is None
    strict = client_context(TLSSettings())
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname


def test_min_version_1_3_refuses_a_server_that_stops_at_1_2(pki: PKI, server_pair: Pair) -> None:
    old = listener(server_pair)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    ca = str(pki.ca.cert)
    assert client_context(TLSSettings(ca_file=ca)).minimum_version == ssl.TLSVersion.TLSv1_2
    assert handshake(old, client_context(TLSSettings(ca_file=ca))) is None
    refused = handshake(old, client_context(TLSSettings(ca_file=ca, min_version="1.3")))
    assert refused is not None, "a TLS 1.2 server was accepted with min_version 1.3"


def test_mutual_tls_requires_a_client_certificate_signed_by_the_client_ca(tmp_path: Path, pki: PKI,
                                                                        server_pair: Pair) -> None:
    client = pki.issue("relay-7", server=False)
    ca = str(pki.ca.cert)
    mtls = listener(server_pair, client_ca=pki.ca.cert)
    assert mtls.verify_mode == ssl.CERT_REQUIRED
    with_cert = TLSSettings(ca_file=ca, client_cert_file=str(client.cert), client_key_file=str(client.key))
    assert handshake(mtls, client_context(with_cert)) == "relay-7"
    assert handshake(listener(server_pair, client_ca=pki.ca.cert), client_context(TLSSettings(ca_file=ca))) \
        is not None, "a client without a certificate got through"
    stranger = PKI(tmp_path / "stranger", name="stranger-ca").issue("intruder", server=False)
    forged = TLSSettings(ca_file=ca, client_cert_file=str(stranger.cert), client_key_file=str(stranger.key))
    assert handshake(listener(server_pair, client_ca=pki.ca.cert), client_context(forged)) is not None


def test_without_a_client_ca_the_server_asks_for_no_certificate(pki: PKI, server_pair: Pair) -> None:
    ctx = listener(server_pair)
    assert ctx.verify_mode == ssl.CERT_NONE and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert handshake(ctx, client_context(TLSSettings(ca_file=str(pki.ca.cert)))) is None


def test_a_listener_needs_its_certificate_and_key() -> None:
    with pytest.raises(ValueError, match="cert_file and key_file"):
        server_context(ListenerTLSSettings())


def test_scrapes_over_https_trust_their_pinned_ca_or_skip_verification_only_when_asked(
        pki: PKI, server_pair: Pair) -> None:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text="up 1\n")

    async def main() -> list[str]:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=listener(server_pair)).start()
        url = f"https://127.0.0.1:{port}/metrics"
        results = []
        for session in (ScrapeSession(url, 5, ca_file=str(pki.ca.cert)), ScrapeSession(url, 5),
                        ScrapeSession(url, 5, insecure_skip_verify=True)):
            try:
                async with session.get().get(url) as resp:
                    results.append(await resp.text())
            except aiohttp.ClientConnectorCertificateError:
                results.append("refused")
            finally:
                await session.close()
        await runner.cleanup()
        return results

    assert asyncio.run(main()) == ["up 1\n", "refused", "up 1\n"]
