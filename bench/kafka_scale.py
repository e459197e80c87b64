"""`make bench`, Kafka at scale: a real Kafka broker with 2,000 partitions (200 topics of 10,
traffic on all of them), read by a real relay process through each agent in turn.

Figures, all from the same run: MBeans on the broker; per scrape, the series the relay
ships, its CPU seconds and (per run) its peak RSS and USS; beside them the agents' own cost:
Jolokia's response time to the relay's bulk read and the JMX exporter's scrape time (as
the client sees it, and its own jmx_scrape_duration_seconds). The exporter is read twice:
with the relay's default (unmapped series passed through) and with mapped series only.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.common import CLI, DEFAULT_POLICY, WORK, MemorySampler, free_port, wait
from relay import mapping
from relay.sources.jolokia import bulk_request
from tests.kafka.harness import EXPORTER_CONFIGS, Broker, Traffic, fetch

TOPICS, PARTITIONS = 200, 10
MAPPINGS = ["kafka", "kraft", "jvm"]
INTERVAL = 2.0
WINDOW = 30.0  # seconds of scraping measured per agent


def _timed(fn: Any, repeat: int = 7) -> float:
    """Median wall seconds of fn()."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _post(url: str, body: bytes) -> bytes:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return bytes(r.read())


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        return bytes(r.read())


def _self_metric(status: str, name: str) -> float:
    """The sum of one relay self-metric over all its label sets."""
    total = 0.0
    for line in _get(status + "/metrics").decode().splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def _relay_run(ingest_url: str, name: str, sources: dict[str, Any]) -> dict[str, Any]:
    state = WORK / f"kafka-{name}"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    status = f"127.0.0.1:{free_port()}"
    cfg = {"state_dir": str(state), "server": {"listen": status}, "policy": {"file": str(DEFAULT_POLICY)},
           "sources": {"host": {"enabled": False}, "internal": {"enabled": False}, "discovery": {"kafka": False},
                       "otlp": {"listen": f"127.0.0.1:{free_port()}"}, **sources},
           "destinations": [{"name": "ingest", "endpoint": ingest_url}]}
    config = state.parent / f"kafka-{name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    url = "http://" + status
    p = subprocess.Popen([*CLI, "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                         stderr=open(config.with_suffix(".log"), "wb"))  # noqa: SIM115 - the child's
    try:
        proc = psutil.Process(p.pid)
        with MemorySampler(p.pid) as mem:
            wait(lambda: _self_metric(url, "relay_source_runs_total") >= 1, 120, f"the first {name} scrape")
            cpu0, runs0 = sum(proc.cpu_times()[:2]), _self_metric(url, "relay_source_runs_total")
            points0 = _self_metric(url, "relay_points_collected_total")
            time.sleep(WINDOW)  # the measured window: the relay scrapes on its own schedule meanwhile
            cpu1, runs1 = sum(proc.cpu_times()[:2]), _self_metric(url, "relay_source_runs_total")
            points1 = _self_metric(url, "relay_points_collected_total")
            errors = _self_metric(url, "relay_source_errors_total")
        peak = mem.result()
    finally:
        p.terminate()
        p.wait(30)
    runs = max(runs1 - runs0, 1)
    return {"scrapes": int(runs), "series_per_scrape": (points1 - points0) / runs,
            "cpu_s_per_scrape": (cpu1 - cpu0) / runs, "peak_rss_bytes": peak["peak_rss_bytes"],
            "peak_uss_bytes": peak["peak_uss_bytes"], "peak_pss_bytes": peak["peak_pss_bytes"], "source_errors": errors}


def bench_kafka_scale(ingest_url: str) -> dict[str, Any]:
    jars = fetch()
    workdir = WORK / "kafka"
    shutil.rmtree(workdir, ignore_errors=True)
    broker = Broker(jars, workdir, exporter=EXPORTER_CONFIGS["exporter"], heap="1g")
    traffic = Traffic(jars, broker, topics=TOPICS, partitions=PARTITIONS, rate=2000)
    try:
        broker.start(timeout=240)
        t0 = time.perf_counter()
        traffic.start(timeout=900)
        setup_s = time.perf_counter() - t0
        beans = len(json.loads(_post(broker.jolokia_url, b'{"type":"search","mbean":"*:*"}'))["value"])
        body = json.dumps(bulk_request(mapping.load(MAPPINGS))).encode()
        jolokia_s = _timed(lambda: _post(broker.jolokia_url, body))
        exporter_s = _timed(lambda: _get(broker.exporter_url))
        text = _get(broker.exporter_url).decode()
        own = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("jmx_scrape_duration_seconds")]
        exposed = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        jol = {"interval": f"{INTERVAL}s", "targets": [{"url": broker.jolokia_url, "mappings": MAPPINGS}]}
        prom = {"interval": f"{INTERVAL}s", "targets": [{"url": broker.exporter_url, "mappings": MAPPINGS}]}
        runs = {
            "jolokia": _relay_run(ingest_url, "jolokia", {"jolokia": jol}),
            "exporter_mapped": _relay_run(ingest_url, "exporter-mapped",
                                          {"prometheus": {**prom, "passthrough_unmapped": False}}),
            "exporter_default": _relay_run(ingest_url, "exporter-default", {"prometheus": prom}),
        }
    finally:
        if traffic.p is not None:
            traffic.terminate(60)
        broker.stop()
    return {"topics": TOPICS, "partitions": TOPICS * PARTITIONS, "topic_setup_s": setup_s, "mbeans": beans,
            "exporter_series_exposed": exposed, "jolokia_bulk_read_s": jolokia_s, "exporter_scrape_s": exporter_s,
            "exporter_own_scrape_s": own[0] if own else None, "relay": runs}


def rows(k: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures for bench/run.py's table."""
    out = [{"figure": f"Kafka 4.4, {k['partitions']:,} partitions: MBeans / exporter series exposed",
            "value": f"{k['mbeans']:,} / {k['exporter_series_exposed']:,}", "baseline": "-", "ratio": "-",
            "target": "-", "result": "-"}]
    peers = {"jolokia": f"Jolokia bulk read {k['jolokia_bulk_read_s'] * 1000:.0f} ms",
             "exporter_mapped": f"exporter scrape {k['exporter_scrape_s'] * 1000:.0f} ms "
                                f"(own: {(k['exporter_own_scrape_s'] or 0) * 1000:.0f} ms)",
             "exporter_default": "same scrape, unmapped series passed through"}
    for name, r in k["relay"].items():
        out.append({"figure": f"  relay via {name.replace('_', ' ')}: series / CPU ms per scrape / peak memory",
                    "value": f"{r['series_per_scrape']:,.0f} / {r['cpu_s_per_scrape'] * 1000:.0f} / "
                             f"RSS {r['peak_rss_bytes'] / 2**20:.1f} MiB (USS {r['peak_uss_bytes'] / 2**20:.1f})",
                    "baseline": peers[name], "ratio": "-", "target": "-", "result": "-"})
    return out


if __name__ == "__main__":
    from bench.run import Ingest

    WORK.mkdir(parents=True, exist_ok=True)
    ingest = Ingest()
    try:
        result = bench_kafka_scale(ingest.url)
    finally:
        ingest.stop()
    print(json.dumps(result, indent=2))
    Path(WORK / "kafka-scale.json").write_text(json.dumps(result, indent=2) + "\n")
