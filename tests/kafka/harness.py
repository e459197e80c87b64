"""A real Apache Kafka broker for the tests, the bench and `make run KAFKA=1`.

Owns: fetching the pinned jars with Maven (tests/kafka/pom.xml into build/kafka, cached in
the local Maven repository), formatting KRaft storage, starting one combined-mode node
(process.roles=broker,controller) on free loopback ports the way kafka-server-start.sh does
(kafka-run-class.sh's JVM flags, the whole lib/ as one long -cp, `kafka.Kafka
server.properties`) with the Jolokia agent and/or the Prometheus JMX exporter as -javaagent,
real traffic through the Kafka client (Traffic.java), and stopping the broker by its pid.
Two pinned broker lines: 4.4 (the default) and 4.1 (`fetch("4.1")`: the last before KIP-1217's
client telemetry exporter). `plugin_jar()` builds the KIP-714 plugin (kafka-plugin/) with Maven
when its sources are newer than the jar; a Broker takes extra jars and server.properties lines.

`python -m tests.kafka.harness run` keeps one broker with both agents and traffic in the
foreground until it is stopped, and writes ready.json in its workdir once traffic flows
(what `make run KAFKA=1` starts and waits for); `... fetch` only fetches the jars.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.procs import Proc, free_port, port_open, wait_until

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
POM = HERE / "pom.xml"
OUT = ROOT / "build" / "kafka"
# Broker line -> (Maven profile, output folder); 4.4 is the pom's default.
VERSIONS = {"4.4": (None, OUT), "4.1": ("kafka-4.1", ROOT / "build" / "kafka-4.1")}
PLUGIN = ROOT / "kafka-plugin"
PLUGIN_JAR = PLUGIN / "target" / "telemetry-relay-kafka-plugin.jar"
TRAFFIC = HERE / "Traffic.java"
FIXTURES = ROOT / "tests" / "fixtures"
# The JMX exporter configurations operators use (see tests/fixtures/SOURCES.md).
EXPORTER_CONFIGS = {
    "exporter": FIXTURES / "jmx_exporter_kafka-kraft-3_0_0.yml",
    "confluent": FIXTURES / "confluent_jmx-monitoring-stacks_kafka_broker.yml",
}

# kafka-run-class.sh's defaults (KAFKA_JVM_PERFORMANCE_OPTS, KAFKA_JMX_OPTS without a port);
# the heap is smaller than kafka-server-start.sh's 1G so a test broker fits beside the suite.
JVM_PERFORMANCE = ["-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
                   "-XX:+ExplicitGCInvokesConcurrent", "-XX:MaxInlineLevel=15", "-Djava.awt.headless=true"]
JMX = ["-Dcom.sun.management.jmxremote=true", "-Dcom.sun.management.jmxremote.authenticate=false",
       "-Dcom.sun.management.jmxremote.ssl=false"]

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
# The line that says the node serves.
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


@dataclass(frozen=True)
class Jars:
    lib: Path  # the broker's classpath
    jolokia: Path  # the Jolokia JVM agent (-javaagent)
    exporter: Path  # the Prometheus JMX exporter agent (-javaagent)

    def classpath(self) -> str:
        return ":".join(str(p) for p in sorted(self.lib.glob("*.jar")))


def fetch(version: str = "4.4") -> Jars:
    """The pinned jars of one broker line, fetched with Maven once (again only when the pom changes)."""
    profile, out = VERSIONS[version]
    stamp = out / ".fetched"
    if not stamp.exists() or POM.stat().st_mtime > stamp.stat().st_mtime:
        _need_maven()
        shutil.rmtree(out, ignore_errors=True)  # no jar of a previous pin left on the classpath
        p = subprocess.run(["mvn", "-B", "-q", "-f", str(POM), *(["-P", profile] if profile else []), "package"],
                           capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"mvn could not fetch the Kafka jars:\n{p.stdout[-4000:]}{p.stderr[-4000:]}")
        stamp.touch()
    agents = out / "agents"
    return Jars(out / "lib", next(agents.glob("jolokia-agent-jvm-*-javaagent.jar")),
                next(agents.glob("jmx_prometheus_javaagent-*.jar")))


def _need_maven() -> None:
    if not shutil.which("mvn"):
        raise RuntimeError("the real-Kafka tests need Maven (make test installs it: Debian's maven)")


def plugin_jar() -> Path:
    """The KIP-714 plugin jar (make plugin builds it; built here too when a source is newer)."""
    sources = [PLUGIN / "pom.xml", *PLUGIN.rglob("src/**/*.java")]
    if not PLUGIN_JAR.exists() or max(p.stat().st_mtime for p in sources) > PLUGIN_JAR.stat().st_mtime:
        _need_maven()
        p = subprocess.run(["mvn", "-B", "-q", "-f", str(PLUGIN / "pom.xml"), "package"], capture_output=True,
                           text=True, timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"mvn could not build the plugin:\n{p.stdout[-4000:]}{p.stderr[-4000:]}")
    return PLUGIN_JAR


def cluster_id() -> str:
    """A KRaft cluster id: a UUID, URL-safe base64 without padding (as `kafka-storage random-uuid`)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class Broker(Proc):
    """One KRaft node in combined mode on loopback, with the agents asked for."""

    def __init__(self, jars: Jars, workdir: Path, *, jolokia: bool = True, exporter: Path | None = None,
                 node_id: int = 1, heap: str = "512m", name: str = "kafka", extra_jars: tuple[Path, ...] = (),
                 extra_properties: dict[str, str] | None = None) -> None:
        self.jars, self.node_id = jars, node_id
        self.extra_properties = extra_properties or {}
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.controller_port = free_port(), free_port()
        self.jolokia_port = free_port() if jolokia else None
        self.exporter_port = free_port() if exporter else None
        self.cluster_id = cluster_id()
        self.properties = self.dir / "server.properties"
        self.properties.write_text(self._properties())
        (self.dir / "log4j2.properties").write_text(LOG4J2)
        agents = []
        if jolokia:
            agents.append(f"-javaagent:{jars.jolokia}=port={self.jolokia_port},host=127.0.0.1,"
                          "discoveryEnabled=false")
        if exporter:
            agents.append(f"-javaagent:{jars.exporter}=127.0.0.1:{self.exporter_port}:{exporter}")
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        # As kafka-run-class.sh composes it: heap, performance, GC log, JMX, log4j, -cp, KAFKA_OPTS, main.
        super().__init__([
            "java", f"-Xmx{heap}", f"-Xms{heap}", *JVM_PERFORMANCE,
            f"-Xlog:gc*:file={logs}/kafkaServer-gc.log:time,tags:filecount=10,filesize=100M", *JMX,
            f"-Dkafka.logs.dir={logs}", f"-Dlog4j2.configurationFile=file:{self.dir / 'log4j2.properties'}",
            # Extra jars go where an operator puts a plugin: into the broker's classpath (libs/).
            "-cp", ":".join([jars.classpath(), *map(str, extra_jars)]), *agents, "kafka.Kafka", str(self.properties),
        ], self.dir / "server.log")

    def _properties(self) -> str:
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            f"controller.quorum.voters={self.node_id}@127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={self.dir / 'data'}",
            "num.partitions=4",
            # A single node: every internal topic has one replica.
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            *(f"{k}={v}" for k, v in self.extra_properties.items()),
            "",
        ])

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def jolokia_url(self) -> str:
        return f"http://127.0.0.1:{self.jolokia_port}/jolokia/"

    @property
    def exporter_url(self) -> str:
        return f"http://127.0.0.1:{self.exporter_port}/metrics"

    def format(self) -> None:
        """`kafka-storage format` for this node's log.dirs."""
        p = subprocess.run(["java", "-Xmx256m", f"-Dlog4j2.configurationFile=file:{self.dir / 'log4j2.properties'}",
                            "-cp", self.jars.classpath(), "kafka.tools.StorageTool", "format",
                            f"--cluster-id={self.cluster_id}", "-c", str(self.properties)],
                           capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed:\n{p.stdout}{p.stderr}")

    def start(self, timeout: float = 120) -> None:
        self.format()
        super().start()
        wait_until(lambda: not self.alive() or self._serving(), timeout=timeout, interval=0.25,
                   what=f"the Kafka broker to serve; log:\n{self.log()[-4000:]}")
        if not self.alive():
            raise RuntimeError(f"the Kafka broker exited; log:\n{self.log()[-4000:]}")

    def _serving(self) -> bool:
        if "Kafka Server started" not in self.log() or not port_open(self.port):
            return False
        if self.jolokia_port and not _http_ok(self.jolokia_url + "version"):
            return False
        return not self.exporter_port or _http_ok(self.exporter_url)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM by pid, as kafka-server-stop.sh does; SIGKILL if it outlasts the timeout."""
        if self.alive():
            self.terminate(timeout)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()  # all of it: the exporter logs a broken pipe for an answer cut short
            return bool(r.status == 200)
    except OSError:
        return False


class Traffic(Proc):
    """Producer and consumer group on the broker's topics (Traffic.java), until stopped."""

    def __init__(self, jars: Jars, broker: Broker, topics: int = 3, partitions: int = 4, rate: int = 300) -> None:
        self.topics, self.partitions = topics, partitions
        super().__init__(["java", "-Xmx256m", "-XX:TieredStopAtLevel=1",
                          f"-Dlog4j2.configurationFile=file:{broker.dir / 'log4j2.properties'}",
                          "-cp", jars.classpath(), str(TRAFFIC), broker.bootstrap, str(topics), str(partitions),
                          str(rate)], broker.dir / "traffic.log")

    def start(self, timeout: float = 180) -> None:
        super().start()

        wait_until(lambda: not self.alive() or "traffic ready" in self.log(), timeout=timeout, interval=0.25,
                   what=f"traffic to flow; log:\n{self.log()[-4000:]}")
        if not self.alive():
            raise RuntimeError(f"the traffic driver exited; log:\n{self.log()[-4000:]}")


def jolokia_read(broker: Broker, mbean: str) -> object:
    """One Jolokia read (pattern or name), for the tests' own look at the broker."""
    body = json.dumps({"type": "read", "mbean": mbean}).encode()
    req = urllib.request.Request(broker.jolokia_url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["fetch", "plugin", "run"])
    ap.add_argument("--workdir", type=Path, default=ROOT / ".dev" / "kafka")
    args = ap.parse_args()
    if args.command == "plugin":
        print(f"the KIP-714 plugin: {plugin_jar()}")
        return 0
    jars = fetch()
    if args.command == "fetch":
        print(f"Kafka jars in {jars.lib}; agents {jars.jolokia.name}, {jars.exporter.name}")
        return 0
    shutil.rmtree(args.workdir, ignore_errors=True)
    broker = Broker(jars, args.workdir, exporter=EXPORTER_CONFIGS["exporter"])
    broker.start()
    traffic = Traffic(jars, broker)
    traffic.start()
    kafka_jar = next(jars.lib.glob("kafka_2.13-*.jar")).stem.removeprefix("kafka_2.13-")
    ready = {"version": kafka_jar, "bootstrap": broker.bootstrap, "pid": broker.pid, "jolokia": broker.jolokia_url,
             "exporter": broker.exporter_url, "log": str(broker.log_path)}
    print(f"Kafka {kafka_jar}: broker {broker.bootstrap} (pid {broker.pid}), Jolokia {broker.jolokia_url}, "
          f"JMX exporter {broker.exporter_url}; log {broker.log_path}", flush=True)
    (args.workdir / "ready.json").write_text(json.dumps(ready))  # what `make run KAFKA=1` waits for
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and broker.alive():
        time.sleep(0.2)
    for p in (traffic, broker):
        if p.alive():
            p.terminate(60)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
