"""The outbox: an in-memory ring of the exact redacted requests the relay shipped.

Owns: keeping the most recent shipped requests exactly as they went on the wire (compressed,
as sent), with their destination, time and policy hash, up to a byte cap, for `/outbox` and
`telemetry-relay outbox`: a reviewer sees precisely what left and when. Each view is decoded
from those wire bytes; since a decoded message shows only the fields this OTLP version knows,
the view also lists every field that did not decode as one (and says so when the bytes did not
decode at all), and gives the SHA-256 of the wire bytes, the request's Content-Digest. It is an
audit view, not storage: it starts empty after a restart. The cap counts the bodies' size
before compression, so the memory it costs is a fraction of the cap.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from relay import wire as protowire
from relay.compression import decompress
from relay.otlp import SIGNAL_INFO, Signal, count_items, parse_request, to_json_dict


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
    def describe(s: Shipped, with_payload: bool, with_wire: bool = False) -> dict[str, Any]:
        """One shipped request, decoded from its wire bytes: `unknown_fields` lists what the
        decoded view cannot show (empty: the view is all there was); `undecodable` says that the
        body is not a request at all."""
        out: dict[str, Any] = {
            "time": s.time, "destination": s.destination, "signal": s.signal, "policy_sha256": s.policy_sha256,
            "bytes": s.size, "wire_bytes": len(s.wire), "encoding": s.encoding,
            "wire_sha256": hashlib.sha256(s.wire).hexdigest(),
        }
        if with_wire:
            out["wire_base64"] = base64.b64encode(s.wire).decode()
        body = s.body
        try:
            msg = parse_request(s.signal, body)
            out["unknown_fields"] = protowire.unknown_fields(SIGNAL_INFO[s.signal].request.DESCRIPTOR, body)
        except (DecodeError, protowire.Malformed) as e:
            out.update(undecodable=str(e) or type(e).__name__, items=None)
            return out
        out["items"] = count_items(s.signal, msg)
        if with_payload:
            out["request"] = to_json_dict(msg)
        return out
