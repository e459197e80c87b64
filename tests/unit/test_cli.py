"""The CLI's pure pieces (formatters, the control-character escaping, the human status), its
secrets-free config load, and main's handling of a status server that answers "not ready"
or does not answer at all (a real HTTP server on loopback, main called in-process)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay import config
from relay.cli import main
from relay.cli.common import escape_controls, escape_strings, format_ago, format_bytes, format_duration
from relay.cli.status import format_status
from relay.strict_yaml import SchemaError
from tests.procs import free_port, json_server


def test_durations_switch_units_where_the_number_stays_readable() -> None:
    assert [format_duration(s) for s in (-3, 0, 119, 120, 7199, 7200, 172799, 172800)] == [
        "0s", "0s", "119s", "2m", "120m", "2.0h", "48.0h", "2.0d"]


def test_sizes_are_binary_units_up_to_gib() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1024, 5 * 2**20, 3 * 2**30, 4096 * 2**30)] == [
        "0 B", "1023 B", "1.0 KiB", "5.0 MiB", "3.0 GiB", "4096.0 GiB"]


def test_ago_says_never_for_no_timestamp() -> None:
    assert format_ago(None, 1000.0) == "never"
    assert format_ago(0, 1000.0) == "never"
    assert format_ago(990.0, 1000.0) == "10s ago"


def test_every_c0_and_c1_control_and_del_is_shown_escaped_and_nothing_else() -> None:
    controls = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))]
    assert [escape_controls(c) for c in controls] == [f"\\x{ord(c):02x}" for c in controls]
    assert escape_controls("\x1b[31mred\x1b[0m\nnext") == "\\x1b[31mred\\x1b[0m\\x0anext"
    printable = "plain ASCII ~ \\x1b (already escaped) \xa0 é 日本 \u202f"
    assert escape_controls(printable) == printable
    assert escape_controls(None) == "None" and escape_controls(3.5) == "3.5"


def test_escape_strings_reaches_every_string_of_a_document_keys_included() -> None:
    doc = {"a\x1b": ["x\x07", {"k": "\x9b"}], "n": 1.5, "none": None, "ok": True}
    assert escape_strings(doc) == {"a\\x1b": ["x\\x07", {"k": "\\x9b"}], "n": 1.5, "none": None, "ok": True}


def test_status_text_shows_problems_reload_errors_and_each_destination() -> None:
    now = time.time()
    text = format_status({
        "version": "9.9", "ready": False, "uptime_seconds": 300, "problems": ["destination vendor: no success"],
        "config": {"path": "/etc/r.yaml", "last_reload_error": "r.yaml:3: bogus: unknown key"},
        "sources": [{"name": "host", "interval_seconds": 10, "last_run": now - 5, "last_points": 7,
                     "points_collected": 70, "last_error": None}],
        "spool": {"entries": 2, "bytes": 2048, "max_bytes": 2**20, "oldest_age_seconds": 30, "writable": False,
                  "last_error": "disk full", "dropped_points": {"max_age": 3}},
        "destinations": [{"name": "vendor", "endpoint": "https://x", "last_success": None, "backlog_bytes": 2048,
                          "backlog_items": 4, "in_flight": 1, "shipped_points": 0, "shipped_requests": 0,
                          "backoff_seconds": 1.5, "last_error": "HTTP 503", "last_error_time": now - 2}],
    })
    lines = text.splitlines()
    assert lines[0] == "telemetry-relay 9.9  NOT READY  (uptime 5m)"
    assert "  ! destination vendor: no success" in lines
    assert "config: /etc/r.yaml (last reload refused: r.yaml:3: bogus: unknown key)" in lines
    assert any(line.startswith("  host       every 10s  last run 5s ago  7 points  total 70  ok") for line in lines)
    assert "  2 entries, 2.0 KiB of 1.0 MiB, oldest 30s  NOT WRITABLE: disk full" in lines
    assert "  dropped: max_age 3 points" in lines
    assert "    last success never, backlog 2.0 KiB (4 items), in flight 1, shipped 0 points in 0 requests" in lines
    assert "    retrying in 1.5s" in lines and "    last error (2s ago): HTTP 503" in lines


SECRETS_CONFIG = """\
state_dir: state
policy: {file: policy.yaml}
signing: {key_dir: keys}
destinations:
  - name: vendor
    endpoint: https://ingest.example.com
    api_key_env: TELEMETRY_RELAY_TEST_UNSET_API_KEY
    proxy_url: http://proxy:3128
    proxy_username: relay
    proxy_password_file: missing-proxy-password
    policy_file: vendor-policy.yaml
"""


def test_load_settings_reads_no_secret_and_resolves_paths_as_load_does(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(SECRETS_CONFIG)
    monkeypatch.delenv("TELEMETRY_RELAY_TEST_UNSET_API_KEY", raising=False)
    with pytest.raises(SchemaError, match="api_key_env"):
        config.load(str(path))
    settings = config.load_settings(str(path))
    assert settings.state_dir == str(tmp_path / "state")
    assert settings.policy.file == str(tmp_path / "policy.yaml")
    assert settings.signing.key_dir == str(tmp_path / "keys")
    assert settings.destinations[0].policy_file == str(tmp_path / "vendor-policy.yaml")

    # Where the secrets are there, both loads agree on every setting.
    monkeypatch.setenv("TELEMETRY_RELAY_TEST_UNSET_API_KEY", "k" * 32)
    (tmp_path / "missing-proxy-password").write_text("pw-123456\n")
    (tmp_path / "missing-proxy-password").chmod(0o600)
    assert config.load_settings(str(path)) == config.load(str(path)).config


def test_load_settings_still_rejects_an_invalid_config(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(SECRETS_CONFIG + "bogus: 1\n")
    with pytest.raises(SchemaError, match=r"relay.yaml:12: bogus: unknown key"):
        config.load_settings(str(path))


@pytest.fixture
def status_server() -> Iterator[str]:
    """A loopback server answering /status as a relay that is up but not ready (503)."""

    not_ready = {"version": "9.9", "ready": False, "problems": ["spool not writable"]}
    with json_server(lambda path: (503, not_ready)) as url:
        yield url


def test_status_of_a_relay_that_is_not_ready_exits_1_and_says_why(status_server: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", status_server]) == 1
    out = capsys.readouterr().out
    assert "NOT READY" in out and "! spool not writable" in out
    assert main(["status", "--url", status_server, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["problems"] == ["spool not writable"]


@pytest.mark.parametrize("command", ["status", "outbox"])
def test_no_relay_answering_is_one_line_and_exit_2(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = f"http://127.0.0.1:{free_port()}"
    assert main([command, "--url", base]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"telemetry-relay: no relay answering at {base}: ") and err.count("\n") == 1
