# Every target sets up what it needs first (Debian packages, .venv), so each works
# on a fresh Debian 12 host as root.
VENV := .venv
PY := $(VENV)/bin/python
BOOT := $(VENV)/.installed

.PHONY: all setup run test test-fast lint bench clean

all: setup

$(BOOT): pyproject.toml scripts/bootstrap.sh
	./scripts/bootstrap.sh

setup: $(BOOT)

# Starts the reference ingest and the relay on loopback with the embedded dev config.
run: $(BOOT)
	$(PY) -m relay.devrun

test: $(BOOT)
	$(VENV)/bin/ruff check relay tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(BOOT)
	$(VENV)/bin/ruff check relay tests bench
	$(VENV)/bin/mypy

bench: $(BOOT)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .dev build dist *.egg-info bench/work
