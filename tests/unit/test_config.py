from __future__ import annotations

import re
from pathlib import Path

import pytest

from relay import config
from relay.strict_yaml import SchemaError, field_docs, parse_duration, parse_size

MINIMAL = "destinations:\n  - name: vendor\n    endpoint: https://ingest.example.com\n"


def load(tmp_path: Path, text: str) -> config.LoadedConfig:
    p = tmp_path / "relay.yaml"
    p.write_text(text)
    return config.load(str(p))


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(SchemaError) as e:
        load(tmp_path, text)
    return str(e.value)


def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL).config
    assert cfg.server.listen == "127.0.0.1:8788"
    assert cfg.spool.max_bytes == 512 * 1024 * 1024
    assert cfg.spool.max_age == 7 * 86400
    assert cfg.spool.fsync == "always"
    assert cfg.sources.host.interval == 10.0
    d = cfg.destinations[0]
    assert (d.compression, d.max_request_bytes, d.in_flight) == ("zstd", 4 * 1024 * 1024, 1)
    assert cfg.state_dir == "/var/lib/telemetry-relay"


def test_unknown_key_names_file_line_and_path(tmp_path: Path) -> None:
    msg = error(tmp_path, MINIMAL + "spool:\n  max_byts: 1GiB\n")
    assert msg.startswith(f"{tmp_path / 'relay.yaml'}:5: spool.max_byts: unknown key")
    assert "max_bytes" in msg  # it lists the known keys


def test_wrong_types(tmp_path: Path) -> None:
    assert ":4: destinations[0].in_flight: expected a whole number, got 'two'" in error(
        tmp_path, MINIMAL + "    in_flight: two\n")
    assert ":2: sources.host.enabled: expected true or false" in error(
        tmp_path, "sources:\n  host: {enabled: 3}\n" + MINIMAL)
    assert ":4: destinations[0].compression: expected one of 'zstd', 'gzip', 'none', got 'lz4'" in error(
        tmp_path, MINIMAL + "    compression: lz4\n")
    assert ":1: spool: expected a mapping of settings" in error(tmp_path, "spool: 3\n" + MINIMAL)


def test_bad_url_and_missing_destinations(tmp_path: Path) -> None:
    assert "destinations[0].endpoint: expected an http:// or https:// URL" in error(
        tmp_path, "destinations:\n  - name: v\n    endpoint: ftp://x\n")
    assert "at least one destination" in error(tmp_path, "destinations: []\n")
    assert "destinations: required key is missing" in error(tmp_path, "log_level: info\n")
    assert "names must be unique" in error(tmp_path, MINIMAL + MINIMAL.split("\n", 1)[1])


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    assert "invalid YAML" in error(tmp_path, "destinations: [\n")
    with pytest.raises(SchemaError, match="file not found"):
        config.load(str(tmp_path / "absent.yaml"))


def test_api_key_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "key"
    key.write_text("abcdefghijklmnop\n")
    key.chmod(0o600)
    loaded = load(tmp_path, MINIMAL + "    api_key_file: key\n")  # relative to the config file
    assert loaded.api_keys["vendor"] == "abcdefghijklmnop"
    assert "abcdefghijklmnop" not in repr(loaded)
    monkeypatch.setenv("RELAY_KEY", "zyxwvutsrqponmlk")
    assert load(tmp_path, MINIMAL + "    api_key_env: RELAY_KEY\n").api_keys["vendor"] == "zyxwvutsrqponmlk"
    assert "RELAY_NOPE is not set" in error(tmp_path, MINIMAL + "    api_key_env: RELAY_NOPE\n")


def test_world_readable_or_missing_key_file_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("abcdefghijklmnop\n")
    key.chmod(0o644)
    msg = error(tmp_path, MINIMAL + "    api_key_file: key\n")
    assert ":4: destinations[0].api_key_file:" in msg and "mode 0644" in msg
    assert "abcdefghijklmnop" not in msg
    assert "does not exist" in error(tmp_path, MINIMAL + "    api_key_file: nope\n")


def test_units() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration(3) == 3.0
    assert parse_size("4MiB") == 4 * 1024 * 1024
    assert parse_size("1GB") == 10**9
    for bad in ("-1s", "soon", True):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_size("12 parsecs")


def test_every_key_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_.\[\]]+)` \|", doc, re.M))
    keys = {path for path, _, _ in field_docs(config.Config)}
    assert keys - documented == set(), "undocumented keys"
    assert documented - keys == set(), "documented keys that do not exist"
