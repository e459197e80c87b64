"""A librdkafka producer and consumer (confluent-kafka) that push their metrics (KIP-714, on by
default from librdkafka 2.5 once the broker has a subscription for them), for the
client-metrics tests. Prints "rdkafka ready" once the first message is delivered; runs until
killed.

    python -m tests.kafka.rdkafka_client <bootstrap> <topic> <client id prefix>
"""

from __future__ import annotations

import sys
import time

from confluent_kafka import Consumer, Producer


def main() -> int:
    bootstrap, topic, prefix = sys.argv[1:4]
    producer = Producer({"bootstrap.servers": bootstrap, "client.id": f"{prefix}-producer", "linger.ms": 20})
    consumer = Consumer({"bootstrap.servers": bootstrap, "client.id": f"{prefix}-consumer",
                         "group.id": f"{prefix}-group", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    delivered = 0

    def on_delivery(err: object, _msg: object) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1
            if delivered == 1:
                print("rdkafka ready", flush=True)

    while True:
        producer.produce(topic, b"x" * 100, on_delivery=on_delivery)
        producer.poll(0)
        consumer.poll(0.1)
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
