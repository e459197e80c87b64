"""A real Kafka 4.4 broker's own log files, found by discovery and shipped as log records.

The broker logs the way Kafka's distribution configures it: config/log4j2.yaml's
appenders (server.log, controller.log, state-change.log under -Dkafka.logs.dir) and its
pattern. The relay runs the shipped redaction policy.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.kafka.harness import Broker, Jars
from tests.procs import Ingest, Relay, relay_config, wait_until

ROOT = Path(__file__).parents[2]

# Kafka 4.x config/log4j2.yaml: its appenders, pattern and loggers (the request, cleaner and
# authorizer appenders left out: nothing here writes to them).
KAFKA_LOG4J2_YAML = """\
Configuration:
  Properties:
    Property:
      - name: "kafka.logs.dir"
        value: "."
      - name: "logPattern"
        value: "[%d] %p %m (%c)%n"
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "${logPattern}"
    RollingFile:
      - name: KafkaAppender
        fileName: "${sys:kafka.logs.dir}/server.log"
        filePattern: "${sys:kafka.logs.dir}/server.log.%d{yyyy-MM-dd-HH}"
        PatternLayout:
          pattern: "${logPattern}"
        TimeBasedTriggeringPolicy:
          modulate: true
          interval: 1
      - name: StateChangeAppender
        fileName: "${sys:kafka.logs.dir}/state-change.log"
        filePattern: "${sys:kafka.logs.dir}/state-change.log.%d{yyyy-MM-dd-HH}"
        PatternLayout:
          pattern: "${logPattern}"
        TimeBasedTriggeringPolicy:
          modulate: true
          interval: 1
      - name: ControllerAppender
        fileName: "${sys:kafka.logs.dir}/controller.log"
        filePattern: "${sys:kafka.logs.dir}/controller.log.%d{yyyy-MM-dd-HH}"
        PatternLayout:
          pattern: "${logPattern}"
        TimeBasedTriggeringPolicy:
          modulate: true
          interval: 1
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
        - ref: KafkaAppender
    Logger:
      - name: kafka
        level: INFO
      - name: org.apache.kafka
        level: INFO
      - name: org.apache.kafka.controller
        level: INFO
        additivity: false
        AppenderRef:
          ref: ControllerAppender
      - name: state.change.logger
        level: INFO
        additivity: false
        AppenderRef:
          ref: StateChangeAppender
