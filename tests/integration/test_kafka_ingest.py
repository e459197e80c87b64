"""The vendor's side at scale, against a real Kafka broker (tests/kafka/harness.py): relays ship
through the ingest into Kafka, a consumer and the OpenTelemetry Collector's own Kafka receiver
read the topics back, the ingest killed or Kafka stopped loses nothing, and /fleet tells
duplicates and explained gaps from unexplained ones."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.otlp import MetricsBuilder, parse_request
from tests import otelcol
from tests.forwarder import Forwarder
from tests.kafka.harness import Broker, Jars
from tests.procs import Ingest, Proc, Relay, get_json, port_open, relay_config, wait_until

QUIET = {"host": {"enabled": False}, "internal": {"enabled": False}}


@pytest.fixture(scope="module")
def broker(kafka_jars: Jars, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(kafka_jars, tmp_path_factory.mktemp("kafka-ingest"), jolokia=False, exporter=None, node_id=21,
               name="ingest-kafka")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def restart(broker: Broker) -> None:
    """Start a stopped broker again on its port and data (no new format)."""
    started = broker.log().count("Kafka Server started")
    Proc.start(broker)
    wait_until(lambda: broker.log().count("Kafka Server started") > started and port_open(broker.port),
               timeout=120, interval=0.25, what=f"the broker back; log:\n{broker.log()[-3000:]}")


def topics(prefix: str) -> list[str]:
    return [a for s in ("metrics", "logs", "traces") for a in ("--kafka-topic", f"{s}={prefix}_{s}")]


def records(broker: Broker, topic: str) -> list[Any]:
    """Every record of a topic, from the beginning (a consumer of our own, no group commits)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"check-{time.monotonic_ns()}",
                  "enable.auto.commit": False})
    try:
        meta = c.list_topics(topic, timeout=30).topics[topic]
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        ends = {p.partition: c.get_watermark_offsets(p, timeout=30)[1] for p in parts}
        c.assign(parts)
        out: list[Any] = []
        done = {p: 0 for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + 30
        while any(done[p] < ends[p] for p in done) and time.monotonic() < deadline:
            for m in c.consume(500, timeout=0.5):
                if not m.error():
                    out.append(m)
                    done[m.partition()] = m.offset() + 1
        return out
    finally:
        c.close()


def values_of(msgs: list[Any], name: str) -> list[float]:
    """The gauge values of metric `name` in the records (OTLP protobuf values)."""
    out = []
    for m in msgs:
        req = parse_request("metrics", m.value())
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        out.extend(p.as_double for p in metric.gauge.data_points)
    return out


def push(relay: Relay, values: range, name: str, pad: int = 0) -> None:
    """One OTLP push per value, each acknowledged (200) by the relay."""
    for i in values:
        # Random padding: the spool counts bytes as stored, compressed, and "x" * pad would vanish.
        b = MetricsBuilder({"service.name": "kafka-ingest-test", "pad": os.urandom(pad // 2).hex()}, "test")
        b.point(b.gauge(name, "1"), float(i), time.time_ns())
        req = urllib.request.Request(relay.otlp_url + "/v1/metrics", data=b.finish().SerializeToString(),
                                     headers={"Content-Type": "application/x-protobuf"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200


def new_relay(tmp_path: Path, name: str, endpoint: str, trusted: Path, **overrides: Any) -> Relay:
    workdir = tmp_path / name
    workdir.mkdir()
    cfg = relay_config(workdir, endpoint, sources=overrides.pop("sources", QUIET), **overrides)
    relay = Relay(workdir, cfg)
    relay.keys("init")
    relay.keys("export", "--out", str(trusted))
    return relay


def key_of(relay: Relay) -> str:
    return re.search(r"key id (\S+)", relay.keys("show")).group(1)  # type: ignore[union-attr]


def instance_of(relay: Relay) -> str:
    return (relay.workdir / "state" / "spool" / "instance-id").read_text().strip()


def fleet(ingest: Ingest) -> dict[str, Any]:
    return dict(get_json(ingest.url + "/fleet.json")[1])


def fleet_row(ingest: Ingest, key: str) -> dict[str, Any]:
    return next(r for r in fleet(ingest)["relays"] if r["key_id"] == key)


def kafka_ingest(tmp_path: Path, broker: Broker, trusted: Path, prefix: str | None, name: str = "ingest",
                 port: int | None = None) -> Ingest:
    extra = ["--trusted-keys", str(trusted), "--kafka-bootstrap", broker.bootstrap, "--kafka-timeout", "5",
             "--retry-after", "1", *(topics(prefix) if prefix else [])]
    return Ingest(tmp_path, port=port, extra=extra, name=name)


COLLECTOR = """\
receivers:
  kafka:
    brokers: ["{bootstrap}"]
    group_id: relay-collector-check
    initial_offset: earliest
exporters:
  otlp_http:
    endpoint: {endpoint}
    compression: none
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    metrics:
      receivers: [kafka]
      exporters: [otlp_http]
"""


def test_relays_ship_through_the_ingest_into_kafka_once_each_keyed_and_a_collector_reads_it(
        tmp_path: Path, broker: Broker) -> None:
    trusted = tmp_path / "trusted"
    relays = [new_relay(tmp_path, f"relay{i}", "http://127.0.0.1:1", trusted) for i in range(2)]
    ingest = kafka_ingest(tmp_path, broker, trusted, prefix=None)  # the receiver's default topics
    ingest.start()
    collector_out = Ingest(tmp_path, name="collector-out")  # where the collector delivers what it read
    collector_out.start()
    collector: Proc | None = None
    try:
        for i, relay in enumerate(relays):
            relay.cfg["destinations"][0]["endpoint"] = ingest.url
            relay.write_config(relay.cfg)
            relay.start()
            push(relay, range(30), f"kafka.test.r{i}")
        for i, relay in enumerate(relays):
            wait_until(lambda r=relay: r.destination()["shipped_points"] >= 30, timeout=30, what=f"relay{i} shipped")
        msgs = records(broker, "otlp_metrics")
        store = {r["key_id"]: r for r in ingest.requests()}
        for i, relay in enumerate(relays):
            key, instance = key_of(relay), instance_of(relay)
            mine = [m for m in msgs if m.key() == key.encode()]
            assert sorted(values_of(mine, f"kafka.test.r{i}")) == [float(v) for v in range(30)]  # each exactly once
            assert len({m.partition() for m in mine}) == 1  # keyed by relay: one partition, in order
            seqs = []
            for m in mine:
                h = {k: v.decode() for k, v in m.headers()}
                assert h["relay.key_id"] == key and h["relay.instance"] == instance
                assert h["relay.policy_sha256"] == store[key]["policy_sha256"] and len(h["relay.policy_sha256"]) == 64
                assert h["relay.user_agent"].startswith("telemetry-relay/")
                first, last = map(int, h["relay.sequence"].split("-"))
                seqs.append((first, last))
            assert sorted(seqs)[0][0] == 1 and sum(b - a + 1 for a, b in seqs) == 30  # contiguous, no repeat
            row = wait_until(lambda k=key: fleet_row(ingest, k)["sequences_received"] == 30 and fleet_row(ingest, k),
                             what="the fleet view from Kafka")
            assert row["duplicates"]["requests"] == 0 and row["gaps"]["missing"] == 0
        assert ingest.stats()["kafka"]["failed"] == 0

        # The OpenTelemetry Collector's Kafka receiver, default topics and otlp_proto encoding, reads the same.
        binary = otelcol.binary()
        if binary is None:
            pytest.skip("no Go toolchain to build the test collector (tests/otelcol)")
        config = tmp_path / "otelcol.yaml"
        config.write_text(COLLECTOR.format(bootstrap=broker.bootstrap, endpoint=collector_out.url))
        collector = Proc([str(binary), "--config", str(config)], tmp_path / "otelcol.log")
        collector.start()

        def read_by_collector(i: int) -> list[float]:
            return [p["asDouble"] for r in collector_out.requests() for rm in r["request"]["resourceMetrics"]
                    for sm in rm["scopeMetrics"] for m in sm["metrics"] if m["name"] == f"kafka.test.r{i}"
                    for p in m["gauge"]["dataPoints"]]

        for i in range(2):
            wait_until(lambda i=i: len(read_by_collector(i)) >= 30, timeout=90,
                       what=f"the collector to read relay{i}'s points (its log: {collector.log_path})")
            assert sorted(read_by_collector(i)) == [float(v) for v in range(30)]
    finally:
        if collector is not None:
            collector.terminate()
        for relay in relays:
            relay.terminate()
        ingest.terminate()
        collector_out.terminate()


def test_ingest_killed_mid_stream_loses_nothing_and_fleet_reports_the_duplicates(tmp_path: Path,
                                                                                broker: Broker) -> None:
    trusted = tmp_path / "trusted"
    relay = new_relay(tmp_path, "relay", "http://127.0.0.1:1", trusted)
    ingest = kafka_ingest(tmp_path, broker, trusted, prefix="kill")
    # One answer lost on its way back (a lost 200), so there is always a retry of data Kafka has.
    with Forwarder(ingest.url, decide=lambda i, path, h: "lose_answer" if i == 3 else "forward") as hop:
        relay.cfg["destinations"][0].update(endpoint=hop.url, in_flight=2, linger="0s")
        relay.write_config(relay.cfg)
        ingest.start()
        relay.start()
        stop, pushed = threading.Event(), [0]

        def stream() -> None:  # a steady stream of pushes, paced, until told to stop
            while not stop.is_set():
                push(relay, range(pushed[0], pushed[0] + 1), "kafka.test.kill")
                pushed[0] += 1
                stop.wait(0.02)

        pusher = threading.Thread(target=stream)
        pusher.start()
        try:
            for _ in range(2):  # kill -9 twice while requests stream through, restart at once
                seen = len(hop.seen)
                wait_until(lambda s=seen: len(hop.seen) >= s + 5, timeout=30, what="requests flowing")
                ingest.kill9()
                ingest.start()
            seen = len(hop.seen)
            wait_until(lambda s=seen: len(hop.seen) >= s + 3, timeout=30, what="requests flowing again")
            stop.set()
            pusher.join(30)
            total = pushed[0]
            wait_until(lambda: relay.destination()["shipped_points"] >= total, timeout=60, what="all shipped")
            msgs = records(broker, "kill_metrics")
            got = values_of(msgs, "kafka.test.kill")
            assert set(got) == {float(v) for v in range(total)}  # nothing lost
            entries: dict[int, int] = {}
            for m in msgs:
                first, last = map(int, dict(m.headers())["relay.sequence"].decode().split("-"))
                for seq in range(first, last + 1):
                    entries[seq] = entries.get(seq, 0) + 1
            duplicated = sum(n - 1 for n in entries.values())
            assert duplicated >= 1  # the lost 200 at least
            # The restarted ingest read them back from Kafka: every duplicate is on /fleet.
            row = wait_until(lambda: fleet_row(ingest, key_of(relay))["duplicates"]["entries"] == duplicated
                             and fleet_row(ingest, key_of(relay)), what="duplicates on /fleet")
            assert row["duplicates"]["requests"] >= 1
            assert row["gaps"]["missing"] == 0 and row["sequences_received"] == len(entries)
        finally:
            stop.set()
            pusher.join(10)
            relay.terminate()
            ingest.terminate()


def test_kafka_stopped_gets_503_the_relay_keeps_its_backlog_and_resumes_without_loss(tmp_path: Path,
                                                                                      broker: Broker) -> None:
    trusted = tmp_path / "trusted"
    relay = new_relay(tmp_path, "relay", "http://127.0.0.1:1", trusted)
    ingest = kafka_ingest(tmp_path, broker, trusted, prefix="outage")
    relay.cfg["destinations"][0]["endpoint"] = ingest.url
    relay.write_config(relay.cfg)
    ingest.start()
    relay.start()
    try:
        push(relay, range(10), "kafka.test.outage")
        wait_until(lambda: relay.destination()["shipped_points"] >= 10, timeout=30, what="the first ten shipped")
        broker.stop()
        try:
            push(relay, range(10, 30), "kafka.test.outage")
            wait_until(lambda: ingest.stats()["unavailable"].get("kafka", 0) >= 2, timeout=60,
                       what="503s while Kafka is down")
            assert relay.destination()["shipped_points"] == 10  # kept, not shipped
            assert ingest.stats()["signals"]["metrics"]["items"] == 10  # and the ingest stored none of them
        finally:
            restart(broker)
        wait_until(lambda: relay.destination()["shipped_points"] >= 30, timeout=90, what="the backlog drained")
        got = values_of(records(broker, "outage_metrics"), "kafka.test.outage")
        assert sorted(got) == [float(v) for v in range(30)]  # resumed without loss, and once each
    finally:
        relay.terminate()
        ingest.terminate()


def test_gaps_evicted_by_max_bytes_are_explained_and_a_request_lost_in_transit_is_not(
        tmp_path: Path, broker: Broker) -> None:
    trusted = tmp_path / "trusted"
    # Relay "full": nowhere to send at first, a 1 MiB spool that evicts the oldest; its self-metrics on.
    full = new_relay(tmp_path, "full", "http://127.0.0.1:1", trusted,
                     sources={"host": {"enabled": False}, "internal": {"interval": "500ms"}},
                     spool={"max_bytes": "1MiB", "when_full": "drop_oldest"})
    # Relay "lossy": its third request is answered 200 by the hop and never reaches the ingest.
    lossy = new_relay(tmp_path, "lossy", "http://127.0.0.1:1", trusted)
    ingest = kafka_ingest(tmp_path, broker, trusted, prefix="gaps")
    ingest.start()
    with Forwarder(ingest.url, decide=lambda i, path, h: "swallow" if i == 2 else "forward") as hop:
        try:
            full.start()
            push(full, range(40), "kafka.test.full", pad=60_000)  # ~2.4 MB into a 1 MiB spool
            wait_until(lambda: full.metric("relay_entries_dropped_total", reason="max_bytes") > 0,
                       what="eviction by max_bytes")
            full.cfg["destinations"][0]["endpoint"] = ingest.url
            full.write_config(full.cfg)
            full.signal(signal.SIGHUP)
            lossy.cfg["destinations"][0].update(endpoint=hop.url, linger="0s")
            lossy.write_config(lossy.cfg)
            lossy.start()
            for v in range(6):
                push(lossy, range(v, v + 1), "kafka.test.lossy")
                wait_until(lambda n=v: lossy.destination()["shipped_points"] >= n + 1, what="one request each")
            dropped = full.metric("relay_entries_dropped_total", reason="max_bytes")

            def settled(key: str) -> dict[str, Any] | None:
                row = fleet_row(ingest, key)
                return row if row["gaps"]["missing"] and not row["gaps"]["unexplained"] else None

            row = wait_until(lambda: settled(key_of(full)), timeout=30, what="the evicted gap explained")
            assert row["gaps"]["explained"] == row["gaps"]["missing"]
            assert row["gaps"]["dropped_entries_by_reason"].get("max_bytes", 0) >= dropped
            assert row["signals"]["metrics"]["gaps"][0][0] == 1  # the oldest went first

            swallowed = [seq for _, seq, action in hop.seen if action == "swallow"]
            first, last = map(int, swallowed[0].split("-"))
            row = wait_until(lambda: fleet_row(ingest, key_of(lossy))["sequences_received"] == 6 - (last - first + 1)
                             and fleet_row(ingest, key_of(lossy)), what="the lossy relay's requests")
            assert row["gaps"] == {**row["gaps"], "missing": last - first + 1, "explained": 0,
                                   "unexplained": last - first + 1}
            assert row["signals"]["metrics"]["gaps"] == [[first, last]]
        finally:
            full.terminate()
            lossy.terminate()
            ingest.terminate()


def test_fleet_json_names_version_policy_and_lag(tmp_path: Path, broker: Broker) -> None:
    trusted = tmp_path / "trusted"
    relay = new_relay(tmp_path, "relay", "http://127.0.0.1:1", trusted)
    ingest = kafka_ingest(tmp_path, broker, trusted, prefix="fleetjson")
    relay.cfg["destinations"][0]["endpoint"] = ingest.url
    relay.write_config(relay.cfg)
    ingest.start()
    relay.start()
    try:
        push(relay, range(3), "kafka.test.fleet")
        row = wait_until(lambda: fleet_row(ingest, key_of(relay))["sequences_received"] == 3
                         and fleet_row(ingest, key_of(relay)), what="the relay on /fleet")
        assert row["relay_version"].startswith("telemetry-relay/") and row["instance"] == instance_of(relay)
        assert row["first_seen"] <= row["last_seen"] <= time.time()
        assert len(row["policy_sha256"]) == 64 and row["policy_changed_at"] is None
        assert 0 <= row["lag_seconds"] < 60
        status, body = get_json(ingest.url + "/fleet")  # JSON unless a browser asks for the page
        assert status == 200 and body["source"] == "kafka"
        json.dumps(body)
    finally:
        relay.terminate()
        ingest.terminate()
