"""The status model behind /status, /readyz, the status page and `telemetry-relay status`.

Owns: every judgement of the relay's state, each made once from the components' own
snapshots: readiness (what /readyz refuses for), the health verdict (healthy, degraded
or failing, and why), the throughput history behind the page's sparklines, the one-line
summary systemd shows, the Kafka client metrics view (per scraped broker: is the KIP-714
plugin loaded, which subscriptions exist, how many clients pushed lately, and the one command
that creates a subscription where there is none), and the /status document that composes them
all (with the last connection self-test, shown as it was recorded: it does not change the verdict).
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from relay import __version__

# The status page's sparklines: one sample every 10 s, 15 minutes of them, in memory.
HISTORY_INTERVAL = 10.0
HISTORY_SAMPLES = 90

Snapshot = dict[str, Any]

# The subscription an operator creates for the plugin: every producer and consumer metric the
# Java client and librdkafka push, every 10 s. No well-kept Python admin client supports the
# client-metrics config resource, so the status prints Kafka's own tool's line to run.
SUBSCRIPTION_NAME = "telemetry-relay"
SUBSCRIPTION_METRICS = "org.apache.kafka.producer.,org.apache.kafka.consumer."
SUBSCRIPTION_INTERVAL_MS = 10000
_DROP_REASONS = {"DroppedQueueFull": "queue_full", "DroppedTooLarge": "too_large", "DroppedUnreachable": "unreachable",
                 "DroppedRejected": "rejected", "DroppedUnavailable": "unavailable", "DroppedMalformed": "malformed",
                 "DroppedError": "error", "DroppedShutdown": "shutdown"}


def subscribe_command(bootstrap: str) -> str:
    """The kafka-client-metrics.sh line that creates the plugin's subscription."""
    return (f"kafka-client-metrics.sh --bootstrap-server {bootstrap or '<broker host:port>'} --alter "
            f"--name {SUBSCRIPTION_NAME} --metrics {SUBSCRIPTION_METRICS} --interval {SUBSCRIPTION_INTERVAL_MS}")


def client_metrics(sources: list[Snapshot]) -> list[Snapshot]:
    """Per Jolokia-scraped broker (configured or discovered), the KIP-714 plugin's state as its MBean said."""
    out: list[Snapshot] = []
    for s in sources:
        if "client_telemetry" not in s:
            continue  # not a Jolokia source
        bean = s["client_telemetry"]
        ident = s.get("identity") or {}
        entry: Snapshot = {"source": s["name"], "url": s.get("url"), "broker_id": ident.get("kafka.broker.id"),
                           "cluster_id": ident.get("kafka.cluster.id"), "plugin_loaded": bean is not None}
        if bean is not None:
            count = int(bean.get("SubscriptionCount", -1))
            entry.update({
                "api": bean.get("Api"), "version": bean.get("Version"), "endpoint": bean.get("Endpoint"),
                "received": bean.get("Received", 0), "forwarded": bean.get("Forwarded", 0),
                "dropped": bean.get("Dropped", 0),
                "dropped_by_reason": {r: bean[k] for k, r in _DROP_REASONS.items() if bean.get(k)},
                "queue_bytes": bean.get("QueueBytes", 0), "queue_max_bytes": bean.get("QueueMaxBytes", 0),
                "last_error": bean.get("LastError") or None,
                "last_error_time": (bean.get("LastErrorTime") or 0) / 1000 or None,
                "clients_pushed": bean.get("ClientsPushed", 0),
                "window_seconds": (bean.get("ClientsWindowMs") or 0) / 1000,
                "subscription_count": count if count >= 0 else None,
                "subscriptions": [line for line in str(bean.get("Subscriptions", "")).splitlines() if line],
                "subscription_error": bean.get("SubscriptionError") or None,
            })
            if count == 0:
                entry["subscribe_command"] = subscribe_command(str(bean.get("BootstrapServers", "")))
        out.append(entry)
    return out


@dataclass(frozen=True)
class Snapshots:
    """What each running component reported of itself at one moment: all the model judges."""

    taken: float
    config: Snapshot = field(default_factory=dict)  # path, last reload, last reload error
    resource: Snapshot = field(default_factory=dict)
    spool: Snapshot | None = None  # None while the relay starts
    destinations: list[Snapshot] = field(default_factory=list)  # one per shipper
    sources: list[Snapshot] = field(default_factory=list)  # configured and discovered runners
    discovery: Snapshot | None = None
    receivers: list[Snapshot] = field(default_factory=list)
    policies: list[Snapshot] = field(default_factory=list)
    # The last `check-connection` result (relay/export/probe_result.py keeps it), None before the first.
    connection_check: Snapshot | None = None
    # Readiness grants each destination its ready_threshold from the pipeline's start.
    pipeline_started: float = 0.0
    ready_thresholds: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    text: str
    failing: bool = False  # the relay cannot do its job at all: nothing is kept, or nothing ships
    blocks_ready: bool = False  # /readyz answers 503 while it holds


@dataclass(frozen=True)
class _Sample:
    taken: float
    shipped: dict[str, tuple[float, float]]  # destination -> (points, bytes) shipped so far
    dropped: float  # points that left the spool undelivered so far


