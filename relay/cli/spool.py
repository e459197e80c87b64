"""`telemetry-relay spool`: what the spool in the configured state directory holds:
queues, each destination's backlog, dead letters and quarantined files. The listing escapes
the control characters in what the spool holds (a dead letter's reason is a vendor's
answer); --json prints it as json.dumps escapes it.
"""

from __future__ import annotations

import argparse
import json
import time

from relay import config
from relay.cli.common import EXIT_OK, escape_strings, format_ago, format_bytes, format_utc


def run(args: argparse.Namespace) -> int:
    from relay.spool.inspect import summary

    info = summary(config.load_settings(args.config).state_dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    info = escape_strings(info)
    now = time.time()
    for kind, q in info["queues"].items():
        oldest = format_ago(q["oldest"], now) if q["oldest"] else "-"
        print(f"{kind}: {q['entries']} entries, {format_bytes(q['bytes'])}, oldest {oldest}")
        for dest, c in q["destinations"].items():
            print(f"  {dest}: {format_bytes(c['backlog_bytes'])} not yet accepted")
    print(f"dead letters: {len(info['dead_letters'])}")
    for d in info["dead_letters"]:
        print(f"  {format_utc(d['time'])}  {d['destination']}  {d['signal']}  {d['items']} items  "
              f"status {d['status']}: {d['reason']}")
    for q in info["quarantine"]:
        print(f"quarantined: {q['path']} ({format_bytes(q['bytes'])})")
    return EXIT_OK
