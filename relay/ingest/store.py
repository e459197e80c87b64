"""The reference ingest's store: accepted requests as JSON lines, and what was stored already.

Owns: the record kept for each accepted request, live or imported from a bundle (one JSON
line, OTLP JSON, in <store>/<signal>-YYYY-MM-DD.jsonl, with the key id that signed it, the
policy hash, the relay instance and the sequence range it carried), and the `Ledger` of
the (instance, signal) ranges already stored, which the bundle import checks each request
against so that nothing is stored twice.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from relay.export import sequence
from relay.otlp import SIGNALS, Signal, to_json_dict

__all__ = ["Ledger", "append", "encode_line", "record", "records"]


def record(headers: Mapping[str, str], key_id: str | None, origin: str) -> dict[str, Any]:
    """The record of one accepted request, before its body is added (encode_line).
    `headers` were verified (or no verifier is configured); the sequence was checked for form."""
    seq = headers.get(sequence.SEQUENCE_HEADER)
    return {
        "received_at": time.time(),
        "origin": origin,  # "live", or "bundle:<bundle id>"
        "user_agent": headers.get("User-Agent", ""),
        "key_id": key_id,
        "policy_sha256": headers.get("X-Relay-Policy-SHA256"),
        "relay_instance": headers.get(sequence.INSTANCE_HEADER),
        "sequence": list(sequence.parse_range(seq)) if seq else None,
        "request": None,
    }


def encode_line(rec: dict[str, Any], msg: Message) -> str:
    """CPU work for a large request: the live ingest calls it in a worker thread."""
    rec["request"] = to_json_dict(msg)
    return json.dumps(rec, separators=(",", ":")) + "\n"


def path_for(store: Path, signal: Signal) -> Path:
    return store / f"{signal}-{time.strftime('%Y-%m-%d', time.gmtime())}.jsonl"


def append(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def records(store: Path, signal: Signal) -> Iterator[dict[str, Any]]:
    """Every stored record of one signal, oldest file first."""
    for path in sorted(store.glob(f"{signal}-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue  # a line torn by a crash mid-write


class Ledger:
    """The sequence ranges stored per (relay instance, signal), as disjoint sorted intervals."""

    def __init__(self) -> None:
        self._ranges: dict[tuple[str, str], list[tuple[int, int]]] = {}

    @classmethod
    def of_store(cls, store: Path) -> Ledger:
        ledger = cls()
        for signal in SIGNALS:
            for rec in records(store, signal):
                seq, instance = rec.get("sequence"), rec.get("relay_instance")
                if isinstance(instance, str) and isinstance(seq, list) and len(seq) == 2:
                    ledger.add(instance, signal, int(seq[0]), int(seq[1]))
        return ledger

    def covers(self, instance: str, signal: str, first: int, last: int) -> bool:
        """Every seq of first..last is stored already."""
        ranges = self._ranges.get((instance, signal), [])
        i = bisect.bisect_right(ranges, (first, 2**63)) - 1
        return i >= 0 and ranges[i][0] <= first and ranges[i][1] >= last

    def overlaps(self, instance: str, signal: str, first: int, last: int) -> bool:
        """Some seq of first..last is stored already."""
        ranges = self._ranges.get((instance, signal), [])
        i = bisect.bisect_right(ranges, (last, 2**63)) - 1
        return i >= 0 and ranges[i][1] >= first

    def add(self, instance: str, signal: str, first: int, last: int) -> None:
        ranges = self._ranges.setdefault((instance, signal), [])
        # Merge with every interval it touches or adjoins, so `covers` needs to look at one.
        lo = bisect.bisect_left(ranges, (first, 0))
        if lo > 0 and ranges[lo - 1][1] >= first - 1:
            lo -= 1
        hi = lo
        while hi < len(ranges) and ranges[hi][0] <= last + 1:
            hi += 1
        merged = ranges[lo:hi]
        if merged:
            first, last = min(first, merged[0][0]), max(last, max(r[1] for r in merged))
        ranges[lo:hi] = [(first, last)]
