"""Session-scoped real Kafka brokers for the tests (started once: a broker takes seconds).

`real_kafka`: Jolokia and the JMX exporter with its published KRaft configuration, plus
traffic; `real_kafka_confluent`: the same with Confluent's jmx-monitoring-stacks
configuration (one JVM cannot carry two exporter agents). Registered in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kafka.harness import EXPORTER_CONFIGS, Broker, Jars, Traffic, fetch


@pytest.fixture(scope="session")
def kafka_jars() -> Jars:
    return fetch()


def _broker_with_traffic(jars: Jars, factory: pytest.TempPathFactory, config: str, node_id: int) -> Iterator[Broker]:
    broker = Broker(jars, factory.mktemp("kafka"), exporter=EXPORTER_CONFIGS[config], node_id=node_id, name=config)
    traffic = Traffic(jars, broker)
    try:
        broker.start()
        traffic.start()
        yield broker
    finally:
        for p in (traffic, broker):
            if p.p is not None and p.alive():
                p.terminate(60)


@pytest.fixture(scope="session")
def real_kafka(kafka_jars: Jars, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from _broker_with_traffic(kafka_jars, tmp_path_factory, "exporter", node_id=3)


@pytest.fixture(scope="session")
def real_kafka_confluent(kafka_jars: Jars, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from _broker_with_traffic(kafka_jars, tmp_path_factory, "confluent", node_id=4)
