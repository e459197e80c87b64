"""The processes of bench/prom_agent.py: Prometheus in agent mode and its receiving Prometheus,
node_exporter, the relay and its reference ingest, each started on free loopback ports in
its own directory under bench/work/prom-agent, and what each receiver holds of the sequence target.

Every peer is a real binary run as an operator would: Debian's `prometheus` (2.42) with
`--enable-feature=agent` and remote_write, a second `prometheus` with
`--web.enable-remote-write-receiver`, `prometheus-node-exporter`, `python -m relay.cli run` and
`python -m relay.cli ingest --store`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.common import CLI, DEFAULT_POLICY, free_port, get_json, wait
from bench.prom_agent_serve import PAD_PREFIX, SEQ_METRIC

PROMETHEUS = "prometheus"
NODE_EXPORTER = "prometheus-node-exporter"
TARGETS = ("kafka", "node", "seq")
# The mappings discovery gives a combined KRaft broker+controller (relay/sources/discovery.py).
KAFKA_MAPPINGS = ["kafka", "kraft", "jvm"]


class Proc:
    """One child process, restartable on the same command (same state directory)."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.args, self.log, self.env = name, args, log, env
        self.p: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.p = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                      env={**os.environ, **(self.env or {})})

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def ps(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def kill9(self) -> None:
        assert self.p is not None
        os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(30)

    def stop(self) -> None:
        if self.p is None or self.p.poll() is not None:
            return
        self.p.terminate()
        try:
            self.p.wait(60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)


def node_exporter(work: Path) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc("node_exporter", [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
                work / "node_exporter.log")
    proc.start()
    url = f"http://127.0.0.1:{port}/metrics"
    wait(lambda: _ok(url), 30, "node_exporter")
    return proc, url


def _ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        r.read()
        return bool(r.status == 200)


class Receiver:
    """The receiving Prometheus (remote-write receiver, its own TSDB)."""

    def __init__(self, work: Path) -> None:
        d = work / "receiver"
        d.mkdir(parents=True, exist_ok=True)
        (d / "prometheus.yml").write_text("global: {}\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = Proc("receiving prometheus", [
            PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'tsdb'}",
            "--web.enable-remote-write-receiver", f"--web.listen-address=127.0.0.1:{self.port}",
        ], work / "receiver.log")

    def start(self) -> None:
        self.proc.start()
        wait(lambda: _ok(self.url + "/-/ready"), 60, "the receiving Prometheus")

    def _query(self, q: str) -> list[Any]:
        doc = get_json(self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": q}))
        return list(doc["data"]["result"])

    def found(self) -> tuple[list[float], int]:
        """Every bench_scrape_seq value stored (raw samples), and the number of pad samples."""
        seqs = [float(v) for s in self._query(f"{SEQ_METRIC}[6h]") for _, v in s["values"]]
        # Raw samples, not count_over_time: that drops the metric name and the pads would collide.
        pads = sum(len(s["values"]) for s in self._query(f'{{__name__=~"{PAD_PREFIX}.*"}}[6h]'))
        return seqs, pads

    def metric(self, name: str) -> float:
        return _metric_sum(self.url + "/metrics", name)


def _metric_sum(url: str, name: str) -> float:
    """The sum of one metric over its label sets in a Prometheus exposition."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class PromAgent:
    """Prometheus in agent mode: scrapes the front's /prom/* paths, remote-writes to `write_url`."""

    def __init__(self, work: Path, front_port: int, write_url: str, interval: int) -> None:
        d = work / "prom-agent"
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d / "data"
        cfg = {"global": {"scrape_interval": f"{interval}s", "scrape_timeout": f"{interval}s"},
               "scrape_configs": [{"job_name": t, "metrics_path": f"/prom/{t}",
                                   "static_configs": [{"targets": [f"127.0.0.1:{front_port}"]}]} for t in TARGETS],
               "remote_write": [{"url": write_url}]}
        (d / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = Proc("prometheus agent", [
            PROMETHEUS, "--enable-feature=agent", f"--config.file={d / 'prometheus.yml'}",
            f"--storage.agent.path={self.dir}", f"--web.listen-address=127.0.0.1:{self.port}",
        ], work / "prom-agent.log")

    def start(self) -> None:
        self.proc.start()
        wait(lambda: _ok(self.url + "/-/ready"), 60, "the Prometheus agent")

    def counters(self) -> dict[str, float]:
        """Its own counters (reset by a restart): samples appended, sent, bytes sent."""
        url = self.url + "/metrics"
        return {"samples_appended": _metric_sum(url, "prometheus_agent_samples_appended_total"),
                "remote_samples_sent": _metric_sum(url, "prometheus_remote_storage_samples_total"),
                "remote_bytes_sent": _metric_sum(url, "prometheus_remote_storage_bytes_total")}


class Ingest:
    """The reference ingest, storing what it accepts as JSON lines (to find the sequence target)."""

    def __init__(self, work: Path) -> None:
        self.store = work / "ingest-store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = Proc("ingest", [*CLI, "ingest", "--listen", f"127.0.0.1:{self.port}", "--store",
                                    str(self.store)], work / "ingest.log")
        self._offsets: dict[Path, int] = {}
        self._seqs: list[float] = []
        self._pads = 0

    def start(self) -> None:
        self.proc.start()
        wait(lambda: get_json(self.url + "/healthz"), 30, "the ingest")

    def found(self) -> tuple[list[float], int]:
        """Every bench_scrape_seq point stored, repeats included, and the number of pad points.
        Reads only what was appended since the last call; a line is decoded only if it names the target."""
        for path in sorted(self.store.glob("metrics-*.jsonl")):
            with open(path, "rb") as f:
                f.seek(self._offsets.get(path, 0))
                while (line := f.readline()).endswith(b"\n"):
                    self._offsets[path] = f.tell()
                    if SEQ_METRIC.encode() in line:
                        self._take(json.loads(line)["request"])
        return list(self._seqs), self._pads

    def _take(self, request: dict[str, Any]) -> None:
        for rm in request.get("resourceMetrics", []):
            for sm in rm.get("scopeMetrics", []):
                for m in sm.get("metrics", []):
                    name = m.get("name", "")
                    points = m.get("gauge", {}).get("dataPoints", [])
                    if name == SEQ_METRIC:
                        self._seqs += [float(p.get("asDouble", p.get("asInt", 0))) for p in points]
                    elif name.startswith(PAD_PREFIX):
                        self._pads += len(points)


