"""`telemetry-relay check-config`: validate what a start would load, without starting
anything: relay.yaml with its secret and key files, then each destination's policy file
(loaded and compiled). Every error names the file, the line and the key path, and exits 2.
"""

from __future__ import annotations

import argparse

from relay import config
from relay.cli.common import EXIT_OK
from relay.policy import load_policy

# Compiling a policy does not depend on the hashing key, so the check reads no secret for it
# (and never creates the installation's: only starting the relay does).
_CHECK_KEY = b"check-config" * 3


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config).config
    paths = dict.fromkeys(config.policy_file(cfg, d) for d in cfg.destinations)  # each file once, in order
    policies = {path: load_policy(path, _CHECK_KEY) for path in paths}
    dests = ", ".join(f"{d.name} -> {d.endpoint}" for d in cfg.destinations)
    print(f"{args.config}: OK ({len(cfg.destinations)} destinations: {dests})")
    for path, policy in policies.items():
        print(f"{path}: OK (policy sha256 {policy.sha256[:12]})")
    return EXIT_OK
