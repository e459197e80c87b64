"""`telemetry-relay outbox`: the last requests a running relay shipped, decoded from the
bytes it sent (redacted), read from its status server; any field that did not decode as a
known OTLP field is flagged. The listing escapes the control characters in what the server
sent; --json prints it as json.dumps escapes it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

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
              f"{format_bytes(it['bytes'])}  policy {str(it.get('policy_sha256'))[:12]}{_flags(it)}")
    return EXIT_OK


def _flags(it: dict[str, Any]) -> str:
    """What the decoded view cannot show: fields unknown to this OTLP version, or no request at all."""
    if it.get("undecodable"):
        return f"  NOT A VALID REQUEST: {it['undecodable']}"
    unknown = it.get("unknown_fields") or []
    return f"  {len(unknown)} UNKNOWN FIELDS: {', '.join(unknown[:5])}" if unknown else ""
