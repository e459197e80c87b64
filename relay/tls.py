"""TLS contexts, built in one place.

Owns: the client context (the shipper towards a destination, the pull sources towards their
targets) and the server context (the OTLP receiver and the reference ingest). Both start
from ssl.create_default_context: certificates and host names are verified and TLS 1.2 is the
floor unless the settings say otherwise. Callers log what they turned off.
"""

from __future__ import annotations

import ssl

from relay.config import TLSSettings
from relay.source_settings import ListenerTLSSettings

__all__ = ["client_context", "server_context"]


def client_context(tls: TLSSettings) -> ssl.SSLContext:
    """A context for connecting out. With ca_file only that bundle is trusted (a pinned
    private CA), else the system store; with a client certificate, it is presented (mTLS)."""
    ctx = ssl.create_default_context(cafile=tls.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    if tls.client_cert_file and tls.client_key_file:
        ctx.load_cert_chain(tls.client_cert_file, tls.client_key_file)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def server_context(tls: ListenerTLSSettings) -> ssl.SSLContext:
    """A context for a listener; with client_ca_file, clients must present a certificate it
    signed (mTLS)."""
    if not tls.cert_file or not tls.key_file:
        raise ValueError("a TLS listener needs cert_file and key_file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        ctx.load_verify_locations(tls.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