class Relay:
    """A relay process with one prometheus source scraping the front's /relay/* paths: the
    shipped default policy, signing and an fsynced spool on (the defaults), to `endpoint`."""

    def __init__(self, work: Path, front_port: int, endpoint: str, interval: int) -> None:
        d = work / "relay"
        d.mkdir(parents=True, exist_ok=True)
        self.state = d / "state"
        self.status = f"http://127.0.0.1:{free_port()}"
        base = f"http://127.0.0.1:{front_port}/relay"
        cfg = {
            "state_dir": str(self.state), "log_level": "warning",
            "server": {"listen": self.status.removeprefix("http://")},
            "policy": {"file": str(DEFAULT_POLICY)},
            # The same scrape work as the agent, nothing else: no host source, no self-metrics
            # source, no discovery (it would find the broker and read it a second time), no OTLP.
            "sources": {"host": {"enabled": False}, "internal": {"enabled": False}, "discovery": {"kafka": False},
                        "otlp": {"enabled": False},
                        "prometheus": {"interval": f"{interval}s", "timeout": f"{interval}s", "targets": [
                            {"url": f"{base}/kafka", "mappings": KAFKA_MAPPINGS},
                            {"url": f"{base}/node", "mappings": [], "service_name": "node"},
                            {"url": f"{base}/seq", "mappings": [], "service_name": "bench"}]}},
            "destinations": [{"name": "ingest", "endpoint": endpoint}],
        }
        config = d / "relay.yaml"
        config.write_text(yaml.safe_dump(cfg))
        self.proc = Proc("relay", [*CLI, "run", "--config", str(config)], work / "relay.log")

    def start(self) -> None:
        self.proc.start()
        wait(lambda: get_json(self.status + "/healthz"), 60, "the relay")

    def counters(self) -> dict[str, float]:
        """Its own counters: points collected by its sources, points and bytes shipped."""
        status = get_json(self.status + "/status")
        dest = status["destinations"][0]
        return {"points_collected": _metric_sum(self.status + "/metrics", "relay_points_collected_total"),
                "shipped_points": float(dest["shipped_points"]), "shipped_bytes": float(dest["shipped_bytes"])}
