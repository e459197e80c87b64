"""Request sequence numbers against a real relay process: every request names the spool entries
it carries and the spool they come from, a retry and a 413 split keep those numbers, and the
reference ingest stores them with each request."""

from __future__ import annotations

import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

from relay.otlp import MetricsBuilder
from tests.procs import Ingest, Relay, relay_config, wait_until
from tests.vendor import Arrival, Vendor

QUIET = {"host": {"enabled": False}, "internal": {"enabled": False}}


def push(relay: Relay, n: int, name: str = "test.seq") -> None:
    """n OTLP pushes of one numbered point each, every one acknowledged (200) by the relay."""
    for i in range(n):
        b = MetricsBuilder({"service.name": "seq-test"}, "test")
        b.point(b.gauge(name, "1"), float(i), time.time_ns())
        req = urllib.request.Request(relay.otlp_url + "/v1/metrics", data=b.finish().SerializeToString(),
                                     headers={"Content-Type": "application/x-protobuf"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200


def test_a_retry_and_a_413_split_carry_the_same_sequence_numbers(tmp_path: Path) -> None:
    def respond(i: int, a: Arrival) -> tuple[int, dict[str, str], bytes]:
        return {0: (503, {}, b"busy"), 1: (413, {}, b"too large")}.get(i, (200, {}, b""))

    with Vendor(respond) as vendor:
        # A long linger, so the five pushes leave as one batch that a 413 can split.
        cfg = relay_config(tmp_path, vendor.url, sources=QUIET)
        cfg["destinations"][0]["linger"] = "3s"
        relay = Relay(tmp_path, cfg)
        relay.start()
        try:
            push(relay, 5)
            wait_until(lambda: len(vendor.accepted()) >= 2, what="the two halves")
            seqs = [a.headers["X-Relay-Sequence"] for a in vendor.arrivals]
            assert seqs == ["1-5", "1-5", "1-2", "3-5"]
            instance = (tmp_path / "state" / "spool" / "instance-id").read_text().strip()
            assert {a.headers["X-Relay-Instance"] for a in vendor.arrivals} == {instance}
            # Both are signed: an altered range cannot pass the verifier.
            for a in vendor.arrivals:
                assert '"x-relay-sequence" "x-relay-instance"' in a.headers["Signature-Input"]
        finally:
            relay.terminate()


def ranges(ingest: Ingest) -> list[tuple[str, int, int]]:
    return [(r["relay_instance"], *r["sequence"]) for r in ingest.requests()]


def contiguous_from_one(found: list[tuple[str, int, int]]) -> bool:
    expected = 1
    for _, first, last in sorted(found, key=lambda r: r[1]):
        if first != expected:
            return False
        expected = last + 1
    return True


def test_the_ingest_stores_the_range_and_a_wiped_spool_gets_a_new_instance(tmp_path: Path) -> None:
    cfg: dict[str, Any] = relay_config(tmp_path, "http://127.0.0.1:1", sources=QUIET)
    relay = Relay(tmp_path, cfg)
    relay.keys("init")
    trusted = tmp_path / "trusted"
    relay.keys("export", "--out", str(trusted))
    ingest = Ingest(tmp_path, extra=["--trusted-keys", str(trusted)])
    cfg["destinations"][0]["endpoint"] = ingest.url
    relay.write_config(cfg)
    ingest.start()
    try:
        relay.start()
        push(relay, 3)
        wait_until(lambda: sum(r[2] - r[1] + 1 for r in ranges(ingest)) == 3, what="three entries stored")
        relay.terminate()
        # A restart goes on from the persisted numbers, under the same instance.
        relay.start()
        push(relay, 2)
        wait_until(lambda: sum(r[2] - r[1] + 1 for r in ranges(ingest)) == 5, what="five entries stored")
        relay.terminate()
        (instance,) = {r[0] for r in ranges(ingest)}
        assert contiguous_from_one(ranges(ingest)), ranges(ingest)
        assert {r["key_id"] for r in ingest.requests()} == {p.stem for p in trusted.glob("*.pem")}
        # A wiped spool numbers from 1 again, and says so by a new instance.
        shutil.rmtree(tmp_path / "state" / "spool")
        relay.start()
        push(relay, 1)
        wait_until(lambda: len({r[0] for r in ranges(ingest)}) == 2, what="a request from the new spool")
        (new,) = [r for r in ranges(ingest) if r[0] != instance]
        assert new[1:] == (1, 1)
        assert ingest.stats()["rejected"] == {}
    finally:
        relay.terminate()
        ingest.terminate()
