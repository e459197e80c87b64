"""`telemetry-relay outbox`: the last payloads a running relay shipped, exactly as sent
(redacted, before compression), read from its status server. The listing escapes the
control characters in what the server sent; --json prints it as json.dumps escapes it.
"""

from __future__ import annotations

import argparse
import json

from relay.cli.common import EXIT_OK, escape_strings, fetch, format_bytes, format_utc


def run(args: argparse.Namespace) -> int:
    items = fetch(args.url, f"/outbox?last={args.last}&payload={1 if args.json else 0}")
    if args.json:
        print(json.dumps(items, indent=2))
        return EXIT_OK
    if not items:
        print("outbox is empty: nothing shipped since the relay started")
    for it in escape_strings(items):
        print(f"{format_utc(it['time'])}  {it['destination']}  {it['signal']}  {it['items']} items  "
              f"{format_bytes(it['bytes'])}  policy {str(it.get('policy_sha256'))[:12]}")
    return EXIT_OK
