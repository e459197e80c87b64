"""Steady-state cost on the customer's host, start-to-ready, and catch-up after an outage.

- reference load: host source every 10 s, a real Kafka 4.4 broker (1,000 partitions, the
  harness's traffic) read through Jolokia every 30 s, the relay's own metrics, default policy,
  zstd, Ed25519; average CPU (% of one core) and peak RSS and USS over the window, beside an
  idle relay (no sources) in the same run; the same load on the synthetic JVM as a second row;
- the import floor: RSS and USS of an interpreter that only imported the relay's libraries;
- start to ready: process launch to READY=1 on a notify socket and to /readyz 200, beside
  the bare interpreter's start;
- wire bytes per point at the reference load, request line and headers (signature) included;
- catch-up: a 24-hour backlog at the reference load drained to the ingest.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.common import CLI, HERE, WORK, MemorySampler, memory_now, memory_split
from bench.common import DEFAULT_POLICY as POLICY
from bench.common import free_port as _port
from bench.common import get_json as _get
from bench.common import wait as _wait

WINDOW = float(os.environ.get("BENCH_OVERHEAD_SECONDS", "120"))


class Notify:
    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.ready_at: float | None = None
        self._stop = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:  # closed under us: done
                return
            if b"READY=1" in data and self.ready_at is None:
                self.ready_at = time.perf_counter()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self.path.unlink(missing_ok=True)


def _ready(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _relay_config(state: Path, ingest_url: str, sources: dict[str, Any]) -> tuple[Path, str]:
    status = f"127.0.0.1:{_port()}"
    cfg = {
        "state_dir": str(state),
        "server": {"listen": status},
        "sources": {"discovery": {"kafka": False}, "otlp": {"listen": f"127.0.0.1:{_port()}"}, **sources},
        "policy": {"file": str(POLICY)},
        "destinations": [{"name": "ingest", "endpoint": ingest_url}],
    }
    path = state.parent / f"{state.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, "http://" + status


def _launch(config: Path, notify: Notify | None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if notify:
        env["NOTIFY_SOCKET"] = str(notify.path)
    return subprocess.Popen([*CLI, "run", "--config", str(config)], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(config.with_suffix(".log"), "wb"))


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def bench_start_to_ready(ingest_url: str) -> dict[str, Any]:
    state = WORK / "start-state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    config, status = _relay_config(state, ingest_url, {})
    # A first start creates the signing key and the spool; the figure is a restart's.
    p = _launch(config, None)
    _wait(lambda: _ready(status), 60, "the first start")
    p.terminate()
    p.wait(30)
    notify = Notify(WORK / "notify.sock")
    t0 = time.perf_counter()
    p = _launch(config, notify)
    _wait(lambda: notify.ready_at is not None, 60, "READY=1")
    _wait(lambda: _ready(status), 60, "/readyz 200")
    readyz_s = time.perf_counter() - t0
    ready_s = (notify.ready_at or 0) - t0
    p.terminate()
    p.wait(30)
    notify.close()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - t0
    return {"ready_s": ready_s, "readyz_s": readyz_s, "bare_python_s": bare}


_FLOOR = """
import gc, sys
def mem():
    f = {}
    for line in open('/proc/self/smaps_rollup').read().splitlines()[1:]:
        key, _, rest = line.partition(':')
        parts = rest.split()
        if parts and parts[0].isdigit():
            f[key] = int(parts[0])
    return f'{f["Rss"]},{f["Private_Clean"] + f["Private_Dirty"]}'
steps = [mem()]
for name in sys.argv[1:]:
    __import__(name)
    steps.append(mem())
