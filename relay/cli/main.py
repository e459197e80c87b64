"""The `telemetry-relay` argument parser, and dispatch to the module of each command.

Owns: turning every expected failure (common.USER_ERRORS) into one clear line on stderr,
secrets redacted and control characters escaped (messages quote files and answers), and
its exit code: 2 for bad config, usage or secrets, or no relay answering; a command's own
CommandError says its code. Anything else becomes one "internal error" line and exit 1.
No traceback reaches the user unless --debug is given.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from relay import __version__, config
from relay.cli.common import DEFAULT_STATUS_URL, EXIT_FAIL, EXIT_OK, EXIT_USAGE, USER_ERRORS, escape_controls, exit_code
from relay.secrets import redact

# Each command but `version` has its own module in this package, with a run(args) -> int.
COMMAND_MODULES = {
    "run": "run",
    "check-config": "check_config",
    "status": "status",
    "ingest": "ingest",
    "keys": "keys",
    "policy": "policy",
    "spool": "spool",
    "outbox": "outbox",
    "check-connection": "check_connection",
    "support-bundle": "support_bundle",
    "bundle": "bundle",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="telemetry-relay", description="On-prem telemetry relay: collect, spool, redact, ship."
    )
    p.add_argument("--debug", action="store_true", help="show internal tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the relay in the foreground")
    run.add_argument("--config", default=config.DEFAULT_CONFIG_PATH, help="path to relay.yaml")

    chk = sub.add_parser("check-config", help="validate relay.yaml, the policy files and the key and secret files "
                                              "without starting anything")
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
    ing.add_argument("--kafka-bootstrap", metavar="HOST:PORT[,...]",
                     help="publish every verified request to Kafka (a topic per signal); 200 only once Kafka has it")
    ing.add_argument("--kafka-topic", action="append", default=[], metavar="SIGNAL=TOPIC",
                     help="topic of a signal (default: metrics=otlp_metrics, logs=otlp_logs, traces=otlp_spans)")
    ing.add_argument("--kafka-timeout", type=float, default=10.0,
                     help="seconds Kafka has to acknowledge a record before the request gets 503")
    ing.add_argument("--kafka-max-message", default="1000000",
                     help="largest record (the producer's message.max.bytes); a larger request gets 413")
    ing.add_argument("--kafka-partitions", type=int, default=6, help="partitions of a topic the ingest creates")
    ing.add_argument("--replay-redis", metavar="URL",
                     help="keep the replay state in this Redis (redis://host:port/db), shared by every replica")
    ing.add_argument("--fleet-destination", action="append", default=[], metavar="NAME",
                     help="the relays' destination name for this ingest: only its drops explain gaps (default: all)")
    ing.add_argument("--retry-after", type=int, default=5, help="Retry-After seconds of a 503 or 429")
    ing.add_argument("--rate-limit", type=float, default=0.0, metavar="REQUESTS_PER_S",
                     help="requests per second accepted on the data paths; above it 429 (default: no limit)")
    ing_sub = ing.add_subparsers(dest="ingest_command", metavar="ACTION")
    imp = ing_sub.add_parser("import", help="verify an offline bundle's requests and store those that pass")
    imp.add_argument("file", help="a bundle file (.bundle)")
    imp.add_argument("--trusted-keys", required=True, help="directory of relay public keys (*.pem)")
    imp.add_argument("--store", required=True, help="the ingest's store directory (JSON lines)")
    imp.add_argument("--max-body", default="64MiB", help="largest decompressed body accepted")
    imp.add_argument("--json", action="store_true", help="machine-readable report")

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

    cc = sub.add_parser("check-connection", help="test the way to each destination step by step (DNS, TCP, proxy, "
                                                 "TLS, HTTP, clock, API key, signature); exit 1 when a step fails")
    cc.add_argument("--config", default=config.DEFAULT_CONFIG_PATH, help="path to relay.yaml")
    cc.add_argument("--destination", metavar="NAME", help="only this destination")
    cc.add_argument("--json", action="store_true", help="machine-readable output")

    sb = sub.add_parser("support-bundle", help="write a tar.gz of plain text and JSON for a support case "
                                               "(secrets masked; read it before sending)")
    sb.add_argument("--config", default=config.DEFAULT_CONFIG_PATH, help="path to relay.yaml")
    sb.add_argument("--out", required=True, help="the archive to write (.tar.gz)")
    sb.add_argument("--url", help="status server base URL (default: server.listen from relay.yaml)")
    sb.add_argument("--log-lines", type=int, default=1000, metavar="N", help="how many recent log lines")
    sb.add_argument("--log-file", help="the relay's log file, when it does not log to journald")
    sb.add_argument("--with-payloads", action="store_true",
                    help="also the last payloads shipped (the outbox, after redaction); off by default")

    bun = sub.add_parser("bundle", help="offline bundles: show one, export a destination's backlog, confirm one")
    bun_sub = bun.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    bs = bun_sub.add_parser("show", help="what a bundle holds, and whether it checks out against this relay's keys")
    bs.add_argument("file", help="a bundle file (.bundle)")
    bs.add_argument("--config", default=config.DEFAULT_CONFIG_PATH, help="path to relay.yaml")
    bs.add_argument("--json", action="store_true", help="the manifest and the checks, as JSON")
    be = bun_sub.add_parser("export", help="write what waits for a destination into a bundle (not yet delivered)")
    be.add_argument("--destination", required=True, help="the destination whose backlog to export")
    be.add_argument("--since", help="only entries spooled from then on: a Unix time, or an ISO 8601 time")
    be.add_argument("--out", required=True, help="the bundle file to write")
    be.add_argument("--config", default=config.DEFAULT_CONFIG_PATH, help="path to relay.yaml")
    bc = bun_sub.add_parser("confirm", help="the vendor has the bundle: its entries count as delivered "
                                            "(with the relay stopped)")
    bc.add_argument("file", help="a bundle file written by bundle export")
    bc.add_argument("--config", default=config.DEFAULT_CONFIG_PATH, help="path to relay.yaml")

    sub.add_parser("version", help="print the version")
    return p



def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command is None:
        parser().print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return dispatch(args)
    except KeyboardInterrupt:
        return EXIT_OK
    except USER_ERRORS as e:
        print(f"telemetry-relay: {escape_controls(redact(str(e)))}", file=sys.stderr)
        return exit_code(e)
    except Exception as e:
        if args.debug:
            raise
        print(
            f"telemetry-relay: internal error: {e.__class__.__name__}: {escape_controls(redact(str(e)))} "
            "(run with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_FAIL


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "version":
        print(f"telemetry-relay {__version__}")
        return EXIT_OK
    # Imported only when it runs, so that `status` or `version` do not load the whole pipeline.
    module = importlib.import_module(f"relay.cli.{COMMAND_MODULES[args.command]}")
    command: Callable[[argparse.Namespace], int] = module.run
    return command(args)
