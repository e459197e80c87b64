"""The fleet view's bookkeeping as pure functions: ranges merged and duplicates counted, gaps
found, and a gap explained only as far as the relay's own drop counters account for it."""

from __future__ import annotations

import json

from relay.ingest import kafka as h
from relay.ingest.fleet import SELF_SCOPE, Fleet, add_range, holes, request_facts
from relay.otlp import MetricsBuilder


def test_ranges_merge_and_count_what_came_again() -> None:
    ranges: list[list[int]] = []
    assert add_range(ranges, 1, 3) == 0
    assert add_range(ranges, 7, 9) == 0
    assert add_range(ranges, 4, 5) == 0  # adjoins: merged
    assert ranges == [[1, 5], [7, 9]]
    assert add_range(ranges, 5, 8) == 3  # 5, 7 and 8 again; 6 new
    assert ranges == [[1, 9]]
    assert add_range(ranges, 2, 3) == 2


def test_holes_from_one_or_from_the_lowest_received() -> None:
    assert holes([[3, 4], [7, 7]], floor=1) == [(1, 2), (5, 6)]
    assert holes([[3, 4], [7, 7]], floor=3) == [(5, 6)]
    assert holes([[1, 9]], floor=1) == []


def observe(fleet: Fleet, seq: str, at: float, dropped: list[list[object]] | None = None, **extra: str) -> None:
    headers = {h.H_KEY_ID: "k1", h.H_INSTANCE: "inst-0001", h.H_SEQUENCE: seq, h.H_USER_AGENT: "telemetry-relay/1",
               h.H_POLICY: "a" * 64, **extra}
    if dropped:
        headers[h.H_DROPPED] = json.dumps(dropped)
    fleet.observe("metrics", headers, at)


def test_missing_entries_are_explained_only_up_to_the_entries_the_relay_says_it_dropped() -> None:
    fleet = Fleet()
    observe(fleet, "4-5", 10.0)
    observe(fleet, "8-8", 11.0)
    (row,) = fleet.view(now=12.0)["relays"]
    assert row["gaps"] == {**row["gaps"], "missing": 5, "explained": 0, "unexplained": 5}
    # Cumulative per process: the newest value counts, and a restarted process (a new start time) adds.
    observe(fleet, "9-9", 12.0, [["entries", 100, "vendor", "max_bytes", 2], ["points", 100, "vendor", "max_bytes", 9]])
    observe(fleet, "10-10", 13.0, [["entries", 100, "vendor", "max_bytes", 3]])
    observe(fleet, "11-11", 14.0, [["entries", 200, "vendor", "max_age", 1], ["entries", 200, "other", "max_age", 7]])
    (row,) = fleet.view(now=15.0)["relays"]
    assert row["gaps"]["dropped_entries_by_reason"] == {"max_bytes": 3, "max_age": 8}
    assert row["gaps"]["explained"] == 5 and row["gaps"]["unexplained"] == 0
    # Only the drops of the destination this ingest is: the "other" destination's 7 explain nothing here.
    mine = Fleet(destinations=["vendor"])
    for seq, drops in (("4-5", None), ("8-8", None), ("11-11", [["entries", 200, "vendor", "max_age", 1],
                                                                 ["entries", 200, "other", "max_age", 7]])):
        observe(mine, seq, 1.0, drops)
    (row,) = mine.view()["relays"]
    assert row["gaps"] == {**row["gaps"], "missing": 7, "explained": 1, "unexplained": 6}


def test_duplicates_policy_change_and_lag() -> None:
    fleet = Fleet()
    observe(fleet, "1-3", 10.0, **{h.H_NEWEST: str(9_000_000_000)})
    observe(fleet, "1-3", 11.0)  # a retry after a lost 200
    observe(fleet, "4-4", 20.0, **{h.H_POLICY: "b" * 64})
    (row,) = fleet.view(now=30.0)["relays"]
    assert row["duplicates"] == {"requests": 1, "entries": 3}
    assert row["sequences_received"] == 4 and row["gaps"]["missing"] == 0
    assert row["policy_sha256"] == "b" * 64 and row["policy_changed_at"] == 20.0
    assert row["first_seen"] == 10.0 and row["last_seen"] == 20.0 and row["lag_seconds"] == 21.0


def test_request_facts_reads_the_newest_time_and_the_relays_own_drop_counters() -> None:
    b = MetricsBuilder({"service.name": "r"}, SELF_SCOPE)
    dropped = b.sum("relay.entries.dropped", "{entry}")
    b.point(dropped, 4, 5_000, 1_000, {"destination": "vendor", "reason": "max_bytes"})
    b.point(b.gauge("other", "1"), 1.0, 7_000)
    newest, header = request_facts("metrics", b.finish())
    assert newest == 7_000
    assert json.loads(header or "") == [["entries", 1_000, "vendor", "max_bytes", 4]]
    plain = MetricsBuilder({"service.name": "app"}, "app")
    plain.point(plain.sum("relay.entries.dropped", "{entry}"), 4, 5_000, 1_000, {"reason": "max_bytes"})
    assert request_facts("metrics", plain.finish())[1] is None  # only the relay's own scope counts
