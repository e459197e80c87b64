"""`telemetry-relay keys init|show|rotate|export`: the Ed25519 request-signing keys in the
configured key directory, and their public halves to register with the vendor.

relay.yaml is loaded without its secrets: on a fresh install the operator registers the
public key before there is an API key. `init` and `rotate` make the state directory that
holds the keys private (0700) as a start does, even before the first start.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import time
from pathlib import Path

from relay import config
from relay.cli.common import EXIT_OK, CommandError
from relay.export.signing import KeyStore, public_pem
from relay.strict_yaml import SchemaError


def run(args: argparse.Namespace) -> int:
    cfg = config.load_settings(args.config)
    store = KeyStore(config.key_dir(cfg), cfg.signing.rotation_overlap)
    if args.action in ("init", "rotate") and store.dir.is_relative_to(cfg.state_dir):
        _private_state_dir(cfg.state_dir)
    if args.action == "init":
        existed = store.exists()
        key = store.init()
        print(f"{'signing key exists' if existed else 'created signing key'}: key id {key.key_id}")
        print(public_pem(key.public), end="")
        return EXIT_OK
    if args.action == "rotate":
        new, old = store.rotate()
        print(f"new signing key: {new.key_id}")
        print(f"retired key {old.key_id} still signs (as a second signature) for "
              f"{cfg.signing.rotation_overlap:g}s; register the new public key with the vendor:")
        print(public_pem(new.public), end="")
        print("Reload the relay to use it: systemctl reload telemetry-relay")
        return EXIT_OK
    keys = store.active()
    if args.action == "export":
        if not args.out:
            raise SchemaError("command line", None, "--out", "keys export needs --out DIR")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for k in keys:
            (out / f"{k.key_id}.pem").write_text(public_pem(k.public))
        print(f"wrote {len(keys)} public keys to {out}")
        return EXIT_OK
    if args.json:
        print(json.dumps([{"key_id": k.key_id, "public_key_pem": public_pem(k.public),
                           "retired_at": k.retired_at} for k in keys], indent=2))
        return EXIT_OK
    for k in keys:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(k.retired_at or 0))
        state = "current" if k.retired_at is None else f"retired {when} UTC"
        print(f"key id {k.key_id} ({state}, algorithm ed25519)")
        print(public_pem(k.public), end="")
    return EXIT_OK


def _private_state_dir(state_dir: str) -> None:
    """Create the state directory 0700, owned by whoever runs this, as a start does; or
    tighten it to 0700. Otherwise the key store would make it on its way to the key
    directory, readable by all (0755).
    """
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        if stat.S_IMODE(os.stat(state_dir).st_mode) & 0o077:
            os.chmod(state_dir, 0o700)
    except OSError as e:
        raise CommandError(f"cannot make the state directory {state_dir} private: {e.strerror}") from None
