"""`telemetry-relay support-bundle`: one tar.gz of plain text and JSON for a support case.

Owns: gathering what support asks for first: the version; the effective configuration
(every default filled in, secrets masked) and relay.yaml as written; the policy files and
their hashes; the running relay's /status and /metrics (or a note that none answered), with
the destinations' state and discovery's findings taken out of /status; the last log lines
(journald, else --log-file, else a note); the spool summary; the last connection
self-test. Telemetry payloads (the outbox) only with --with-payloads. Every file passes
through the secret redaction before it is written (every secret the config names, the
signing key, the policy secret, and whatever else relay.secrets knows), and MANIFEST.txt
says what each file holds, so that the operator can read it all before sending it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from relay import __version__, config
from relay.cli.common import EXIT_OK, escape_controls
from relay.config import Config
from relay.export.probe_result import load_result
from relay.export.signing import KeyStore, SigningKeyError
from relay.policy import existing_secret
from relay.secrets import SecretError, mask, redact
from relay.strict_yaml import SchemaError, split_host_port

# user:password@ in any URL (a proxy's, say), wherever it turns up.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@")
OUTBOX_LAST = 20


class _Bundle:
    """The files, in the order MANIFEST.txt lists them, each redacted as it is added."""

    def __init__(self, secrets: list[str]) -> None:
        # Masked here too whatever their length (relay.secrets ignores very short ones).
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self.files: list[tuple[str, bytes, str]] = []

    def scrub(self, text: str) -> str:
        text = redact(text)
        for s in self.secrets:
            text = text.replace(s, mask(s))
        return _URL_CREDENTIALS.sub("***@", text)

    def add(self, name: str, text: str, what: str) -> None:
        self.files.append((name, self.scrub(text).encode("utf-8"), what))

    def add_json(self, name: str, doc: Any, what: str) -> None:
        self.add(name, json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n", what)

    def write(self, out: Path, top: str) -> None:
        manifest = _manifest(self.files)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it describes the host: private
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
            for name, data in [("MANIFEST.txt", manifest), *((n, d) for n, d, _ in self.files)]:
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
                tar.addfile(info, io.BytesIO(data))


def run(args: argparse.Namespace) -> int:
    loaded_secrets, cfg, load_error = _load(args.config)
    bundle = _Bundle(loaded_secrets + _state_secrets(cfg))
    notes = [f"relay.yaml did not load as a start would load it: {load_error}"] if load_error else []
    bundle.add("version.txt", f"telemetry-relay {__version__}\npython {sys.version.split()[0]}\n"
                              f"{platform.platform()}\nmade {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n",
               "the relay's and Python's versions, the operating system, when this was made")
    _config_files(bundle, args.config, cfg)
    base = args.url or _status_url(cfg)
    _from_relay(bundle, base, args.with_payloads, notes)
    _spool(bundle, cfg, notes)
    check = load_result(cfg.state_dir) if cfg else None
    if check is None:
        notes.append("no connection self-test has run yet (telemetry-relay check-connection)")
    else:
        bundle.add_json("connection-check.json", check, "the last connection self-test (check-connection)")
    _logs(bundle, args.log_lines, args.log_file, notes)
    if notes:
        bundle.add("notes.txt", "".join(f"- {n}\n" for n in notes), "what could not be gathered, and why")
    out = Path(args.out)
    top = f"telemetry-relay-support-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    bundle.write(out, top)
    print(escape_controls(f"wrote {out}: {len(bundle.files) + 1} files, secrets masked; read MANIFEST.txt and "
                          "the files before you send it (tar -xzf, then any text viewer)"))
    return EXIT_OK


def _load(path: str) -> tuple[list[str], Config | None, str | None]:
    """Every secret the config names (read, so that it can be masked), the settings, and why a
    full load failed, if it did: then the settings come without the secrets."""
    try:
        loaded = config.load(path)
    except (SchemaError, SecretError) as e:
        try:
            return [], config.load_settings(path), str(e)
        except (SchemaError, OSError) as e2:
            return [], None, str(e2)
    values = [*loaded.api_keys.values(), *loaded.proxy_passwords.values(), loaded.receiver_token,
              *loaded.target_passwords.values()]
    return [v for v in values if v], loaded.config, None


def _state_secrets(cfg: Config | None) -> list[str]:
    """Read the signing key and the policy secret, only so that they are known to the redaction
    (reading them registers them); none of it goes into the bundle."""
    if cfg is None:
        return []
    try:
        store = KeyStore(config.key_dir(cfg), cfg.signing.rotation_overlap)
        if store.exists():
            store.current()
        secret = existing_secret(cfg.state_dir)
    except (OSError, SigningKeyError, SecretError):
        return []
    return [secret.hex()] if secret else []


def _config_files(bundle: _Bundle, path: str, cfg: Config | None) -> None:
    try:
        bundle.add("config/relay.yaml", Path(path).read_text(encoding="utf-8", errors="replace"),
                   "relay.yaml as written (secrets live in the files it names, which are not included)")
    except OSError as e:
        bundle.add("config/relay.yaml.txt", f"cannot read {path}: {e.strerror}\n", "why relay.yaml is missing")
    if cfg is None:
        return
    effective = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    bundle.add("config/effective.yaml", yaml.safe_dump(effective, sort_keys=False),
               "the configuration in force after defaults and path resolution")
    sums = []
    for i, p in enumerate(dict.fromkeys(config.policy_file(cfg, d) for d in cfg.destinations)):
        try:
            raw = Path(p).read_bytes()
        except OSError as e:
            sums.append(f"(unreadable: {e.strerror})  {p}")
            continue
        sums.append(f"{hashlib.sha256(raw).hexdigest()}  {p}")
        bundle.add(f"config/policy-{i}-{Path(p).name}", raw.decode("utf-8", "replace"),
                   f"the redaction policy {p}")
    bundle.add("config/policy-SHA256SUMS", "\n".join(sums) + "\n",
               "sha256 of each policy file, as /status and the X-Relay-Policy-SHA256 header give it")


def _status_url(cfg: Config | None) -> str:
    if cfg is None:
        return "http://127.0.0.1:8788"
    host, port = split_host_port(cfg.server.listen)
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _get(url: str) -> bytes:
    """GET from the status server; an HTTP error's body is the answer too (a 503 /status)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return bytes(r.read())
    except urllib.error.HTTPError as e:
        return bytes(e.read())


