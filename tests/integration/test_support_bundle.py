"""`telemetry-relay support-bundle` against a real running relay: the archive holds what
support asks for (version, effective config, policy and its hash, /status, /metrics, logs,
spool, destinations, discovery, the last connection self-test, a MANIFEST listing every
file), only text, no payloads unless asked, and none of the secrets planted in every
secret file the config names, in the environment, and in the state directory."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from tests.procs import CLI, PASS_THROUGH_POLICY, Relay, free_port, relay_config, wait_until
from tests.vendor import Vendor

SECRETS = {
    "api key file": "bundle-api-key-file-5e1f0a",
    "api key env": "bundle-api-key-env-77c3d2",
    "proxy password": "bundle-proxy-pw-19ab42",
    "receiver token": "bundle-receiver-token-c0ffee",
    "scrape password": "bundle-scrape-pw-8d8d11",
}
KEY_ENV = "TELEMETRY_RELAY_TEST_BUNDLE_KEY"


def secret_file(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def unpack(archive: Path, into: Path) -> dict[str, bytes]:
    """Every member of the archive by its path below the top directory; all regular files."""
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        assert all(m.isfile() for m in members)
        tar.extractall(into, filter="data")
    (top,) = {m.name.split("/")[0] for m in members}
    return {m.name.removeprefix(top + "/"): (into / m.name).read_bytes() for m in members}


def bundle(relay: Relay, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "support-bundle", "--config", str(relay.config_path), "--out", str(out),
                           "--log-file", str(relay.log_path), *extra],
                          capture_output=True, text=True, timeout=90,
                          env={**os.environ, KEY_ENV: SECRETS["api key env"]})


def test_support_bundle_holds_what_support_needs_and_no_secret(tmp_path: Path) -> None:
    def echo(i: int, a: Any) -> tuple[int, dict[str, str], bytes]:
        # Some gateways echo the request's credentials in their refusal: they must not reach the bundle.
        return 401, {}, f"unauthorized: {a.headers.get('Authorization')}".encode()

    with Vendor(echo) as vendor:
        cfg = relay_config(tmp_path, vendor.url, sources={
            "host": {"enabled": False},
            "otlp": {"listen": f"127.0.0.1:{free_port()}",
                     "auth_token_file": secret_file(tmp_path, "token", SECRETS["receiver token"])},
            "prometheus": {"interval": "200ms", "targets": [{
                "url": f"http://127.0.0.1:{free_port()}/metrics", "username": "scraper",
                "password_file": secret_file(tmp_path, "scrape-pw", SECRETS["scrape password"])}]},
        })
        cfg["destinations"][0]["api_key_file"] = secret_file(tmp_path, "api-key", SECRETS["api key file"])
        cfg["destinations"].append({
            "name": "backup", "endpoint": vendor.url, "api_key_env": KEY_ENV, "timeout": "2s",
            "proxy_url": f"http://127.0.0.1:{free_port()}", "proxy_username": "relayuser",
            "proxy_password_file": secret_file(tmp_path, "proxy-pw", SECRETS["proxy password"]),
            "retry": {"initial_backoff": "100ms", "max_backoff": "500ms"},
        })
        relay = Relay(tmp_path, cfg, env={KEY_ENV: SECRETS["api key env"]})
        relay.start()
        try:
            wait_until(lambda: "unauthorized: Bearer" in (relay.destination()["last_error"] or ""),
                       what="the vendor's echo of the API key in /status")
            assert vendor.arrivals[0].headers["Authorization"] == f"Bearer {SECRETS['api key file']}"
            # Where the relay's own redaction never reached: a note an operator left in relay.yaml,
            # and a line in the log file from something else than the relay (a wrapper script, say).
            every_secret = " ".join(SECRETS.values())
            with open(relay.config_path, "a") as f:
                f.write(f"# keys tried before: {every_secret}\n")
            with open(relay.log_path, "a") as f:
                f.write(f"wrapper: starting with {every_secret}\n")
            subprocess.run([*CLI, "check-connection", "--config", str(relay.config_path)], capture_output=True,
                           timeout=90, env={**os.environ, KEY_ENV: SECRETS["api key env"]})
            p = bundle(relay, tmp_path / "support.tar.gz")
            assert p.returncode == 0, p.stderr
            with_payloads = bundle(relay, tmp_path / "support-payloads.tar.gz", "--with-payloads")
            assert with_payloads.returncode == 0, with_payloads.stderr
        finally:
            relay.terminate()

    archive = tmp_path / "support.tar.gz"
    assert archive.stat().st_mode & 0o777 == 0o600
    files = unpack(archive, tmp_path / "unpacked")

    # Every file is text, and the manifest names each one with what it holds.
    texts = {name: data.decode("utf-8") for name, data in files.items()}
    manifest = texts["MANIFEST.txt"]
    for name in files:
        if name != "MANIFEST.txt":
            assert f"{name} " in manifest, f"{name} is not in the manifest"
    assert {"version.txt", "config/relay.yaml", "config/effective.yaml", "config/policy-SHA256SUMS", "status.json",
            "metrics.txt", "destinations.json", "discovery.json", "spool.json", "connection-check.json",
            "logs.txt"} <= set(files)
    assert not any(name.startswith("payloads/") for name in files), "no payloads unless asked"

    assert texts["version.txt"].startswith("telemetry-relay ")
    assert "api_key_env: " + KEY_ENV in texts["config/effective.yaml"]
    assert "max_request_bytes" in texts["config/effective.yaml"]  # defaults filled in
    policy_sha = hashlib.sha256(PASS_THROUGH_POLICY.read_bytes()).hexdigest()
    assert f"{policy_sha}  {PASS_THROUGH_POLICY}" in texts["config/policy-SHA256SUMS"]
    assert PASS_THROUGH_POLICY.read_text() in texts.values()
    status = json.loads(texts["status.json"])
    assert [d["name"] for d in status["destinations"]] == ["vendor", "backup"]
    assert json.loads(texts["destinations.json"]) == status["destinations"]
    assert json.loads(texts["discovery.json"]) == status["discovery"]
    assert "relay_export_retries_total" in texts["metrics.txt"]
    assert "unauthorized: Bearer ***" in texts["destinations.json"]  # the echo, masked
    assert "queues" in json.loads(texts["spool.json"])
    assert json.loads(texts["connection-check.json"])["ok"] is False
    assert "export failed" in texts["logs.txt"] and "wrapper: starting with ***" in texts["logs.txt"]
    assert "# keys tried before: ***" in texts["config/relay.yaml"]

    # None of the secrets, in any file; nor the signing key or the policy secret.
    state = tmp_path / "state"
    pem = (state / "keys" / "current.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,  # type: ignore[union-attr]
                            serialization.NoEncryption())
    planted = {**SECRETS, "signing key (PEM)": "".join(pem.decode().splitlines()[1:-1]),
               "signing key (hex)": raw.hex(), "policy secret": (state / "policy-secret").read_text().strip()}
    for archive_name in ("support.tar.gz", "support-payloads.tar.gz"):
        unpacked = unpack(tmp_path / archive_name, tmp_path / f"grep-{archive_name}")
        for name, data in unpacked.items():
            for what, secret in planted.items():
                assert secret.encode() not in data, f"the {what} is in {archive_name}:{name}"
    assert "payloads/outbox.json" in unpack(tmp_path / "support-payloads.tar.gz", tmp_path / "again")
