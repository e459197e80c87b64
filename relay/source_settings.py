"""The `sources:` section of relay.yaml, typed: what each source collects, how often, and
the bounds on what it takes in.

Owns: the settings classes of the host and self sources, the OTLP receiver (with its
listener bounds), the Jolokia and Prometheus scrapes (targets and input limits),
discovery, and the brokers' log files. relay/config.py composes them into the whole config and does the checks that
need the file system; docs/configuration.md documents each key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from relay.strict_yaml import ByteSize, Duration, HostPort, HttpUrl

OTLP_MAX_REQUEST_BYTES = 64 * 1024 * 1024  # the OTLP/HTTP cap most receivers enforce
MiB = 1024 * 1024


@dataclass(frozen=True)
class PeriodicSourceSettings:
    """A source that collects on its own schedule (host metrics, the relay's own)."""

    enabled: bool = True
    interval: Duration = Duration(10.0)

    def validate(self) -> None:
        if self.interval < 0.05:
            raise ValueError("interval must be at least 50ms")


@dataclass(frozen=True)
class ListenerTLSSettings:
    cert_file: str | None = None
    key_file: str | None = None
    # With a CA, clients must present a certificate it signed (mutual TLS).
    client_ca_file: str | None = None

    def validate(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together")
        if self.client_ca_file and not self.cert_file:
            raise ValueError("client_ca_file needs cert_file and key_file")


@dataclass(frozen=True)
class OtlpReceiverSettings:
    enabled: bool = True
    # The OTLP standard port, so SDKs work unchanged. Loopback only by default.
    listen: HostPort = HostPort("127.0.0.1:4318")
    max_body_bytes: ByteSize = ByteSize(20 * MiB)
    # A body that inflates more than this many times (above 1 MiB) is refused as a bomb.
    max_decompression_ratio: float = 200.0
    max_concurrent_requests: int = 64
    # Bodies held in memory at once, across all requests; a request that finds no room
    # waits a moment, then gets 503 with Retry-After. Sized to fit the unit's MemoryMax.
    max_body_memory_bytes: ByteSize = ByteSize(64 * MiB)
    # Open connections; at the cap the oldest idle one is closed for a new one.
    max_connections: int = 256
    # A new connection must send a whole request head within header_timeout, a body must
    # arrive within body_timeout, and a connection with no request is closed after idle_timeout.
    header_timeout: Duration = Duration(10.0)
    body_timeout: Duration = Duration(30.0)
    idle_timeout: Duration = Duration(60.0)
    # When set, clients must send `Authorization: Bearer <token>`.
    auth_token_file: str | None = None
    tls: ListenerTLSSettings = field(default_factory=ListenerTLSSettings)

    def validate(self) -> None:
        if not 1024 <= self.max_body_bytes <= OTLP_MAX_REQUEST_BYTES:
            raise ValueError("max_body_bytes must be between 1KiB and 64MiB")
        if not 1 * MiB <= self.max_body_memory_bytes <= 1024 * MiB:
            raise ValueError("max_body_memory_bytes must be between 1MiB and 1GiB")
        if not 8 <= self.max_connections <= 65536:
            raise ValueError("max_connections must be between 8 and 65536")
        for key in ("header_timeout", "body_timeout", "idle_timeout"):
            if not 0.1 <= getattr(self, key) <= 3600:
                raise ValueError(f"{key} must be between 100ms and 1h")
        if self.max_decompression_ratio < 2:
            raise ValueError("max_decompression_ratio must be at least 2")
        if not 1 <= self.max_concurrent_requests <= 4096:
            raise ValueError("max_concurrent_requests must be between 1 and 4096")


@dataclass(frozen=True)
class ScrapeTargetSettings:
    url: HttpUrl
    # Mapping files (configs/mappings/<name>.yaml) applied to this target, first one names the service.
    mappings: tuple[str, ...] = ("kafka", "jvm")
    service_name: str | None = None
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    insecure_skip_verify: bool = False


def _check_scrape_limits(max_body_bytes: int, parse_timeout: float) -> None:
    if not 1024 <= max_body_bytes <= 1024 * MiB:
        raise ValueError("max_body_bytes must be between 1KiB and 1GiB")
    if not 0.1 <= parse_timeout <= 600:
        raise ValueError("parse_timeout must be between 100ms and 10m")


@dataclass(frozen=True)
class JolokiaSettings:
    interval: Duration = Duration(30.0)
    timeout: Duration = Duration(10.0)
    # A larger answer fails the read as soon as the cap is passed (it is never buffered whole).
    max_body_bytes: ByteSize = ByteSize(16 * MiB)
    # Decoding and mapping one answer (in a worker thread) stops and fails past this.
    parse_timeout: Duration = Duration(10.0)
    targets: tuple[ScrapeTargetSettings, ...] = ()

    def validate(self) -> None:
        _check_scrape_limits(self.max_body_bytes, self.parse_timeout)


@dataclass(frozen=True)
class PrometheusSettings:
    interval: Duration = Duration(30.0)
    timeout: Duration = Duration(10.0)
    # Series no mapping rule names are kept, converted by the OTel Prometheus compatibility rules.
    passthrough_unmapped: bool = True
    # The compatibility spec keeps Prometheus names as exposed; this removes the type suffix
    # of counters (`_total`) and the unit suffix an OpenMetrics UNIT declares (`_seconds`).
    trim_metric_suffixes: bool = False
    # Limits on one scrape; above any of them that scrape fails with an error naming it.
    # The body is read incrementally and never buffered past the cap.
    max_body_bytes: ByteSize = ByteSize(16 * MiB)
    max_line_length: int = 64 * 1024
    max_labels_per_series: int = 128
    max_series: int = 100_000
    # Parsing and mapping (in a worker thread) stop and fail past this.
    parse_timeout: Duration = Duration(10.0)
    targets: tuple[ScrapeTargetSettings, ...] = ()

    def validate(self) -> None:
        _check_scrape_limits(self.max_body_bytes, self.parse_timeout)
        if not 256 <= self.max_line_length <= 16 * MiB:
            raise ValueError("max_line_length must be between 256 and 16Mi characters")
        if not 1 <= self.max_labels_per_series <= 10_000:
            raise ValueError("max_labels_per_series must be between 1 and 10000")
        if not 1 <= self.max_series <= 100_000_000:
            raise ValueError("max_series must be between 1 and 100000000")


@dataclass(frozen=True)
class DiscoverySettings:
    # Find local Kafka brokers, KRaft controllers and ZooKeeper by their JVM command line and
    # scrape the Jolokia or JMX-exporter agent they run, with no target in this file.
    kafka: bool = True
    interval: Duration = Duration(60.0)
    # process.* metrics for each discovered JVM.
    process_metrics: bool = True
    # The JVM command line can hold secrets (passwords in -D flags): not sent unless asked.
    send_command_line: bool = False


Severity = Literal["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"]


@dataclass(frozen=True)
class LogFileSettings:
    # A path or a glob (`/var/log/kafka/*.log`). In `discovered_files`: a name (or glob) in
    # the log directory of each broker, controller or ZooKeeper discovery finds.
    path: str
    # Overrides of sources.logs.min_severity and max_records_per_second for these files.
    min_severity: Severity | None = None
    max_records_per_second: int | None = None

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path must not be empty")
        if self.max_records_per_second is not None and self.max_records_per_second < 0:
            raise ValueError("max_records_per_second must be 0 (no limit) or more")


def _support_logs() -> tuple[LogFileSettings, ...]:
    # What support asks for, and ZooKeeper's own log. kafka-authorizer.log names principals
    # and every operation they were allowed or denied: add it here (or in `files`) only once
    # the privacy review agrees (docs/privacy.md).
    names = ("server.log", "controller.log", "state-change.log", "zookeeper*.log")
    return tuple(LogFileSettings(name) for name in names)


@dataclass(frozen=True)
class LogsSettings:
    """The brokers' own log files (relay.sources.logfile)."""

    enabled: bool = True
    # How often each file is looked at for new lines.
    interval: Duration = Duration(1.0)
    # Tailed in the log directory of every JVM discovery finds (sources.discovery.kafka).
    discovered_files: tuple[LogFileSettings, ...] = field(default_factory=_support_logs)
    # Tailed as configured, whether or not a broker is discovered.
    files: tuple[LogFileSettings, ...] = ()
    # service.name of the records from `files`.
    service_name: str = "kafka"
    # Records less severe are not shipped (counted). A line in no known layout has no
    # severity and always ships.
    min_severity: Severity = "INFO"
    # Per file, by the records' own timestamps (bursts up to twice this in one second); 0: no limit.
    max_records_per_second: int = 1000
    # A longer line is cut to this (counted); the rest of it is skipped, never buffered.
    max_line_bytes: ByteSize = ByteSize(64 * 1024)
    # A record's continuation lines (a stack trace) past this are dropped (counted).
    max_record_bytes: ByteSize = ByteSize(1 * MiB)
    # A file the relay holds no read position for (its first start) is read from at most
    # this far before its end, so years of history are not shipped by surprise.
    initial_backlog_bytes: ByteSize = ByteSize(1 * MiB)

    def validate(self) -> None:
        if not 0.05 <= self.interval <= 60:
            raise ValueError("interval must be between 50ms and 60s")
        if not 256 <= self.max_line_bytes <= 16 * MiB:
            raise ValueError("max_line_bytes must be between 256B and 16MiB")
        if not self.max_line_bytes <= self.max_record_bytes <= 16 * MiB:
            raise ValueError("max_record_bytes must be between max_line_bytes and 16MiB")
        if self.max_records_per_second < 0:
            raise ValueError("max_records_per_second must be 0 (no limit) or more")
        for f in self.files:
            if not Path(f.path).is_absolute():
                raise ValueError(f"files: {f.path!r} must be an absolute path")
        for f in self.discovered_files:
            if Path(f.path).is_absolute() or ".." in Path(f.path).parts:
                raise ValueError(f"discovered_files: {f.path!r} must be a name in the log directory")


@dataclass(frozen=True)
class SourcesSettings:
    host: PeriodicSourceSettings = field(default_factory=PeriodicSourceSettings)
    internal: PeriodicSourceSettings = field(default_factory=PeriodicSourceSettings)
    otlp: OtlpReceiverSettings = field(default_factory=OtlpReceiverSettings)
    jolokia: JolokiaSettings = field(default_factory=JolokiaSettings)
    prometheus: PrometheusSettings = field(default_factory=PrometheusSettings)
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    logs: LogsSettings = field(default_factory=LogsSettings)
    # Where the mapping rule files live; default: the shipped configs/mappings.
    mappings_dir: str | None = None
