"""`telemetry-relay ingest`: the reference vendor ingest, run in the foreground.

Owns: turning the command line into the ingest's settings (API key, body cap, trusted
relay keys, TLS) and serving until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time

from relay import logs
from relay.cli.common import EXIT_FAIL, EXIT_OK
from relay.schema import SchemaError, parse_size
from relay.secrets import read_secret

log = logging.getLogger("relay.cli")


def run(args: argparse.Namespace) -> int:
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
        from relay.ingest.replay import FileNonces, MemoryNonces, NonceStore
        from relay.ingest.verify import Verifier, load_trusted_keys

        state_dir = args.state_dir or (None if args.no_store else args.store)
        nonces: NonceStore = FileNonces(state_dir, args.window, time.time()) if state_dir else MemoryNonces(args.window)
        if not state_dir:
            log.warning("replay state in memory only: a restart forgets the nonces seen (give --state-dir)")
        verifier = Verifier(load_trusted_keys(args.trusted_keys), window=args.window, nonces=nonces)
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SchemaError("command line", None, "--tls-cert", "--tls-cert and --tls-key go together")
        from relay.config import ListenerTLSSettings
        from relay.tls import server_context

        # With --client-ca, a client certificate is required (mTLS).
        tls = server_context(ListenerTLSSettings(args.tls_cert, args.tls_key, args.client_ca))
    ingest = Ingest(None if args.no_store else args.store, api_key, max_body, verifier)

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
