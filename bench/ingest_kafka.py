"""The vendor's side under load: the ingest into a real Kafka broker, and a fleet catching up.

- throughput: signed, zstd-compressed broker-shaped requests posted by concurrent clients to
  the ingest verifying every signature and publishing into Kafka (200 only on Kafka's ack),
  beside the same ingest verifying and writing nothing (--no-store), in the same run;
- catch-up: about 200 simulated relays on loopback, one signing key each, every one with a
  backlog from an outage, drain it through one ingest that accepts at most LIMIT requests/s
  (--rate-limit; above it 429). Each relay starts at a random moment within the first
  seconds and sends at most LIMIT / relays * HEADROOM requests/s (a token bucket, as the
  relay's max_bytes_per_second paces bytes), honouring Retry-After. Reported: the peak
  arrival rate over 1-s windows (against the limit), the 429s, and the time to drain.

Run alone: `python -m bench.ingest_kafka` (prints JSON); `make bench` runs it in bench/run.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.common import CLI, WORK
from bench.common import free_port as _port
from bench.common import get_json as _get
from bench.common import wait as _wait
from relay.compression import compress
from relay.export import sequence
from relay.export.signing import Signer, SigningKey, content_digest, key_id, public_pem

REQUESTS = int(os.environ.get("BENCH_KAFKA_REQUESTS", "300"))
RELAYS = int(os.environ.get("BENCH_CATCHUP_RELAYS", "200"))
BACKLOG = int(os.environ.get("BENCH_CATCHUP_BACKLOG", "10"))  # requests per relay
LIMIT = float(os.environ.get("BENCH_CATCHUP_LIMIT", "200"))  # the ingest's --rate-limit, requests/s
HEADROOM = 0.85  # each relay paces itself to this share of its fair part of the limit
JITTER_S = 5.0


class _Ingest:
    def __init__(self, name: str, trusted: Path, extra: list[str]) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = WORK / f"{name}.log"
        self.p = subprocess.Popen([*CLI, "ingest", "--listen", f"127.0.0.1:{self.port}", "--trusted-keys",
                                   str(trusted), *extra], stdout=subprocess.DEVNULL,
                                  stderr=open(self.log, "wb"))  # noqa: SIM115 - owned by the child
        _wait(lambda: _get(self.url + "/healthz"), 30, name)

    def stats(self) -> Any:
        return _get(self.url + "/stats")

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait(30)


def _keys(n: int, trusted: Path) -> list[Signer]:
    shutil.rmtree(trusted, ignore_errors=True)
    trusted.mkdir(parents=True)
    signers = []
    for _ in range(n):
        private = Ed25519PrivateKey.generate()
        kid = key_id(private.public_key())
        (trusted / f"{kid}.pem").write_text(public_pem(private.public_key()))
        signers.append(Signer([SigningKey(kid, private, trusted / f"{kid}.key")]))
    return signers


def _request(signer: Signer, url: str, body: bytes, instance: str, seq: int) -> dict[str, str]:
    """The headers of one relay request, signed now (a fresh nonce for every attempt)."""
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "zstd",
               "Content-Digest": content_digest(body), "User-Agent": "telemetry-relay/bench",
               **sequence.headers(instance, seq, seq)}
    signer.sign("POST", url, headers)
    return headers


async def _throughput(url: str, signer: Signer, bodies: list[bytes], clients: int = 8) -> float:
    import aiohttp

    target = url + "/v1/metrics"
    signed = [(b, _request(signer, target, b, "bench-throughput", i + 1)) for i, b in enumerate(bodies)]
    queue = list(reversed(signed))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def client() -> None:
            while queue:
                body, headers = queue.pop()
                async with session.post(target, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise SystemExit(f"bench: the ingest answered {r.status}")

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - t0


async def _catch_up(url: str, signers: list[Signer], body: bytes) -> dict[str, Any]:
    import aiohttp

    target = url + "/v1/metrics"
    rate = LIMIT / len(signers) * HEADROOM  # each relay's own pace, requests/s
    arrivals: list[float] = []
    refused = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=len(signers))) as session:

        async def relay(i: int, signer: Signer) -> None:
            nonlocal refused
            await asyncio.sleep(random.uniform(0, JITTER_S))  # the fleet does not all come back at once
            instance = f"bench-relay-{i:04d}"
            seq = 1
            while seq <= BACKLOG:
                sent = time.perf_counter()
                async with session.post(target, data=body, headers=_request(signer, target, body, instance, seq)) as r:
                    await r.read()
                    if r.status == 200:
                        arrivals.append(time.perf_counter())
                        seq += 1
                    elif r.status in (429, 503):
                        refused += 1
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")) * random.uniform(1, 1.5))
                        continue
                    else:
                        raise SystemExit(f"bench: the ingest answered {r.status}")
                # Jittered pacing: on average `rate` requests/s, never bursts at the same instant.
                await asyncio.sleep(max(0.0, random.uniform(0.8, 1.2) / rate - (time.perf_counter() - sent)))

        t0 = time.perf_counter()
        await asyncio.gather(*(relay(i, s) for i, s in enumerate(signers)))
        drain_s = time.perf_counter() - t0
    windows: dict[int, int] = {}
    for a in arrivals:
        windows[int(a - t0)] = windows.get(int(a - t0), 0) + 1
    return {"relays": len(signers), "backlog_requests": BACKLOG, "limit_rps": LIMIT, "relay_rps": rate,
            "drain_s": drain_s, "peak_rps": max(windows.values()), "refused": refused, "accepted": len(arrivals)}


def bench_ingest_kafka() -> dict[str, Any]:
    from bench.workload import otlp_requests, points_per_request
    from tests.kafka.harness import Broker, fetch

    WORK.mkdir(parents=True, exist_ok=True)
    per = points_per_request()
    raw = otlp_requests(20)
    bodies = [compress(raw[i % len(raw)], "zstd") for i in range(REQUESTS)]
    trusted = WORK / "ingest-kafka-trusted"
    (signer,) = _keys(1, trusted)
    workdir = WORK / "ingest-kafka"
    shutil.rmtree(workdir, ignore_errors=True)
    broker = Broker(fetch(), workdir, jolokia=False, exporter=None, heap="1g", name="broker")
    broker.start(timeout=240)
    results: dict[str, Any] = {"requests": REQUESTS, "points_per_request": per}
    try:
        for name, extra in (("nothing", ["--no-store"]),
                            ("kafka", ["--kafka-bootstrap", broker.bootstrap])):
            ingest = _Ingest(f"ingest-{name}", trusted, extra)
            try:
                if name == "kafka":  # the topics made and the producer connected before the clock starts
                    asyncio.run(_throughput(ingest.url, signer, bodies[:4]))
                wall = asyncio.run(_throughput(ingest.url, signer, bodies))
                if ingest.stats()["rejected"]:
                    raise SystemExit(f"bench: the ingest refused requests: {ingest.stats()['rejected']}")
            finally:
                ingest.stop()
            results[name] = {"requests_per_s": REQUESTS / wall, "points_per_s": REQUESTS * per / wall}
        # The catch-up: small requests (one relay's minute of host metrics is a few kB), many relays.
        small = compress(_small_request(), "zstd")
        signers = _keys(RELAYS, trusted)
        ingest = _Ingest("ingest-catchup", trusted, ["--kafka-bootstrap", broker.bootstrap, "--rate-limit",
                                                     str(LIMIT), "--retry-after", "1",
                                                     "--kafka-topic", "metrics=catchup_metrics"])
        try:
            results["catch_up"] = asyncio.run(_catch_up(ingest.url, signers, small))
            _wait(lambda: len(_get(ingest.url + "/fleet.json")["relays"]) >= RELAYS, 60, "the fleet view")
            fleet = _get(ingest.url + "/fleet.json")
            results["catch_up"]["fleet_relays"] = len(fleet["relays"])
            results["catch_up"]["fleet_unexplained"] = fleet["totals"]["gaps_unexplained"]
        finally:
            ingest.stop()
    finally:
        broker.stop()
    return results


def _small_request() -> bytes:
    from relay.otlp import MetricsBuilder

    b = MetricsBuilder({"service.name": "telemetry-relay", "host.name": "bench"}, "telemetry-relay/host")
    now = time.time_ns()
    for i in range(60):
        b.point(b.gauge(f"system.bench.{i}", "1"), float(i), now)
    return bytes(b.finish().SerializeToString())


def rows(k: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures for bench/run.py's table."""
    c = k["catch_up"]
    return [
        {"figure": "ingest into Kafka, verified, 200 on Kafka's ack (requests/s)",
         "value": f"{k['kafka']['requests_per_s']:,.0f}",
         "baseline": f"{k['nothing']['requests_per_s']:,.0f} (same ingest, writing nothing)",
         "ratio": f"{k['kafka']['requests_per_s'] / k['nothing']['requests_per_s']:.2f}x", "target": "-",
         "result": "-"},
        {"figure": "  the same in points/s", "value": f"{k['kafka']['points_per_s']:,.0f}",
         "baseline": f"{k['nothing']['points_per_s']:,.0f} (writing nothing)", "ratio": "-", "target": "-",
         "result": "-"},
        {"figure": f"catch-up: {c['relays']} relays x {c['backlog_requests']} requests: peak arrivals (requests/s)",
         "value": f"{c['peak_rps']:,.0f}", "baseline": f"{c['limit_rps']:,.0f} (the ingest's --rate-limit)",
         "ratio": f"{c['peak_rps'] / c['limit_rps']:.2f}x", "target": "<= the limit",
         "result": "pass" if c["peak_rps"] <= c["limit_rps"] and not c["refused"] else "fail"},
        {"figure": "  the same: time to drain (s) / 429s", "value": f"{c['drain_s']:.1f} / {c['refused']}",
         "baseline": f"{c['relays'] * c['backlog_requests'] / c['limit_rps']:.1f} s at the limit", "ratio": "-",
         "target": "-", "result": "-"},
    ]


if __name__ == "__main__":
    print(json.dumps(bench_ingest_kafka(), indent=2))
