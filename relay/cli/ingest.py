"""`telemetry-relay ingest`: the reference vendor ingest, run in the foreground, and
`ingest import`, which stores an offline bundle's requests as if they had come live.

Owns: turning the command line into the ingest's settings (API key, body cap, trusted
relay keys, the replay store, TLS, the Kafka publisher and the fleet view) and serving until
SIGTERM or SIGINT; for an import, reporting what was
stored, what was there already, and what was refused and why (exit 1 when anything was).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from relay import logs
from relay.cli.common import EXIT_FAIL, EXIT_OK, CommandError, escape_controls
from relay.secrets import read_secret
from relay.strict_yaml import SchemaError, parse_size

if TYPE_CHECKING:
    from relay.ingest.fleet import Fleet
    from relay.ingest.kafka import KafkaLedger, KafkaPublisher
    from relay.ingest.replay import NonceStore

log = logging.getLogger("relay.cli")


def run(args: argparse.Namespace) -> int:
    if args.ingest_command == "import":
        return _import(args)
    from relay.ingest import Ingest, serve

    logs.setup("info")
    if not args.store and not args.no_store and not args.kafka_bootstrap:
        raise SchemaError("command line", None, "--store", "give --store DIR, --kafka-bootstrap, or --no-store")
    api_key = read_secret(args.api_key_file, None, "API key file") if args.api_key_file else None
    try:
        max_body = parse_size(args.max_body)
    except ValueError as e:
        raise SchemaError("command line", None, "--max-body", str(e)) from None
    verifier = None
    if args.trusted_keys:
        from relay.ingest.replay import FileNonces, MemoryNonces
        from relay.ingest.verify import Verifier, load_trusted_keys

        state_dir = args.state_dir or (None if args.no_store else args.store)
        nonces: NonceStore
        if args.replay_redis:
            nonces = _redis_nonces(args.replay_redis)
        elif state_dir:
            nonces = FileNonces(state_dir, args.window, time.time())
        else:
            nonces = MemoryNonces(args.window)
            log.warning("replay state in memory only: a restart forgets the nonces seen (give --state-dir)")
        verifier = Verifier(load_trusted_keys(args.trusted_keys), window=args.window, nonces=nonces)
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SchemaError("command line", None, "--tls-cert", "--tls-cert and --tls-key go together")
        from relay.source_settings import ListenerTLSSettings
        from relay.tls import server_context

        # With --client-ca, a client certificate is required (mTLS).
        tls = server_context(ListenerTLSSettings(args.tls_cert, args.tls_key, args.client_ca))
    publisher, ledger, fleet = _kafka(args)
    ingest = Ingest(None if args.no_store else args.store, api_key, max_body, verifier, publisher, fleet, ledger,
                    args.retry_after, args.rate_limit)

    async def serve_until_signalled() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.listen, ingest, stop, tls)

    try:
        asyncio.run(serve_until_signalled())
    except OSError as e:
        log.error("cannot start the ingest on %s: %s", args.listen, e)
        return EXIT_FAIL
    return EXIT_OK


def _redis_nonces(url: str) -> NonceStore:
    from relay.ingest.replay import NoncesUnavailable, RedisNonces

    nonces = RedisNonces(url)
    try:
        nonces.ping()
    except NoncesUnavailable as e:
        # Started anyway: every request gets 503 until Redis answers, as it would mid-run.
        log.warning("%s; requests get 503 until it answers", e)
    return nonces


def _kafka(args: argparse.Namespace) -> tuple[KafkaPublisher | None, KafkaLedger | None, Fleet]:
    """The Kafka publisher and the ledger that feeds the fleet view from the topics, when asked for."""
    from relay.ingest.fleet import Fleet
    from relay.ingest.kafka import DEFAULT_TOPICS, KafkaLedger, KafkaPublisher

    if not args.kafka_bootstrap:
        return None, None, Fleet(args.fleet_destination)
    topics = dict(DEFAULT_TOPICS)
    for item in args.kafka_topic:
        signal_name, _, topic = item.partition("=")
        if signal_name not in topics or not topic:
            raise SchemaError("command line", None, "--kafka-topic", f"expected SIGNAL=TOPIC with a signal of "
                              f"{', '.join(topics)}, got {item!r}")
        topics[signal_name] = topic
    try:
        max_message = parse_size(args.kafka_max_message)
    except ValueError as e:
        raise SchemaError("command line", None, "--kafka-max-message", str(e)) from None
    publisher = KafkaPublisher(args.kafka_bootstrap, topics, timeout=args.kafka_timeout, max_message=max_message,
                               partitions=args.kafka_partitions)
    ledger: KafkaLedger | None = None
    fleet = Fleet(args.fleet_destination, count_from_one=lambda: not (ledger and ledger.retention_trimmed))
    ledger = KafkaLedger(args.kafka_bootstrap, topics, fleet.observe)
    return publisher, ledger, fleet


def _import(args: argparse.Namespace) -> int:
    from relay.export.bundle import BundleError
    from relay.ingest.bundle_import import import_bundle
    from relay.ingest.verify import load_trusted_keys

    try:
        max_body = parse_size(args.max_body)
    except ValueError as e:
        raise SchemaError("command line", None, "--max-body", str(e)) from None
    trusted = load_trusted_keys(args.trusted_keys)
    try:
        report = import_bundle(Path(args.file), trusted, Path(args.store), max_body)
    except BundleError as e:
        raise CommandError(f"{e} ({e.reason})") from None
    doc = {
        "bundle": report.bundle, "manifest_signed_by": report.manifest_key,
        "refused": f"{report.refused.reason}: {report.refused}" if report.refused else None,
        "stored": [c.name for c in report.stored], "overlapping": [c.name for c in report.overlapping],
        "duplicates": [c.name for c in report.duplicates], "items_stored": report.items_stored,
        "flagged": [{"reason": r, "message": m} for r, m in report.flagged],
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    elif report.refused:
        print(escape_controls(f"bundle {args.file} refused, nothing stored: {doc['refused']}"))
    else:
        print(escape_controls(
            f"bundle {report.bundle} (manifest signed by {report.manifest_key}): {len(report.stored)} requests "
            f"stored ({report.items_stored} items), {len(report.duplicates)} already stored (not stored again), "
            f"{len(report.flagged)} refused"))
        for c in report.overlapping:
            print(escape_controls(f"  overlap: {c.name}: seqs {c.first}-{c.last} were partly stored already; "
                                  "stored again (at least once)"))
        for c in report.duplicates:
            print(escape_controls(f"  duplicate: {c.name}: seqs {c.first}-{c.last} are stored already"))
        for reason, message in report.flagged:
            print(escape_controls(f"  refused ({reason}): {message}"))
    return EXIT_FAIL if report.refused or report.flagged else EXIT_OK
