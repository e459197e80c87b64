"""Local auto-discovery of Kafka JVMs (brokers, KRaft controllers, Confluent Server, ZooKeeper).

Owns: finding those JVMs with psutil by their main class, reading their -javaagent arguments
to find a Jolokia or Prometheus JMX-exporter port, finding where they write their logs
(`-Dkafka.logs.dir` or `-Dzookeeper.log.dir`, and the files the log4j or log4j2 config named
on the command line writes), and keeping one scrape source (and one process-metrics source)
per agent and one log source per JVM in step as brokers stop, start or move ports.
Re-checked every `discovery.interval`; /status lists what was found and why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

from relay.sources.base import Source, SourceRunner

log = logging.getLogger("relay.discovery")

# Main class -> (kind, mapping files). Confluent Server runs kafka.Kafka too.
MAIN_CLASSES = {
    "kafka.Kafka": ("kafka", ("kafka", "jvm")),
    "io.confluent.support.metrics.SupportedKafka": ("kafka", ("kafka", "jvm")),
    "io.confluent.kafka.server.KafkaServerMain": ("kafka", ("kafka", "jvm")),
    "org.apache.zookeeper.server.quorum.QuorumPeerMain": ("zookeeper", ("zookeeper", "jvm")),
}


LOG_DIR_PROPERTIES = ("kafka.logs.dir", "zookeeper.log.dir")
# log4j2 reads the first two, log4j 1 (Kafka before 4.0, ZooKeeper) the last.
LOG_CONFIG_PROPERTIES = ("log4j2.configurationFile", "log4j.configurationFile", "log4j.configuration")
# An appender's file in any of the config formats: log4j2 YAML (`fileName: ...`), properties
# (`appender.x.fileName = ...`), XML (`fileName="..."`), log4j 1 (`log4j.appender.x.File=...`).
_APPENDER_FILE = re.compile(r"""(?i)\bfile(?:name)?["']?\s*[:=]\s*(?:"([^"]*)"|'([^']*)'|([^\s"',>]+))""")
_LOOKUP = re.compile(r"\$\{(?:sys:|env:)?([\w.]+)\}")


@dataclass(frozen=True)
class Discovered:
    pid: int
    kind: str  # kafka, kafka-controller, zookeeper
    protocol: str  # jolokia or prometheus; "logs" for where the JVM writes its log files
    url: str  # the agent's endpoint; for "logs", the log directory
    mappings: tuple[str, ...]
    reason: str
    create_time: float
    log_files: tuple[str, ...] = ()  # for "logs": the files its log4j config writes

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.pid, self.protocol, self.url)


def _agent(arg: str) -> tuple[str, str] | None:
    """(protocol, url) from one -javaagent:<jar>[=<options>] argument."""
    spec = arg[len("-javaagent:"):]
    jar, _, options = spec.partition("=")
    name = Path(jar).name.lower()
    if "jmx_prometheus" in name or "jmx_exporter" in name or "jmx-exporter" in name:
        # [host:]port:config.yaml
        parts = options.split(":")
        if len(parts) >= 2 and parts[-2].isdigit():
            host = parts[-3] if len(parts) >= 3 and parts[-3] else "127.0.0.1"
            return "prometheus", f"http://{_loopback(host)}:{parts[-2]}/metrics"
        return None
    if "jolokia" in name or "port=" in options:
        opts = dict(kv.split("=", 1) for kv in options.split(",") if "=" in kv)
        port = opts.get("port", "8778")
        host = _loopback(opts.get("host", "127.0.0.1"))
        scheme = "https" if opts.get("protocol") == "https" else "http"
        if port.isdigit():
            return "jolokia", f"{scheme}://{host}:{port}/jolokia/"
    return None


def _loopback(host: str) -> str:
    # An agent bound to all interfaces is still reached on loopback: the relay runs on the same host.
    return "127.0.0.1" if host in ("0.0.0.0", "*", "", "localhost") else host


def _process_roles(cmdline: list[str], main_index: int) -> set[str]:
    """A kafka.Kafka's KRaft process.roles from its server.properties (empty: ZooKeeper mode or unreadable)."""
    for arg in cmdline[main_index + 1:]:
        if arg.endswith(".properties"):
            try:
                for line in Path(arg).read_text(errors="replace").splitlines():
                    key, _, value = line.partition("=")
                    if key.strip() == "process.roles":
                        return {r.strip() for r in value.split(",") if r.strip()}
            except OSError:
                return set()
    return set()


def _system_properties(args: list[str]) -> dict[str, str]:
    out = {}
    for arg in args:
        if arg.startswith("-D") and "=" in arg:
            key, _, value = arg[2:].partition("=")
            out[key] = value
    return out


def log_location(props: dict[str, str]) -> tuple[str | None, tuple[str, ...]]:
    """The log directory a JVM's -D flags name, and the files its log4j config writes."""
    log_dir = next((props[k] for k in LOG_DIR_PROPERTIES if props.get(k)), None)
    config = next((props[k] for k in LOG_CONFIG_PROPERTIES if props.get(k)), None)
    files: list[str] = []
    for location in (config or "").split(","):
        path = location.strip().removeprefix("file://").removeprefix("file:")
        try:
            with open(path, errors="replace") as f:
                text = f.read(1 << 20)
        except OSError:
            continue
        for m in _APPENDER_FILE.finditer(text):
            name = _LOOKUP.sub(lambda v: props.get(v[1], v[0]), m[1] or m[2] or m[3] or "")
            if "${" not in name and os.path.isabs(name) and name not in files:
                files.append(name)
    return log_dir, tuple(files)