class StatusModel:
    def __init__(self, observe: Callable[[], Snapshots], started: float | None = None) -> None:
        self._observe = observe
        self.started = time.time() if started is None else started
        self._history: deque[_Sample] = deque(maxlen=HISTORY_SAMPLES)
        self._process = psutil.Process()

    # -- judgements --------------------------------------------------------------------------------

    def findings(self, snap: Snapshots) -> list[Finding]:
        """Everything wrong right now, worst first within each kind, each said once."""
        out: list[Finding] = []
        spool = snap.spool
        if spool is None:
            out.append(Finding("starting", blocks_ready=True))
        elif not spool["writable"]:
            out.append(Finding(f"spool is not writable: {spool['last_error']}", failing=True, blocks_ready=True))
        for d in snap.destinations:
            found = self._destination(d, snap)
            if found:
                out.append(found)
        for s in snap.sources:
            if s["last_error"]:
                out.append(Finding(f"source {s['name']}: {s['last_error']}"))
        for c in client_metrics(snap.sources):
            if c.get("subscription_count") == 0:
                who = c["broker_id"] or c["source"]
                out.append(Finding(f"broker {who}: the client metrics plugin is loaded but no client-metrics "
                                   f"subscription exists, so no client pushes; create one with: "
                                   f"{c['subscribe_command']}"))
        for p in snap.policies:
            if p["in_force"] and p["last_error"]:
                out.append(Finding(f"policy edit refused, previous policy in force: {p['last_error']}"))
        if snap.config.get("last_reload_error"):
            out.append(Finding(f"reload refused, the running configuration stays in force: "
                               f"{snap.config['last_reload_error']}"))
        if self._history:
            dropped = _dropped(snap) - self._history[0].dropped
            if dropped > 0:
                out.append(Finding(f"{dropped:.0f} points left the spool undelivered in the last 15 minutes"))
        return out

    @staticmethod
    def _destination(d: Snapshot, snap: Snapshots) -> Finding | None:
        name, policy = d["name"], d["policy"]
        if policy is not None and not policy["in_force"]:  # fail closed
            return Finding(f"destination {name}: no valid redaction policy, nothing ships: {policy['last_error']}",
                           failing=True, blocks_ready=True)
        if d["backlog_items"] == 0:
            return None
        since = max(d["last_success"] or 0.0, snap.pipeline_started)
        lag = snap.taken - since
        if lag <= snap.ready_thresholds.get(name, 0.0):
            return None
        err = f"; last error: {d['last_error']}" if d["last_error"] else ""
        return Finding(f"destination {name}: no successful export for {lag:.0f}s "
                       f"with {d['backlog_items']} items ({d['backlog_bytes']} bytes) waiting{err}",
                       blocks_ready=True)

    def ready_problems(self, snap: Snapshots | None = None) -> list[str]:
        """Why /readyz refuses: empty when ready."""
        return [f.text for f in self.findings(snap or self._observe()) if f.blocks_ready]

    def health(self, snap: Snapshots | None = None) -> dict[str, Any]:
        """healthy, degraded or failing, and why: what the status page's header says."""
        found = self.findings(snap or self._observe())
        failing = [f.text for f in found if f.failing]
        degraded = [f.text for f in found if not f.failing]
        state = "failing" if failing else "degraded" if degraded else "healthy"
        return {"state": state, "reasons": failing + degraded}

    # -- history and summary -----------------------------------------------------------------------

    def sample_history(self, snap: Snapshots | None = None) -> None:
        snap = snap or self._observe()
        shipped = {d["name"]: (d["shipped_points"], d["shipped_bytes"]) for d in snap.destinations}
        self._history.append(_Sample(snap.taken, shipped, _dropped(snap)))

    def history(self) -> dict[str, Any]:
        """Per destination, [time, points/s, bytes/s] between consecutive samples."""
        series: dict[str, list[list[float]]] = {}
        for s0, s1 in itertools.pairwise(self._history):
            dt = max(s1.taken - s0.taken, 1e-6)
            for name, (p1, b1) in s1.shipped.items():
                p0, b0 = s0.shipped.get(name, (p1, b1))
                series.setdefault(name, []).append(
                    [round(s1.taken, 3), round((p1 - p0) / dt, 3), round((b1 - b0) / dt, 3)])
        return {"interval_seconds": HISTORY_INTERVAL, "destinations": series}

    def summary_line(self, snap: Snapshots | None = None) -> str:
        """One line for systemd's STATUS= (what `systemctl status` shows)."""
        snap = snap or self._observe()
        if snap.spool is None:
            return "starting"
        shipped = sum(d["shipped_points"] for d in snap.destinations)
        ages = [snap.taken - d["last_success"] for d in snap.destinations if d["last_success"]]
        last = f"{min(ages):.0f}s ago" if ages else "never"
        return (
            f"shipped {shipped:.0f} points, backlog {snap.spool['bytes']} B in {snap.spool['entries']} entries, "
            f"last export {last}"
        )

    # -- the /status document ----------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        snap = self._observe()
        problems = self.ready_problems(snap)
        return {
            "version": __version__,
            "uptime_seconds": round(snap.taken - self.started, 3),
            "ready": not problems,
            "problems": problems,
            "verdict": self.health(snap),
            "history": self.history(),
            "config": snap.config,
            "resource": snap.resource,
            # One cheap syscall (a /proc read); not worth a thread.
            "process": {"pid": os.getpid(), "rss_bytes": self._process.memory_info().rss},
            "sources": snap.sources,
            "client_metrics": client_metrics(snap.sources),
            # Every tailed log file, whichever source (configured or discovered) reads it.
            "log_files": [{"source": src["name"], **f} for src in snap.sources for f in src.get("files", [])],
            "discovery": snap.discovery,
            "receivers": snap.receivers,
            "spool": snap.spool,
            "destinations": snap.destinations,
            "policies": snap.policies,
            "connection_check": snap.connection_check,
        }


def _dropped(snap: Snapshots) -> float:
    """Points that left the spool undelivered so far, for every reason and destination."""
    return float(sum(snap.spool["dropped_points"].values())) if snap.spool else 0.0
