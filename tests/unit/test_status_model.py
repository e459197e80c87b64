"""The status model judges readiness, health and the summary from component snapshots
alone: no relay process, no spool, no shipper."""

from __future__ import annotations

from typing import Any

from relay.status import HISTORY_INTERVAL, Snapshots, StatusModel

NOW = 1_700_000_000.0


def spool(**over: Any) -> dict[str, Any]:
    return {"entries": 3, "bytes": 1200, "max_bytes": 1 << 29, "oldest_age_seconds": 1.0, "writable": True,
            "last_error": None, "quarantined": [], "dropped_points": {}, **over}


def destination(name: str = "vendor", **over: Any) -> dict[str, Any]:
    return {"name": name, "policy": {"in_force": True, "last_error": None}, "backlog_items": 0,
            "backlog_bytes": 0, "last_success": NOW - 1, "last_error": None, "shipped_points": 10.0,
            "shipped_bytes": 100.0, **over}


def source(name: str = "host", error: str | None = None) -> dict[str, Any]:
    return {"name": name, "last_error": error}


def snaps(**over: Any) -> Snapshots:
    fields: dict[str, Any] = {"taken": NOW, "spool": spool(), "destinations": [destination()],
                              "sources": [source()], "pipeline_started": NOW - 600,
                              "ready_thresholds": {"vendor": 60.0}, **over}
    return Snapshots(**fields)


def model(snap: Snapshots) -> StatusModel:
    return StatusModel(lambda: snap, started=NOW - 600)


def test_a_relay_with_everything_flowing_is_ready_and_healthy() -> None:
    m = model(snaps())
    assert m.ready_problems() == []
    assert m.health() == {"state": "healthy", "reasons": []}


def test_before_the_spool_opens_the_relay_is_starting() -> None:
    m = model(snaps(spool=None, destinations=[]))
    assert m.ready_problems() == ["starting"]
    assert m.health()["state"] == "degraded"
    assert m.summary_line() == "starting"


def test_an_unwritable_spool_fails_and_is_said_once() -> None:
    m = model(snaps(spool=spool(writable=False, last_error="No space left on device")))
    assert m.ready_problems() == ["spool is not writable: No space left on device"]
    assert m.health() == {"state": "failing", "reasons": ["spool is not writable: No space left on device"]}


def test_a_destination_without_a_valid_policy_fails_closed() -> None:
    no_policy = destination(policy={"in_force": False, "last_error": "policy file not found"})
    m = model(snaps(destinations=[no_policy]))
    reason = "destination vendor: no valid redaction policy, nothing ships: policy file not found"
    assert m.ready_problems() == [reason]
    assert m.health() == {"state": "failing", "reasons": [reason]}


def test_a_destination_lagging_past_its_threshold_is_not_ready() -> None:
    lagging = destination(backlog_items=5, backlog_bytes=500, last_success=NOW - 90, last_error="HTTP 503")
    m = model(snaps(destinations=[lagging]))
    reason = "destination vendor: no successful export for 90s with 5 items (500 bytes) waiting; last error: HTTP 503"
    assert m.ready_problems() == [reason]
    assert m.health() == {"state": "degraded", "reasons": [reason]}


def test_a_backlog_within_the_threshold_or_since_the_pipeline_started_is_fine() -> None:
    recent = destination(backlog_items=5, backlog_bytes=500, last_success=NOW - 30)
    assert model(snaps(destinations=[recent])).ready_problems() == []
    # Never shipped, but the pipeline (re)started only 10 s ago: the threshold counts from then.
    never = destination(backlog_items=5, backlog_bytes=500, last_success=None)
    assert model(snaps(destinations=[never], pipeline_started=NOW - 10)).ready_problems() == []
    assert model(snaps(destinations=[never], pipeline_started=NOW - 61)).ready_problems() != []
    idle = destination(backlog_items=0, last_success=None)
    assert model(snaps(destinations=[idle])).ready_problems() == []


def test_source_errors_and_refused_policy_edits_degrade_but_keep_ready() -> None:
    m = model(snaps(sources=[source("host"), source("jolokia x:1", "HTTP 404 from x")],
                    policies=[{"in_force": True, "last_error": "policy.yaml:3: bad key"},
                              {"in_force": False, "last_error": "not found"}]))
    assert m.ready_problems() == []
    assert m.health() == {"state": "degraded", "reasons": [
        "source jolokia x:1: HTTP 404 from x",
        "policy edit refused, previous policy in force: policy.yaml:3: bad key",
    ]}


