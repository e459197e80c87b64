"""Tailing a log file through rotation while the relay is killed (-9) again and again: every line
written arrives exactly once. Then the awkward files: deleted and recreated, binary, one 50 MB line."""

from __future__ import annotations

import json
import random
import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.faults.harness import QUIET, drained, peak_rss, record, scale
from tests.procs import Ingest, Relay, relay_config, wait_until

LINE = re.compile(r"^(\w+) (\d+)")


class RotatingWriter:
    """Writes numbered Kafka-layout lines into server.log, rotating it every `every` lines, by
    rename (dated and numbered names, as log4j2 and logrotate make) and by copytruncate in turn.
    Every 25th record carries a stack trace: one record of four lines."""

    def __init__(self, path: Path, per_second: int = 1500, every: int = 400) -> None:
        self.path, self.per_second, self.every = path, per_second, every
        self.written = 0
        self.rotations: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RotatingWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _lines(self, n: int) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = f"[{stamp},{n % 1000:03d}] INFO line {n} (fault.Writer)\n"
        if n % 25 == 0:
            text += f"java.lang.IllegalStateException: trace {n}\n\tat fault.Writer.write(Writer.java:{n})\n" \
                    "\tat java.base/java.lang.Thread.run(Thread.java:840)\n"
        return text

    def _rotate(self, k: int) -> None:
        if k % 2:
            shutil.copyfile(self.path, self.path.with_name(f"server.log.{k}"))  # copytruncate
            with self.path.open("r+") as f:
                f.truncate(0)
            self.rotations["copytruncate"] += 1
        else:
            name = f"server.log.2024-05-01-{k:02d}" if k % 4 else f"server.log.{k}"
            self.path.rename(self.path.with_name(name))
            self.path.touch()
            self.rotations["rename"] += 1

    def _run(self) -> None:
        batch = max(1, self.per_second // 50)
        k = 0
        while not self._stop.is_set():
            with self.path.open("a") as f:
                f.write("".join(self._lines(self.written + i) for i in range(batch)))
            self.written += batch
            if self.written // self.every > k:
                k += 1
                self._rotate(k)
            self._stop.wait(batch / self.per_second)


def arrived(ingest: Ingest) -> tuple[Counter[int], Counter[str], list[dict[str, Any]]]:
    """Numbers of the `line N` records, every other record's first word and number, and the records."""
    numbers: Counter[int] = Counter()
    others: Counter[str] = Counter()
    recs = []
    for f in ingest.store.glob("logs-*.jsonl"):
        for raw in f.read_text().splitlines():
            for rl in json.loads(raw)["request"].get("resourceLogs", []):
                for sl in rl.get("scopeLogs", []):
                    for r in sl.get("logRecords", []):
                        body = r.get("body", {}).get("stringValue", "")
                        recs.append({**r, "body": body, "scope": sl.get("scope", {}).get("name", "")})
                        m = LINE.match(body)
                        if m and m[1] == "line":
                            numbers[int(m[2])] += 1
                        else:
                            others[body[:40]] += 1
    return numbers, others, recs


def _ranges(numbers: set[int]) -> str:
    """`3-7, 12` for {3, 4, 5, 6, 7, 12}: the first twenty runs."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs[:20])


def tailed(relay: Relay, path: Path) -> dict[str, Any]:
    return next(f for f in relay.source("logs")["files"] if f["path"] == str(path))


def test_log_tail_through_rotation_and_kill_loops(tmp_path: Path) -> None:
    kills = scale(5, 25)
    logs = tmp_path / "kafka-logs"
    other = tmp_path / "other-logs"
    logs.mkdir()
    other.mkdir()
    log = logs / "server.log"
    log.touch()
    ingest = Ingest(tmp_path)
    cfg = relay_config(tmp_path, ingest.url, sources={**QUIET, "logs": {
        "interval": "200ms", "max_records_per_second": 0, "max_line_bytes": "64KiB",
        "files": [{"path": str(log)}, {"path": str(other / "*.log")}]}})
    relay = Relay(tmp_path, cfg, name="relay0")
    relay.start()
    writer = RotatingWriter(log).start()
    rss = 0
    try:
        # The vendor is down while the relay is killed: nothing is on the wire at a kill, so a
        # line twice or missing could only be the log source's (a kill during a send is the
        # shipper's at-least-once, docs/reliability.md, and not what this measures).
        for i in range(kills):
            target = random.randint(100, 800)
            wait_until(lambda t=target, r=relay: r.source("logs")["points_collected"] >= t, timeout=30,
                       what="records read since the last start")
            rss = max(rss, peak_rss(relay.pid))
            relay.kill9()
            relay = Relay(tmp_path, cfg, name=f"relay{i + 1}")
            relay.start()
        ingest.start()

        # The awkward files, beside the rotating one, read while the relay runs.
        recreated = other / "recreated.log"
        recreated.write_text("".join(f"first {i}\n" for i in range(10)))
        wait_until(lambda: tailed(relay, recreated)["records"] >= 10, what="the first file to be read")
        recreated.unlink()
        recreated.write_text("".join(f"second {i}\n" for i in range(10)))
        (other / "binary.log").write_bytes(random.Random(7).randbytes(200_000))
        with (other / "huge.log").open("wb") as f:
            f.write(b"[2024-05-01 10:00:00,000] WARN ")
            chunk = b"z" * (1 << 20)
            for _ in range(50):
                f.write(chunk)
            f.write(b" (fault.Huge)\n[2024-05-01 10:00:01,000] INFO after the huge line (fault.Huge)\n")

        writer.stop()
        written = writer.written
        wait_until(lambda: tailed(relay, log)["lag_bytes"] == 0
                   and tailed(relay, log)["state"] in ("following", "waiting for a first line"),
                   timeout=60, what="the relay to reach the end of server.log")
        wait_until(lambda: tailed(relay, other / "huge.log")["records"] >= 2, timeout=60, what="the huge line")
        # A record counted in the file's figures is spooled when its collection returns, a moment
        # later: wait for the last one written to reach the ingest, then for nothing to be left.
        wait_until(lambda: "after the huge line" in arrived(ingest)[1], timeout=60,
                   what="the record after the huge line at the ingest")
        wait_until(lambda: drained(relay), timeout=60, what="the backlog to drain")
        rss = max(rss, peak_rss(relay.pid))
        numbers, others, recs = arrived(ingest)
        huge, binary = tailed(relay, other / "huge.log"), tailed(relay, other / "binary.log")
        status = tailed(relay, log)
        row = record(f"log tail: rotation (rename and copytruncate) + kill -9 x{kills}", None, numbers, {}, rss,
                     written=written, rotations=dict(writer.rotations),
                     lines_missing=written - len(set(numbers) & set(range(written))),
                     huge_line_cut=huge["truncated_lines"], binary_lines_dropped=binary["dropped"]["binary"],
                     binary_records_unparsed=binary["unparsed_records"])
        print("\nlog tail accounting:", json.dumps(row, indent=1))
    finally:
        writer.stop()
        relay.terminate()
        ingest.terminate()
    assert set(numbers) == set(range(written)), (
        f"missing: {_ranges(set(range(written)) - set(numbers))}; server.log as tailed: {status}")
    assert row["duplicates"] == 0, [n for n, c in numbers.items() if c > 1][:20]
    assert writer.rotations["rename"] >= 2 and writer.rotations["copytruncate"] >= 2
    traces = [r for r in recs if r["body"].startswith("line 25\n")]
    assert len(traces) == 1 and traces[0]["body"].count("\n") == 3  # a stack trace is one record
    assert traces[0]["scope"] == "fault.Writer" and traces[0]["severityText"] == "INFO"
    # Deleted and recreated: both files whole, each line once.
    assert {k: v for k, v in others.items() if k.startswith(("first", "second"))} == {
        f"{w} {i}": 1 for w in ("first", "second") for i in range(10)}
    # One 50 MB line: cut to max_line_bytes, counted, the line after it intact, memory bounded.
    cut = [r for r in recs if r["body"].startswith("zzz")]
    assert len(cut) == 1 and len(cut[0]["body"]) < 64 * 1024 and huge["truncated_lines"] == 1
    assert "after the huge line" in others
    assert rss < 250 * 2**20, f"peak RSS {rss >> 20} MiB: was the long line buffered?"
    # Binary: lines with NUL bytes dropped and counted, the rest shipped as plain records, counted.
    assert binary["dropped"]["binary"] > 0 and binary["unparsed_records"] > 0, binary
    assert binary["dropped"]["binary"] + binary["unparsed_records"] <= binary["lines"]