gc.collect()
print(mem(), *steps)
"""
# What the relay imports from outside itself: the design's libraries and the few it adds.
DEPENDENCIES = ("asyncio", "aiohttp", "aiohttp.web", "cryptography.hazmat.primitives.asymmetric.ed25519",
                "opentelemetry.proto.collector.metrics.v1.metrics_service_pb2",
                "opentelemetry.proto.collector.logs.v1.logs_service_pb2",
                "opentelemetry.proto.collector.trace.v1.trace_service_pb2", "diskcache", "yaml", "psutil",
                "systemd.daemon", "systemd.journal", "prometheus_client", "http_message_signatures", "zstandard")


def bench_import_floor() -> dict[str, Any]:
    """Resident memory of an interpreter that only imported things: nothing, the relay's
    libraries, and the relay itself. The floor under any steady-state figure. RSS and USS:
    in a lone interpreter the two differ only by the file pages another process also maps
    (libc, libpython and the venv's libraries shared with the ingest the bench runs)."""
    def mem(*modules: str) -> tuple[tuple[int, int], list[tuple[int, int]]]:
        out = subprocess.run([sys.executable, "-c", _FLOOR, *modules], capture_output=True, text=True, check=True)
        final, *steps = (tuple(int(v) * 1024 for v in pair.split(",")) for pair in out.stdout.split())
        return (final[0], final[1]), [(s[0], s[1]) for s in steps]

    bare, _ = mem()
    deps, steps = mem(*DEPENDENCIES)
    relay, _ = mem(*DEPENDENCIES, "relay.cli", "relay.app")
    # What each library adds when imported after those before it (shared imports count once).
    pairs = list(zip(DEPENDENCIES, steps, steps[1:], strict=False))
    return {"bare_python_rss_bytes": bare[0], "dependencies_rss_bytes": deps[0], "relay_imported_rss_bytes": relay[0],
            "bare_python_uss_bytes": bare[1], "dependencies_uss_bytes": deps[1], "relay_imported_uss_bytes": relay[1],
            "import_shares_bytes": {name: after[0] - before[0] for name, before, after in pairs},
            "import_shares_uss_bytes": {name: after[1] - before[1] for name, before, after in pairs}}


# The reference load's broker: a real Kafka 4.4 node with the harness's traffic on every
# partition. 1,000 partitions (100 topics of 10) is a mid-sized broker: Kafka's own guidance
# is up to about 4,000 per broker; bench/kafka_scale.py reads 2,000.
REAL_TOPICS, REAL_PARTITIONS = 100, 10
MAPPINGS = ["kafka", "kraft", "jvm"]


def _steady(ingest_url: str, ingest_stats: Any, name: str, jolokia_url: str,
            mappings: list[str]) -> dict[str, Any]:
    """One relay at the reference load against one Jolokia endpoint: CPU and memory over WINDOW."""
    state = WORK / f"{name}-state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    config, status = _relay_config(state, ingest_url, {
        "host": {"interval": "10s"}, "internal": {"interval": "10s"},
        "jolokia": {"interval": "30s", "targets": [{"url": jolokia_url, "mappings": mappings}]}})
    p = _launch(config, None)
    try:
        proc = psutil.Process(p.pid)
        with MemorySampler(p.pid) as mem:
            _wait(lambda: _ready(status), 60, f"the {name} relay")

            def broker_source() -> Any:
                return next(s for s in _get(status + "/status")["sources"] if s["name"].startswith("jolokia"))

            # Start the window once the first Jolokia read has shipped.
            _wait(lambda: broker_source()["successes"], 60, "the first broker read")
            series = broker_source()["last_points"]
            before = ingest_stats()
            cpu0, t0 = _cpu(proc), time.perf_counter()
            samples: list[tuple[float, float, float, float]] = []  # (s, CPU % of a core since last, RSS, USS MiB)
            last_cpu, last_t = cpu0, t0
            while time.perf_counter() - t0 < WINDOW:  # the measurement window itself
                time.sleep(min(2.0, WINDOW - (time.perf_counter() - t0)))
                c, t = _cpu(proc), time.perf_counter()
                m = memory_now(p.pid)
                samples.append((t - t0, (c - last_cpu) / max(t - last_t, 1e-6) * 100, m["rss"] / 2**20,
                                m["uss"] / 2**20))
                last_cpu, last_t = c, t
            cpu1, t1 = _cpu(proc), time.perf_counter()
            after = ingest_stats()
            now, split = memory_now(p.pid), memory_split(p.pid)
        peak = mem.result()
    finally:
        p.terminate()
        p.wait(30)
    items = after["items"] - before["items"]
    wire = (after["bytes"] - before["bytes"]) + (after["header_bytes"] - before["header_bytes"])
    return {"window_s": t1 - t0, "series_per_broker_read": series, "cpu_pct_of_core": (cpu1 - cpu0) / (t1 - t0) * 100,
            **peak, "rss_bytes": now["rss"], "uss_bytes": now["uss"], "pss_bytes": now["pss"],
            "rss_anon_bytes": split.get("RssAnon", 0), "rss_file_bytes": split.get("RssFile", 0),
            "points": items, "wire_bytes": wire, "wire_bytes_per_point": wire / items if items else 0.0,
            "samples": samples}