def test_a_refused_reload_degrades_but_keeps_ready_until_a_good_one() -> None:
    refused = {"path": "relay.yaml", "last_reload_error": "relay.yaml:9: shipping_fast: unknown key"}
    m = model(snaps(config=refused))
    assert m.ready_problems() == []
    assert m.health() == {"state": "degraded", "reasons": [
        "reload refused, the running configuration stays in force: relay.yaml:9: shipping_fast: unknown key"]}
    assert model(snaps(config={**refused, "last_reload_error": None})).health()["state"] == "healthy"


def test_points_dropped_since_the_oldest_sample_degrade() -> None:
    current = {"snap": snaps(spool=spool(dropped_points={"max_bytes": 4.0}))}
    m = StatusModel(lambda: current["snap"], started=NOW - 600)
    m.sample_history()
    assert m.health()["state"] == "healthy", "drops before the window are history"
    current["snap"] = snaps(spool=spool(dropped_points={"max_bytes": 10.0, "dead_letter": 2.0}))
    assert m.health() == {"state": "degraded",
                          "reasons": ["8 points left the spool undelivered in the last 15 minutes"]}


def test_failing_reasons_come_before_degraded_ones() -> None:
    m = model(snaps(spool=spool(writable=False, last_error="EIO"), sources=[source("host", "boom")]))
    assert m.health() == {"state": "failing", "reasons": ["spool is not writable: EIO", "source host: boom"]}


def test_summary_line_says_shipped_backlog_and_the_latest_export() -> None:
    snap = snaps(destinations=[destination("a", last_success=NOW - 42, shipped_points=7.0),
                               destination("b", last_success=NOW - 5, shipped_points=3.0)])
    assert model(snap).summary_line() == "shipped 10 points, backlog 1200 B in 3 entries, last export 5s ago"
    never = snaps(destinations=[destination(last_success=None)])
    assert model(never).summary_line().endswith("last export never")


def test_history_is_points_and_bytes_per_second_between_samples() -> None:
    current = {"snap": snaps(taken=NOW)}
    m = StatusModel(lambda: current["snap"], started=NOW - 600)
    m.sample_history()
    current["snap"] = snaps(taken=NOW + 10, destinations=[destination(shipped_points=60.0, shipped_bytes=600.0)])
    m.sample_history()
    assert m.history() == {"interval_seconds": HISTORY_INTERVAL,
                           "destinations": {"vendor": [[NOW + 10, 5.0, 50.0]]}}


def test_the_document_composes_the_snapshots_in_the_shape_readers_expect() -> None:
    config = {"path": "/etc/telemetry-relay/relay.yaml", "last_reload": NOW - 600, "last_reload_error": None}
    snap = snaps(config=config, resource={"host.name": "h"}, receivers=[{"name": "otlp"}])
    doc = model(snap).document()
    assert set(doc) == {"version", "uptime_seconds", "ready", "problems", "verdict", "history", "config",
                        "resource", "process", "sources", "log_files", "discovery", "receivers", "spool",
                        "destinations", "policies", "connection_check", "client_metrics"}
    assert doc["connection_check"] is None  # no self-test has run
    assert doc["client_metrics"] == []  # no Jolokia source, so no broker to show
    assert doc["uptime_seconds"] == 600.0 and doc["ready"] is True and doc["problems"] == []
    assert doc["verdict"] == {"state": "healthy", "reasons": []}
    assert doc["config"] == config and doc["spool"] == snap.spool and doc["destinations"] == snap.destinations
    assert doc["process"]["pid"] > 0 and doc["process"]["rss_bytes"] > 0
    assert doc["log_files"] == []  # no source tails a file
    tailing = {**source(), "name": "logs pid 7", "files": [{"path": "/var/log/kafka/server.log", "lag_bytes": 0}]}
    doc = model(snaps(sources=[source(), tailing])).document()
    assert doc["log_files"] == [{"source": "logs pid 7", "path": "/var/log/kafka/server.log", "lag_bytes": 0}]
