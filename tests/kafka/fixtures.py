"""Session-scoped real Kafka brokers for the tests (started once: a broker takes seconds).

`real_kafka`: Jolokia and the JMX exporter with its published KRaft configuration, plus
traffic; `real_kafka_confluent`: the same with Confluent's jmx-monitoring-stacks
configuration (one JVM cannot carry two exporter agents). Registered in tests/conftest.py.
They stop right after the last test that uses them, not at the end of the session: every
later test's relay runs discovery (on by default) and would find and scrape them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kafka.harness import EXPORTER_CONFIGS, Broker, Jars, Traffic, fetch

BROKER_FIXTURES = {"real_kafka", "real_kafka_confluent"}
_running: list[tuple[Traffic, Broker]] = []
_last_user: list[str] = []  # node id of the last collected test that uses a broker


def _stop(traffic: Traffic, broker: Broker) -> None:
    for p in (traffic, broker):
        if p.p is not None and p.alive():
            p.terminate(60)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    users = [i.nodeid for i in items if BROKER_FIXTURES & set(getattr(i, "fixturenames", ()))]
    _last_user[:] = users[-1:]


def pytest_runtest_teardown(item: pytest.Item) -> None:
    if _last_user and item.nodeid == _last_user[0]:
        while _running:
            _stop(*_running.pop())


@pytest.fixture(scope="session")
def kafka_jars() -> Jars:
    return fetch()


def _broker_with_traffic(jars: Jars, factory: pytest.TempPathFactory, config: str, node_id: int) -> Iterator[Broker]:
    broker = Broker(jars, factory.mktemp("kafka"), exporter=EXPORTER_CONFIGS[config], node_id=node_id, name=config)
    traffic = Traffic(jars, broker)
    _running.append((traffic, broker))
    try:
        broker.start()
        traffic.start()
        yield broker
    finally:
        _stop(traffic, broker)


@pytest.fixture(scope="session")
def real_kafka(kafka_jars: Jars, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from _broker_with_traffic(kafka_jars, tmp_path_factory, "exporter", node_id=3)


@pytest.fixture(scope="session")
def real_kafka_confluent(kafka_jars: Jars, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from _broker_with_traffic(kafka_jars, tmp_path_factory, "confluent", node_id=4)
