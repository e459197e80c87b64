"""The `telemetry-relay` command line, one module per command.

Commands: run, status, check-config, ingest (and ingest import), keys, policy, spool, outbox,
bundle, version.
`relay.cli:main` is the console entry point; `python -m relay.cli` runs the same.
"""

from relay.cli.main import main

__all__ = ["main"]
