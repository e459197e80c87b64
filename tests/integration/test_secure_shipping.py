"""Signed shipping over real HTTPS to the verifying ingest, mTLS, proxies and secret hygiene,
with real processes on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import zstandard

from relay.export.signing import KeyStore, Signer, content_digest
from relay.otlp import MetricsBuilder
from tests.certs import PKI
from tests.procs import CLI, Ingest, Proc, Relay, free_port, http_get, port_open, relay_config, wait_until


def metrics_body() -> bytes:
    b = MetricsBuilder({"service.name": "test"}, "test")
    b.point(b.gauge("test.value", "1"), 42.0, time.time_ns())
    return bytes(b.finish().SerializeToString())


def signed_relay(tmp_path: Path, endpoint: str, name: str = "relay", env: dict[str, str] | None = None,
                 **dest: Any) -> tuple[Relay, Path]:
    """A relay whose key exists up front, and a trusted-keys dir holding its public key."""
    cfg = relay_config(tmp_path, endpoint, sources={"host": {"enabled": False}, "internal": {"interval": "200ms"}})
    cfg["destinations"][0].update(dest)
    relay = Relay(tmp_path, cfg, name=name, env=env)
    relay.keys("init")
    trusted = tmp_path / "trusted"
    relay.keys("export", "--out", str(trusted))
    return relay, trusted


def key_ids(ingest: Ingest) -> set[str]:
    return {r["key_id"] for r in ingest.requests()}


def test_https_to_verifying_ingest_stores_only_verified_requests(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki")
    server = pki.issue("ingest", server=True)
    port = free_port()
    relay, trusted = signed_relay(tmp_path, f"https://127.0.0.1:{port}", tls={"ca_file": str(pki.ca.cert)})
    ingest = Ingest(tmp_path, port, ["--tls-cert", str(server.cert), "--tls-key", str(server.key),
                                     "--trusted-keys", str(trusted)], tls_ca=pki.ca.cert)
    ingest.start()
    relay.start()
    try:
        wait_until(lambda: len(ingest.requests()) >= 3, what="signed requests at the ingest")
        (kid,) = [p.stem for p in trusted.glob("*.pem")]
        assert key_ids(ingest) == {kid}
        assert ingest.stats()["rejected"] == {}
        assert relay.destination()["signing_key_ids"] == [kid]
        assert relay.destination()["tls"]["verify"] is True
    finally:
        relay.terminate()
        ingest.terminate()


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_ingest_rejects_each_forgery_with_the_right_status_and_reason(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", overlap=60)
    key = store.init()
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    from relay.export.signing import public_pem

    (trusted / "relay.pem").write_text(public_pem(key.public))
    ingest = Ingest(tmp_path, extra=["--trusted-keys", str(trusted)])
    ingest.start()
    url = ingest.url + "/v1/metrics"
    signer = Signer([key])
    stranger = Signer([KeyStore(tmp_path / "other", overlap=60).init()])
    body = zstandard.ZstdCompressor().compress(metrics_body())

    def headers(payload: bytes, by: Signer | None = signer, now: float | None = None,
                digest_of: bytes | None = None) -> dict[str, str]:
        h = {"Content-Type": "application/x-protobuf", "Content-Encoding": "zstd",
             "Content-Digest": content_digest(payload if digest_of is None else digest_of)}
        if by is not None:
            by.sign("POST", url, h, now=now)
        return h

    try:
        good = headers(body)
        assert post(url, body, good) == 200
        altered = bytearray(body)
        altered[len(altered) // 2] ^= 0x01
        cases = {
            "bad_digest": (400, bytes(altered), headers(body)),  # body altered by one byte in transit
            "replay": (401, body, good),  # the same bytes sent twice
            "unknown_key": (401, body, headers(body, by=stranger)),
            "expired": (401, body, headers(body, now=time.time() - 600)),  # created 10 minutes ago
            "missing_signature": (401, body, headers(body, by=None)),
        }
        for reason, (status, payload, h) in cases.items():
            assert post(url, payload, h) == status, reason
        # A Content-Digest that does not match the body it was signed with.
        assert post(url, body, headers(body, digest_of=b"something else")) == 400
        stats = ingest.stats()
        assert stats["rejected"] == {"bad_digest": 2, "replay": 1, "unknown_key": 1, "expired": 1,
                                     "missing_signature": 1}
        assert len(ingest.requests()) == 1, "only the genuine request is stored"
        assert ingest.requests()[0]["key_id"] == key.key_id
    finally:
        ingest.terminate()


def test_mtls_client_certificate_required(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki")
    server = pki.issue("ingest", server=True)
    client = pki.issue("relay-client", server=False)
    port = free_port()
    relay, trusted = signed_relay(tmp_path, f"https://127.0.0.1:{port}", tls={"ca_file": str(pki.ca.cert)})
    ingest = Ingest(tmp_path, port, ["--tls-cert", str(server.cert), "--tls-key", str(server.key),
                                     "--client-ca", str(pki.ca.cert), "--trusted-keys", str(trusted)],
                    tls_ca=pki.ca.cert)
    ingest.start()
    relay.start()
    try:
        err = wait_until(lambda: relay.destination()["last_error"], what="a TLS failure without a client cert")
        assert "client certificate" in err, err
        assert ingest.requests() == []
        cfg = relay.cfg
        cfg["destinations"][0]["tls"].update(client_cert_file=str(client.cert), client_key_file=str(client.key))
        relay.write_config(cfg)
        relay.signal(__import__("signal").SIGHUP)
        wait_until(lambda: len(ingest.requests()) >= 2, what="delivery with a client certificate")
        assert relay.destination()["tls"]["client_certificate"] is True
    finally:
        relay.terminate()
        ingest.terminate()


def test_untrusted_server_certificate_is_refused_and_reported(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki")
    server = pki.issue("ingest", server=True)
    port = free_port()
    relay, _ = signed_relay(tmp_path, f"https://127.0.0.1:{port}")  # no ca_file: system store only
    ingest = Ingest(tmp_path, port, ["--tls-cert", str(server.cert), "--tls-key", str(server.key)],
                    tls_ca=pki.ca.cert)
    ingest.start()
    relay.start()
    try:
        err = wait_until(lambda: relay.destination()["last_error"], what="certificate failure")
        assert "TLS certificate verification failed" in err and "certificate verify failed" in err
        _, ready = wait_until(lambda: (r := relay.readyz())[0] == 503 and r, what="not ready")
        assert any("TLS certificate verification failed" in r for r in ready["reasons"])
        assert ingest.requests() == []
        assert relay.metric("relay_export_retries_total", reason="tls") >= 1
    finally:
        relay.terminate()
        ingest.terminate()
    assert "TLS certificate verification failed" in relay.log()


class Proxy(Proc):
    def __init__(self, workdir: Path, auth: str | None = None, name: str = "proxy") -> None:
        self.port = free_port()
        args = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(self.port),
                "--num-workers", "1", "--num-acceptors", "1"]
        if auth:
            args += ["--basic-auth", auth]
        super().__init__(args, workdir / f"{name}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        wait_until(lambda: port_open(self.port), what="proxy to listen")



def remote_ports(pid: int) -> set[int]:
    """Ports a process has TCP connections to (the relay keeps its connection alive)."""
    import psutil

    return {c.raddr.port for c in psutil.Process(pid).net_connections("tcp") if c.raddr}


def tls_ingest(tmp_path: Path, trusted: Path | None, port: int, pki: PKI, name: str = "ingest") -> Ingest:
    server = pki.issue(f"{name}-srv", server=True)
    extra = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    if trusted:
        extra += ["--trusted-keys", str(trusted)]
    return Ingest(tmp_path, port, extra, tls_ca=pki.ca.cert, name=name)


@pytest.mark.parametrize("mode", ["explicit-with-credentials", "environment", "no_proxy"])
def test_ships_through_a_connect_proxy(tmp_path: Path, mode: str) -> None:
    pki = PKI(tmp_path / "pki")
    port = free_port()
    password = "pr0xy-passw0rd-7731"
    proxy = Proxy(tmp_path, auth=f"relayuser:{password}" if mode == "explicit-with-credentials" else None)
    proxy.start()
    pw_file = tmp_path / "proxy-password"
    pw_file.write_text(password + "\n")
    pw_file.chmod(0o600)
    dest: dict[str, Any] = {"tls": {"ca_file": str(pki.ca.cert)}}
    env = {"HTTPS_PROXY": "", "HTTP_PROXY": "", "NO_PROXY": ""}
    if mode == "explicit-with-credentials":
        dest.update(proxy_url=proxy.url, proxy_username="relayuser", proxy_password_file=str(pw_file))
    elif mode == "environment":
        env["HTTPS_PROXY"] = proxy.url
    else:
        dest.update(proxy_url=proxy.url)
        env["NO_PROXY"] = "127.0.0.1,localhost"
    relay, trusted = signed_relay(tmp_path, f"https://127.0.0.1:{port}", env=env, **dest)
    ingest = tls_ingest(tmp_path, trusted, port, pki)
    ingest.start()
    relay.start()
    try:
        wait_until(lambda: len(ingest.requests()) >= 2, what="delivery")
        ports = wait_until(lambda: remote_ports(relay.pid) & {port, proxy.port}, what="the relay's connection")
        if mode == "no_proxy":
            assert ports == {port}, "NO_PROXY must bypass the proxy"
        else:
            assert ports == {proxy.port}, "the relay must reach the ingest only through the proxy"
        assert relay.destination()["proxy"] == (proxy.url if mode != "environment" else "environment")
    finally:
        relay.terminate()
        ingest.terminate()
        proxy.terminate()


def test_no_secret_reaches_logs_status_or_errors(tmp_path: Path) -> None:
    """A run full of failures: a proxy refusing the password, then a vendor whose 401 echoes the
    request's Authorization header back (some gateways do). Then grep everything the relay shows."""
    from tests.vendor import Vendor

    api_key = "relay-api-key-6f1d0c9a8b7e"
    proxy_password = "proxy-secret-pw-55aa"
    key_file, pw_file = tmp_path / "api-key", tmp_path / "proxy-pw"
    key_file.write_text(api_key + "\n")
    pw_file.write_text(proxy_password + "\n")
    key_file.chmod(0o600)
    pw_file.chmod(0o600)
    proxy = Proxy(tmp_path, auth="relayuser:the-right-password")
    proxy.start()

    def echo(i: int, a: Any) -> tuple[int, dict[str, str], bytes]:
        return 401, {}, f"unauthorized: {a.headers.get('Authorization')}".encode()

    with Vendor(echo) as vendor:
        relay, _ = signed_relay(
            tmp_path, vendor.url, api_key_file=str(key_file), proxy_url=proxy.url,
            proxy_username="relayuser", proxy_password_file=str(pw_file),
        )
        relay.start()
        try:
            wait_until(lambda: "407" in (relay.destination()["last_error"] or ""), what="proxy refusal")
            cfg = relay.cfg
            del cfg["destinations"][0]["proxy_url"]
            relay.write_config(cfg)
            relay.signal(__import__("signal").SIGHUP)
            wait_until(lambda: "HTTP 401" in (relay.destination()["last_error"] or ""), what="vendor refusal")
            assert vendor.arrivals[0].headers["Authorization"] == f"Bearer {api_key}"  # the key was really sent
            status_json = json.dumps(relay.status())
            status_text = subprocess.run([*CLI, "status", "--url", relay.status_url], capture_output=True,
                                         text=True, timeout=30).stdout
            _, metrics = http_get(relay.status_url + "/metrics")
        finally:
            relay.terminate()
            proxy.terminate()
    private_pem = (tmp_path / "state" / "keys" / "current.pem").read_text()
    key_body = "".join(line for line in private_pem.splitlines() if not line.startswith("-----"))
    from cryptography.hazmat.primitives import serialization

    raw = serialization.load_pem_private_key(private_pem.encode(), None).private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    haystacks = {"log": relay.log(), "status": status_json, "status command": status_text,
                 "metrics": metrics.decode()}
    for where, text in haystacks.items():
        for secret in (api_key, proxy_password, key_body, raw.hex()):
            assert secret not in text, f"a secret leaked into the {where}"
    assert "unauthorized: Bearer ***8b7e" in status_json  # the echo arrived, masked
    assert "HTTP 401" in relay.log()


