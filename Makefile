# Every target sets up what it needs first (Debian packages, .venv), so each works
# on a fresh Debian 12 host as root.
VENV := .venv
PY := $(VENV)/bin/python

# The tests also need a JVM and Debian's Jolokia (the real protocol, for the Kafka sources),
# Maven (it fetches the real Kafka broker and its agents, tests/kafka/pom.xml), and Chromium
# with its driver (the status page is tested in a real browser).
TEST_APT := default-jdk-headless libjolokia-core-java maven chromium chromium-driver rpm rpmlint debootstrap redis-server

.PHONY: all setup run test test-faults test-packaging deb rpm lint bench fuzz clean kafka plugin

all: setup

# bootstrap.sh is idempotent and quick once set up: it checks the Debian packages every
# time (so a target that needs more packages gets them) and reinstalls .venv only when
# pyproject.toml changed.
setup:
	./scripts/bootstrap.sh

# The real Kafka broker, its runtime dependencies and the Jolokia and JMX-exporter agents, at
# the versions pinned in tests/kafka/pom.xml, into build/kafka (cached in ~/.m2: a second run
# downloads nothing).
kafka:
	EXTRA_APT="default-jdk-headless maven" ./scripts/bootstrap.sh
	$(PY) -m tests.kafka.harness fetch

# The KIP-714 broker plugin jar (kafka-plugin/ -> kafka-plugin/target/telemetry-relay-kafka-plugin.jar):
# Java 17, kafka-clients provided by the broker, no other dependency. The deb and rpm ship it.
plugin:
	EXTRA_APT="default-jdk-headless maven" ./scripts/bootstrap.sh
	mvn -B -q -f kafka-plugin/pom.xml package

# Starts the reference ingest and the relay on loopback with the embedded dev config;
# `make run KAFKA=1` starts a real Kafka broker with traffic beside them, found by discovery.
run: setup $(if $(KAFKA),kafka)
	KAFKA=$(KAFKA) $(PY) -m relay.devrun

test:
	EXTRA_APT="$(TEST_APT)" ./scripts/bootstrap.sh
	$(PY) -m tests.kafka.harness fetch
	mvn -B -q -f kafka-plugin/pom.xml package
	$(VENV)/bin/ruff check relay tests bench scripts packaging
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider

# The fault suite at full size (make test runs it small), with its results table.
test-faults:
	EXTRA_APT="$(TEST_APT)" ./scripts/bootstrap.sh
	FAULT_SCALE=full $(PY) -m pytest -q -p no:cacheprovider tests/faults

# Coverage-guided fuzzing (atheris/libFuzzer) of every parser that takes outside input,
# FUZZ_SECONDS per target, from a seed corpus built from tests/fixtures. What a run learns
# stays in build/fuzz/<target> for the next run; crashes land there as crash-*. `make test`
# runs every target for a few seconds (tests/fuzz/test_fuzz.py).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := otlp exposition jolokia yaml signature

fuzz: setup
	$(PY) -m tests.fuzz.corpus build/fuzz/seeds
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/$$t; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS)s"; \
	  $(PY) tests/fuzz/fuzz.py $$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    -artifact_prefix=build/fuzz/$$t/ build/fuzz/$$t build/fuzz/seeds/$$t; \
	done

# Packages: dist/telemetry-relay_<version>_amd64.deb and dist/telemetry-relay-<version>-1.x86_64.rpm.
deb:
	EXTRA_APT="$(TEST_APT)" ./scripts/bootstrap.sh
	$(PY) packaging/build.py deb

rpm:
	EXTRA_APT="$(TEST_APT)" ./scripts/bootstrap.sh
	$(PY) packaging/build.py rpm

# The deb in a fresh Debian 12 root (debootstrap, cached): offline install, run, upgrade, purge.
test-packaging:
	EXTRA_APT="$(TEST_APT)" ./scripts/bootstrap.sh
	TELEMETRY_RELAY_PACKAGING_TEST=1 $(PY) -m pytest -q -p no:cacheprovider tests/packaging

lint: setup
	$(VENV)/bin/ruff check relay tests bench scripts packaging
	$(VENV)/bin/mypy

# Prometheus (agent mode and a remote-write receiver) and node_exporter for the scrape-path
# comparison (bench/prom_agent.py), which runs the binaries itself on free loopback ports:
# their packaged services are kept from starting (scripts/bootstrap.sh, NO_START).
BENCH_APT := prometheus prometheus-node-exporter

bench:
	EXTRA_APT="$(TEST_APT)" NO_START="$(BENCH_APT)" ./scripts/bootstrap.sh
	$(PY) -m tests.kafka.harness fetch
	mvn -B -q -f kafka-plugin/pom.xml package
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .dev build dist *.egg-info bench/work kafka-plugin/target
