"""The `sources:` section of relay.yaml, typed: what each source collects, how often, and
the bounds on what it takes in.

Owns: the settings classes of the host and self sources, the OTLP receiver (with its
listener bounds), the Jolokia and Prometheus scrapes (targets and input limits) and
discovery. relay/config.py composes them into the whole config and does the checks that
need the file system; docs/configuration.md documents each key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class SourcesSettings:
    host: PeriodicSourceSettings = field(default_factory=PeriodicSourceSettings)
    internal: PeriodicSourceSettings = field(default_factory=PeriodicSourceSettings)
    otlp: OtlpReceiverSettings = field(default_factory=OtlpReceiverSettings)
    jolokia: JolokiaSettings = field(default_factory=JolokiaSettings)
    prometheus: PrometheusSettings = field(default_factory=PrometheusSettings)
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    # Where the mapping rule files live; default: the shipped configs/mappings.
    mappings_dir: str | None = None
