"""The fault suite: real processes on loopback, a steady stream of numbered points, and at the
end an exact account of what arrived. `make test` runs it small; `make test-faults` runs it
long (FAULT_SCALE=full) and prints the table that docs/reliability.md carries."""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.otlp import parse_request
from tests.faults.harness import (
    Pusher,
    config,
    drained,
    dropped_by_reason,
    finish,
    numbered_request,
    peak_rss,
    record,
    scale,
)
from tests.procs import Ingest, Relay, wait_until
from tests.vendor import Arrival, Vendor


def test_crash_loop(tmp_path: Path) -> None:
    kills = scale(6, 30)
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = config(tmp_path, ingest.url)
    relay = Relay(tmp_path, cfg, name="relay0")
    relay.start()
    pusher = Pusher(relay.otlp_url).start()
    rss = 0
    try:
        for i in range(kills):
            target = len(pusher.acked) + random.randint(50, 600)
            wait_until(lambda t=target: len(pusher.acked) >= t, what="some acknowledged pushes")
            rss = max(rss, peak_rss(relay.pid))
            relay.kill9()
            relay = Relay(tmp_path, cfg, name=f"relay{i + 1}")
            relay.start()
        pusher.stop()
        got = finish(relay, ingest, pusher)
        row = record(f"crash loop: kill -9 x{kills} under load", pusher, got, dropped_by_reason(relay), rss)
    finally:
        pusher.stop()
        relay.terminate()
        ingest.terminate()
    assert row["unexplained"] == 0, f"acknowledged points lost: {sorted(pusher.acked - set(got))[:20]}"
    # Duplicates come only from the batch on the wire at each kill (max_request_bytes 16 KiB).
    assert row["duplicates"] <= kills * 1000


def test_long_outage_drains_oldest_first_at_a_bounded_rate(tmp_path: Path) -> None:
    rate = 64 * 1024
    ingest = Ingest(tmp_path)
    cfg = config(tmp_path, ingest.url, max_bytes_per_second=rate, in_flight=1,
                 retry={"initial_backoff": "100ms", "max_backoff": "200ms"})
    relay = Relay(tmp_path, cfg)
    relay.start()
    pusher = Pusher(relay.otlp_url, per_request=200, period=0.005).start()
    try:
        wait_until(lambda: len(pusher.acked) >= scale(20_000, 400_000), timeout=300, what="a backlog")
        pusher.stop()
        backlog = relay.destination()["backlog_bytes"]
        ingest.start()
        t0 = time.monotonic()
        shipped0 = relay.destination()["shipped_bytes"]
        got = finish(relay, ingest, pusher, timeout=600)
        elapsed = time.monotonic() - t0
        wire = relay.destination()["shipped_bytes"] - shipped0
        order = []
        for f in sorted(ingest.store.glob("metrics-*.jsonl")):
            for line in f.read_text().splitlines():
                for rm in json.loads(line)["request"]["resourceMetrics"]:
                    for sm in rm["scopeMetrics"]:
                        for m in sm["metrics"]:
                            order.append(int(m["gauge"]["dataPoints"][0]["asInt"]))
        row = record("long outage, drain capped at 64 KiB/s", pusher, got, dropped_by_reason(relay),
                     peak_rss(relay.pid), drain_seconds=round(elapsed, 1))
    finally:
        pusher.stop()
        relay.terminate()
        ingest.terminate()
    assert row["unexplained"] == 0 and backlog > 0
    assert order == sorted(order), "the backlog leaves oldest first"
    # The cap holds: the compressed bytes sent could not have left faster (one batch of slack).
    assert wire / rate - 1.0 <= elapsed, (wire, elapsed)


