"""The fleet view: what the vendor has received from each relay, and whether it is complete.

Owns: the per-relay ledger behind `GET /fleet` (JSON) and its page (fleet.html): for each
relay, by key id and spool instance, its version (User-Agent), first and last seen, the
policy hash and when it changed, the lag (the newest data's age), and per signal the
sequence ranges received, the duplicates (a range received again: a retry after a lost 200)
and the gaps (entries never received), told apart into explained and unexplained by the
relay's own drop counters; and `request_facts`, what the ingest reads off a decoded request
for it (the newest data's time, the drop counters it carries).

It is fed one observation per stored request, as record headers (relay/ingest/kafka.py):
from the Kafka topics themselves when the ingest publishes to Kafka (so it counts what is
in Kafka, from every replica, across restarts), or by the ingest directly otherwise.

How a gap is explained (docs/wire-protocol.md, "Completeness"): the relay's self-metric
`relay.entries.dropped` (by destination and reason: max_bytes, max_age, dead_letter) counts
the spool entries that left without being delivered. It is cumulative per relay process
(its start time tells processes apart), and an entry is one seq, so per relay instance
the entries dropped, summed over processes and reasons, are set against the entries
missing from the received ranges: up to that many missing entries are explained, the
rest are unexplained.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from relay.ingest import kafka as h
from relay.otlp import SIGNALS, Signal

SELF_SCOPE = "telemetry-relay/self"  # relay/sources/internal.py
DROP_METRICS = {"relay.entries.dropped": "entries", "relay.points.dropped": "points"}
LISTED_GAPS = 20  # per signal on /fleet; the counts cover all of them


def request_facts(signal: Signal, msg: Message) -> tuple[int, str | None]:
    """(the newest data's time in ns, the relay's drop counters as a JSON header value or None).

    The newest time looks at the last point of each metric, record of each scope, span of
    each scope (sources append in time order), so it costs per metric, not per point."""
    newest = 0
    dropped: list[list[Any]] = []
    if signal == "metrics":
        for rm in msg.resource_metrics:
            for sm in rm.scope_metrics:
                mine = sm.scope.name == SELF_SCOPE
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    if not kind:
                        continue
                    points = getattr(m, kind).data_points
                    if points:
                        newest = max(newest, points[-1].time_unix_nano)
                    if mine and m.name in DROP_METRICS:
                        for p in points:
                            attrs = {a.key: a.value.string_value for a in p.attributes}
                            dropped.append([DROP_METRICS[m.name], p.start_time_unix_nano,
                                            attrs.get("destination", ""), attrs.get("reason", ""), p.as_int])
    elif signal == "logs":
        for rl in msg.resource_logs:
            for sl in rl.scope_logs:
                if sl.log_records:
                    last = sl.log_records[-1]
                    newest = max(newest, last.time_unix_nano or last.observed_time_unix_nano)
    else:
        for rs in msg.resource_spans:
            for ss in rs.scope_spans:
                if ss.spans:
                    newest = max(newest, ss.spans[-1].end_time_unix_nano)
    return newest, (json.dumps(dropped, separators=(",", ":")) if dropped else None)


def add_range(ranges: list[list[int]], first: int, last: int) -> int:
    """Merge first..last into sorted disjoint `ranges` (in place); returns how many of its
    seqs were there already (the duplicate entries)."""
    overlap = 0
    merged_first, merged_last = first, last
    keep: list[list[int]] = []
    inserted = False
    for a, b in ranges:
        if b < first - 1:
            keep.append([a, b])
        elif a > last + 1:
            if not inserted:
                keep.append([merged_first, merged_last])
                inserted = True
            keep.append([a, b])
        else:
            overlap += max(0, min(b, last) - max(a, first) + 1)
            merged_first, merged_last = min(merged_first, a), max(merged_last, b)
    if not inserted:
        keep.append([merged_first, merged_last])
    ranges[:] = keep
    return overlap


def holes(ranges: Iterable[list[int]], floor: int) -> list[tuple[int, int]]:
    """The seqs from `floor` up to the highest received that are in no range."""
    out, expect = [], floor
    for a, b in ranges:
        if a > expect:
            out.append((expect, a - 1))
        expect = max(expect, b + 1)
    return out


@dataclass
class _Signal:
    ranges: list[list[int]] = field(default_factory=list)
    requests: int = 0
    items: int = 0
    duplicate_requests: int = 0
    duplicate_entries: int = 0


@dataclass
class _Relay:
    key_id: str
    instance: str | None
    first_seen: float
    last_seen: float = 0.0
    user_agent: str = ""
    policy: str | None = None
    policy_since: float | None = None
    policy_changed_at: float | None = None
    newest_data: float = 0.0
    signals: dict[str, _Signal] = field(default_factory=lambda: {s: _Signal() for s in SIGNALS})
    # (what, process start ns, destination, reason) -> the newest cumulative value
    drops: dict[tuple[str, int, str, str], int] = field(default_factory=dict)


class Fleet:
    """Thread-safe: the Kafka ledger's thread observes, the event loop reads the view."""

    def __init__(self, destinations: Iterable[str] = (), count_from_one: Callable[[], bool] = lambda: True) -> None:
        # Only these destinations' drops explain gaps (a relay may ship elsewhere too); empty: all.
        self.destinations = frozenset(destinations)
        # False once retention has deleted records: a relay's early seqs are then not gaps.
        self.count_from_one = count_from_one
        self._relays: dict[tuple[str, str | None], _Relay] = {}
        self._lock = threading.Lock()

    def observe(self, signal: Signal, headers: Mapping[str, str], at: float) -> None:
        key_id = headers.get(h.H_KEY_ID) or "(unsigned)"
        instance = headers.get(h.H_INSTANCE) or None
        with self._lock:
            r = self._relays.get((key_id, instance))
            if r is None:
                r = self._relays[(key_id, instance)] = _Relay(key_id, instance, first_seen=at)
            self._observe(r, signal, headers, at)

    def _observe(self, r: _Relay, signal: Signal, headers: Mapping[str, str], at: float) -> None:
        r.first_seen = min(r.first_seen, at)
        if at >= r.last_seen:
            r.last_seen = at
            r.user_agent = headers.get(h.H_USER_AGENT, r.user_agent)
        policy = headers.get(h.H_POLICY) or None
        if policy != r.policy and (r.policy_since is None or at >= r.policy_since):
            if r.policy_since is not None:
                r.policy_changed_at = at
            r.policy, r.policy_since = policy, at
        newest = _int(headers.get(h.H_NEWEST))
        if newest:
            r.newest_data = max(r.newest_data, newest / 1e9)
        s = r.signals[signal]
        s.requests += 1
        s.items += _int(headers.get(h.H_ITEMS))
        first, _, last = headers.get(h.H_SEQUENCE, "").partition("-")
        if first.isdigit() and last.isdigit():
            again = add_range(s.ranges, int(first), int(last))
            if again:
                s.duplicate_requests += 1
                s.duplicate_entries += again
        for what, start, dest, reason, value in _drops(headers.get(h.H_DROPPED)):
            k = (what, start, dest, reason)
            r.drops[k] = max(r.drops.get(k, 0), value)

    def view(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        from_one = self.count_from_one()
        with self._lock:
            relays = [self._relay_view(r, now, from_one) for r in self._relays.values()]
        relays.sort(key=lambda r: (r["key_id"], r["first_seen"]))
        totals = {k: sum(r[k] for r in relays) for k in ("sequences_received",)}
        totals["duplicates"] = sum(r["duplicates"]["requests"] for r in relays)
        totals["gaps_unexplained"] = sum(r["gaps"]["unexplained"] for r in relays)
        return {"generated_at": now, "relays": relays, "totals": totals,
                "gaps_counted_from": "1" if from_one else "the lowest seq received"}

    def _relay_view(self, r: _Relay, now: float, from_one: bool) -> dict[str, Any]:
        signals: dict[str, Any] = {}
        missing_total = received_total = dup_req = dup_ent = 0
        for name, s in r.signals.items():
            if not s.requests:
                continue
            floor = 1 if from_one or not s.ranges else s.ranges[0][0]
            gaps = holes(s.ranges, floor)
            missing = sum(b - a + 1 for a, b in gaps)
            received = sum(b - a + 1 for a, b in s.ranges)
            signals[name] = {
                "requests": s.requests, "items": s.items, "received_entries": received,
                "highest": s.ranges[-1][1] if s.ranges else None,
                "ranges": s.ranges[:LISTED_GAPS], "ranges_total": len(s.ranges),
                "duplicates": {"requests": s.duplicate_requests, "entries": s.duplicate_entries},
                "missing": missing, "gaps": [list(g) for g in gaps[:LISTED_GAPS]], "gaps_total": len(gaps),
            }
            missing_total += missing
            received_total += received
            dup_req += s.duplicate_requests
            dup_ent += s.duplicate_entries
        dropped: dict[str, dict[str, int]] = {"entries": {}, "points": {}}
        for (what, _, dest, reason), value in r.drops.items():
            if not self.destinations or dest in self.destinations:
                dropped[what][reason] = dropped[what].get(reason, 0) + value
        accounted = sum(dropped["entries"].values())
        explained = min(missing_total, accounted)
        return {
            "key_id": r.key_id, "instance": r.instance, "relay_version": r.user_agent,
            "first_seen": r.first_seen, "last_seen": r.last_seen,
            "policy_sha256": r.policy, "policy_since": r.policy_since, "policy_changed_at": r.policy_changed_at,
            "newest_data": r.newest_data or None,
            "lag_seconds": round(now - r.newest_data, 3) if r.newest_data else None,
            "sequences_received": received_total,
            "duplicates": {"requests": dup_req, "entries": dup_ent},
            "gaps": {"missing": missing_total, "explained": explained, "unexplained": missing_total - explained,
                     "accounted_by_relay": accounted, "dropped_entries_by_reason": dropped["entries"],
                     "dropped_points_by_reason": dropped["points"]},
            "signals": signals,
        }


def _int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


def _drops(value: str | None) -> list[tuple[str, int, str, str, int]]:
    if not value:
        return []
    try:
        rows = json.loads(value)
        return [(str(w), int(s), str(d), str(r), int(v)) for w, s, d, r, v in rows if w in ("entries", "points")]
    except (ValueError, TypeError):
        return []
