"""The Kafka client metrics view of the status (relay/status.py client_metrics) and its text in
`telemetry-relay status`, from the Jolokia sources' snapshots as the plugin's MBean fills them."""

from __future__ import annotations

import time
from typing import Any

from relay.cli.status import format_status
from relay.status import Snapshots, StatusModel, client_metrics, subscribe_command

BEAN = {"Api": "ClientTelemetryExporter", "Version": "0.1.0", "Endpoint": "http://127.0.0.1:4318/v1/metrics",
        "Received": 120, "Forwarded": 100, "Dropped": 20, "DroppedQueueFull": 15, "DroppedUnreachable": 5,
        "DroppedRejected": 0, "QueueBytes": 2048, "QueueMaxBytes": 16 << 20, "LastError": "cannot reach x",
        "LastErrorTime": 1_800_000_000_000, "ClientsPushed": 7, "ClientsWindowMs": 10000, "SubscriptionCount": 1,
        "Subscriptions": "telemetry-relay: metrics=org.apache.kafka.producer. interval.ms=10000",
        "SubscriptionError": "", "BootstrapServers": "127.0.0.1:9092"}


def source(name: str, bean: dict[str, Any] | None, broker: str = "1") -> dict[str, Any]:
    return {"name": name, "url": f"http://{name}/jolokia/", "identity": {"kafka.broker.id": broker,
                                                                          "kafka.cluster.id": "c1"},
            "client_telemetry": bean, "last_error": None}


def test_each_jolokia_broker_shows_its_plugin_subscriptions_and_clients() -> None:
    views = client_metrics([source("a", BEAN), source("b", None, "2"), {"name": "host", "last_error": None}])
    assert [v["source"] for v in views] == ["a", "b"]  # only Jolokia sources: they read the MBean
    a, b = views
    assert a["plugin_loaded"] and a["broker_id"] == "1" and a["cluster_id"] == "c1"
    assert a["dropped_by_reason"] == {"queue_full": 15, "unreachable": 5}
    assert a["clients_pushed"] == 7 and a["window_seconds"] == 10
    assert a["subscription_count"] == 1 and a["subscriptions"] == [BEAN["Subscriptions"]]
    assert a["last_error_time"] == 1_800_000_000 and "subscribe_command" not in a
    assert b == {"source": "b", "url": "http://b/jolokia/", "broker_id": "2", "cluster_id": "c1",
                 "plugin_loaded": False}


def test_no_subscription_gives_the_command_a_finding_and_the_text() -> None:
    bean = {**BEAN, "SubscriptionCount": 0, "Subscriptions": ""}
    (view,) = client_metrics([source("a", bean)])
    assert view["subscribe_command"] == subscribe_command("127.0.0.1:9092") == (
        "kafka-client-metrics.sh --bootstrap-server 127.0.0.1:9092 --alter --name telemetry-relay "
        "--metrics org.apache.kafka.producer.,org.apache.kafka.consumer. --interval 10000")
    snap = Snapshots(taken=time.time(), sources=[source("a", bean)])  # no spool yet: "starting" comes first
    reasons = StatusModel(lambda: snap).health(snap)["reasons"]
    assert reasons[1:] == [f"broker 1: the client metrics plugin is loaded but no client-metrics subscription exists, "
                       f"so no client pushes; create one with: {view['subscribe_command']}"]
    text = format_status({"ready": True, "client_metrics": [view, *client_metrics([source("b", None, "2")])]})
    assert "broker 1: plugin 0.1.0 loaded (ClientTelemetryExporter), forwarding to http://127.0.0.1:4318" in text
    assert "7 clients pushed in the last 10s; received 120, forwarded 100, dropped 20 (queue_full 15, " \
           "unreachable 5); queue 2.0 KiB of 16.0 MiB" in text
    assert "subscriptions: NONE, so no client pushes. Create one with:\n      kafka-client-metrics.sh" in text
    assert "broker 2: plugin not loaded" in text


def test_an_unknown_subscription_state_says_why() -> None:
    bean = {**BEAN, "SubscriptionCount": -1, "SubscriptionError": "no PLAINTEXT listener"}
    (view,) = client_metrics([source("a", bean)])
    assert view["subscription_count"] is None and "subscribe_command" not in view
    assert "subscriptions: unknown (no PLAINTEXT listener)" in format_status({"client_metrics": [view]})
