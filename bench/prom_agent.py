"""`make bench`, the scrape path beside Prometheus in agent mode: same targets, same host, same run.

Both agents run at the same time (same broker state, same machine noise; each one's CPU, memory
and disk are its own process's) and scrape, every INTERVAL seconds, through one loopback front
(bench/prom_agent_serve.py) that counts the scrapes and sample lines served to each:
- a real Kafka 4.4 broker's JMX exporter (TOPICS x PARTITIONS partitions, the harness's
  Traffic on all of them), with the mappings discovery gives it, unmapped series passed through;
- node_exporter (Debian's prometheus-node-exporter) on a free loopback port;
- the sequence target: `bench_scrape_seq` = n for the nth scrape served to that agent, plus PAD
  constant series.
Prometheus 2.42 `--enable-feature=agent` remote-writes to a receiving Prometheus; the relay
(shipped default policy, Ed25519 signing, spool fsync: the defaults) ships to the reference
ingest. A byte-counting TCP proxy sits in front of each receiver (bench/prom_agent_wire.py).

Figures over WINDOW seconds, after both are warm: CPU seconds per 1,000 samples (the process's
utime + stime over the sample lines served to it), peak and average RSS and USS, wire bytes
per sample (both directions at the proxy; and each agent's own count), disk bytes written per
sample (/proc/<pid>/io write_bytes: the agent's WAL vs the relay's SQLite spool).
Then durability: both receivers stopped for OUTAGE seconds, each agent killed with SIGKILL
halfway through and restarted on its state, receivers back; scraped / delivered / lost /
duplicated of the sequence target, counted exactly at the front and at each receiver.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench import prom_agent_profile
from bench.common import WORK, MemorySampler, wait
from bench.prom_agent_peers import Ingest, PromAgent, Receiver, Relay, node_exporter
from bench.prom_agent_serve import ScrapeFront, tally
from bench.prom_agent_wire import ByteCounter
from tests.kafka.harness import EXPORTER_CONFIGS, Broker, Traffic, fetch

# 10 s: the reference load's host interval, and 12 scrapes of every target in a 2-minute window.
INTERVAL = int(os.environ.get("BENCH_PROM_INTERVAL", "10"))
WINDOW = float(os.environ.get("BENCH_PROM_WINDOW", "120"))
OUTAGE = float(os.environ.get("BENCH_PROM_OUTAGE", "60"))
TOPICS, PARTITIONS = int(os.environ.get("BENCH_PROM_TOPICS", "30")), 10
PAD = 9  # constant series beside the sequence number: 10 samples per sequence scrape
AGENTS = ("prom", "relay")


def _usage(proc: Any) -> dict[str, float]:
    p = proc.ps()
    t, io = p.cpu_times(), p.io_counters()
    return {"cpu_s": t.user + t.system, "write_bytes": float(io.write_bytes)}


def _served(front: ScrapeFront) -> dict[str, dict[str, int]]:
    """Scrapes and samples served so far to each agent, in all and per target."""
    out: dict[str, dict[str, int]] = {a: {"samples": 0, "scrapes": 0} for a in AGENTS}
    for (agent, target), s in front.snapshot().items():
        out[agent]["samples"] += s.samples
        out[agent]["scrapes"] += s.scrapes
        out[agent][f"{target}_samples"] = s.samples
        out[agent][f"{target}_scrapes"] = s.scrapes
        out[agent][f"{target}_errors"] = s.errors
    return out


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _measure(front: ScrapeFront, agents: dict[str, Any], wires: dict[str, ByteCounter]) -> dict[str, Any]:
    """The steady-state window: both agents at once, every figure per agent from its own process."""
    spy = prom_agent_profile.py_spy()
    profile_out = WORK / "prom-agent" / "relay-profile.txt"
    profiler = prom_agent_profile.record(spy, agents["relay"].proc.pid, WINDOW, profile_out) if spy else None
    start_served = _served(front)
    start = {a: {**_usage(agents[a].proc), "wire": wires[a].total, **agents[a].counters()} for a in AGENTS}
    with MemorySampler(agents["prom"].proc.pid) as mem_prom, MemorySampler(agents["relay"].proc.pid) as mem_relay:
        time.sleep(WINDOW)  # the measured window: both agents scrape and ship on their own schedules
        end_served = _served(front)
        end = {a: {**_usage(agents[a].proc), "wire": wires[a].total, **agents[a].counters()} for a in AGENTS}
        memory = {"prom": mem_prom.result(), "relay": mem_relay.result()}
    out: dict[str, Any] = {"profiled": profiler is not None}
    if profiler is not None:
        profiler.wait(60)
        out["relay_profile"] = prom_agent_profile.top(profile_out.read_text())
    for a in AGENTS:
        served = {k: end_served[a].get(k, 0) - start_served[a].get(k, 0) for k in end_served[a]}
        samples = max(served["samples"], 1)
        d = {k: end[a][k] - start[a][k] for k in end[a]}
        out[a] = {
            "served": served, "samples": served["samples"],
            "cpu_s": d["cpu_s"], "cpu_s_per_1k_samples": d["cpu_s"] / samples * 1000,
            "wire_bytes": d["wire"], "wire_bytes_per_sample": d["wire"] / samples,
            "disk_write_bytes": d["write_bytes"], "disk_bytes_per_sample": d["write_bytes"] / samples,
            "memory": memory[a], "own_counters": d,
        }
    out["prom"]["own_wire_bytes_per_sample"] = out["prom"]["own_counters"]["remote_bytes_sent"] / max(
        out["prom"]["samples"], 1)
    out["relay"]["own_wire_bytes_per_sample"] = out["relay"]["own_counters"]["shipped_bytes"] / max(
        out["relay"]["samples"], 1)
    return out


def _durability(front: ScrapeFront, agents: dict[str, Any], receivers: dict[str, Any]) -> dict[str, Any]:
    """Receivers down for OUTAGE s; each agent SIGKILLed halfway and restarted on its state;
    receivers back; the sequence target frozen; wait until each has delivered its last scrape."""
    before = {a: front.seq(a) for a in AGENTS}
    for r in receivers.values():
        r.proc.stop()
    down_at = time.monotonic()
    time.sleep(OUTAGE / 2)  # scrapes pile up at each agent with nowhere to go
    killed_at_seq = {}
    for a in AGENTS:
        killed_at_seq[a] = front.seq(a)
        agents[a].proc.kill9()
        agents[a].start()
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
    for r in receivers.values():
        r.start()
    back_at = time.monotonic()
    front.frozen = True
    scraped = {a: front.seq(a) for a in AGENTS}
    caught_up: dict[str, float | None] = {a: None for a in AGENTS}

    def done() -> bool:
        for a in AGENTS:
            seqs, _ = receivers[a].found()
            if caught_up[a] is None and seqs and max(seqs) >= scraped[a]:
                caught_up[a] = time.monotonic() - back_at
        return all(v is not None for v in caught_up.values())

    try:
        wait(done, 300, "both agents to deliver their last scrape of the sequence target")
    except SystemExit as e:
        print(f"bench: {e}", flush=True)  # the counts below say what did arrive
    out: dict[str, Any] = {"outage_s": OUTAGE, "killed_after_s": OUTAGE / 2}
    for a in AGENTS:
        seqs, pads = receivers[a].found()
        t = tally(scraped[a], seqs)
        out[a] = {**t.as_dict(), "pad_samples_delivered": pads, "pad_per_scrape": PAD,
                  "seq_before_outage": before[a], "seq_at_kill": killed_at_seq[a],
                  "catch_up_s": caught_up[a]}
    return out


def bench_prom_agent() -> dict[str, Any]:
    jars = fetch()
    work = WORK / "prom-agent"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    broker = Broker(jars, work, exporter=EXPORTER_CONFIGS["exporter"], heap="768m")
    traffic = Traffic(jars, broker, topics=TOPICS, partitions=PARTITIONS, rate=500)
    stop: list[Any] = []
    try:
        broker.start(timeout=240)
        traffic.start(timeout=600)
        node, node_url = node_exporter(work)
        stop.append(node)
        front = ScrapeFront({"kafka": broker.exporter_url, "node": node_url}, PAD)
        receiver, ingest = Receiver(work), Ingest(work)
        receiver.start()
        ingest.start()
        stop += [receiver.proc, ingest.proc]
        wires = {"prom": ByteCounter(receiver.port), "relay": ByteCounter(ingest.port)}
        agents: dict[str, Any] = {
            "prom": PromAgent(work, front.port, f"http://127.0.0.1:{wires['prom'].port}/api/v1/write", INTERVAL),
            "relay": Relay(work, front.port, f"http://127.0.0.1:{wires['relay'].port}", INTERVAL)}
        receivers = {"prom": receiver, "relay": ingest}
        for a in AGENTS:
            agents[a].start()
            stop.append(agents[a].proc)

        def warm() -> bool:
            s = _served(front)
            return all(s[a].get(f"{t}_scrapes", 0) >= 3 for a in AGENTS for t in ("kafka", "node", "seq")) and all(
                receivers[a].found()[0] for a in AGENTS)

        wait(warm, 120 + 4 * INTERVAL, "both agents to scrape every target three times and deliver")
        exposed = {t: front.snapshot()[("prom", t)] for t in ("kafka", "node", "seq")}
        print(f"bench: warm; measuring {WINDOW:.0f} s...", flush=True)
        steady = _measure(front, agents, wires)
        disk = {"prom_wal_bytes": _dir_bytes(agents["prom"].dir),
                "relay_spool_bytes": _dir_bytes(agents["relay"].state)}
        print(f"bench: durability: receivers down {OUTAGE:.0f} s, SIGKILL halfway...", flush=True)
        durability = _durability(front, agents, receivers)
    finally:
        for p in reversed(stop):
            p.stop()
        if traffic.p is not None:
            traffic.terminate(60)
        broker.stop()
    result = {
        "interval_s": INTERVAL, "window_s": WINDOW, "concurrent": True, "topics": TOPICS,
        "partitions": TOPICS * PARTITIONS,
        "samples_per_scrape": {t: s.samples / max(s.scrapes, 1) for t, s in exposed.items()},
        "steady": steady, "state_bytes_after_window": disk, "durability": durability,
        "prometheus_version": _version(),
    }
    result["notes"] = notes(result)
    return result


# Prometheus adds per target scrape: up, scrape_duration_seconds, scrape_samples_scraped,
# scrape_samples_post_metric_relabeling, scrape_series_added.
REPORT_SERIES = 5


def notes(r: dict[str, Any]) -> list[str]:
    """What the figures mean where the two agents differ, with this run's numbers."""
    s, d = r["steady"], r["durability"]
    prom, rel = s["prom"], s["relay"]
    scrapes = prom["served"]["scrapes"]
    out = [
        ("samples: both were served the same number of exposition lines, counted at the front"
         if prom["samples"] == rel["samples"] else
         "samples: the two were served different numbers of lines (Prometheus asks the targets for OpenMetrics "
         "first, the relay for text 0.0.4, and the window's edges fall between scrapes differently)") +
        f" ({prom['samples']:,} to Prometheus, {rel['samples']:,} to the relay); Prometheus appended "
        f"{prom['own_counters']['samples_appended']:,.0f} to its WAL: those plus {REPORT_SERIES} report series "
        f"per target scrape ({REPORT_SERIES} x {scrapes} = {REPORT_SERIES * scrapes}); the relay collected "
        f"{rel['own_counters']['points_collected']:,.0f} OTLP points: the lines of a summary or histogram are one "
        "point. Per-sample figures divide by the lines served.",
        "wire: the relay's shipped default policy drops attributes outside its allowlist before it compresses "
        "(zstd), so its bytes carry fewer labels than Prometheus's remote-write (snappy, every label)",
        "disk: Prometheus writes its WAL (each series once, then compact sample records) and fsyncs a segment "
        "only when it cuts the next (tsdb/wlog/wlog.go, nextSegment); the relay writes each scrape's OTLP "
        "protobuf into its SQLite spool and fsyncs every commit",
        "duplicated: a Prometheus receiver keeps one sample per series and timestamp, so a resent sample cannot "
        "show there as a duplicate; the relay's ingest stores every request, so its count is exact",
    ]
    if d["prom"]["lost"]:
        lost = d["prom"]["lost_seqs"]
        out.append(f"Prometheus lost scrapes {lost[0]}..{lost[-1]} (the last served before the receiver went down "
                   f"was {d['prom']['seq_before_outage']}, the last before the kill {d['prom']['seq_at_kill']}): "
                   "unsent when it was killed, they were in "
                   "its WAL, but after a restart the remote-write WAL watcher sends only samples newer than its own "
                   "start (prometheus/prometheus tsdb/wlog/watcher.go, readSegment: s.T > w.startTimestamp)")
    return out


