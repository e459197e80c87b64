"""The command line as an operator runs it (real subprocesses, real files, a real status
server on loopback): check-config validates the policy, key and secret files a start would
load, `keys` and the read-only commands (policy test, policy unhash, spool) need no API
key, the read-only ones never create the policy secret, `keys init` makes the state
directory private, a start refuses a policy secret others can read, and nothing from
outside (a relay's /status or outbox, the spool) reaches the terminal with its control
characters."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import SpoolSettings
from relay.otlp import MetricsBuilder
from relay.selfmetrics import SelfMetrics
from relay.spool import Spool
from tests.procs import CLI, PASS_THROUGH_POLICY, free_port, json_server

# A variable no test environment sets: the config names it, so a full load must fail.
UNSET_KEY_ENV = "TELEMETRY_RELAY_TEST_UNSET_API_KEY"
HASH_CUSTOMER = ("version: 1\nresource_attributes: {default: keep}\nattributes:\n  default: keep\n"
                 "  rules: [{key: customer, action: hash}]\n")


def cli(*args: str, env: dict[str, str] | None = None, umask: int = -1,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != UNSET_KEY_ENV}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**environ, **(env or {})}, umask=umask)


def write_config(tmp_path: Path, policy: Path, second_policy: Path | None = None) -> Path:
    """relay.yaml with one destination (two if second_policy) whose API key comes from UNSET_KEY_ENV."""
    dests = [{"name": "vendor", "endpoint": "http://127.0.0.1:9", "api_key_env": UNSET_KEY_ENV}]
    if second_policy:
        dests.append({"name": "backup", "endpoint": "http://127.0.0.1:10", "policy_file": str(second_policy)})
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "policy": {"file": str(policy)},
                                    "destinations": dests}))
    return path


def spool_one_request(state_dir: Path, attrs: dict[str, str], rejected_with: str | None = None) -> None:
    """What a running relay would have spooled: one metrics request, on disk; with
    rejected_with, also the dead letter of the vendor rejecting it with that answer."""
    b = MetricsBuilder({"service.name": "shop"}, "test")
    m = b.sum("orders.total", "1")
    b.point(m, 5, 1_800_000_000_000_000_000, 1_799_000_000_000_000_000, attrs)

    async def append() -> None:
        spool = Spool(state_dir, SpoolSettings(), ["vendor"], SelfMetrics())
        await spool.open()
        await spool.append("metrics", b.finish().SerializeToString(), 1)
        if rejected_with is not None:
            lease = await spool.lease("vendor", "metrics", 0, 1 << 20)
            assert lease is not None
            await spool.dead_letter("vendor", lease, 400, rejected_with)
        await spool.close()

    asyncio.run(append())


@pytest.mark.parametrize("broken", ["yaml", "unknown_key"])
def test_check_config_fails_on_a_broken_policy_with_file_and_line(tmp_path: Path, broken: str) -> None:
    good = tmp_path / "policy.yaml"
    good.write_text(PASS_THROUGH_POLICY.read_text())
    bad = tmp_path / "backup-policy.yaml"
    bad.write_text({
        "yaml": "version: 1\nattributes: {default: keep\nmetrics: {default: allow}\n",
        "unknown_key": "version: 1\nattributes:\n  default: keep\n  defualt: drop\n",
    }[broken])
    config = write_config(tmp_path, good, second_policy=bad)
    p = cli("check-config", "--config", str(config), env={UNSET_KEY_ENV: "k" * 32})
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    if broken == "unknown_key":
        assert f"{bad}:4: attributes.defualt: unknown key" in p.stderr
    else:
        assert f"{bad}:3: invalid YAML" in p.stderr, p.stderr


def test_check_config_names_each_policy_it_validated(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(PASS_THROUGH_POLICY.read_text())
    backup = tmp_path / "backup-policy.yaml"
    backup.write_text(HASH_CUSTOMER)
    config = write_config(tmp_path, policy, second_policy=backup)
    p = cli("check-config", "--config", str(config), env={UNSET_KEY_ENV: "k" * 32})
    assert p.returncode == 0, p.stderr
    assert f"{config}: OK (2 destinations: vendor -> http://127.0.0.1:9, backup -> http://127.0.0.1:10)" in p.stdout
    assert f"{policy}: OK (policy sha256 " in p.stdout and f"{backup}: OK (policy sha256 " in p.stdout
    assert not (tmp_path / "state").exists(), "check-config starts nothing and writes nothing"


def test_read_only_commands_work_without_the_api_key(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(HASH_CUSTOMER)
    config = write_config(tmp_path, policy)
    spool_one_request(tmp_path / "state", {"customer": "globex-corp"})

    # A start (and so check-config) needs the key ...
    p = cli("check-config", "--config", str(config))
    assert p.returncode == 2 and f"{UNSET_KEY_ENV} is not set" in p.stderr, p.stderr
    # ... a dry run, a lookup or a look at the spool does not.
    p = cli("policy", "test", "--config", str(config), "--from-spool", "5")
    assert p.returncode == 0, p.stderr
    assert "items in: 1, would leave: 1" in p.stdout and "attributes:customer" in p.stdout
    (tmp_path / "state" / "policy-secret").write_text("ab" * 32 + "\n")
    (tmp_path / "state" / "policy-secret").chmod(0o600)
    p = cli("policy", "unhash", "h:0000000000000000", "--config", str(config))
    assert p.returncode == 1 and "no value in the spool hashes to it" in p.stdout, p.stdout + p.stderr
    p = cli("spool", "--config", str(config))
    assert p.returncode == 0, p.stderr
    assert "metrics: 1 entries" in p.stdout and "vendor:" in p.stdout


def test_policy_commands_never_create_the_policy_secret(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(HASH_CUSTOMER)
    config = write_config(tmp_path, policy)
    state = tmp_path / "state"
    spool_one_request(state, {"customer": "globex-corp"})
    secret = state / "policy-secret"

    p = cli("policy", "unhash", "h:0000000000000000", "--config", str(config))
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"no policy-secret in {state} yet" in p.stderr and "first start" in p.stderr
    assert "Traceback" not in p.stderr
    assert not secret.exists()

    # The dry run still works, and says its tokens are not the ones the relay will ship.
    p = cli("policy", "test", "--config", str(config), "--from-spool", "5")
    assert p.returncode == 0 and "hashed 1" in p.stdout, p.stdout + p.stderr
    assert f"no policy-secret in {state} yet" in p.stderr and "throwaway key" in p.stderr
    assert not secret.exists()

    # Once the relay has made its secret, both use it, and the note is gone.
    secret.write_text("ab" * 32 + "\n")
    secret.chmod(0o600)
    p = cli("policy", "test", "--config", str(config), "--from-spool", "5", "--json")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    point = json.loads(p.stdout)[0]["request"]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"][
        "dataPoints"][0]
    token = point["attributes"][0]["value"]["stringValue"]
    p = cli("policy", "unhash", token, "--config", str(config))
    assert p.returncode == 0 and "'globex-corp'" in p.stdout, p.stdout + p.stderr


# What a hostile or broken peer might send: clear the screen, set the window title, a C1
# CSI (red), DEL, and a newline that would fake a line of output.
HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31m\x7f\nfake line"
HOSTILE_SHOWN = "\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\x7f\\x0afake line"


def raw_controls(text: str) -> set[str]:
    """The control characters in text, but the newlines the CLI writes itself."""
    return {c for c in text if c != "\n" and (ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f)}


HOSTILE_STATUS: dict[str, Any] = {
    "version": "1.0", "ready": True, "uptime_seconds": 60, "problems": [f"problem {HOSTILE}"],
    "config": {"path": "/etc/telemetry-relay/relay.yaml", "last_reload_error": f"reload {HOSTILE}"},
    "sources": [{"name": f"src{HOSTILE}", "interval_seconds": 10, "last_run": None, "last_points": 0,
                 "points_collected": 0, "last_error": f"source {HOSTILE}"}],
    "spool": {"entries": 1, "bytes": 10, "max_bytes": 100, "oldest_age_seconds": 1, "writable": False,
              "last_error": f"spool {HOSTILE}", "dropped_points": {f"reason{HOSTILE}": 1}},
    "destinations": [{"name": f"vendor{HOSTILE}", "endpoint": "https://x", "last_success": None,
                      "backlog_bytes": 0, "backlog_items": 0, "in_flight": 0, "shipped_points": 0,
                      "shipped_requests": 0, "last_error": f"HTTP 400: {HOSTILE}", "last_error_time": None}],
}
HOSTILE_OUTBOX = [{"time": 1_800_000_000, "destination": f"vendor{HOSTILE}", "signal": "metrics", "items": 1,
                   "bytes": 10, "policy_sha256": HOSTILE}]


@pytest.fixture
def hostile_status_server() -> Iterator[str]:
    """A loopback status server whose /status and /outbox carry terminal escape sequences
    (a vendor's error body is quoted in /status as the vendor sent it)."""

    with json_server(lambda path: (200, HOSTILE_OUTBOX if path.startswith("/outbox") else HOSTILE_STATUS)) as url:
        yield url


def test_status_and_outbox_show_control_characters_from_the_relay_escaped(hostile_status_server: str) -> None:
    p = cli("status", "--url", hostile_status_server)
    assert p.returncode == 0, p.stderr
    assert raw_controls(p.stdout) == set(), p.stdout
    for shown in (f"! problem {HOSTILE_SHOWN}", f"last reload refused: reload {HOSTILE_SHOWN}",
                  f"src{HOSTILE_SHOWN}", f"ERROR: source {HOSTILE_SHOWN}", f"NOT WRITABLE: spool {HOSTILE_SHOWN}",
                  f"reason{HOSTILE_SHOWN} 1 points", f"vendor{HOSTILE_SHOWN}  https://x",
                  f"): HTTP 400: {HOSTILE_SHOWN}"):
        assert shown in p.stdout, (shown, p.stdout)
    assert not any(line.startswith("fake line") for line in p.stdout.splitlines())

    p = cli("outbox", "--url", hostile_status_server)
    assert p.returncode == 0, p.stderr
    assert raw_controls(p.stdout) == set(), p.stdout
    assert f"vendor{HOSTILE_SHOWN}  metrics  1 items" in p.stdout and f"policy {HOSTILE_SHOWN[:12]}" in p.stdout

    # The raw documents: JSON escapes every control character, and they decode to what was sent.
    for command, sent in (("status", HOSTILE_STATUS), ("outbox", HOSTILE_OUTBOX)):
        p = cli(command, "--url", hostile_status_server, "--json")
        assert p.returncode == 0, p.stderr
        assert raw_controls(p.stdout) == set(), p.stdout
        assert json.loads(p.stdout) == sent


def test_spool_and_unhash_show_control_characters_from_the_spool_escaped(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nattributes: {default: hash}\n")
    config = write_config(tmp_path, policy)
    state = tmp_path / "state"
    spool_one_request(state, {f"key{HOSTILE}": "globex-corp"}, rejected_with=f"HTTP 400: {HOSTILE}")
    secret = state / "policy-secret"
    secret.write_text("ab" * 32 + "\n")
    secret.chmod(0o600)

    p = cli("spool", "--config", str(config))
    assert p.returncode == 0, p.stderr
    assert raw_controls(p.stdout) == set(), p.stdout
    assert f"status 400: HTTP 400: {HOSTILE_SHOWN}" in p.stdout
    p = cli("spool", "--config", str(config), "--json")
    assert raw_controls(p.stdout) == set(), p.stdout
    assert json.loads(p.stdout)["dead_letters"][0]["reason"] == f"HTTP 400: {HOSTILE}"

    p = cli("policy", "test", "--config", str(config), "--from-spool", "5", "--json")
    assert p.returncode == 0, p.stderr
    assert raw_controls(p.stdout) == set(), p.stdout
    point = json.loads(p.stdout)[0]["request"]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"][
        "dataPoints"][0]
    token = point["attributes"][0]["value"]["stringValue"]
    p = cli("policy", "unhash", token, "--config", str(config))
    assert p.returncode == 0, p.stdout + p.stderr
    assert raw_controls(p.stdout) == set(), p.stdout
    assert f"{token} = 'globex-corp'  (seen in: key{HOSTILE_SHOWN})" in p.stdout


def start_config(tmp_path: Path, policy: Path) -> Path:
    """relay.yaml for a real start, on free loopback ports, with the API key in UNSET_KEY_ENV."""
    config = write_config(tmp_path, policy)
    cfg = yaml.safe_load(config.read_text())
    cfg["server"] = {"listen": f"127.0.0.1:{free_port()}"}
    cfg["sources"] = {"otlp": {"listen": f"127.0.0.1:{free_port()}"}}
    config.write_text(yaml.safe_dump(cfg))
    return config


def test_a_start_refuses_a_policy_secret_others_can_read(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(PASS_THROUGH_POLICY.read_text())
    config = start_config(tmp_path, policy)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    secret = state / "policy-secret"
    secret.write_text("ab" * 32 + "\n")
    secret.chmod(0o644)

    p = cli("run", "--config", str(config), env={UNSET_KEY_ENV: "k" * 32}, timeout=30)
    assert p.returncode == 2, p.stdout + p.stderr
    assert (f"policy secret file {secret} has mode 0644; it must not be readable by group or others "
            "(chmod 0600)") in p.stderr
    assert "Traceback" not in p.stderr


def test_check_config_validates_the_key_and_secret_files_a_start_would_load(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(PASS_THROUGH_POLICY.read_text())
    config = write_config(tmp_path, policy)
    key_env = {UNSET_KEY_ENV: "k" * 32}
    current = tmp_path / "state" / "keys" / "current.pem"
    secret = tmp_path / "state" / "policy-secret"

    p = cli("check-config", "--config", str(config), env=key_env)
    assert p.returncode == 0, p.stderr
    assert f"{current}: none yet (a start creates the signing key)" in p.stdout
    assert f"{secret}: none yet (a start creates it)" in p.stdout

    # The signing key: its mode, then its format.
    p = cli("keys", "init", "--config", str(config), env=key_env)
    assert p.returncode == 0, p.stderr
    key_id = p.stdout.split("key id ")[1].split()[0]
    p = cli("check-config", "--config", str(config), env=key_env)
    assert p.returncode == 0, p.stderr
    assert f"{current}: OK (signing key id {key_id})" in p.stdout
    pem = current.read_text()
    current.chmod(0o640)
    p = cli("check-config", "--config", str(config), env=key_env)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"private key file {current} has mode 0640" in p.stderr and "Traceback" not in p.stderr
    current.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    current.chmod(0o600)
    p = cli("check-config", "--config", str(config), env=key_env)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"private key file {current} is not a readable PEM private key" in p.stderr
    current.write_text(pem)

    # The policy secret: its mode, then its format, never quoting it.
    secret.write_text("ab" * 32 + "\n")
    secret.chmod(0o644)
    p = cli("check-config", "--config", str(config), env=key_env)
    assert p.returncode == 2, p.stdout + p.stderr
    assert (f"policy secret file {secret} has mode 0644; it must not be readable by group or others "
            "(chmod 0600)") in p.stderr
    assert "Traceback" not in p.stderr
    secret.chmod(0o600)
    p = cli("check-config", "--config", str(config), env=key_env)
    assert p.returncode == 0, p.stderr
    assert f"{secret}: OK (policy secret)" in p.stdout
    secret.write_text("not a hex key\n")
    p = cli("check-config", "--config", str(config), env=key_env)
    assert p.returncode == 2 and f"policy secret file {secret} does not hold a hex key" in p.stderr, p.stderr
    assert "not a hex key\n" not in p.stderr
    secret.write_text("ab" * 8 + "\n")
    p = cli("check-config", "--config", str(config), env=key_env)
    assert p.returncode == 2 and f"policy secret file {secret} holds a key of 8 bytes" in p.stderr, p.stderr
    assert "ab" * 8 not in p.stderr


def test_keys_work_before_there_is_an_api_key(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(PASS_THROUGH_POLICY.read_text())
    config = write_config(tmp_path, policy)  # its API key is not set: a fresh install has none yet

    p = cli("keys", "init", "--config", str(config))
    assert p.returncode == 0, p.stderr
    assert "created signing key: key id " in p.stdout

    # The operator registers the public key before getting an API key.
    p = cli("keys", "show", "--config", str(config))
    assert p.returncode == 0, p.stderr
    assert "(current, algorithm ed25519)" in p.stdout and "BEGIN PUBLIC KEY" in p.stdout


@pytest.mark.parametrize("before", ["missing", "made 0755"])
def test_keys_init_before_the_first_start_leaves_the_state_dir_private(tmp_path: Path, before: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(PASS_THROUGH_POLICY.read_text())
    config = write_config(tmp_path, policy)
    state = tmp_path / "state"
    if before == "made 0755":
        state.mkdir()
        state.chmod(0o755)

    p = cli("keys", "init", "--config", str(config), umask=0o022)
    assert p.returncode == 0, p.stderr
    for d in (state, state / "keys"):
        st = d.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700, f"{d} is {stat.S_IMODE(st.st_mode):04o}"
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()), "owned by who ran it, as a start leaves it"
