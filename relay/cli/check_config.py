"""`telemetry-relay check-config`: validate what a start would load, without starting
anything. Every error names the file, the line and the key path, and exits 2.
"""

from __future__ import annotations

import argparse

from relay import config
from relay.cli.common import EXIT_OK


def run(args: argparse.Namespace) -> int:
    loaded = config.load(args.config)
    dests = ", ".join(f"{d.name} -> {d.endpoint}" for d in loaded.config.destinations)
    print(f"{args.config}: OK ({len(loaded.config.destinations)} destinations: {dests})")
    return EXIT_OK