def _version() -> str:
    import subprocess

    out = subprocess.run(["prometheus", "--version"], capture_output=True, text=True, timeout=30)
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "unknown"


def _mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures for bench/run.py's table: the relay's value, Prometheus agent's, their ratio."""
    s, d = r["steady"], r["durability"]
    rel, prom = s["relay"], s["prom"]
    sps = r["samples_per_scrape"]

    def row(figure: str, value: str, baseline: str, ratio: str, target: str = "-", result: str = "-") -> dict[str, Any]:
        return {"figure": figure, "value": value, "baseline": baseline, "ratio": ratio, "target": target,
                "result": result}

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    cpu_ok = rel["cpu_s_per_1k_samples"] <= prom["cpu_s_per_1k_samples"]
    wire_ok = rel["wire_bytes_per_sample"] <= prom["wire_bytes_per_sample"]
    mr, mp = rel["memory"], prom["memory"]
    out = [
        row(f"scrape path beside Prometheus agent ({r['partitions']} partitions: exporter "
            f"{sps['kafka']:,.0f} + node_exporter {sps['node']:,.0f} + seq {sps['seq']:.0f} samples per scrape, "
            f"every {r['interval_s']} s, {r['window_s']:.0f} s window, both at once)",
            f"{rel['samples']:,} samples", f"{prom['samples']:,} samples (Prometheus agent)",
            ratio(rel["samples"], prom["samples"])),
        row("  CPU seconds per 1,000 samples (policy, signing, fsynced spool on)",
            f"{rel['cpu_s_per_1k_samples']:.4f}", f"{prom['cpu_s_per_1k_samples']:.4f} (Prometheus agent)",
            ratio(rel["cpu_s_per_1k_samples"], prom["cpu_s_per_1k_samples"]), "<= Prometheus agent",
            "pass" if cpu_ok else "fail"),
        row("  wire bytes per sample, both ways at a TCP proxy", f"{rel['wire_bytes_per_sample']:.3f}",
            f"{prom['wire_bytes_per_sample']:.3f} (Prometheus agent)",
            ratio(rel["wire_bytes_per_sample"], prom["wire_bytes_per_sample"]), "<= Prometheus agent",
            "pass" if wire_ok else "fail"),
        row("  the same, each agent's own count (shipped_bytes / prometheus_remote_storage_bytes_total)",
            f"{rel['own_wire_bytes_per_sample']:.3f}", f"{prom['own_wire_bytes_per_sample']:.3f} (Prometheus agent)",
            ratio(rel["own_wire_bytes_per_sample"], prom["own_wire_bytes_per_sample"])),
        row("  disk bytes written per sample (SQLite spool / agent WAL)", f"{rel['disk_bytes_per_sample']:.2f}",
            f"{prom['disk_bytes_per_sample']:.2f} (Prometheus agent)",
            ratio(rel["disk_bytes_per_sample"], prom["disk_bytes_per_sample"])),
        row("  peak / average RSS (MiB)", f"{_mib(mr['peak_rss_bytes'])} / {_mib(mr['avg_rss_bytes'])}",
            f"{_mib(mp['peak_rss_bytes'])} / {_mib(mp['avg_rss_bytes'])} (Prometheus agent)",
            ratio(mr["peak_rss_bytes"], mp["peak_rss_bytes"])),
        row("  peak / average USS (MiB)", f"{_mib(mr['peak_uss_bytes'])} / {_mib(mr['avg_uss_bytes'])}",
            f"{_mib(mp['peak_uss_bytes'])} / {_mib(mp['avg_uss_bytes'])} (Prometheus agent)",
            ratio(mr["peak_uss_bytes"], mp["peak_uss_bytes"])),
    ]
    out.append(row("  samples by each agent's own count: relay points collected / agent samples appended",
                   f"{rel['own_counters']['points_collected']:,.0f}",
                   f"{prom['own_counters']['samples_appended']:,.0f} (with {REPORT_SERIES} report series per scrape)",
                   ratio(rel["own_counters"]["points_collected"], prom["own_counters"]["samples_appended"])))
    dr, dp = d["relay"], d["prom"]
    out.append(row(f"kill -9 with the receiver down ({d['outage_s']:.0f} s, killed after {d['killed_after_s']:.0f} s):"
                   " scraped / delivered / lost / duplicated",
                   f"{dr['scraped']} / {dr['delivered']} / {dr['lost']} / {dr['duplicated']}",
                   f"{dp['scraped']} / {dp['delivered']} / {dp['lost']} / {dp['duplicated']} (Prometheus agent)",
                   "-", "lost 0", "pass" if dr["lost"] == 0 else "fail"))
    return out


if __name__ == "__main__":
    from bench.run import table

    WORK.mkdir(parents=True, exist_ok=True)
    result = bench_prom_agent()
    (WORK / "prom-agent.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(table(rows(result)))
    print("\n".join(f"- {n}" for n in result["notes"]))