def _idle(ingest_url: str) -> dict[str, Any]:
    """The baseline: the same relay with no sources at all, in the same run."""
    state = WORK / "idle-state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    config, status = _relay_config(state, ingest_url, {"host": {"enabled": False}, "internal": {"enabled": False},
                                                       "otlp": {"enabled": False}})
    p = _launch(config, None)
    try:
        proc = psutil.Process(p.pid)
        with MemorySampler(p.pid, period=1.0) as mem:
            _wait(lambda: _ready(status), 60, "the idle relay")
            cpu0, t0 = _cpu(proc), time.perf_counter()
            time.sleep(min(WINDOW, 30))  # the measurement window itself
            cpu1, t1 = _cpu(proc), time.perf_counter()
            now, split = memory_now(p.pid), memory_split(p.pid)
        peak = mem.result()
    finally:
        p.terminate()
        p.wait(30)
    return {"idle_cpu_pct_of_core": (cpu1 - cpu0) / (t1 - t0) * 100, "idle_rss_bytes": now["rss"],
            "idle_uss_bytes": now["uss"], "idle_pss_bytes": now["pss"], "idle_peak_rss_bytes": peak["peak_rss_bytes"],
            "idle_peak_uss_bytes": peak["peak_uss_bytes"],
            "idle_rss_anon_bytes": split.get("RssAnon", 0), "idle_rss_file_bytes": split.get("RssFile", 0)}


def bench_overhead(ingest_url: str, ingest_stats: Any) -> dict[str, Any]:
    """The reference load on a real Kafka 4.4 broker (the figure judged against the 60 MiB
    target), the idle relay beside it, and, unless BENCH_SYNTHETIC=0, the same load on the
    synthetic JVM of tests/jvm (about 5,000 series a read: heavier than a real broker's)."""
    sys.path.insert(0, str(HERE.parent))
    from tests.kafka.harness import Broker, Traffic, fetch

    workdir = WORK / "overhead-kafka"
    shutil.rmtree(workdir, ignore_errors=True)
    broker = Broker(fetch(), workdir)
    traffic = Traffic(fetch(), broker, topics=REAL_TOPICS, partitions=REAL_PARTITIONS, rate=1000)
    try:
        broker.start(timeout=240)
        traffic.start(timeout=600)
        result = _steady(ingest_url, ingest_stats, "overhead", broker.jolokia_url, MAPPINGS)
    finally:
        if traffic.p is not None:
            traffic.terminate(60)
        broker.stop()
    result.update({"broker": "Kafka 4.4 (tests/kafka/harness.py), Jolokia", "topics": REAL_TOPICS,
                   "partitions": REAL_TOPICS * REAL_PARTITIONS, "mappings": MAPPINGS})
    result.update(_idle(ingest_url))
    if os.environ.get("BENCH_SYNTHETIC", "1") != "0":
        from tests.jvm import FakeBroker, build

        fake = FakeBroker(build(WORK / "java"), WORK, topics=1600, broker_id=1)
        fake.start()
        try:
            synthetic = _steady(ingest_url, ingest_stats, "overhead-synthetic", fake.url, ["kafka", "jvm"])
        finally:
            fake.kill9()
        synthetic.pop("samples")
        result["synthetic_jvm"] = synthetic
    return result