def _from_relay(bundle: _Bundle, base: str, with_payloads: bool, notes: list[str]) -> None:
    try:
        status = json.loads(_get(base + "/status"))
        metrics = _get(base + "/metrics").decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as e:
        notes.append(f"no relay answered at {base} ({getattr(e, 'reason', e)}): no /status, /metrics, "
                     "destination state or discovery findings")
        return
    bundle.add_json("status.json", status, "the running relay's /status: health, sources, spool, destinations")
    bundle.add("metrics.txt", metrics, "the running relay's self-metrics (/metrics, Prometheus text)")
    bundle.add_json("destinations.json", status.get("destinations"),
                    "each destination's state from /status: last success, last error, backlog, TLS, proxy, keys")
    bundle.add_json("discovery.json", status.get("discovery"),
                    "what auto-discovery found (Kafka JVMs and their agents), from /status")
    if with_payloads:
        try:
            outbox = json.loads(_get(f"{base}/outbox?last={OUTBOX_LAST}"))
        except (urllib.error.URLError, OSError, ValueError) as e:
            notes.append(f"the outbox could not be read: {e}")
        else:
            bundle.add_json("payloads/outbox.json", outbox,
                            f"TELEMETRY: the last {OUTBOX_LAST} payloads shipped, as sent (after redaction)")


def _spool(bundle: _Bundle, cfg: Config | None, notes: list[str]) -> None:
    if cfg is None:
        return
    from relay.spool.inspect import summary

    try:
        info = summary(cfg.state_dir)
    except Exception as e:  # a spool the bundle cannot read must not cost the rest of it
        notes.append(f"the spool in {cfg.state_dir} could not be read: {e.__class__.__name__}: {e}")
        return
    bundle.add_json("spool.json", info, "the spool: queues, each destination's backlog, dead letters "
                                        "(reasons only, no payloads), quarantined files")


def _logs(bundle: _Bundle, lines: int, log_file: str | None, notes: list[str]) -> None:
    journal = _journal(lines)
    if journal:
        bundle.add("logs.txt", journal, f"the last {lines} lines of the relay's journal (journalctl -u "
                                        "telemetry-relay)")
        return
    if log_file:
        try:
            with open(log_file, encoding="utf-8", errors="replace") as f:
                tail = f.readlines()[-lines:]
        except OSError as e:
            notes.append(f"the log file {log_file} could not be read: {e.strerror}")
            return
        bundle.add("logs.txt", "".join(tail), f"the last {lines} lines of {log_file}")
        return
    notes.append("no logs: the journal has no entries for telemetry-relay and no --log-file was given")


def _journal(lines: int) -> str:
    """The unit's last lines from journald; empty when there is no journal or no entry."""
    if not shutil.which("journalctl"):
        return ""
    try:
        p = subprocess.run(["journalctl", "-q", "-u", "telemetry-relay", "-n", str(lines), "--no-pager",
                            "-o", "short-iso"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return p.stdout if p.returncode == 0 else ""


def _manifest(files: list[tuple[str, bytes, str]]) -> bytes:
    head = ("telemetry-relay support bundle\n\n"
            "Every file here is plain text or JSON. Secrets (API keys, passwords, tokens, keys) are\n"
            "masked as *** with at most their last 4 characters. Read the files before you send them.\n\n")
    width = max(len(n) for n, _, _ in files)
    rows = [f"{n:<{width}}  {len(d):>9} bytes  {w}" for n, d, w in files]
    return (head + "\n".join(rows) + "\n").encode("utf-8")