def classify(pid: int, cmdline: list[str], create_time: float) -> list[Discovered]:
    """What a process is and where its metrics agent listens (empty if not a Kafka JVM)."""
    main_index, kind = -1, ""
    mappings: tuple[str, ...] = ()
    for i, arg in enumerate(cmdline):
        if arg in MAIN_CLASSES:
            main_index, (kind, mappings) = i, MAIN_CLASSES[arg]
            break
    if main_index < 0:
        return []
    roles = _process_roles(cmdline, main_index) if kind == "kafka" else set()
    if roles == {"controller"}:
        kind, mappings = "kafka-controller", ("kraft", "jvm")
    elif roles == {"broker", "controller"}:
        # A combined node serves the controller's quorum and raft metrics beside the broker's.
        mappings = ("kafka", "kraft", "jvm")
    out = []
    for arg in cmdline[:main_index]:
        if arg.startswith("-javaagent:"):
            found = _agent(arg)
            if found:
                protocol, url = found
                jar = arg[len("-javaagent:"):].split("=", 1)[0]
                out.append(Discovered(pid, kind, protocol, url, mappings,
                                      f"pid {pid} runs {cmdline[main_index]} with the {protocol} agent {jar}",
                                      create_time))
    log_dir, log_files = log_location(_system_properties(cmdline[:main_index]))
    if log_dir or log_files:
        where = log_dir or os.path.dirname(log_files[0])
        out.append(Discovered(pid, kind, "logs", where, mappings,
                              f"pid {pid} runs {cmdline[main_index]} and logs to {where}", create_time, log_files))
    return out


def scan() -> tuple[list[Discovered], list[str]]:
    """All Kafka JVMs on this host; plus notes on those with no agent to scrape."""
    found: list[Discovered] = []
    notes: list[str] = []
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmdline = p.info.get("cmdline") or []
        if not cmdline or not any(a in MAIN_CLASSES for a in cmdline):
            continue
        targets = classify(p.info["pid"], cmdline, p.info.get("create_time") or 0.0)
        found.extend(targets)
        if not any(t.protocol != "logs" for t in targets):
            main = next(a for a in cmdline if a in MAIN_CLASSES)
            notes.append(f"pid {p.info['pid']} runs {main} without a Jolokia or JMX-exporter agent: nothing to scrape")
    return found, notes


# The sources to run for one JVM (relay.sources.build.sources_for, bound to the config).
SourceFactory = Callable[[Discovered], list[Source]]


class RunnerPool(Protocol):
    """Where discovered sources run: started into the relay's spool, stopped when their JVM goes."""

    def start(self, source: Source) -> SourceRunner: ...

    async def stop(self, runner: SourceRunner) -> None: ...

    async def retire(self, runner: SourceRunner) -> None:
        """Stop it for good: its JVM is gone, and so is everything named after it."""


class Discovery:
    """Keeps one set of source runners per discovered JVM, in step with what the scan finds."""

    def __init__(self, interval: float, make_sources: SourceFactory, pool: RunnerPool) -> None:
        self.interval = interval
        self.make_sources = make_sources
        self.pool = pool
        self.active: dict[tuple[int, str, str], tuple[Discovered, list[SourceRunner]]] = {}
        self.notes: list[str] = []
        self.last_scan: float | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="discovery")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, runners in self.active.values():
            for r in runners:
                await self.pool.stop(r)
        self.active.clear()

    async def _loop(self) -> None:
        while True:
            await self.rescan()
            await asyncio.sleep(self.interval)

    async def rescan(self) -> None:
        try:
            found, notes = await asyncio.to_thread(scan)
        except Exception as e:  # psutil races with exiting processes; never let that stop the relay
            self.last_error = f"{e.__class__.__name__}: {e}"
            log.warning("discovery scan failed: %s", self.last_error)
            return
        self.last_scan, self.notes, self.last_error = time.time(), notes, None
        current = {d.key: d for d in found}
        for key in list(self.active):
            if key not in current:
                d, runners = self.active.pop(key)
                log.info("discovery: %s is gone (%s); its sources stop", d.url, d.reason)
                for r in runners:
                    await self.pool.retire(r)
        for key, d in current.items():
            if key in self.active:
                continue
            try:
                sources = self.make_sources(d)
            except Exception as e:  # a broken rule file, say: this JVM waits, the others go on
                self.last_error = f"cannot collect from {d.url} ({d.reason}): {e.__class__.__name__}: {e}"
                log.error("discovery: %s", self.last_error)
                continue
            log.info("discovery: found %s -> %s %s", d.reason, d.protocol, d.url)
            runners = [self.pool.start(s) for s in sources]
            self.active[key] = (d, runners)

    def snapshot(self) -> dict[str, Any]:
        return {
            "last_scan": self.last_scan,
            "last_error": self.last_error,
            "found": [{"pid": d.pid, "kind": d.kind, "protocol": d.protocol, "url": d.url,
                       "mappings": list(d.mappings), "reason": d.reason}
                      for d, _ in self.active.values() if d.protocol != "logs"],
            "logs": [{"pid": d.pid, "kind": d.kind, "log_dir": d.url, "config_files": list(d.log_files),
                      "reason": d.reason} for d, _ in self.active.values() if d.protocol == "logs"],
            "notes": self.notes,
        }

    def runners(self) -> list[SourceRunner]:
        return [r for _, rs in self.active.values() for r in rs]