def rows(steady: dict[str, Any], floor: dict[str, Any]) -> list[dict[str, Any]]:
    """The memory and CPU rows of the reference load and the import floor, for bench/run.py's table."""
    def mib(b: float) -> str:
        return f"{b / 2**20:.1f}"

    def mem(r: dict[str, Any], prefix: str = "peak_") -> str:
        return f"RSS {mib(r[prefix + 'rss_bytes'])} MiB (USS {mib(r[prefix + 'uss_bytes'])})"

    idle = {"rss_bytes": steady["idle_rss_bytes"], "uss_bytes": steady["idle_uss_bytes"]}
    out = [
        {"figure": f"steady state, real Kafka 4.4 broker ({steady['partitions']:,} partitions, "
                   f"{steady['series_per_broker_read']:,} series a read): average CPU (% of one core)",
         "value": f"{steady['cpu_pct_of_core']:.2f}",
         "baseline": f"{steady['idle_cpu_pct_of_core']:.2f} (idle relay, no sources)", "ratio": "-",
         "target": "<= 0.5", "result": "pass" if steady["cpu_pct_of_core"] <= 0.5 else "fail"},
        {"figure": "steady state, real broker: peak memory", "value": mem(steady),
         "baseline": mem(idle, "") + " (idle relay, no sources)",
         "ratio": f"{steady['peak_rss_bytes'] / max(steady['idle_rss_bytes'], 1):.2f}x",
         "target": "RSS <= 60 MiB", "result": "pass" if steady["peak_rss_bytes"] <= 60 * 2**20 else "fail"},
        {"figure": "  of which private (RssAnon) / file-backed (RssFile: code of Python and libraries), MiB",
         "value": f"{mib(steady['rss_anon_bytes'])} / {mib(steady['rss_file_bytes'])}",
         "baseline": f"{mib(steady['idle_rss_anon_bytes'])} / {mib(steady['idle_rss_file_bytes'])} (idle relay)",
         "ratio": "-", "target": "-", "result": "-"},
    ]
    synthetic = steady.get("synthetic_jvm")
    if synthetic:
        out.append({"figure": "  the same load on the synthetic JVM (tests/jvm, "
                              f"{synthetic['series_per_broker_read']:,} series a read): CPU % / peak memory",
                    "value": f"{synthetic['cpu_pct_of_core']:.2f} / {mem(synthetic)}", "baseline": "-",
                    "ratio": "-", "target": "-", "result": "-"})
    floor_deps = {"rss_bytes": floor["dependencies_rss_bytes"], "uss_bytes": floor["dependencies_uss_bytes"]}
    out += [
        {"figure": "import floor: python + the relay's libraries, nothing running", "value": mem(floor_deps, ""),
         "baseline": mem({"rss_bytes": floor["bare_python_rss_bytes"], "uss_bytes": floor["bare_python_uss_bytes"]},
                         "") + " (bare python3)", "ratio": "-", "target": "-", "result": "-"},
        {"figure": "  the largest shares of it, each imported after those before (RSS MiB, USS)",
         "value": ", ".join(f"{name.split('.')[0] if name != 'aiohttp.web' else name} {b / 2**20:.1f} "
                            f"({floor['import_shares_uss_bytes'][name] / 2**20:.1f})"
                            for name, b in sorted(floor["import_shares_bytes"].items(), key=lambda kv: -kv[1])[:5]),
         "baseline": "-", "ratio": "-", "target": "-", "result": "-"},
        {"figure": "import floor: the same + the relay's own modules",
         "value": mem({"rss_bytes": floor["relay_imported_rss_bytes"], "uss_bytes": floor["relay_imported_uss_bytes"]},
                      ""),
         "baseline": mem(floor_deps, "") + " (libraries only)", "ratio": "-", "target": "-", "result": "-"},
    ]
    return out


def bench_push_10k(ingest_url: str, ingest_items: Any, seconds: float = 60.0) -> dict[str, Any]:
    """The OTel Collector's Metric10kDPS shape: 10,000 points/s pushed over OTLP/HTTP in
    100-point batches (100 requests/s), received, spooled with fsync, redacted, compressed,
    signed and shipped. Average CPU, and average and peak RSS and USS over the window (until
    the last point has arrived)."""
    from bench.workload import otlp_batches

    rate, per = 100, 100
    batches = otlp_batches(rate * 10, per)  # ten seconds' worth, sent round and round
    state = WORK / "push10k-state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    otlp = f"127.0.0.1:{_port()}"
    config, status = _relay_config(state, ingest_url, {"host": {"enabled": False}, "otlp": {"listen": otlp}})
    p = _launch(config, None)
    proc = psutil.Process(p.pid)
    _wait(lambda: _ready(status), 60, "the relay")
    before = ingest_items()

    async def push() -> tuple[int, float]:
        import aiohttp

        sent = 0
        async with aiohttp.ClientSession() as session:
            t0 = time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds:
                due = int(elapsed * rate) + 1
                while sent < due:
                    body = batches[sent % len(batches)]
                    async with session.post(f"http://{otlp}/v1/metrics", data=body,
                                            headers={"Content-Type": "application/x-protobuf"}) as r:
                        if r.status != 200:
                            raise SystemExit(f"bench: the relay answered a push with {r.status}")
                    sent += 1
                await asyncio.sleep(max(0.0, sent / rate - (time.perf_counter() - t0)))
            return sent, time.perf_counter() - t0

    with MemorySampler(p.pid, period=1.0) as mem:
        cpu0 = _cpu(proc)
        sent, wall = asyncio.run(push())
        cpu1 = _cpu(proc)
        _wait(lambda: ingest_items() - before >= sent * per, 60, "the pushed points to arrive")
    peak = mem.result()
    p.terminate()
    p.wait(30)
    return {"points_per_s": sent * per / wall, "seconds": wall, "cpu_pct_of_core": (cpu1 - cpu0) / wall * 100,
            **peak}


