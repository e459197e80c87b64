"""Command line: run, status, check-config, ingest, version.

Owns: argument parsing and turning every expected failure into one clear line on
stderr and an exit code (2 for bad config or usage). No traceback reaches the user
unless --debug is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from relay import __version__, config, logs
from relay.export.signing import KeyStore, SigningKeyError, public_pem
from relay.schema import SchemaError, parse_size
from relay.secrets import SecretError, read_secret, redact

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_STATUS_URL = "http://127.0.0.1:8788"

log = logging.getLogger("relay.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="telemetry-relay", description="On-prem telemetry relay: collect, spool, redact, ship."
    )
    p.add_argument("--debug", action="store_true", help="show internal tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the relay in the foreground")
    run.add_argument("--config", default=config.DEFAULT_CONFIG_PATH, help="path to relay.yaml")

    chk = sub.add_parser("check-config", help="validate the configuration without starting anything")
    chk.add_argument("--config", default=config.DEFAULT_CONFIG_PATH, help="path to relay.yaml")

    st = sub.add_parser("status", help="show what a running relay is doing (exit 1 when not ready)")
    st.add_argument("--url", default=DEFAULT_STATUS_URL, help="status server base URL")
    st.add_argument("--json", action="store_true", help="print the raw /status JSON")

    ing = sub.add_parser("ingest", help="run the reference vendor ingest")
    ing.add_argument("--listen", default="127.0.0.1:4319", help="host:port to listen on")
    ing.add_argument("--store", help="directory for the received requests (JSON lines)")
    ing.add_argument("--no-store", action="store_true", help="decode and count only (benchmarks)")
    ing.add_argument("--api-key-file", help="require this bearer token")
    ing.add_argument("--max-body", default="64MiB", help="largest decompressed body accepted")
    ing.add_argument("--trusted-keys", help="directory of relay public keys (*.pem); verify every request")
    ing.add_argument("--window", type=float, default=300.0, help="signature freshness and replay window, seconds")
    ing.add_argument("--state-dir", help="directory for the replay state (seen nonces), kept across restarts; "
                                         "default: the --store directory (with --no-store: memory only)")
    ing.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    ing.add_argument("--tls-key", help="private key of --tls-cert")
    ing.add_argument("--client-ca", help="require client certificates signed by this CA (mTLS)")

    keys = sub.add_parser("keys", help="manage the Ed25519 request-signing keys")
    keys.add_argument("action", choices=["init", "show", "rotate", "export"],
                      help="init: create if missing; show: print public keys and key ids; rotate: new key, "
                           "old one kept for signing.rotation_overlap; export: write public keys to --out")
    keys.add_argument("--config", default=config.DEFAULT_CONFIG_PATH, help="path to relay.yaml")
    keys.add_argument("--out", help="with export: directory for <key id>.pem public keys")
    keys.add_argument("--json", action="store_true", help="with show: machine-readable output")

    pol = sub.add_parser("policy", help="dry-run the redaction policy, or find what a hash token stands for")
    pol_sub = pol.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    pt = pol_sub.add_parser("test", help="show what would leave: per-rule summary, or the OTLP JSON with --json")
    pt.add_argument("--config", default=config.DEFAULT_CONFIG_PATH, help="path to relay.yaml")
    pt.add_argument("--policy", help="policy file (default: the one relay.yaml names)")
    pt.add_argument("--input", help="an OTLP request: .json (OTLP JSON) or .pb (protobuf)")
    pt.add_argument("--signal", choices=["metrics", "logs", "traces"], default="metrics")
    pt.add_argument("--from-spool", type=int, metavar="N", help="the N oldest spooled requests")
    pt.add_argument("--json", action="store_true", help="print what would leave, as OTLP JSON")
    pu = pol_sub.add_parser("unhash", help="find which recent local value (from the spool) a token stands for")
    pu.add_argument("token", help="a hash token as shipped, e.g. h:3f9a1c0b2d4e5f60")
    pu.add_argument("--config", default=config.DEFAULT_CONFIG_PATH, help="path to relay.yaml")

    sp = sub.add_parser("spool", help="what the spool holds: queues, backlog per destination, dead letters")
    sp.add_argument("--config", default=config.DEFAULT_CONFIG_PATH, help="path to relay.yaml")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    ob = sub.add_parser("outbox", help="the last payloads shipped, exactly as sent (redacted)")
    ob.add_argument("--url", default=DEFAULT_STATUS_URL, help="status server base URL")
    ob.add_argument("--last", type=int, default=5, help="how many (newest last)")
    ob.add_argument("--json", action="store_true", help="print the payloads as OTLP JSON")

    sub.add_parser("version", help="print the version")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(_dispatch(args))
    except KeyboardInterrupt:
        return EXIT_OK
    except (SchemaError, SecretError, SigningKeyError) as e:
        print(f"telemetry-relay: {redact(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        if args.debug:
            raise
        print(
            f"telemetry-relay: internal error: {e.__class__.__name__}: {redact(str(e))} "
            "(run with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_FAIL


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "version":
        print(f"telemetry-relay {__version__}")
        return EXIT_OK
    if args.command == "check-config":
        loaded = config.load(args.config)
        dests = ", ".join(f"{d.name} -> {d.endpoint}" for d in loaded.config.destinations)
        print(f"{args.config}: OK ({len(loaded.config.destinations)} destinations: {dests})")
        return EXIT_OK
    if args.command == "run":
        return _run(args.config)
    if args.command == "status":
        return _status(args.url, args.json)
    if args.command == "ingest":
        return _ingest(args)
    if args.command == "keys":
        return _keys(args)
    if args.command == "policy":
        from relay import policy_cli

        return policy_cli.run(args)
    if args.command == "spool":
        return _spool(args.config, args.json)
    if args.command == "outbox":
        return _outbox(args.url, args.last, args.json)
    raise AssertionError(args.command)


def _run(path: str) -> int:
    from relay import allocator
    from relay.app import Relay

    allocator.tune()
    loaded = config.load(path)
    logs.setup(loaded.config.log_level)
    relay = Relay(loaded)
    try:
        asyncio.run(relay.run_forever())
    except OSError as e:
        # Typically the status port is taken or the state directory is not writable.
        log.error("cannot start: %s", e)
        return EXIT_FAIL
    return EXIT_OK


def _ingest(args: argparse.Namespace) -> int:
    from relay.ingest import Ingest, serve

    logs.setup("info")
    if not args.store and not args.no_store:
        raise SchemaError("command line", None, "--store", "give --store DIR, or --no-store")
    api_key = read_secret(args.api_key_file, None, "API key file") if args.api_key_file else None
    try:
        max_body = parse_size(args.max_body)
    except ValueError as e:
        raise SchemaError("command line", None, "--max-body", str(e)) from None
    verifier = None
    if args.trusted_keys:
        from relay.export.replay import FileNonces, MemoryNonces, NonceStore
        from relay.export.signing import Verifier, load_trusted_keys

        state_dir = args.state_dir or (None if args.no_store else args.store)
        nonces: NonceStore = FileNonces(state_dir, args.window, time.time()) if state_dir else MemoryNonces(args.window)
        if not state_dir:
            log.warning("replay state in memory only: a restart forgets the nonces seen (give --state-dir)")
        verifier = Verifier(load_trusted_keys(args.trusted_keys), window=args.window, nonces=nonces)
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SchemaError("command line", None, "--tls-cert", "--tls-cert and --tls-key go together")
        from relay.ingest import server_tls

        tls = server_tls(args.tls_cert, args.tls_key, args.client_ca)
    ingest = Ingest(None if args.no_store else args.store, api_key, max_body, verifier)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.listen, ingest, stop, tls)

    try:
        asyncio.run(main())
    except OSError as e:
        log.error("cannot start the ingest on %s: %s", args.listen, e)
        return EXIT_FAIL
    return EXIT_OK


def _keys(args: argparse.Namespace) -> int:
    cfg = config.load(args.config).config
    store = KeyStore(config.key_dir(cfg), cfg.signing.rotation_overlap)
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
        from pathlib import Path

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


# -- status -----------------------------------------------------------------------------------------


def _fetch(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _status(base: str, raw: bool) -> int:
    try:
        _, data = _fetch(base.rstrip("/") + "/status")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        print(f"telemetry-relay: no relay answering at {base}: {reason}", file=sys.stderr)
        return EXIT_USAGE
    if raw:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(format_status(data))
    return EXIT_OK if data.get("ready") else EXIT_FAIL


def _spool(path: str, raw: bool) -> int:
    from relay.spool import describe

    info = describe(config.load(path).config.state_dir)
    if raw:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    now = time.time()
    for kind, q in info["queues"].items():
        oldest = _ago(q["oldest"], now) if q["oldest"] else "-"
        print(f"{kind}: {q['entries']} entries, {_bytes(q['bytes'])}, oldest {oldest}")
        for dest, c in q["destinations"].items():
            print(f"  {dest}: {_bytes(c['backlog_bytes'])} not yet accepted")
    print(f"dead letters: {len(info['dead_letters'])}")
    for d in info["dead_letters"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d["time"]))
        print(f"  {when} UTC  {d['destination']}  {d['signal']}  {d['items']} items  status {d['status']}: "
              f"{d['reason']}")
    for q in info["quarantine"]:
        print(f"quarantined: {q['path']} ({_bytes(q['bytes'])})")
    return EXIT_OK


def _outbox(base: str, last: int, raw: bool) -> int:
    url = f"{base.rstrip('/')}/outbox?last={last}&payload={1 if raw else 0}"
    try:
        _, items = _fetch(url)
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"telemetry-relay: no relay answering at {base}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return EXIT_USAGE
    if raw:
        print(json.dumps(items, indent=2))
        return EXIT_OK
    if not items:
        print("outbox is empty: nothing shipped since the relay started")
    for it in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(it["time"]))
        print(f"{when} UTC  {it['destination']}  {it['signal']}  {it['items']} items  {_bytes(it['bytes'])}  "
              f"policy {str(it.get('policy_sha256'))[:12]}")
    return EXIT_OK


def _ago(ts: float | None, now: float) -> str:
    return "never" if not ts else f"{_duration(now - ts)} ago"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_status(d: dict[str, Any]) -> str:
    now = time.time()
    verdict = "READY" if d.get("ready") else "NOT READY"
    out = [f"telemetry-relay {d.get('version')}  {verdict}  (uptime {_duration(d.get('uptime_seconds', 0))})"]
    for p in d.get("problems", []):
        out.append(f"  ! {p}")
    cfg = d.get("config", {})
    reload_note = f"last reload refused: {cfg['last_reload_error']}" if cfg.get("last_reload_error") else "ok"
    out.append(f"config: {cfg.get('path')} ({reload_note})")
    out.append("")
    out.append("Sources")
    for s in d.get("sources", []):
        state = "ok" if not s.get("last_error") else f"ERROR: {s['last_error']}"
        out.append(
            f"  {s['name']:<10} every {s['interval_seconds']:g}s  last run {_ago(s.get('last_run'), now)}  "
            f"{s.get('last_points', 0)} points  total {s.get('points_collected', 0):.0f}  {state}"
        )
    sp = d.get("spool") or {}
    out.append("")
    out.append("Spool")
    out.append(
        f"  {sp.get('entries', 0)} entries, {_bytes(sp.get('bytes', 0))} of {_bytes(sp.get('max_bytes', 0))}, "
        f"oldest {_duration(sp.get('oldest_age_seconds', 0))}"
        + ("" if sp.get("writable", True) else f"  NOT WRITABLE: {sp.get('last_error')}")
    )
    dropped = sp.get("dropped_points") or {}
    out.append("  dropped: " + (", ".join(f"{k} {v:.0f} points" for k, v in dropped.items()) or "none"))
    out.append("")
    out.append("Destinations")
    for dst in d.get("destinations", []):
        out.append(
            f"  {dst['name']}  {dst['endpoint']}\n"
            f"    last success {_ago(dst.get('last_success'), now)}, backlog {_bytes(dst.get('backlog_bytes', 0))} "
            f"({dst.get('backlog_items', 0)} items), in flight {dst.get('in_flight', 0)}, "
            f"shipped {dst.get('shipped_points', 0):.0f} points in {dst.get('shipped_requests', 0):.0f} requests"
        )
        if dst.get("backoff_seconds"):
            out.append(f"    retrying in {dst['backoff_seconds']:.1f}s")
        if dst.get("last_error"):
            out.append(f"    last error ({_ago(dst.get('last_error_time'), now)}): {dst['last_error']}")
        rej = dst.get("dropped_points") or {}
        if rej:
            out.append("    dropped: " + ", ".join(f"{k} {v:.0f} points" for k, v in rej.items()))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