def test_keys_cli_and_rotation_keep_the_old_key_accepted(tmp_path: Path) -> None:
    ingest_old = Ingest(tmp_path, name="ingest")
    relay, trusted_old = signed_relay(tmp_path, "http://127.0.0.1:1")  # endpoint fixed below
    shown = relay.keys("show")
    (old_id,) = [p.stem for p in trusted_old.glob("*.pem")]
    assert f"key id {old_id} (current, algorithm ed25519)" in shown and "BEGIN PUBLIC KEY" in shown
    ingest_old.args += ["--trusted-keys", str(trusted_old)]
    ingest_old.start()
    cfg = relay.cfg
    cfg["destinations"][0]["endpoint"] = ingest_old.url
    relay.write_config(cfg)
    relay.start()
    try:
        wait_until(lambda: ingest_old.requests(), what="delivery with the first key")
        out = relay.keys("rotate")
        new_id = out.split("new signing key: ")[1].split()[0]
        assert new_id != old_id and f"retired key {old_id}" in out
        shown = relay.keys("show")
        assert f"key id {new_id} (current" in shown and f"key id {old_id} (retired" in shown
        relay.signal(__import__("signal").SIGHUP)
        wait_until(lambda: relay.destination()["signing_key_ids"] == [new_id, old_id], what="reload of keys")
        # The vendor still trusts only the old key: the second signature keeps requests accepted.
        n = len(ingest_old.requests())
        wait_until(lambda: len(ingest_old.requests()) > n + 2, what="delivery during the overlap")
        assert ingest_old.stats()["rejected"] == {}
        assert {r["key_id"] for r in ingest_old.requests()} == {old_id}
    finally:
        relay.terminate()
        ingest_old.terminate()


def test_group_readable_private_key_is_refused_at_start(tmp_path: Path) -> None:
    relay, _ = signed_relay(tmp_path, "http://127.0.0.1:1")
    key = tmp_path / "state" / "keys" / "current.pem"
    key.chmod(0o640)
    p = subprocess.run([*CLI, "run", "--config", str(relay.config_path)], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2
    assert f"private key file {key} has mode 0640" in p.stderr and "chmod 0600" in p.stderr
    assert "Traceback" not in p.stderr
