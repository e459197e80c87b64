"""A real JVM for the Kafka tests: the Java programs in tests/java, compiled here, serving the
real Jolokia protocol from Debian's libjolokia-core-java."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.procs import Proc, free_port, port_open, wait_until

JAVA_SRC = Path(__file__).parent / "java"
JOLOKIA_JARS = [Path("/usr/share/java/jolokia-core.jar"), Path("/usr/share/java/json-simple.jar")]


@dataclass
class JavaBuild:
    classes: Path
    agent_jar: Path


def build(workdir: Path) -> JavaBuild:
    missing = [str(p) for p in JOLOKIA_JARS if not p.exists()]
    if missing or not shutil.which("javac"):
        raise RuntimeError(f"the JVM tests need default-jdk-headless and libjolokia-core-java (make test installs "
                           f"them); missing: {missing or 'javac'}")
    classes = workdir / "classes"
    classes.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p) for p in JAVA_SRC.rglob("*.java"))
    subprocess.run(["javac", "-d", str(classes), "-cp", ":".join(map(str, JOLOKIA_JARS)), *sources],
                   check=True, capture_output=True, timeout=180)
    manifest = workdir / "manifest.txt"
    manifest.write_text("Premain-Class: relaytest.Agent\nClass-Path: " + " ".join(map(str, JOLOKIA_JARS)) + "\n")
    # Named like the real agent, so discovery recognises it by its jar name as it would in the field.
    jar = workdir / "jolokia-jvm-agent.jar"
    subprocess.run(["jar", "cfm", str(jar), str(manifest), "-C", str(classes), "relaytest"],
                   check=True, capture_output=True, timeout=120)
    return JavaBuild(classes, jar)


class FakeBroker(Proc):
    """`java -javaagent:<jolokia agent>=port=N -cp ... kafka.Kafka server.properties`, as a broker starts."""

    def __init__(self, java: JavaBuild, workdir: Path, topics: int = 3, broker_id: int = 7,
                 port: int | None = None, name: str = "broker") -> None:
        self.port = port or free_port()
        props = workdir / "server.properties"
        props.write_text("process.roles=broker\nnode.id=7\n")
        super().__init__(["java", "-Xmx64m", f"-javaagent:{java.agent_jar}=port={self.port},host=127.0.0.1",
                          "-cp", str(java.classes), "kafka.Kafka", str(props), str(topics), str(broker_id)],
                         workdir / f"{name}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jolokia/"

    def start(self) -> None:
        super().start()
        wait_until(lambda: port_open(self.port) and "fake broker ready" in self.log(), timeout=60,
                   what=f"the JVM to serve Jolokia; log:\n{self.log()}")