"""


def broker_records(ingest: Ingest, pid: int) -> list[dict[str, Any]]:
    out = []
    for req in ingest.requests("logs"):
        for rl in req["request"].get("resourceLogs", []):
            res = {a["key"]: next(iter(a["value"].values())) for a in rl["resource"].get("attributes", [])}
            if res.get("process.pid") != str(pid):
                continue
            for sl in rl.get("scopeLogs", []):
                for r in sl.get("logRecords", []):
                    attrs = {a["key"]: next(iter(a["value"].values())) for a in r.get("attributes", [])}
                    out.append({"time": int(r["timeUnixNano"]), "severity": r.get("severityNumber"),
                                "text": r.get("severityText"), "body": r["body"]["stringValue"],
                                "logger": sl["scope"]["name"], "file": attrs.get("log.file.name"), "resource": res})
    return out


def local_ns(stamp: str) -> int:
    """`2026-12-01 07:27:09,790` (log4j's %d, local time) as Unix nanoseconds."""
    return int(time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S"))) * 10**9 + int(stamp[20:23]) * 10**6


def test_a_real_brokers_logs_arrive_as_records(tmp_path: Path, kafka_jars: Jars) -> None:
    ingest = Ingest(tmp_path)
    ingest.start()
    cfg = relay_config(tmp_path, ingest.url, policy={"file": str(ROOT / "configs" / "policy.yaml")}, sources={
        "host": {"enabled": False}, "internal": {"enabled": False},
        "discovery": {"kafka": True, "interval": "500ms", "process_metrics": False},
        "logs": {"interval": "300ms"}})
    relay = Relay(tmp_path, cfg)
    relay.start()
    log4j2 = tmp_path / "log4j2.yaml"
    log4j2.write_text(KAFKA_LOG4J2_YAML)
    broker = Broker(kafka_jars, tmp_path, jolokia=False, node_id=8, heap="384m", name="logs-broker")
    broker.args = [f"-Dlog4j2.configurationFile=file:{log4j2}" if a.startswith("-Dlog4j2.configurationFile=")
                   else a for a in broker.args]
    logs_dir = broker.dir / "logs"
    try:
        broker.start()
        found = wait_until(lambda: [d for d in relay.status()["discovery"]["logs"] if d["pid"] == broker.pid],
                           timeout=30, what="discovery of the broker's log directory")
        assert found[0]["log_dir"] == str(logs_dir) and str(logs_dir / "controller.log") in found[0]["config_files"]

        # Its own startup lines, with the timestamp and severity the file has.
        started = wait_until(lambda: [r for r in broker_records(ingest, broker.pid)
                                      if "Kafka Server started" in r["body"]], timeout=60, what="the startup line")
        line = next(x for x in (logs_dir / "server.log").read_text().splitlines() if "Kafka Server started" in x)
        assert started[0]["time"] == local_ns(line[1:24])
        assert (started[0]["severity"], started[0]["text"]) == (9, "INFO")
        assert started[0]["logger"] == "kafka.server.KafkaRaftServer" and started[0]["file"] == "server.log"
        assert started[0]["resource"]["service.name"] == "kafka"

        # A topic created: the controller says so in controller.log, the broker in server.log.
        subprocess.run(["java", "-Xmx256m", "-cp", kafka_jars.classpath(), "org.apache.kafka.tools.TopicCommand",
                        "--bootstrap-server", broker.bootstrap, "--create", "--topic", "relay-logs-probe",
                        "--partitions", "2"], check=True, capture_output=True, timeout=120)
        created = wait_until(lambda: [r for r in broker_records(ingest, broker.pid)
                                      if "CreateTopics result" in r["body"] and "relay-logs-probe" in r["body"]],
                             timeout=30, what="the topic creation record")
        assert created[0]["file"] == "controller.log"
        assert created[0]["logger"] == "org.apache.kafka.controller.ReplicationControlManager"

        # A client that disconnects abruptly (a RST in the middle of a request): Kafka 4.4 logs
        # nothing for it at its default levels (the Selector says so at DEBUG). What it does log
        # is a client that sends what is not Kafka's protocol: a WARN with a stack trace.
        rst = socket.create_connection(("127.0.0.1", broker.port))
        rst.sendall(struct.pack(">i", 100) + b"\x00\x12")
        rst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rst.close()
        with socket.create_connection(("127.0.0.1", broker.port)) as http:
            http.sendall(b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n")
            wait_until(lambda: http.recv(100) == b"", timeout=30, what="the broker to close the connection")
        warns = wait_until(lambda: [r for r in broker_records(ingest, broker.pid)
                                    if r["text"] == "WARN" and "InvalidReceiveException" in r["body"]],
                           timeout=30, what="the WARN about the connection")
        warn = warns[0]
        assert warn["severity"] == 13 and warn["logger"] == "org.apache.kafka.common.network.Selector"
        lines = warn["body"].splitlines()
        assert re.match(r"\[SocketServer listenerType=BROKER, nodeId=8\] Unexpected error from /h:[0-9a-f]{16} "
                        r"\(channelId=h:[0-9a-f]{16}:\d+-h:[0-9a-f]{16}:\d+-", lines[0]), lines[0]
        assert lines[1].startswith("org.apache.kafka.common.network.InvalidReceiveException: Invalid receive")
        assert lines[2].startswith("\tat org.apache.kafka.common.network.NetworkReceive.readFrom(")
        assert len(lines) > 5 and all(x.startswith("\tat ") for x in lines[2:])  # one record, the whole trace
        assert "127.0.0.1" not in warn["body"]  # hashed at egress by the shipped policy

        files = {f["path"]: f for f in relay.source(f"logs pid {broker.pid}")["files"]}
        server = files[str(logs_dir / "server.log")]
        assert server["records"] > 50 and server["dropped"]["severity"] == 0 and server["unparsed_records"] == 0
        assert server["state"] == "following" and server["last_record_time"] is not None
    finally:
        relay.terminate()
        broker.stop()
        ingest.terminate()