def test_sigterm_while_the_vendor_is_down_loses_nothing(tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    cfg = config(tmp_path, ingest.url)
    relay = Relay(tmp_path, cfg, name="relay-a")
    relay.start()
    pusher = Pusher(relay.otlp_url).start()
    try:
        wait_until(lambda: len(pusher.acked) >= scale(2_000, 50_000), timeout=300, what="acknowledged pushes")
        pusher.stop()
        assert relay.terminate() == 0
        ingest.start()
        relay = Relay(tmp_path, cfg, name="relay-b")
        relay.start()
        got = finish(relay, ingest, pusher)
        row = record("SIGTERM during a vendor outage, restart later", pusher, got, dropped_by_reason(relay),
                     peak_rss(relay.pid))
    finally:
        pusher.stop()
        relay.terminate()
        ingest.terminate()
    assert row["unexplained"] == 0 and row["duplicates"] == 0


def test_corrupt_spool_is_quarantined_and_the_readable_part_kept(tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    cfg = config(tmp_path, ingest.url)
    relay = Relay(tmp_path, cfg, name="before")
    relay.start()
    pusher = Pusher(relay.otlp_url).start()
    try:
        wait_until(lambda: len(pusher.acked) >= scale(20_000, 200_000), timeout=120, what="a spooled backlog")
        pusher.stop()
        assert relay.terminate() == 0
        db = Path(cfg["state_dir"]) / "spool" / "metrics" / "cache.db"
        size = db.stat().st_size
        with open(db, "r+b") as f:  # garble a stretch in the middle, then cut off the tail
            f.seek(size * 2 // 5)
            f.write(os.urandom(4096))
            f.truncate(size * 9 // 10)
        relay = Relay(tmp_path, cfg, name="after")
        relay.start()
        q = wait_until(lambda: relay.status()["spool"]["quarantined"], what="the quarantine report")[0]
        assert q["bytes"] > 0 and Path(q["path"]).exists() and "metrics" in q["path"]
        ingest.start()
        got = finish(relay, ingest, pusher)
        # What was on the damaged pages is in the quarantine, reported; the rest must arrive.
        damaged = len(pusher.acked - set(got))
        row = record("corrupt spool: garbled and truncated while stopped", pusher, got,
                     {**dropped_by_reason(relay), "damaged (quarantined)": damaged}, peak_rss(relay.pid),
                     recovered_entries=q["recovered_entries"])
        # And it goes on: new data flows normally.
        p2 = Pusher(relay.otlp_url).start()
        wait_until(lambda: len(p2.acked) >= 200, what="new pushes accepted")
        p2.stop()
    finally:
        pusher.stop()
        relay.terminate()
        ingest.terminate()
    assert q["recovered_entries"] > 0 and row["delivered"] > row["acknowledged"] / 2, "the readable part is kept"
    assert "Traceback" not in relay.log()


def test_slow_and_flaky_vendor(tmp_path: Path) -> None:
    rng = random.Random(7)
    retry_after_at: list[float] = []

    def respond(i: int, a: Arrival) -> tuple[int, dict[str, str], bytes]:
        roll = rng.random()
        if roll < 0.15:
            retry_after_at.append(a.time)
            return 503, {"Retry-After": "1"}, b"busy"
        if roll < 0.25:
            return 429, {}, b"slow down"
        if roll < 0.35:
            return -1, {}, b""  # connection reset
        if roll < 0.45:
            return 2200, {}, b""  # 200 after 0.2 s
        return 200, {}, b""

    with Vendor(respond) as vendor:
        cfg = config(tmp_path, vendor.url, timeout="2s")
        relay = Relay(tmp_path, cfg)
        relay.start()
        pusher = Pusher(relay.otlp_url).start()
        try:
            wait_until(lambda: len(pusher.acked) >= scale(3_000, 60_000), timeout=300, what="pushes")
            pusher.stop()
            wait_until(lambda: drained(relay), timeout=120, what="everything through the flaky vendor")
            got = vendor_numbers(vendor)
            row = record("slow and flaky vendor (503+Retry-After, 429, resets, slow)", pusher, got,
                         dropped_by_reason(relay), peak_rss(relay.pid))
            # Retry-After honoured: nothing came within 1 s after a 503 that asked for it.
            times = [a.time for a in vendor.arrivals]
            for t in retry_after_at[:-1]:
                following = [x for x in times if x > t]
                assert not following or following[0] - t >= 0.95
        finally:
            pusher.stop()
            relay.terminate()
    assert row["unexplained"] == 0, row
    assert row["peak_rss_mib"] < 200


@settings(max_examples=scale(150, 2000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(st.binary(max_size=2048),
                      st.builds(lambda b, cut: b[:cut], st.just(numbered_request(0, 5)), st.integers(0, 400)),
                      st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
                                   lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c,
                                                                                       max_size=4),
                                   max_leaves=20).map(lambda d: json.dumps({"resourceMetrics": d}).encode())))
def test_hostile_input_to_the_parsers(body: bytes) -> None:
    """Fuzz what parses untrusted input: OTLP protobuf and JSON, Prometheus text, Jolokia answers.
    Only their documented errors may come out; nothing hangs (hypothesis' deadline is off, the
    suite's timeout is the bound)."""
    from google.protobuf.message import DecodeError

    from relay.otlp import BadJson, from_json
    from relay.sources import jolokia, prometheus

    try:
        parse_request("metrics", body)
    except DecodeError:
        pass
    try:
        from_json("metrics", body)
    except BadJson:
        pass
    try:
        prometheus.map_exposition(body.decode("utf-8", "replace"), False, None, {})
    except prometheus.ExpositionError:
        pass
    maps = _MAPS
    try:
        data = json.loads(body)
    except ValueError:
        return
    try:
        jolokia.map_response(jolokia.bulk_request(maps)[: len(data) if isinstance(data, list) else 1], data, maps, {})
    except jolokia.JolokiaError:
        pass


_MAPS = __import__("relay.mapping", fromlist=["load"]).load(["kafka", "jvm"])


def test_hostile_input_to_a_running_receiver(tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    ingest.start()
    relay = Relay(tmp_path, config(tmp_path, ingest.url))
    relay.start()
    import urllib.error
    import urllib.request

    rng = random.Random(11)
    sent = scale(300, 5000)
    try:
        for _ in range(sent):
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 600)))
            ctype = rng.choice(["application/x-protobuf", "application/json"])
            enc = rng.choice([None, "gzip", "zstd"])
            headers = {"Content-Type": ctype, **({"Content-Encoding": enc} if enc else {})}
            req = urllib.request.Request(relay.otlp_url + rng.choice(["/v1/metrics", "/v1/logs", "/v1/traces"]),
                                         data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    assert r.status == 200
            except urllib.error.HTTPError as e:
                assert e.code in (400, 413, 415), e.code
        rejected = sum(sum(s["rejected"].values()) for s in relay.status()["receivers"][0]["signals"].values())
        assert rejected >= sent * 0.9
        assert relay.alive() and relay.readyz()[0] == 200
        record(f"hostile input: {sent} random bodies to the receiver", None, Counter(), dropped_by_reason(relay),
               peak_rss(relay.pid), rejected=rejected)
    finally:
        relay.terminate()
        ingest.terminate()
    assert "Traceback" not in relay.log()


def vendor_numbers(vendor: Vendor) -> Counter[int]:
    got: Counter[int] = Counter()
    for a in vendor.accepted():
        req = parse_request("metrics", a.body)
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    got.update(dp.as_int for dp in m.gauge.data_points)
    return got


def test_backpressure_answers_503_instead_of_losing_data(tmp_path: Path) -> None:
    slow = {"on": True}

    def respond(i: int, a: Arrival) -> tuple[int, dict[str, str], bytes]:
        return (5200, {}, b"") if slow["on"] else (200, {}, b"")  # 200 after 0.5 s while slow

    with Vendor(respond) as vendor:
        cfg = config(tmp_path, vendor.url)
        cfg["spool"] = {"max_bytes": "1MiB"}
        relay = Relay(tmp_path, cfg)
        relay.start()
        pushers = [Pusher(relay.otlp_url, per_request=200, period=0.0, start_at=i * 10**9).start() for i in range(3)]
        try:
            wait_until(lambda: sum(p.answers[503] for p in pushers) >= 20, timeout=120, what="503 backpressure")
            for p in pushers:
                p.stop()
            rss = peak_rss(relay.pid)
            assert relay.status()["spool"]["dropped_points"] == {}, "block never evicts acknowledged data"
            assert relay.status()["spool"]["bytes"] <= 1 << 20
            slow["on"] = False
            wait_until(lambda: drained(relay), timeout=120, what="the backlog to drain")
            got = vendor_numbers(vendor)
        finally:
            for p in pushers:
                p.stop()
            relay.terminate()
    acked = set().union(*(p.acked for p in pushers))
    merged = Pusher("")
    merged.acked, merged.sent = acked, sum(p.sent for p in pushers)
    row = record("backpressure: 3 clients flat out, 1 MiB spool, slow vendor", merged, got, {}, rss,
                 answers_503=sum(p.answers[503] for p in pushers))
    assert row["unexplained"] == 0
    assert rss < 200 * 2**20, "memory stays bounded under backpressure (bound: 200 MiB)"
