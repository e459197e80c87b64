"""The log file source on real files: parsing, rotation, positions, and the volume controls."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from relay.sources import log_parse
from relay.sources.base import Checkpointed
from relay.sources.log_files import Position
from relay.sources.log_tail import FileRules, Tail
from relay.sources.logfile import LogFileSource, expand

# Lines a Kafka 4.4 broker wrote with the log4j2.yaml Kafka ships (`[%d] %p %m (%c)%n`).
STARTUP = """\
[2026-12-01 07:27:07,720] INFO Registered `kafka:type=kafka.Log4jController` MBean \
(org.apache.kafka.server.logger.Log4jControllerRegistration)
[2026-12-01 07:27:08,482] INFO AbstractConfig values: \x20
\terrors.deadletterqueue.auto.create.topics.enable = false
\terrors.deadletterqueue.topic.name.prefix = dlq.
 (org.apache.kafka.common.config.AbstractConfig)
[2026-12-01 07:27:09,790] WARN [SocketServer listenerType=BROKER, nodeId=7] Unexpected error from /127.0.0.1 \
(channelId=127.0.0.1:45423-127.0.0.1:58510-1-1); closing connection (org.apache.kafka.common.network.Selector)
org.apache.kafka.common.network.InvalidReceiveException: Invalid receive (size = 1195725856 larger than 104857600)
\tat org.apache.kafka.common.network.NetworkReceive.readFrom(NetworkReceive.java:95) ~[kafka-clients-4.4.0.jar:?]
\tat java.base/java.lang.Thread.run(Thread.java:840) [?:?]
[2026-12-01 07:27:09,792] DEBUG a debug line (kafka.network.Processor)
"""
ZOOKEEPER = ("2024-05-01 10:00:00,123 [myid:1] - WARN  [QuorumPeer[myid=1](plain=0.0.0.0:2181):"
             "o.a.z.s.q.Learner@285] - Unexpected exception, tries=0")

RULES = FileRules(min_severity=9, max_records_per_second=0, max_line_bytes=1024, max_record_bytes=4096,
                  initial_backlog_bytes=1 << 20)


def local_ns(text: str) -> int:
    return int(time.mktime(time.strptime(text[:19], "%Y-%m-%d %H:%M:%S"))) * 10**9 + int(text[20:23]) * 10**6


def records(batches: list[Checkpointed]) -> list[dict[str, Any]]:
    out = []
    for c in batches:
        if c.message is None:
            continue
        for rl in c.message.resource_logs:
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    out.append({"time": r.time_unix_nano, "severity": r.severity_number, "text": r.severity_text,
                                "logger": sl.scope.name, "body": r.body.string_value})
    return out


def drain(tail: Tail, rounds: int = 3, commit: bool = True) -> list[dict[str, Any]]:
    """What the runner does: read, and hand each position back once 'spooled'."""
    got = []
    for _ in range(rounds):
        batch = tail.read(time.time_ns(), {"service.name": "kafka"})
        got += records(batch)
        if commit:
            for c in batch:
                tail.committed(c.position)
    return got


def settle(tail: Tail) -> list[dict[str, Any]]:
    """Read until the last record is complete (MULTILINE_WAIT without new data)."""
    got = drain(tail)
    tail.last_data -= 5  # as if the file had been quiet for a while
    return got + drain(tail)


def bodies(recs: list[dict[str, Any]]) -> list[str]:
    return [r["body"] for r in recs]


def test_kafka_layout_gives_time_severity_logger_and_one_body_per_stack_trace() -> None:
    lines = STARTUP.splitlines()
    h = log_parse.parse_header(lines[0])
    assert h is not None and (h.severity_text, h.severity_number) == ("INFO", 9)
    assert h.time_ns == local_ns("2026-12-01 07:27:07,720")
    assert log_parse.logger_and_body(h, []) == (
        "org.apache.kafka.server.logger.Log4jControllerRegistration",
        "Registered `kafka:type=kafka.Log4jController` MBean")
    dump = log_parse.parse_header(lines[1])
    assert dump is not None
    logger, body = log_parse.logger_and_body(dump, lines[2:5])
    assert logger == "org.apache.kafka.common.config.AbstractConfig"
    assert body.splitlines()[1] == "\terrors.deadletterqueue.auto.create.topics.enable = false"
    warn = log_parse.parse_header(lines[5])
    assert warn is not None and warn.severity_number == 13
    logger, body = log_parse.logger_and_body(warn, lines[6:9])
    assert logger == "org.apache.kafka.common.network.Selector"
    assert body.endswith("closing connection\norg.apache.kafka.common.network.InvalidReceiveException: Invalid "
                         "receive (size = 1195725856 larger than 104857600)\n\tat org.apache.kafka.common.network."
                         "NetworkReceive.readFrom(NetworkReceive.java:95) ~[kafka-clients-4.4.0.jar:?]\n\tat "
                         "java.base/java.lang.Thread.run(Thread.java:840) [?:?]")
    for continuation in lines[2:5] + lines[6:9]:
        assert log_parse.parse_header(continuation) is None


def test_other_layouts_zones_and_lines_that_start_no_record() -> None:
    zk = log_parse.parse_header(ZOOKEEPER)
    assert zk is not None and zk.severity_text == "WARN" and zk.logger == "o.a.z.s.q.Learner"
    assert log_parse.logger_and_body(zk, []) == ("o.a.z.s.q.Learner", "Unexpected exception, tries=0")
    utc = log_parse.parse_header("[2024-05-01T10:00:00.5Z] ERROR boom (x.Y)")
    assert utc is not None and utc.time_ns == 1714557600_500_000_000 and utc.severity_number == 17
    east = log_parse.parse_header("[2024-05-01 12:00:00,000+02:00] FATAL boom (x.Y)")
    assert east is not None and east.time_ns == 1714557600 * 10**9 and east.severity_number == 21
    for line in ("\tat x.Y(Y.java:1)", "Caused by: java.io.IOException", "[not a date] INFO x", "INFO no brackets"):
        assert log_parse.parse_header(line) is None


def test_records_positions_and_a_restart_that_reads_on_without_a_duplicate(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(STARTUP)
    tail = Tail(str(log), RULES, None, history=True)
    got = settle(tail)
    assert [r["text"] for r in got] == ["INFO", "INFO", "WARN"]  # the DEBUG record is below INFO
    assert got[2]["logger"] == "org.apache.kafka.common.network.Selector" and got[2]["body"].count("\n") == 3
    assert got[0]["time"] == local_ns("2026-12-01 07:27:07,720")
    assert tail.dropped["severity"] == 1
    assert tail.durable is not None and tail.durable.offset == log.stat().st_size
    with log.open("a") as f:
        f.write("[2026-12-01 07:28:00,000] INFO after the restart (kafka.Kafka)\n")
    again = Tail(str(log), RULES, tail.durable, history=False)
    tail.close()
    assert bodies(settle(again)) == ["after the restart"]


def test_a_record_waits_for_its_end_and_its_position_stays_at_its_start(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("[2024-05-01 10:00:00,000] ERROR failed (a.B)\njava.lang.Exception: x\n")
    tail = Tail(str(log), RULES, None, history=True)
    assert drain(tail) == []  # the stack trace may go on
    assert tail.durable is not None and tail.durable.offset == 0
    with log.open("a") as f:
        f.write("\tat a.B.c(B.java:1)\n[2024-05-01 10:00:01,000] INFO next (a.B)\n")
    assert bodies(drain(tail)) == ["failed\njava.lang.Exception: x\n\tat a.B.c(B.java:1)"]
    assert tail.durable.offset == log.read_bytes().index(b"[2024-05-01 10:00:01")


def test_positions_not_spooled_are_read_again(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("".join(f"[2024-05-01 10:00:0{i},000] INFO line {i} (a.B)\n" for i in range(5)))
    tail = Tail(str(log), RULES, None, history=True)
    first = drain(tail, rounds=1, commit=False)  # the append failed: nothing was committed
    assert bodies(first) == [f"line {i}" for i in range(4)]
    assert bodies(settle(tail)) == [f"line {i}" for i in range(5)]


def numbered(n0: int, n1: int) -> str:
    return "".join(f"[2024-05-01 10:00:00,000] INFO line {i} (t.N)\n" for i in range(n0, n1))


def test_rename_rotation_finishes_the_old_file_first_even_across_a_restart(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(numbered(0, 10))
    tail = Tail(str(log), RULES, None, history=True)
    got = drain(tail)
    with log.open("a") as f:
        f.write(numbered(10, 20))  # written after the last read, before the rename
    log.rename(tmp_path / "server.log.2024-05-01-10")
    log.write_text(numbered(20, 30))
    got += settle(tail)
    assert bodies(got) == [f"line {i}" for i in range(30)]
    # Stopped (kill -9) while the renamed file had unread lines: found again by inode and fingerprint.
    with log.open("a") as f:
        f.write(numbered(30, 40))
    saved = tail.durable
    tail.close()
    log.rename(tmp_path / "server.log.1")
    log.write_text(numbered(40, 45))
    (tmp_path / "server.log.1").rename(tmp_path / "server.log.2")  # rotated once more meanwhile
    again = Tail(str(log), RULES, saved, history=False)
    assert bodies(settle(again)) == [f"line {i}" for i in range(30, 45)]


def test_two_rotations_between_reads_lose_nothing(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(numbered(0, 5))
    tail = Tail(str(log), RULES, None, history=True)
    got = drain(tail)
    log.rename(tmp_path / "server.log.2")
    log.write_text(numbered(5, 10))
    os.utime(log, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # modified after .2 was
    log.rename(tmp_path / "server.log.1")
    log.write_text(numbered(10, 15))
    got += settle(tail)
    assert bodies(got) == [f"line {i}" for i in range(15)]


def test_a_restart_between_rename_and_create_and_from_a_finished_file(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(numbered(0, 5))
    tail = Tail(str(log), RULES, None, history=True)
    got = drain(tail)
    log.rename(tmp_path / "server.log.1")  # and the writer has not created the new file yet
    got += settle(tail)
    saved = tail.durable
    assert saved is not None and saved.ident.ino == (tmp_path / "server.log.1").stat().st_ino  # still on it
    tail.close()
    log.write_text(numbered(5, 10))  # while the relay is down: created, and rotated too
    later = time.time_ns() + 10**9
    os.utime(log, ns=(later, later))
    log.rename(tmp_path / "server.log.2")
    log.write_text(numbered(10, 12))
    again = Tail(str(log), RULES, saved, history=False)
    assert bodies(got + settle(again)) == [f"line {i}" for i in range(12)]
    again.close()
    # Saved between files (server.log.1 finished, nothing at the path then): on from the
    # oldest file rotated after it, not from whatever is at the path now.
    st = (tmp_path / "server.log.1").stat()
    finished = Position(saved.ident, 0, False, st.st_mtime_ns)
    assert bodies(settle(Tail(str(log), RULES, finished, history=False))) == [f"line {i}" for i in range(5, 12)]


def test_copytruncate_reads_the_unread_end_from_the_copy(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(numbered(0, 10))
    tail = Tail(str(log), RULES, None, history=True)
    got = drain(tail)
    with log.open("a") as f:
        f.write(numbered(10, 20))
    (tmp_path / "server.log.1").write_bytes(log.read_bytes())  # logrotate's copytruncate
    with log.open("r+") as f:
        f.truncate(0)
    with log.open("a") as f:
        f.write(numbered(20, 25))
    got += settle(tail)
    assert bodies(got) == [f"line {i}" for i in range(25)]
    assert tail.dropped["rotated_away"] == 0


def test_copied_truncated_and_renamed_while_the_relay_was_down(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(numbered(0, 10))
    tail = Tail(str(log), RULES, None, history=True)
    got = settle(tail)
    saved = tail.durable
    tail.close()
    with log.open("a") as f:
        f.write(numbered(10, 20))
    (tmp_path / "server.log.c1").write_bytes(log.read_bytes())  # copytruncate
    with log.open("r+") as f:
        f.truncate(0)
    with log.open("a") as f:
        f.write(numbered(20, 30))
    later = time.time_ns() + 10**9
    os.utime(log, ns=(later, later))
    log.rename(tmp_path / "server.log.1")  # and then a rename rotation
    log.write_text(numbered(30, 35))
    again = Tail(str(log), RULES, saved, history=False)
    got += settle(again)
    assert bodies(got) == [f"line {i}" for i in range(35)]


@pytest.mark.parametrize("rename_seen_first", [False, True])
def test_copied_truncated_and_renamed_between_two_reads(tmp_path: Path, rename_seen_first: bool) -> None:
    log = tmp_path / "server.log"
    log.write_text(numbered(0, 10))
    tail = Tail(str(log), RULES, None, history=True)
    got = drain(tail)
    with log.open("a") as f:
        f.write(numbered(10, 20))
    (tmp_path / "server.log.1").write_bytes(log.read_bytes())  # copytruncate
    with log.open("r+") as f:
        f.truncate(0)
    with log.open("a") as f:
        f.write(numbered(20, 40))  # longer than what was read of it before
    later = time.time_ns() + 10**9
    os.utime(log, ns=(later, later))
    log.rename(tmp_path / "server.log.2")  # and renamed before the relay looked again
    log.write_text(numbered(40, 45))
    if rename_seen_first:
        # The race: the last read found nothing new, then all of the above, then the look at
        # the path finds another file there. The renamed file is still checked for truncation.
        assert tail._at_end(time.time_ns()) and tail.rotated
    got += settle(tail)
    assert bodies(got) == [f"line {i}" for i in range(45)]


@pytest.mark.parametrize("restart", [False, True])
def test_an_empty_file_copied_and_truncated_before_its_first_read(tmp_path: Path, restart: bool) -> None:
    log = tmp_path / "server.log"
    log.touch()
    tail = Tail(str(log), RULES, None, history=True)
    assert drain(tail) == []
    saved = tail.durable
    assert saved is not None and saved.finished_mtime_ns  # nothing to know an empty file by
    with log.open("a") as f:
        f.write(numbered(0, 10))
    (tmp_path / "server.log.1").write_bytes(log.read_bytes())  # copytruncate, before any read
    with log.open("r+") as f:
        f.truncate(0)
    with log.open("a") as f:
        f.write(numbered(10, 15))
    if restart:
        tail.close()
        tail = Tail(str(log), RULES, saved, history=False)
    assert bodies(settle(tail)) == [f"line {i}" for i in range(15)]


def test_a_deleted_and_recreated_file_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(numbered(0, 3))
    tail = Tail(str(log), RULES, None, history=True)
    got = drain(tail)
    saved = tail.durable
    log.unlink()
    log.write_text(numbered(100, 103))  # another file: another inode or other first bytes
    got += settle(tail)
    assert bodies(got) == [f"line {i}" for i in (0, 1, 2, 100, 101, 102)]
    tail.close()
    # And after a restart, whose saved position names a file that no longer exists.
    log.unlink()
    log.write_text(numbered(200, 202))
    again = Tail(str(log), RULES, saved, history=False)
    assert bodies(settle(again)) == ["line 200", "line 201"]


def test_a_deleted_file_is_let_go_once_read_and_a_new_one_read_whole(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(numbered(0, 3))
    tail = Tail(str(log), RULES, None, history=True)
    got = drain(tail)
    log.unlink()
    got += settle(tail)
    assert tail.file is None  # its space is free: no descriptor holds it
    assert tail.snapshot()["state"] == "missing"
    log.write_text(numbered(3, 5))
    assert bodies(got + settle(tail)) == [f"line {i}" for i in range(5)]


def test_binary_long_lines_and_unknown_layouts_are_counted(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("wb") as f:
        f.write(b"plain text in no layout\n")
        f.write(b"\x00\x01\x02\xff binary\n")
        f.write(b"[2024-05-01 10:00:00,000] INFO " + b"x" * 5000 + b" (a.B)\n")
        f.write(b"[2024-05-01 10:00:01,000] INFO after (a.B)\n")
    tail = Tail(str(log), RULES, None, history=True)
    got = settle(tail)
    assert [b[:10] for b in bodies(got)] == ["plain text", "x" * 10, "after"]
    assert len(got[1]["body"]) == 1024 - len("[2024-05-01 10:00:00,000] INFO ")
    assert got[0]["severity"] == 0
    assert (tail.unparsed, tail.dropped["binary"], tail.truncated_lines) == (1, 1, 1)


def test_a_huge_line_is_cut_without_being_held(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("wb") as f:
        f.write(b"[2024-05-01 10:00:00,000] WARN ")
        f.write(b"y" * (5 << 20))  # read in chunks: never more than max_line_bytes kept
        f.write(b"\n[2024-05-01 10:00:01,000] INFO next (a.B)\n")
    tail = Tail(str(log), RULES, None, history=False)  # created after the start: no backlog limit
    got = settle(tail)
    assert [len(b) for b in bodies(got)] == [1024 - len("[2024-05-01 10:00:00,000] WARN "), 4]
    assert tail.truncated_lines == 1 and tail.durable is not None and tail.durable.offset == log.stat().st_size


def test_rate_limit_by_log_time_and_the_backlog_limit_of_a_first_start(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    burst = "".join(f"[2024-05-01 10:00:00,{i:03d}] INFO burst {i} (a.B)\n" for i in range(50))
    later = "[2024-05-01 10:00:05,000] INFO five seconds later (a.B)\n"
    log.write_text(burst + later)
    tail = Tail(str(log), FileRules(9, 10, 1024, 4096, 1 << 20), None, history=True)
    got = settle(tail)
    assert len(got) == 21 and got[-1]["body"] == "five seconds later"  # a burst of twice the rate
    assert tail.dropped["rate_limit"] == 30
    big = tmp_path / "history.log"
    big.write_text(numbered(0, 1000))
    size = big.stat().st_size
    first = Tail(str(big), FileRules(9, 0, 1024, 4096, 1000), None, history=True)
    got = settle(first)
    assert 0 < len(got) <= 1000 // 40 and got[-1]["body"] == "line 999"
    assert first.backlog_skipped_bytes == size - 1000
    assert got[0]["body"] == f"line {1000 - len(got)}"  # starts at a whole line


def test_a_glob_leaves_out_rotated_copies_and_a_path_is_tailed_by_one_source(tmp_path: Path) -> None:
    for name in ("server.log", "server.log.1", "server.log.2024-05-01-10", "controller.log", "old.log.gz"):
        (tmp_path / name).write_text(numbered(0, 1))
    assert expand(str(tmp_path / "*.log*")) == [str(tmp_path / "controller.log"), str(tmp_path / "server.log")]
    a = LogFileSource("a", [(str(tmp_path / "server.log"), RULES)], 1.0, {})
    b = LogFileSource("b", [(str(tmp_path / "server.log"), RULES)], 1.0, {})
    try:
        a.restore({})
        b.restore({})
        assert len(a.collect_sync()) == 1
        assert b.collect_sync() == [] and b.waiting == [str(tmp_path / "server.log")]
    finally:
        import asyncio
        asyncio.run(a.close())
        asyncio.run(b.close())


def test_positions_survive_encoding_and_bad_ones_are_ignored() -> None:
    from relay.sources.log_files import Identity
    p = Position(Identity(1, 2, 3, "ab"), 99, True)
    assert Position.decode(p.encode()) == p
    assert Position.decode(b"not json") is None


@pytest.mark.parametrize("level,number", [("TRACE", 1), ("DEBUG", 5), ("INFO", 9), ("WARN", 13), ("ERROR", 17)])
def test_severity_numbers_are_otlp_s(level: str, number: int) -> None:
    h = log_parse.parse_header(f"[2024-05-01 10:00:00,000] {level} m (a.B)")
    assert h is not None and h.severity_number == number


def test_discovery_finds_the_log_dir_and_the_files_the_log4j2_config_writes(tmp_path: Path) -> None:
    from relay import config
    from relay.sources.build import sources_for
    from relay.sources.discovery import classify

    (tmp_path / "log4j2.yaml").write_text(
        'Configuration:\n  Appenders:\n    RollingFile:\n'
        '      - name: KafkaAppender\n        fileName: "${sys:kafka.logs.dir}/server.log"\n'
        '        filePattern: "${sys:kafka.logs.dir}/server.log.%d{yyyy-MM-dd-HH}"\n'
        '      - name: ControllerAppender\n        fileName: "/elsewhere/controller.log"\n')
    cmdline = ["java", "-Xmx1G", f"-Dkafka.logs.dir={tmp_path}/logs",
               f"-Dlog4j2.configurationFile=file:{tmp_path}/log4j2.yaml", "-cp", "x.jar", "kafka.Kafka",
               str(tmp_path / "server.properties")]
    found = classify(42, cmdline, 0.0)
    assert [d.protocol for d in found] == ["logs"]  # no agent, but its logs are still read
    logs = found[0]
    assert logs.url == f"{tmp_path}/logs" and logs.log_files == (f"{tmp_path}/logs/server.log",
                                                                   "/elsewhere/controller.log")
    cfg = config.loads("destinations:\n  - name: v\n    endpoint: https://x\n"
                       "sources:\n  logs:\n    discovered_files: [{path: server.log}, {path: controller.log},"
                       " {path: state-change.log, min_severity: WARN}]\n").config
    (source,) = sources_for(logs, cfg, {"host.name": "h"})
    assert isinstance(source, LogFileSource)
    assert [(p, r.min_severity) for p, r in source.files] == [
        (f"{tmp_path}/logs/server.log", 9), ("/elsewhere/controller.log", 9), (f"{tmp_path}/logs/state-change.log", 13)]
    assert source.resource["service.name"] == "kafka" and source.resource["process.pid"] == 42
    off = config.loads("destinations:\n  - name: v\n    endpoint: https://x\nsources:\n  logs:\n    enabled: false\n")
    assert sources_for(logs, off.config, {}) == []
