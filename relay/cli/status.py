"""`telemetry-relay status`: what a running relay is doing, read from its /status.

Owns: the human rendering of the /status document (`format_status`, the Kafka client metrics
section included), with every string in
it control-escaped first (vendor error bodies are in there); --json prints the document as
it came (json.dumps escapes). Exits 1 when the relay answers but is not ready.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from relay.cli.common import EXIT_FAIL, EXIT_OK, escape_strings, fetch, format_ago, format_bytes, format_duration


def run(args: argparse.Namespace) -> int:
    data = fetch(args.url, "/status")
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(format_status(data))
    return EXIT_OK if data.get("ready") else EXIT_FAIL


def format_status(doc: dict[str, Any]) -> str:
    d = escape_strings(doc)
    now = time.time()
    verdict = "READY" if d.get("ready") else "NOT READY"
    out = [f"telemetry-relay {d.get('version')}  {verdict}  (uptime {format_duration(d.get('uptime_seconds', 0))})"]
    for p in d.get("problems", []):
        out.append(f"  ! {p}")
    cfg = d.get("config", {})
    reload_note = f"last reload refused: {cfg['last_reload_error']}" if cfg.get("last_reload_error") else "ok"
    out.append(f"config: {cfg.get('path')} ({reload_note})")
    out.append("")
    out.append("Sources")
    for s in d.get("sources", []):
        state = "ok" if not s.get("last_error") else f"ERROR: {s['last_error']}"
        out.append(
            f"  {s['name']:<10} every {s['interval_seconds']:g}s  last run {format_ago(s.get('last_run'), now)}  "
            f"{s.get('last_points', 0)} points  total {s.get('points_collected', 0):.0f}  {state}"
        )
    out.extend(_client_metrics(d.get("client_metrics") or [], now))
    if d.get("log_files"):
        out.append("")
        out.append("Log files")
        for f in d["log_files"]:
            lost = ", ".join(f"{k} {v}" for k, v in (f.get("dropped") or {}).items() if v) or "none"
            read = "-" if f.get("offset") is None else format_bytes(f["offset"])
            lag = "-" if f.get("lag_bytes") is None else format_bytes(f["lag_bytes"])
            out.append(f"  {f['path']}  {f.get('state')}  at {read}, lag {lag}, "
                       f"last record {format_ago(f.get('last_record_time'), now)}, {f.get('records', 0)} records, "
                       f"dropped: {lost}")
    sp = d.get("spool") or {}
    out.append("")
    out.append("Spool")
    out.append(
        f"  {sp.get('entries', 0)} entries, {format_bytes(sp.get('bytes', 0))} of "
        f"{format_bytes(sp.get('max_bytes', 0))}, oldest {format_duration(sp.get('oldest_age_seconds', 0))}"
        + ("" if sp.get("writable", True) else f"  NOT WRITABLE: {sp.get('last_error')}")
    )
    dropped = sp.get("dropped_points") or {}
    out.append("  dropped: " + (", ".join(f"{k} {v:.0f} points" for k, v in dropped.items()) or "none"))
    out.append("")
    out.append("Destinations")
    for dst in d.get("destinations", []):
        out.append(
            f"  {dst['name']}  {dst['endpoint']}\n"
            f"    last success {format_ago(dst.get('last_success'), now)}, "
            f"backlog {format_bytes(dst.get('backlog_bytes', 0))} "
            f"({dst.get('backlog_items', 0)} items), in flight {dst.get('in_flight', 0)}, "
            f"shipped {dst.get('shipped_points', 0):.0f} points in {dst.get('shipped_requests', 0):.0f} requests"
        )
        if dst.get("backoff_seconds"):
            out.append(f"    retrying in {dst['backoff_seconds']:.1f}s")
        if dst.get("last_error"):
            out.append(f"    last error ({format_ago(dst.get('last_error_time'), now)}): {dst['last_error']}")
        rej = dst.get("dropped_points") or {}
        if rej:
            out.append("    dropped: " + ", ".join(f"{k} {v:.0f} points" for k, v in rej.items()))
    return "\n".join(out)



def _client_metrics(brokers: list[dict[str, Any]], now: float) -> list[str]:
    """Per scraped broker: the KIP-714 plugin, its subscriptions and the clients that pushed."""
    if not brokers:
        return []
    out = ["", "Kafka client metrics (KIP-714)"]
    for b in brokers:
        who = f"broker {b['broker_id']}" if b.get("broker_id") else b["source"]
        if not b.get("plugin_loaded"):
            out.append(f"  {who}: plugin not loaded (no telemetry.relay:type=ClientTelemetry MBean)")
            continue
        out.append(f"  {who}: plugin {b.get('version')} loaded ({b.get('api')}), forwarding to {b.get('endpoint')}")
        out.append(f"    {b.get('clients_pushed', 0)} clients pushed in the last {b.get('window_seconds', 0):g}s; "
                   f"received {b.get('received', 0)}, forwarded {b.get('forwarded', 0)}, dropped {b.get('dropped', 0)}"
                   + (" (" + ", ".join(f"{k} {v}" for k, v in b["dropped_by_reason"].items()) + ")"
                      if b.get("dropped_by_reason") else "")
                   + f"; queue {format_bytes(b.get('queue_bytes', 0))} of {format_bytes(b.get('queue_max_bytes', 0))}")
        count = b.get("subscription_count")
        if count is None:
            out.append(f"    subscriptions: unknown ({b.get('subscription_error') or 'not read yet'})")
        elif count == 0:
            out.append("    subscriptions: NONE, so no client pushes. Create one with:")
            out.append(f"      {b.get('subscribe_command')}")
        else:
            out.append(f"    subscriptions ({count}):")
            out.extend(f"      {line}" for line in b.get("subscriptions", []))
        if b.get("last_error"):
            out.append(f"    last error ({format_ago(b.get('last_error_time'), now)}): {b['last_error']}")
    return out
