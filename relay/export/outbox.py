"""The outbox: an in-memory ring of the exact redacted payloads the relay shipped.

Owns: keeping the most recent shipped request bodies (before compression), with their
destination, time and policy hash, up to a byte cap, for `/outbox` and `telemetry-relay
outbox`: a reviewer sees precisely what left and when. It is an audit view, not storage:
it starts empty after a restart. The cap counts the bodies' own size; they are held in the
compressed form that was sent (decompressed on view, byte for byte the same), so the memory
it costs is a fraction of the cap.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from relay.compression import decompress
from relay.otlp import Signal, count_items, parse_request, to_json_dict


@dataclass(frozen=True)
class Shipped:
    time: float
    destination: str
    signal: Signal
    policy_sha256: str | None
    wire: bytes  # as sent
    encoding: str
    size: int  # of the body before compression

    @property
    def body(self) -> bytes:
        return decompress(self.wire, self.encoding, max(self.size, 1))


class Outbox:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: deque[Shipped] = deque()
        self._bytes = 0
        self._lock = threading.Lock()  # written from compression threads, read by the server

    def add(self, destination: str, signal: Signal, size: int, wire: bytes, encoding: str,
            policy_sha256: str | None) -> None:
        if size > self.max_bytes:
            return  # one body larger than the whole ring: nothing sensible to keep
        with self._lock:
            self._items.append(Shipped(time.time(), destination, signal, policy_sha256, wire, encoding, size))
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._bytes -= self._items.popleft().size

    def last(self, n: int) -> list[Shipped]:
        with self._lock:
            return list(self._items)[-n:] if n > 0 else []

    @staticmethod
    def describe(s: Shipped, with_payload: bool) -> dict[str, Any]:
        msg = parse_request(s.signal, s.body)
        out: dict[str, Any] = {
            "time": s.time, "destination": s.destination, "signal": s.signal, "policy_sha256": s.policy_sha256,
            "bytes": s.size, "wire_bytes": len(s.wire), "items": count_items(s.signal, msg),
        }
        if with_payload:
            out["request"] = to_json_dict(msg)
        return out
