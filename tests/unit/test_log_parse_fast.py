"""The Kafka layout's shortcuts (the millisecond stamp read without the general regex, the
logger found from the last ` (`) against the general path, record for record, on the bench's
generated log and on a real Kafka 4.4 broker's server.log."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from bench import logs as bench_logs
from relay.sources import log_parse
from relay.sources.log_tail import FileRules, Tail

FIXTURE = Path(__file__).parent.parent / "fixtures" / "kafka_4.4_server.log"
SUFFIX = re.compile(r" \(([A-Za-z_$][\w$.-]*)\)$")  # the Kafka layout's `(%c)` at the end of a line
EDGES = [
    "[2024-05-01 10:00:00,123] INFO plain (a.B)",
    "[2024-05-01T10:00:00,123] INFO a T (a.B)",
    "[2024-05-01 10:00:00.123] INFO a dot (a.B)",
    "[2024-05-01 10:00:00,1234] INFO four digits (a.B)",
    "[2024-05-01 10:00:00,12] INFO two digits (a.B)",
    "[2024-05-01 10:00:00] INFO no fraction (a.B)",
    "[2024-05-01 10:00:00,123Z] INFO utc (a.B)",
    "[2024-05-01 10:00:00,123 +02:00] WARNING zoned (a.B)",
    "[2024-03-31 02:30:00,000] INFO in a DST gap, wherever the host is (a.B)",
    "[٢٠٢٤-05-01 10:00:00,123] INFO other digits (a.B)",
    "[2024-05-01 10:00:00,123] INFOX not a level (a.B)",
    "[2024-05-01 10:00:00,123]  INFO two spaces (a.B)",
    "[2024-05-01 10:00:00,123] ERROR",
    "[2024-05-01 10:00:00,123] ERROR ",
    "[2024-05-01 10:00:00,123] DEBUG nested (a.B$C) (x.Y)",
    "[2024-05-01 10:00:00,123] DEBUG not a logger (a b)",
    "[2024-05-01 10:00:00,123] DEBUG a frame\tat x.Y(Y.java:1)",
    "[2024-05-01 10:00:00,123] TRACE (a.B)",
    "[2024-05-01 10:00:00,123] FATAL ends in ( (",
    "2024-05-01 10:00:00,123 [myid:1] - WARN  [QuorumPeer[myid=1](plain=0.0.0.0:2181):o.a.z.s.q.Learner@285] - x",
]


def general_logger_and_body(header: log_parse.Header, rest: list[str]) -> tuple[str, str]:
    """The logger and body the general path gives a record: for the Kafka layout, the logger is
    the first line's `(%c)` suffix that matches, taken off that line."""
    lines = [header.rest, *rest]
    if header.layout != "kafka":
        return header.logger, "\n".join(lines)
    for i, line in enumerate(lines):
        m = SUFFIX.search(line)
        if m is not None:
            lines[i] = line[:m.start()]
            return m[1], "\n".join(lines)
    return "", "\n".join(lines)


def general_records(text: str) -> list[dict[str, Any]]:
    """The records the general path makes of whole lines: a header starts one, other lines continue it."""
    out: list[dict[str, Any]] = []
    current: tuple[log_parse.Header, list[str]] | None = None

    def flush() -> None:
        if current is None:
            return
        header, rest = current
        logger, body = general_logger_and_body(header, rest)
        out.append({"time": header.time_ns, "severity": header.severity_number, "text": header.severity_text,
                    "logger": logger, "body": body})

    for line in text.split("\n")[:-1]:
        header = log_parse.parse_header_general(line)
        if header is not None:
            flush()
            current = (header, [])
        elif current is not None:
            current[1].append(line)
    flush()
    return out


def tail_records(path: Path) -> list[dict[str, Any]]:
    """Everything the log source makes of a file, read whole."""
    tail = Tail(str(path), FileRules(0, 0, 1 << 20, 1 << 24, 1 << 30), None, history=False)
    got = []
    for _ in range(100):
        batches = tail.read(time.time_ns(), {})
        if not batches:
            break
        got.extend(batches)
        for c in batches:
            tail.committed(c.position)
    tail.last_data -= 10  # idle long enough: the last record is complete
    got.extend(tail.read(time.time_ns(), {}))
    tail.close()
    out = []
    for c in got:
        if c.message is None:
            continue
        for rl in c.message.resource_logs:
            for sl in rl.scope_logs:
                logger = "" if sl.scope.name == log_parse.SCOPE else sl.scope.name
                for r in sl.log_records:
                    out.append({"time": r.time_unix_nano, "severity": r.severity_number, "text": r.severity_text,
                                "logger": logger, "body": r.body.string_value})
    return out


def ordered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (r["time"], r["body"], r["logger"]))


def check_file(path: Path) -> int:
    text = path.read_text()
    lines = text.split("\n")[:-1]
    for line in [*lines, *EDGES]:
        assert log_parse.parse_header(line) == log_parse.parse_header_general(line), line
    want = general_records(text)
    # Lines outside any record (the Jolokia agent's, before the broker's first) are records of
    # their own in the tail, with no severity: general_records above makes none of them.
    got = [r for r in tail_records(path) if r["severity"]]
    assert ordered(got) == ordered(want)
    return len(want)


def test_the_fast_path_reads_the_bench_log_as_the_general_path_does(tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    records = bench_logs.write_log(path, 20_000)
    assert check_file(path) == records


def test_the_fast_path_reads_a_real_broker_log_as_the_general_path_does() -> None:
    assert check_file(FIXTURE) >= 600


@pytest.mark.parametrize("line", EDGES)
def test_stamp_forms_and_near_misses(line: str) -> None:
    assert log_parse.parse_header(line) == log_parse.parse_header_general(line)
    header = log_parse.parse_header(line)
    if header is not None and header.layout == "kafka":
        for continuation in ([], ["java.lang.Exception: x", "\tat a.B.c(B.java:1)"], ["more (x.Y)"]):
            assert log_parse.logger_and_body(header, continuation) == general_logger_and_body(header, continuation)