def bench_catch_up(ingest_url: str, ingest_items: Any, requests: list[bytes],
                   points_per_request: int) -> dict[str, Any]:
    """24 h at the reference load (one ~5,000-series read every 30 s = 2,880 requests) spooled,
    then a relay with no sources drains it to the ingest."""
    from relay.config import SpoolSettings
    from relay.selfmetrics import SelfMetrics
    from relay.spool import Spool

    state = WORK / "catchup-state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    entries = 2880

    async def fill(state: Path, entries: int) -> None:
        spool = Spool(state, SpoolSettings(max_bytes=4 << 30), ["ingest"], SelfMetrics())
        await spool.open()
        for i in range(entries):
            await spool.append("metrics", requests[i % len(requests)], points_per_request)
        await spool.close()

    asyncio.run(fill(state, entries))
    total = entries * points_per_request
    config, _ = _relay_config(state, ingest_url, {"host": {"enabled": False}, "internal": {"enabled": False},
                                                  "otlp": {"enabled": False}})
    before = ingest_items()
    t0 = time.perf_counter()
    p = _launch(config, None)
    _wait(lambda: ingest_items() - before >= total, 900, "the 24 h backlog to drain")
    elapsed = time.perf_counter() - t0
    p.terminate()
    p.wait(30)

    # The same kind of backlog with destinations[].max_bytes_per_second set: the drain must
    # hold to the cap (small requests, so that one request's worth is a small error).
    cap, capped_entries = 64 * 1024, 60
    state = WORK / "capped-state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    asyncio.run(fill(state, capped_entries))
    config, status = _relay_config(state, ingest_url, {"host": {"enabled": False}, "internal": {"enabled": False},
                                                       "otlp": {"enabled": False}})
    cfg = yaml.safe_load(config.read_text())
    cfg["destinations"][0].update({"max_bytes_per_second": cap, "max_request_bytes": "256KiB"})
    config.write_text(yaml.safe_dump(cfg))
    before = ingest_items()
    notify = Notify(WORK / "capped-notify.sock")
    p = _launch(config, notify)
    _wait(lambda: notify.ready_at is not None, 60, "the capped relay's READY=1")
    notify.close()
    capped_total = capped_entries * points_per_request
    _wait(lambda: ingest_items() - before >= capped_total, 300, "the capped backlog to drain")
    capped_s = time.perf_counter() - (notify.ready_at or 0.0)
    wire = _get(status + "/status")["destinations"][0]["shipped_bytes"]
    p.terminate()
    p.wait(30)
    return {"points": total, "entries": entries, "drain_s": elapsed, "points_per_s": total / elapsed,
            "capped_cap_bytes_per_s": cap, "capped_wire_bytes": wire, "capped_s": capped_s,
            "capped_bytes_per_s": wire / capped_s}


if __name__ == "__main__":
    # The reference load alone (about 5 minutes with the synthetic row; BENCH_SYNTHETIC=0 skips
    # it): what bench/run.py measures of it, without the rest of the bench. `push` instead runs
    # the 10,000 points/s push alone (about a minute).
    import json

    from bench.run import Ingest, table

    WORK.mkdir(parents=True, exist_ok=True)
    ingest = Ingest()
    if sys.argv[1:] == ["push"]:
        try:
            push = bench_push_10k(ingest.url, ingest.items)
        finally:
            ingest.stop()
        print(json.dumps({k: v for k, v in push.items() if not isinstance(v, list)}, indent=2))
        raise SystemExit(0)
    try:
        steady = bench_overhead(ingest.url, ingest.metrics_stats)
    finally:
        ingest.stop()
    floor = bench_import_floor()
    result = {"steady_state": steady, "import_floor": floor}
    (WORK / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows(steady, floor)))
