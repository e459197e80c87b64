"""End to end with real processes: relay -> reference ingest on loopback, through outages
and kill -9, checking that every acknowledged collection arrives."""

from __future__ import annotations

import collections
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Ingest, Relay, free_port, relay_config, wait_until


def self_batches(requests: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(process start time, run number) of every self-metrics batch that arrived.

    The internal source counts its own runs in relay.source.runs{source=internal}, so
    each of its batches carries a sequence number: gaps mean lost data."""
    out = []
    for rec in requests:
        for rm in rec["request"]["resourceMetrics"]:
            for sm in rm["scopeMetrics"]:
                if sm["scope"]["name"] != "telemetry-relay/self":
                    continue
                for m in sm["metrics"]:
                    if m["name"] != "relay.source.runs":
                        continue
                    for dp in m["sum"]["dataPoints"]:
                        attrs = {a["key"]: a["value"]["stringValue"] for a in dp["attributes"]}
                        if attrs.get("source") == "internal":
                            out.append((dp["startTimeUnixNano"], int(dp["asInt"])))
    return out


def check_sequence(batches: list[tuple[str, int]], must_have: dict[str, int] | None = None,
                   max_dupes: int = 0) -> None:
    by_proc: dict[str, list[int]] = collections.defaultdict(list)
    for start, k in batches:
        by_proc[start].append(k)
    dupes = 0
    for start, ks in by_proc.items():
        counts = collections.Counter(ks)
        expected = set(range(1, max(ks) + 1))
        missing = sorted(expected - set(ks))
        assert not missing, f"process {start}: batches {missing[:20]} never arrived"
        dupes += sum(c - 1 for c in counts.values())
    assert dupes <= max_dupes, f"{dupes} duplicate batches, at most {max_dupes} allowed"
    for start, k in (must_have or {}).items():
        assert max(by_proc.get(start, [0])) >= k, f"acknowledged batches up to {k} did not all arrive"


def quiesce(relay: Relay) -> None:
    """Stop collection by reloading the running relay with every source off."""
    cfg = dict(relay.cfg)
    cfg["sources"] = {**cfg["sources"], "host": {"enabled": False}, "internal": {"enabled": False}}
    relay.write_config(cfg)
    before = relay.status()["config"]["last_reload"]
    relay.signal(signal.SIGHUP)
    wait_until(lambda: relay.status()["config"]["last_reload"] != before, what="reload")
    assert relay.status()["sources"] == []


EXPECTED_NAMES = {
    "system.cpu.time", "system.memory.usage", "system.cpu.load_average.1m", "system.cpu.load_average.5m",
    "system.cpu.load_average.15m", "system.filesystem.usage", "system.disk.io", "system.disk.operations",
    "system.network.io", "system.network.packets", "system.network.errors", "system.network.dropped",
    "system.processes.count", "relay.points.collected", "relay.points.spooled", "relay.points.shipped",
    "relay.spool.bytes", "relay.spool.entries", "relay.export.latency",
}


def drained(relay: Relay) -> bool:
    d = relay.destination()
    return d["backlog_items"] == 0 and d["in_flight"] == 0


def test_host_metrics_arrive_and_status_shows_them(tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    ingest.start()
    relay = Relay(tmp_path, relay_config(tmp_path, ingest.url))
    relay.start()
    try:
        names: set[str] = set()
        resource: dict[str, Any] = {}

        def arrived() -> bool:
            for rec in ingest.requests():
                for rm in rec["request"]["resourceMetrics"]:
                    resource.update({a["key"]: a["value"]["stringValue"] for a in rm["resource"]["attributes"]})
                    for sm in rm["scopeMetrics"]:
                        names.update(m["name"] for m in sm["metrics"])
            return names >= EXPECTED_NAMES

        wait_until(arrived, what=f"host and self metrics at the ingest (have {names})")
        for key in ("host.name", "os.type", "service.name", "service.instance.id"):
            assert resource.get(key), key
        status = relay.status()
        assert status["ready"] is True
        assert {s["name"] for s in status["sources"]} == {"host", "internal"}
        assert status["spool"]["max_bytes"] == 512 * 1024 * 1024
        code, ready = relay.readyz()
        assert code == 200 and ready["ready"]
        assert relay.metric("relay_points_shipped_total", destination="vendor") > 0
    finally:
        assert relay.terminate() == 0
        ingest.terminate()
    assert "Traceback" not in relay.log()


def test_ingest_outage_spools_then_delivers_every_batch_once(tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    ingest.start()
    relay = Relay(tmp_path, relay_config(tmp_path, ingest.url))
    relay.start()
    try:
        wait_until(lambda: relay.destination()["shipped_points"] > 0, what="first export")
        ingest.terminate()
        # The relay keeps collecting into the spool, and readiness says why it is unhappy.
        _code, body = wait_until(lambda: (r := relay.readyz())[0] == 503 and r, timeout=15, what="readyz 503")
        assert any("destination vendor" in reason and "waiting" in reason for reason in body["reasons"]), body
        backlog = relay.destination()["backlog_items"]
        assert backlog > 0
        assert relay.status()["spool"]["entries"] > 0
        ingest.start()
        wait_until(lambda: relay.readyz()[0] == 200, timeout=20, what="readyz 200 after recovery")
        quiesce(relay)
        wait_until(lambda: drained(relay), what="backlog to drain")
        runs = int(relay.metric("relay_source_runs_total", source="internal"))
    finally:
        relay.terminate()
        ingest.terminate()
    batches = self_batches(ingest.requests())
    (start,) = {s for s, _ in batches}
    # Exactly once, except the request in flight when the ingest went away.
    check_sequence(batches, must_have={start: runs}, max_dupes=1)


def test_kill9_mid_stream_loses_nothing_acknowledged(tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url)
    relay = Relay(tmp_path, cfg)
    relay.start()
    wait_until(lambda: relay.source("internal")["successes"] >= 5, what="some collections")
    # Take the vendor away so a backlog builds, then crash the relay with data only on disk.
    ingest.terminate()
    wait_until(lambda: relay.destination()["backlog_items"] > 0, what="backlog")
    acked = relay.source("internal")["successes"]
    relay.kill9()
    ingest.start()
    relay2 = Relay(tmp_path, relay_config(tmp_path, ingest.url, server={"listen": f"127.0.0.1:{free_port()}"}),
                   name="relay2")
    relay2.start()
    try:
        wait_until(lambda: relay2.destination()["shipped_points"] > 0, what="restart export")
        # Crash again mid-stream, while it is shipping.
        relay2.kill9()
        relay3 = Relay(tmp_path, relay2.cfg, name="relay3")
        relay3.start()
        wait_until(lambda: relay3.source("internal")["successes"] >= 3, what="third run collecting")
        quiesce(relay3)
        wait_until(lambda: drained(relay3), what="backlog to drain")
    finally:
        relay3.terminate()
        ingest.terminate()
    batches = self_batches(ingest.requests())
    starts = sorted({s for s, _ in batches})
    assert len(starts) == 3, "batches from all three relay processes should arrive"
    first_start = starts[0]
    # At most the one request in flight at each kill may arrive twice.
    check_sequence(batches, must_have={first_start: acked}, max_dupes=2)


@pytest.mark.parametrize("bad", ["unknown", "type"])
def test_bad_config_fails_with_path_and_line(tmp_path: Path, bad: str) -> None:
    import subprocess

    from tests.procs import CLI

    text = {
        "unknown": "destinations:\n  - name: v\n    endpoint: http://127.0.0.1:1\n    compresion: zstd\n",
        "type": "sources:\n  host:\n    interval: often\ndestinations:\n  - name: v\n    endpoint: http://x:1\n",
    }[bad]
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    for cmd in ("check-config", "run"):
        p = subprocess.run([*CLI, cmd, "--config", str(path)], capture_output=True, text=True, timeout=30)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr
        if bad == "unknown":
            assert f"{path}:4: destinations[0].compresion: unknown key" in p.stderr
        else:
            assert f"{path}:3: sources.host.interval: expected a duration" in p.stderr


def test_status_command_reload_and_sigterm(tmp_path: Path) -> None:
    import subprocess

    from tests.procs import CLI

    def status_cmd(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, "status", "--url", url], capture_output=True, text=True, timeout=30)

    ingest = Ingest(tmp_path)
    ingest.start()
    relay = Relay(tmp_path, relay_config(tmp_path, ingest.url))
    relay.start()
    try:
        wait_until(lambda: relay.readyz()[0] == 200 and relay.destination()["shipped_points"] > 0, what="ready")
        p = status_cmd(relay.status_url)
        assert p.returncode == 0, p.stdout + p.stderr
        for text in ("READY", "Sources", "host", "Spool", "Destinations", "vendor", "last success"):
            assert text in p.stdout

        # An invalid config on reload is refused; the old one stays in force.
        good = dict(relay.cfg)
        relay.config_path.write_text(relay.config_path.read_text() + "bogus_key: 1\n")
        relay.signal(signal.SIGHUP)
        err = wait_until(lambda: relay.status()["config"]["last_reload_error"], what="reload refusal")
        assert f"{relay.config_path}:" in err and "bogus_key: unknown key" in err
        shipped = relay.destination()["shipped_points"]
        wait_until(lambda: relay.destination()["shipped_points"] > shipped, what="still shipping")
        relay.write_config(good)

        ingest.terminate()
        p = wait_until(lambda: (q := status_cmd(relay.status_url)).returncode == 1 and q, what="not ready")
        assert "NOT READY" in p.stdout and "destination vendor" in p.stdout
    finally:
        assert relay.terminate() == 0, "SIGTERM is a clean stop"
        ingest.terminate()
    p = status_cmd(relay.status_url)
    assert p.returncode == 2 and "no relay answering" in p.stderr and "Traceback" not in p.stderr
    assert "Traceback" not in relay.log()
