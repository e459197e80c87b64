"""Kafka's and ZooKeeper's log layouts: which line starts a record, and what the record says.

Owns: recognising the first line of a record in the layouts the brokers write by default,
and turning a whole record (that line and the continuation lines after it: a stack trace,
a config dump) into timestamp, severity (the OTLP number and the text as written), logger
and body. Pure functions over text; reading files is relay.sources.logfile's.

Layouts:
  kafka      `[%d] %p %m (%c)%n`: Kafka's log4j.properties (up to 3.x) and the log4j2.yaml
             of 4.x alike. The logger closes the message, so in a multi-line message (the
             `KafkaConfig values:` dump) it ends the last line of the message, and a stack
             trace comes after it.
  zookeeper  `%d{ISO8601} [myid:%X{myid}] - %-5p [%t:%C{1}@%L] - %m%n`, ZooKeeper's default.
`%d` is log4j's `yyyy-MM-dd HH:mm:ss,SSS` in the host's local time; ISO8601 forms (a `T`,
a `.`, a zone offset) are read too.
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from relay import __version__
from relay.otlp import set_attributes

# The OTLP SeverityNumber of each level name log4j, logback and java.util.logging write.
SEVERITY_NUMBERS = {
    "TRACE": 1, "FINEST": 1, "FINER": 2, "FINE": 5, "DEBUG": 5, "CONFIG": 7, "INFO": 9,
    "WARN": 13, "WARNING": 13, "ERROR": 17, "SEVERE": 17, "FATAL": 21,
}
_LEVELS = "|".join(sorted(SEVERITY_NUMBERS, key=len, reverse=True))
_TIME = r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:[,.](\d{1,9}))?\s?(Z|[+-]\d\d:?\d\d)?"
_KAFKA = re.compile(rf"\[{_TIME}\] ({_LEVELS})\s+")
# The stamp log4j's default `%d` writes, local time to the millisecond: nearly every Kafka
# line. A strict case of _KAFKA (what it matches, _KAFKA matches alike), read without it.
_KAFKA_MS = re.compile(rf"\[(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{{3}})\] ({_LEVELS})\s+")
_ZOOKEEPER = re.compile(rf"{_TIME} \[myid:[^\]]*\] - ({_LEVELS})\s+\[(.*?)\] - ")
# `(%c)` at the end of a line: a dotted Java name, `$` for nested classes. A stack frame
# ends in `(File.java:12)` with no space before it, so it never matches.
_LOGGER_SUFFIX = re.compile(r" \(([A-Za-z_$][\w$.-]*)\)$")
_LOGGER_TAIL = re.compile(r" \([A-Za-z_$][\w$.-]*\)")  # _LOGGER_SUFFIX, matched from a known start


class Header(NamedTuple):
    """What the first line of a record says."""

    time_ns: int
    severity_text: str
    severity_number: int
    rest: str  # the first line after the prefix: the start of the message
    logger: str  # known from the prefix (ZooKeeper); "" when it closes the message (Kafka)
    layout: str


def parse_header(line: str) -> Header | None:
    """The record a line starts, or None if it starts none (a continuation, or an unknown layout)."""
    m = _KAFKA_MS.match(line)
    if m is not None:
        second = _SECONDS.get(m[1])
        if second is None:
            second = _local_second(m[1])
        level = m[3]
        return Header(second + int(m[2]) * 1_000_000, level, SEVERITY_NUMBERS[level], line[m.end():], "", "kafka")
    return parse_header_general(line)


def parse_header_general(line: str) -> Header | None:
    """parse_header for every stamp form (zones, `T`, any fraction); the one it falls back to."""
    m = _KAFKA.match(line)
    if m is not None:
        return Header(_time_ns(m), m[9], SEVERITY_NUMBERS[m[9]], line[m.end():], "", "kafka")
    m = _ZOOKEEPER.match(line)
    if m is not None:
        # [thread:Class@line]: a thread name may hold colons, the class never does.
        where = m[10].rpartition(":")[2].partition("@")[0]
        return Header(_time_ns(m), m[9], SEVERITY_NUMBERS[m[9]], line[m.end():], where, "zookeeper")
    return None


def logger_and_body(header: Header, continuation: list[str]) -> tuple[str, str]:
    """The logger and the body of a record: its message, then whatever followed (a stack trace),
    one text. In the Kafka layout the logger is taken off the first line that ends with one."""
    if header.layout != "kafka":
        return header.logger, "\n".join([header.rest, *continuation])
    if not continuation:  # most records: one line
        i = _logger_at(header.rest)
        return ("", header.rest) if i < 0 else (header.rest[i + 2:-1], header.rest[:i])
    lines = [header.rest, *continuation]
    for n, line in enumerate(lines):
        i = _logger_at(line)
        if i >= 0:
            lines[n] = line[:i]
            return line[i + 2:-1], "\n".join(lines)
    return "", "\n".join(lines)


def _logger_at(line: str) -> int:
    """Where ` (logger)` starts at the end of a line, or -1. The logger holds no space and no
    `(`, so a suffix _LOGGER_SUFFIX matches starts at the last ` (` of the line."""
    i = line.rfind(" (")
    return i if i >= 0 and _LOGGER_TAIL.fullmatch(line, i) is not None else -1


def _time_ns(m: re.Match[str]) -> int:
    year, month, day, hour, minute, second = (int(m[i]) for i in range(1, 7))
    fraction = int((m[7] or "0").ljust(9, "0"))
    zone = m[8]
    if zone is None:
        seconds = _local_hour(year, month, day, hour) + minute * 60 + second
    else:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - _offset_seconds(zone)
    return seconds * 1_000_000_000 + fraction


# Local second of a `yyyy-MM-dd HH:mm:ss` stamp -> its epoch nanosecond; lines come many a second.
_SECONDS: dict[str, int] = {}
_SECONDS_MAX = 4096


def _local_second(stamp: str) -> int:
    ns = (_local_hour(int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10]), int(stamp[11:13]))
          + int(stamp[14:16]) * 60 + int(stamp[17:19])) * 1_000_000_000
    if len(_SECONDS) >= _SECONDS_MAX:
        _SECONDS.clear()
    _SECONDS[stamp] = ns
    return ns


@functools.lru_cache(maxsize=256)
def _local_hour(year: int, month: int, day: int, hour: int) -> int:
    """The epoch second a local wall-clock hour starts at (mktime is slow; lines come in hours)."""
    return int(time.mktime((year, month, day, hour, 0, 0, 0, 0, -1)))


def _offset_seconds(zone: str) -> int:
    if zone == "Z":
        return 0
    digits = zone[1:].replace(":", "")
    seconds = int(digits[:2]) * 3600 + int(digits[2:]) * 60
    return seconds if zone[0] == "+" else -seconds
SCOPE = "telemetry-relay/logfile"


class Record(NamedTuple):
    time_ns: int
    severity_number: int
    severity_text: str
    logger: str
    body: str


class RecordBatch:
    """One ExportLogsServiceRequest: one resource, one scope per logger (the logger names the
    instrumentation scope, as the OpenTelemetry log4j appender has it)."""

    def __init__(self, resource: Mapping[str, Any], file_name: str) -> None:
        self.request = logs_service_pb2.ExportLogsServiceRequest()
        self._rl = self.request.resource_logs.add()
        set_attributes(self._rl.resource.attributes, resource)
        self._scopes: dict[str, Any] = {}
        self.file_name = file_name
        self._file_attribute = common_pb2.KeyValue(key="log.file.name",
                                                   value=common_pb2.AnyValue(string_value=file_name))
        self.size = 0
        self._observed = time.time_ns()

    def add(self, r: Record) -> None:
        records = self._scopes.get(r.logger)
        if records is None:
            scope = self._rl.scope_logs.add()
            scope.scope.name = r.logger or SCOPE
            if not r.logger:
                scope.scope.version = __version__
            records = self._scopes[r.logger] = scope.log_records
        lr = records.add()
        lr.time_unix_nano = r.time_ns
        lr.observed_time_unix_nano = self._observed
        if r.severity_number:
            lr.severity_number = r.severity_number
            lr.severity_text = r.severity_text
        lr.body.string_value = r.body
        lr.attributes.append(self._file_attribute)  # a copy
        self.size += len(r.body) + 64

    def finish(self) -> Message:
        return self.request
