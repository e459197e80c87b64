"""`telemetry-relay policy test|unhash`: the redaction policy, for operators and reviewers.

Owns: the dry run (what a policy would let out of a given request or of the spooled
backlog, per rule or as OTLP JSON) and finding which recent local value a hash token
stands for, by hashing the values found in the spool with this installation's secret.
What came from the spool or the policy file is printed control-escaped (or as a repr).

Both only read: they load relay.yaml without its secrets (API keys, passwords), and they
never create the policy secret; only starting the relay does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from relay import config
from relay.cli.common import EXIT_FAIL, CommandError, escape_controls
from relay.otlp import SIGNALS, Signal, from_json, parse_request, to_json_dict
from relay.policy import SECRET_FILE, existing_secret, load_policy
from relay.spool.inspect import oldest_entries
from relay.strict_yaml import SchemaError


def run(args: argparse.Namespace) -> int:
    if args.policy_command == "test":
        return _test(args)
    return _unhash(args)


def _inputs(args: argparse.Namespace, state_dir: str | None) -> list[tuple[Signal, bytes]]:
    if args.input:
        path = Path(args.input)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SchemaError(str(path), None, "--input", f"cannot read: {e.strerror}") from None
        try:
            msg = from_json(args.signal, data) if path.suffix == ".json" else parse_request(args.signal, data)
        except Exception as e:
            raise SchemaError(str(path), None, "--input", f"not an OTLP {args.signal} request: {e}") from None
        return [(args.signal, msg.SerializeToString())]
    if args.from_spool:
        assert state_dir is not None, "_test loads relay.yaml whenever --from-spool is given"
        out: list[tuple[Signal, bytes]] = []
        for signal in SIGNALS:
            out += [(signal, e.payload) for e in oldest_entries(state_dir, signal, args.from_spool)]
        return out
    raise SchemaError("command line", None, "--input", "give --input FILE or --from-spool N")


def _secret(state_dir: str) -> bytes | None:
    """This installation's hashing secret, or None before the relay's first start.

    A secret file others can read, or one without a hex key, is refused (SecretError) as a
    start refuses it.
    """
    try:
        return existing_secret(state_dir)
    except OSError as e:
        path = Path(state_dir) / SECRET_FILE
        raise CommandError(f"cannot read {path}: {e.strerror} (run as the service user or root)") from None


def _test(args: argparse.Namespace) -> int:
    cfg = None
    if not args.policy or args.from_spool:
        cfg = config.load_settings(args.config)
    policy_path = args.policy or (cfg.policy.file if cfg else "")
    state_dir = cfg.state_dir if cfg else None
    # Hash tokens in a dry run match the relay's only with its secret; without it, a throwaway one.
    secret = _secret(state_dir) if state_dir else None
    policy = load_policy(policy_path, secret or b"dry-run" * 4)
    totals: dict[tuple[str, str], int] = defaultdict(int)
    items_in = items_out = 0
    redacted: list[dict[str, Any]] = []
    for signal, body in _inputs(args, state_dir):
        new_body, outcome = policy.apply(signal, body)
        items_in += outcome.items_in
        items_out += outcome.items_out
        for key, n in outcome.counts.items():
            totals[key] += n
        if args.json:
            redacted.append({"signal": signal, "request": to_json_dict(parse_request(signal, new_body))})
    if state_dir and secret is None and any(action == "hashed" for _, action in totals):
        print(f"telemetry-relay: note: no {SECRET_FILE} in {state_dir} yet (the relay creates it on its first "
              "start), so these hash tokens come from a throwaway key and differ from what the relay will ship",
              file=sys.stderr)
    if args.json:
        print(json.dumps(redacted, indent=2))
        return 0
    print(f"policy {escape_controls(policy_path)} (sha256 {policy.sha256[:12]})")
    print(f"items in: {items_in}, would leave: {items_out}, dropped whole: {items_in - items_out}")
    if not totals:
        print("no rule changed anything")
    by_rule: dict[str, dict[str, int]] = defaultdict(dict)
    for (rule, action), n in totals.items():
        by_rule[rule][action] = n
    for rule in sorted(by_rule):
        actions = ", ".join(f"{a} {n}" for a, n in sorted(by_rule[rule].items()))
        print(f"  {escape_controls(rule):<40} {escape_controls(actions)}")
    return 0


def _strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (where, string) in an OTLP JSON document."""
    out: list[tuple[str, str]] = []
    if isinstance(node, dict):
        if "key" in node and "value" in node and isinstance(node["value"], dict):
            for where, s in _strings(node["value"], path):
                out.append((node["key"] if where in ("", path) else where, s))
            return out
        for k, v in node.items():
            out += _strings(v, k if k in ("body", "name") else path)
    elif isinstance(node, list):
        for v in node:
            out += _strings(v, path)
    elif isinstance(node, str):
        out.append((path, node))
    return out


def _unhash(args: argparse.Namespace) -> int:
    cfg = config.load_settings(args.config)
    secret = _secret(cfg.state_dir)
    if secret is None:
        raise CommandError(
            f"no {SECRET_FILE} in {cfg.state_dir} yet, so nothing has been hashed on this installation: "
            "the relay creates it on its first start (systemctl start telemetry-relay)", EXIT_FAIL)
    policy = load_policy(cfg.policy.file, secret)
    found: dict[str, set[str]] = defaultdict(set)
    for signal in SIGNALS:
        for entry in oldest_entries(cfg.state_dir, signal, 1_000_000):
            doc = to_json_dict(parse_request(signal, entry.payload))
            for where, value in _strings(doc):
                if policy.token(value) == args.token:
                    found[value].add(where or signal)
                # A hashed substring (an address in a log line, say) is a detector match inside it.
                for part in policy.hash_candidates(value):
                    if policy.token(part) == args.token:
                        found[part].add(where or signal)
    if not found:
        print(f"{escape_controls(args.token)}: no value in the spool hashes to it "
              "(only data still spooled can be looked up)")
        return 1
    for value, wheres in found.items():
        # repr() escapes the value; where it was seen (an attribute key) needs it as much.
        seen_in = ", ".join(escape_controls(w) for w in sorted(wheres))
        print(f"{escape_controls(args.token)} = {value!r}  (seen in: {seen_in})")
    return 0
