from __future__ import annotations

from pathlib import Path

import pytest

from tests.jvm import JavaBuild, build

# The real Kafka brokers (real_kafka, real_kafka_confluent, kafka_jars).
pytest_plugins = ["tests.kafka.fixtures"]


@pytest.fixture(scope="session")
def java(tmp_path_factory: pytest.TempPathFactory) -> JavaBuild:
    return build(Path(tmp_path_factory.mktemp("java")))
