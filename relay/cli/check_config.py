"""`telemetry-relay check-config`: validate what a start would load, without starting
anything: relay.yaml with its secret and key files, each destination's policy file (loaded
and compiled), the signing key and the policy secret in the state directory where they
exist (their mode and format; a start creates the missing ones). Every error names the
file and the reason (for relay.yaml and the policies also the line and the key path), and
exits 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from relay import config
from relay.cli.common import EXIT_OK, EXIT_USAGE, CommandError, escape_controls
from relay.config import Config
from relay.export.signing import KeyStore
from relay.policy import SECRET_FILE, existing_secret, load_policy

# Compiling a policy does not depend on the hashing key, so the check reads no secret for it
# (and never creates the installation's: only starting the relay does).
_CHECK_KEY = b"check-config" * 3


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config).config
    paths = dict.fromkeys(config.policy_file(cfg, d) for d in cfg.destinations)  # each file once, in order
    policies = {path: load_policy(path, _CHECK_KEY) for path in paths}
    state_files = _state_files(cfg)
    dests = ", ".join(f"{d.name} -> {d.target}" for d in cfg.destinations)
    print(escape_controls(f"{args.config}: OK ({len(cfg.destinations)} destinations: {dests})"))
    for path, policy in policies.items():
        print(escape_controls(f"{path}: OK (policy sha256 {policy.sha256[:12]})"))
    for line in state_files:
        print(escape_controls(line))
    return EXIT_OK


def _state_files(cfg: Config) -> list[str]:
    """Check the signing key and the policy secret as a start would load them; one line each.

    Reads only the current signing key: listing the retired ones deletes those past their
    overlap, and a check writes nothing.
    """
    lines = []
    if cfg.signing.enabled:
        store = KeyStore(config.key_dir(cfg), cfg.signing.rotation_overlap)
        if _exists(store.current_path):
            lines.append(f"{store.current_path}: OK (signing key id {store.current().key_id})")
        else:
            lines.append(f"{store.current_path}: none yet (a start creates the signing key)")
    secret_path = Path(cfg.state_dir) / SECRET_FILE
    try:
        secret = existing_secret(cfg.state_dir)
    except OSError as e:
        raise _unreadable(secret_path, e) from None
    lines.append(f"{secret_path}: " + ("OK (policy secret)" if secret else "none yet (a start creates it)"))
    return lines


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as e:  # a state directory private to the service user
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: OSError) -> CommandError:
    return CommandError(f"cannot read {path}: {e.strerror} (run check-config as the service user or root)",
                        EXIT_USAGE)
