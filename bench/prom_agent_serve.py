"""The scrape front both agents read through in bench/prom_agent.py, and the tally of what came back.

Owns: one loopback HTTP server with a path per (agent, target). `/<agent>/seq` is a target of
its own whose exposition carries a per-agent scrape sequence number (`bench_scrape_seq` = n for
the nth scrape served to that agent) and a fixed number of other series, so what an agent
scraped is known here exactly. `/<agent>/<name>` passes a scrape through to a real target
(the broker's JMX exporter, node_exporter) and counts the scrapes and the sample lines served
to each agent, the same way for both. `tally` turns the sequence numbers found at a receiver
into scraped / delivered / lost / duplicated.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SEQ_METRIC = "bench_scrape_seq"
PAD_PREFIX = "bench_pad_"


def seq_exposition(n: int, pad: int) -> bytes:
    """The nth scrape of the sequence target: the sequence gauge and `pad` constant gauges.
    No labels, so a redaction policy's attribute rules cannot fold two series into one."""
    lines = [f"# TYPE {SEQ_METRIC} gauge", f"{SEQ_METRIC} {n}"]
    for i in range(pad):
        lines += [f"# TYPE {PAD_PREFIX}{i:03d} gauge", f"{PAD_PREFIX}{i:03d} {i}"]
    return ("\n".join(lines) + "\n").encode()


def sample_lines(body: bytes) -> int:
    """Samples in a text or OpenMetrics exposition: every line that is neither empty nor a comment."""
    return sum(1 for line in body.split(b"\n") if line.strip() and not line.startswith(b"#"))


@dataclass
class Served:
    """What one agent was served by one target path."""

    scrapes: int = 0
    samples: int = 0
    bytes: int = 0
    errors: int = 0


@dataclass
class Tally:
    scraped: int  # scrapes served to the agent (the highest sequence number)
    delivered: int  # distinct sequence numbers at the receiver
    lost: int
    duplicated: int  # extra copies of a sequence number at the receiver
    lost_seqs: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"scraped": self.scraped, "delivered": self.delivered, "lost": self.lost,
                "duplicated": self.duplicated, "lost_seqs": self.lost_seqs}


def tally(scraped: int, found: Iterable[float]) -> Tally:
    """scraped: scrapes served (seq 1..scraped); found: every sequence value the receiver holds,
    repeats included. A value outside 1..scraped is a bug of the bench and stops it."""
    counts = Counter(int(v) for v in found)
    stray = [v for v in counts if not 1 <= v <= scraped]
    if stray:
        raise ValueError(f"sequence values never served: {sorted(stray)[:10]}")
    lost = sorted(set(range(1, scraped + 1)) - set(counts))
    return Tally(scraped, len(counts), len(lost), sum(c - 1 for c in counts.values()), lost)


class ScrapeFront:
    """The loopback server. upstreams: target name -> URL of the real target."""

    def __init__(self, upstreams: dict[str, str], pad: int) -> None:
        self.upstreams, self.pad = upstreams, pad
        self.served: dict[tuple[str, str], Served] = {}
        self.frozen = False  # once set, the sequence target answers 503: its counts stop moving
        self._lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                front._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, agent: str, target: str) -> str:
        return f"http://127.0.0.1:{self.port}/{agent}/{target}"

    def snapshot(self) -> dict[tuple[str, str], Served]:
        with self._lock:
            return {k: Served(v.scrapes, v.samples, v.bytes, v.errors) for k, v in self.served.items()}

    def seq(self, agent: str) -> int:
        with self._lock:
            return self.served.get((agent, "seq"), Served()).scrapes

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = h.path.split("?")[0].strip("/").split("/")
        if len(parts) != 2 or (parts[1] != "seq" and parts[1] not in self.upstreams):
            return self._answer(h, 404, b"no such target\n", "text/plain")
        agent, target = parts
        key = (agent, target)
        if target == "seq":
            with self._lock:
                if self.frozen:
                    body = None
                else:
                    s = self.served.setdefault(key, Served())
                    s.scrapes += 1
                    body = seq_exposition(s.scrapes, self.pad)
                    s.samples += 1 + self.pad
                    s.bytes += len(body)
            if body is None:
                return self._answer(h, 503, b"frozen\n", "text/plain")
            return self._answer(h, 200, body, "text/plain; version=0.0.4")
        # The agent's Accept goes upstream (each gets the format it asks for); Accept-Encoding
        # does not, so both agents are served identity bodies whose lines can be counted.
        req = urllib.request.Request(self.upstreams[target], headers={"Accept": h.headers.get("Accept", "*/*")})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                body, ctype = r.read(), r.headers.get("Content-Type", "text/plain")
        except (OSError, urllib.error.HTTPError) as e:
            with self._lock:
                self.served.setdefault(key, Served()).errors += 1
            return self._answer(h, 502, f"upstream: {e}\n".encode(), "text/plain")
        with self._lock:
            s = self.served.setdefault(key, Served())
            s.scrapes += 1
            s.samples += sample_lines(body)
            s.bytes += len(body)
        self._answer(h, 200, body, ctype)

    @staticmethod
    def _answer(h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str) -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            h.wfile.write(body)
        except OSError:
            pass  # the agent gave up on this scrape (its timeout): its next one is counted anew

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
