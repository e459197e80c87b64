"""`telemetry-relay check-connection`: the connection self-test, step by step.

Owns: the configuration step (relay.yaml, the credentials and the signing key, read as a
start reads them), running the network steps of relay/export/probe.py for each destination
(or the one --destination names), printing each step's verdict with its fix, and recording
the result in the state directory, where the running relay's /status and status page show
it. Exits 1 when any step fails, 2 when the destination named does not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from relay import config
from relay.cli.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, CommandError, escape_controls
from relay.config import DestinationSettings, LoadedConfig
from relay.export import probe, probe_result
from relay.export.probe import Target
from relay.export.probe_result import LABELS, NETWORK_STEPS, Step
from relay.export.signing import KeyStore, Signer, SigningKeyError
from relay.secrets import SecretError, redact
from relay.strict_yaml import SchemaError

_MARK = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}


def run(args: argparse.Namespace) -> int:
    started = time.time()
    state_dir: str | None = None
    try:
        loaded = config.load(args.config)
    except (SchemaError, SecretError) as e:
        destinations = [_unloadable(args.config, str(e))]
        state_dir = _state_dir_despite(args.config)
    else:
        state_dir = loaded.config.state_dir
        destinations = [_check(loaded, d) for d in _chosen(loaded, args.destination)]
    result = {"time": started, "config": args.config, "ok": all(d["ok"] for d in destinations),
              "destinations": destinations}
    if args.json:
        print(redact(json.dumps(result, indent=2, sort_keys=True)))
    else:
        print(format_result(result))
    if state_dir:
        try:
            path = probe_result.save_result(state_dir, result)
        except OSError as e:
            print(escape_controls(f"telemetry-relay: the result was not recorded for /status: {e}"), file=sys.stderr)
        else:
            if not args.json:
                print(escape_controls(f"(recorded in {path}; the running relay shows it in /status)"))
    return EXIT_OK if result["ok"] else EXIT_FAIL


def _chosen(loaded: LoadedConfig, name: str | None) -> list[DestinationSettings]:
    dests = list(loaded.config.destinations)
    if name is None:
        return dests
    chosen = [d for d in dests if d.name == name]
    if not chosen:
        names = ", ".join(d.name for d in dests)
        raise CommandError(f"no destination {name!r} in {loaded.path} (it has: {names})", EXIT_USAGE)
    return chosen


def _check(loaded: LoadedConfig, d: DestinationSettings) -> dict[str, Any]:
    if d.kind == "bundle":
        step = _bundle_directory(d)
        return {"name": d.name, "endpoint": d.target, "ok": step.status != "fail",
                "steps": probe_result.steps_as_dicts([step])}
    configuration, target = _configuration(loaded, d)
    if target is None:
        steps = [configuration, *(probe_result.skipped_after("configuration", n) for n in NETWORK_STEPS)]
    else:
        steps = [configuration, *probe.check(target)]
    return {"name": d.name, "endpoint": redact(d.target), "ok": all(s.status != "fail" for s in steps),
            "steps": probe_result.steps_as_dicts(steps)}


def _bundle_directory(d: DestinationSettings) -> Step:
    """A bundle destination has no network path: what it needs is a directory it can write."""
    directory = Path(str(d.directory))
    probe_dir = directory if directory.is_dir() else directory.parent
    if os.access(probe_dir, os.W_OK | os.X_OK):
        return Step("bundle", "ok", f"bundles are written to {directory} (no network path to check)")
    return Step("bundle", "fail", f"{probe_dir} is not writable by this user",
                "run check-connection as the service user or root, and give the service user that directory")


def _configuration(loaded: LoadedConfig, d: DestinationSettings) -> tuple[Step, Target | None]:
    """The configuration step: what the probe will present, read as a start reads it."""
    cfg = loaded.config
    source = (f"api_key_file {d.api_key_file}" if d.api_key_file else
              f"environment variable {d.api_key_env}" if d.api_key_env else "none configured")
    notes = [f"{loaded.path} loaded", f"API key: {source}"]
    signer = None
    warn, fix = False, ""
    if cfg.signing.enabled:
        store = KeyStore(config.key_dir(cfg), cfg.signing.rotation_overlap)
        try:
            exists = store.exists()
            key = store.current() if exists else None
        except (OSError, SigningKeyError) as e:
            return Step("configuration", "fail", f"cannot read the signing key in {store.dir}: {e}",
                        "run check-connection as the service user or root; check the key file's mode (0600)"), None
        if key is None:
            warn, fix = True, "start the relay once, or run: telemetry-relay keys init; then register it (keys show)"
            notes.append(f"no signing key in {store.dir} yet: the probe goes unsigned")
        else:
            # Only the current key: once a rotation's overlap ends, it is the one that must be registered.
            signer = Signer([key])
            notes.append(f"signing key id {key.key_id}")
    else:
        notes.append("signing off")
    if d.tls.insecure_skip_verify:
        warn, fix = True, "turn tls.insecure_skip_verify off and set tls.ca_file instead"
        notes.append("TLS certificate verification is OFF")
    target = Target(d, loaded.api_keys.get(d.name), source, loaded.proxy_passwords.get(d.name), signer)
    return Step("configuration", "warn" if warn else "ok", "; ".join(notes), fix), target


def _unloadable(path: str, error: str) -> dict[str, Any]:
    steps = [Step("configuration", "fail", redact(error),
                  "correct relay.yaml (or the file it names) at the place the error gives; "
                  "telemetry-relay check-config checks everything a start loads"),
             *(probe_result.skipped_after("configuration", n) for n in NETWORK_STEPS)]
    return {"name": None, "endpoint": None, "ok": False, "steps": probe_result.steps_as_dicts(steps)}


def _state_dir_despite(path: str) -> str | None:
    """The state directory of a config whose secrets cannot be read, where its syntax allows."""
    try:
        state = config.load_settings(path).state_dir
    except (SchemaError, OSError):
        return None
    return state if Path(state).is_dir() else None


def format_result(result: dict[str, Any]) -> str:
    """Each destination's steps, one line each, the fix under a failure or a warning. What the
    destination answered is in here, so every line is control-escaped."""
    out = []
    for d in result["destinations"]:
        out.append(f"destination {d['name']} ({d['endpoint']})" if d["name"] else "configuration")
        for s in d["steps"]:
            if s["status"] == "skipped":
                out.append(f"  {LABELS[s['name']]:<14} skipped ({s['detail']})")
                continue
            out.append(f"  {LABELS[s['name']]:<14} {_MARK[s['status']]:<8} {s['detail']}")
            if s["fix"] and s["status"] in ("fail", "warn"):
                out.append(f"  {'':<14} {'':<8} fix: {s['fix']}")
        out.append("  => " + ("every step passed" if d["ok"] else "FAILED"))
    return "\n".join(escape_controls(line) for line in out)
