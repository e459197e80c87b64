"""The shipped default policy on what Kafka writes into its own log lines (docs/privacy.md)."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

from relay.policy import load_policy

ROOT = Path(__file__).parents[2]
SECRET = b"0123456789abcdef0123456789abcdef"

# Shapes of lines Kafka 4.4 writes (server.log, controller.log, kafka-authorizer.log), with
# made-up names in them.
LINES = [
    "[SocketServer listenerType=BROKER, nodeId=7] Unexpected error from /10.20.30.40 "
    "(channelId=10.20.30.40:9092-10.20.30.41:58510-1-1); closing connection\n"
    "org.apache.kafka.common.network.InvalidReceiveException: Invalid receive (size = 1195725856)\n"
    "\tat kafka.network.Processor.poll(SocketServer.scala:973) [kafka_2.13-4.4.0.jar:?]",
    "Awaiting socket connections on broker-1.corp.example:9092. listeners = [PLAINTEXT://kafka3:9092]",
    "Principal = User:alice is Denied operation = Write from host = 10.1.2.3 on resource = "
    "Topic:LITERAL:orders for request = Produce based on rule MatchingAcl(acl=(principal=User:alice, host=*))",
    "[GroupCoordinator 1]: Member reporting-7-0d3b (clientId=reporting-7, groupId=payments) left; "
    "client.id = reporting-7",
    "Loaded log for partition orders-0 in /home/bob/kafka-data/orders-0 with properties {}",
    "Node(id=1, host=broker-2.corp.example, port=9092) is at 2026-12-01 07:27:09,790",
]
SECRETS = ["10.20.30.40", "10.20.30.41", "broker-1.corp.example", "kafka3", "alice", "10.1.2.3", "reporting-7",
           "payments", "bob", "broker-2.corp.example"]
KEPT = ["Topic:LITERAL:orders", "orders-0", "SocketServer.scala:973", "kafka_2.13-4.4.0.jar", "User:", ":9092",
        "07:27:09,790", "kafka-data", "InvalidReceiveException", "host=*"]


def test_what_kafka_writes_leaves_hashed_and_the_rest_as_it_was() -> None:
    p = load_policy(ROOT / "configs" / "policy.yaml", SECRET)
    req = logs_service_pb2.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    sl = rl.scope_logs.add()
    sl.scope.name = "org.apache.kafka.common.network.Selector"
    for text in LINES:
        r = sl.log_records.add()
        r.body.string_value = text
        kv = r.attributes.add()
        kv.key, kv.value.string_value = "log.file.name", "server.log"
    out, outcome = p.apply("logs", req.SerializeToString())
    sent = logs_service_pb2.ExportLogsServiceRequest()
    sent.ParseFromString(out)
    records = sent.resource_logs[0].scope_logs[0].log_records
    text = "\n".join(r.body.string_value for r in records)
    for value in SECRETS:
        assert value not in text, value
        assert p.token(value) in text, value  # hashed, so support can still tell them apart
    for value in KEPT:
        assert value in text, value
    assert sent.resource_logs[0].scope_logs[0].scope.name == "org.apache.kafka.common.network.Selector"
    assert [kv.key for kv in records[0].attributes] == ["log.file.name"]
    assert {rule for rule, action in outcome.counts if action == "hashed"} >= {
        "log-host-port", "log-host", "log-principal", "log-client-id", "log-group-id", "log-member-id",
        "log-home-dir", "detector:ipv4"}


def test_a_hash_token_is_not_taken_for_a_host_and_port() -> None:
    # A token whose hex starts with digits (`h:12d3...`) once read as host `h`, port 12.
    p = load_policy(ROOT / "configs" / "policy.yaml", SECRET)
    req = logs_service_pb2.ExportLogsServiceRequest()
    text = "Unexpected error from /h:12d327c1605767ad (channelId=h:12d327c1605767ad:35615-1-1)"
    req.resource_logs.add().scope_logs.add().log_records.add().body.string_value = text
    out, _ = p.apply("logs", req.SerializeToString())
    sent = logs_service_pb2.ExportLogsServiceRequest()
    sent.ParseFromString(out)
    assert sent.resource_logs[0].scope_logs[0].log_records[0].body.string_value == text
