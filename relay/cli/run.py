"""`telemetry-relay run`: the relay in the foreground (what the systemd unit starts).

Owns: the process-level setup before the lifecycle takes over (allocator tuning, the full
config load with its secrets, logging) and mapping a failure to start to exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from relay import config, logs
from relay.cli.common import EXIT_FAIL, EXIT_OK

log = logging.getLogger("relay.cli")


def run(args: argparse.Namespace) -> int:
    from relay import allocator
    from relay.app import Relay

    allocator.tune()
    loaded = config.load(args.config)
    logs.setup(loaded.config.log_level)
    relay = Relay(loaded)
    try:
        asyncio.run(relay.run_forever())
    except OSError as e:
        # Typically the status port is taken or the state directory is not writable.
        log.error("cannot start: %s", e)
        return EXIT_FAIL
    return EXIT_OK
