"""A bad edit never takes the relay down: break, in turn, relay.yaml, the policy, a mapping
rule file and the signing key of a running relay, then SIGHUP. The relay keeps shipping with
the settings it had, says why in /status and the log, and `check-config` refuses the same
edit, naming the file (and the line, where the file has lines)."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_reload import RULES, _Exposition, demo_points
from tests.procs import CLI, PASS_THROUGH_POLICY, Ingest, Relay, free_port, relay_config, wait_until


def _break_config(relay: Relay) -> tuple[Path, str]:
    relay.config_path.write_text(relay.config_path.read_text() + "shipping_fast: true\n")
    line = len(relay.config_path.read_text().splitlines())
    return relay.config_path, re.escape(f"{relay.config_path}:{line}: shipping_fast: unknown key")


def _break_policy(relay: Relay) -> tuple[Path, str]:
    policy = Path(relay.cfg["policy"]["file"])
    policy.write_text(policy.read_text() + "attributes: {default: [keep\n")  # unclosed flow sequence
    return policy, rf"{re.escape(str(policy))}:\d+: "


def _break_mapping(relay: Relay) -> tuple[Path, str]:
    rules = Path(relay.cfg["sources"]["mappings_dir"]) / "demo.yaml"
    rules.write_text(RULES + "  - series: [demo_unclosed\n")
    return rules, rf"{re.escape(str(rules))}:\d+: "


def _break_key(relay: Relay) -> tuple[Path, str]:
    key = Path(relay.cfg["state_dir"]) / "keys" / "current.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    return key, re.escape(str(key))


EDITS: dict[str, Callable[[Relay], tuple[Path, str]]] = {
    "config": _break_config, "policy": _break_policy, "mapping": _break_mapping, "key": _break_key,
}


def _why(relay: Relay, edit: str) -> str | None:
    """Where the relay says why it kept its old settings: the refused reload, or for a
    policy (reloaded on its own, kept per destination) the destination's policy error."""
    if edit == "policy":
        return relay.destination()["policy"]["last_error"]  # type: ignore[no-any-return]
    return relay.status()["config"]["last_reload_error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_bad_edit_and_sighup_leave_the_relay_shipping_and_check_config_refuses_it(
        tmp_path: Path, edit: str) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "demo.yaml").write_text(RULES)
    policy = tmp_path / "policy.yaml"
    policy.write_text(PASS_THROUGH_POLICY.read_text())
    policy.chmod(0o644)
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Exposition)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg: dict[str, Any] = relay_config(tmp_path, ingest.url, policy={"file": str(policy), "watch_interval": "200ms"},
                                       sources={
        "host": {"enabled": False}, "internal": {"interval": "200ms"}, "mappings_dir": str(mappings),
        "prometheus": {"interval": "200ms", "targets": [
            {"url": f"http://127.0.0.1:{server.server_address[1]}/metrics", "mappings": ["demo"]}]}})
    relay = Relay(tmp_path, cfg)
    relay.start()
    try:
        wait_until(lambda: demo_points(ingest), what="the mapped series at the ingest")
        check = subprocess.run([*CLI, "check-config", "--config", str(relay.config_path)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr

        path, expected = EDITS[edit](relay)
        relay.signal(signal.SIGHUP)
        why = wait_until(lambda: _why(relay, edit), what=f"the relay to report the broken {edit}")
        assert str(path) in why, why
        assert relay.alive() and "Traceback" not in relay.log()

        # The old settings still ship: the mapped series and the self-metrics keep arriving.
        seen, shipped = demo_points(ingest), relay.destination()["shipped_points"]
        wait_until(lambda: demo_points(ingest) > seen and relay.destination()["shipped_points"] > shipped,
                   what=f"shipping after the broken {edit}")
        assert relay.alive() and relay.readyz()[0] == 200

        check = subprocess.run([*CLI, "check-config", "--config", str(relay.config_path)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 2, check.stdout + check.stderr
        assert re.search(expected, check.stderr), check.stderr
        assert "Traceback" not in check.stderr
    finally:
        assert relay.terminate() == 0
        ingest.terminate()
        server.shutdown()
    assert "Traceback" not in relay.log()
