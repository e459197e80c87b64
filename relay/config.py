"""relay.yaml -> typed, validated settings.

Owns: the settings schema (every key, its type and default) and the checks that need
the file system (secret files). Every error names the file, the line and the key path.
docs/configuration.md documents each key; a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from relay import mapping, secrets
from relay.schema import ByteSize, Duration, HostPort, HttpUrl, SchemaError, load_file, load_text

DEFAULT_CONFIG_PATH = "/etc/telemetry-relay/relay.yaml"
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


@dataclass(frozen=True)
class SpoolSettings:
    max_bytes: ByteSize = ByteSize(512 * MiB)
    max_age: Duration = Duration(7 * 86400.0)
    # always: each commit is fsynced (survives power loss); never: survives a process crash only.
    fsync: Literal["always", "never"] = "always"
    # What a push (the OTLP receiver) meets when the spool is at max_bytes: `block` answers
    # 503 with Retry-After so the client keeps the data and retries; `drop_oldest` evicts.
    # Scraped sources always evict the oldest data: they cannot be asked to hold on to it.
    when_full: Literal["block", "drop_oldest"] = "block"
    # Room held back on the spool's filesystem so that, on a full disk, deliveries can still
    # be recorded and free space (see relay/spool/reserve.py).
    reserve_bytes: ByteSize = ByteSize(8 * MiB)

    def validate(self) -> None:
        if self.max_bytes < 1 * MiB:
            raise ValueError("max_bytes must be at least 1MiB")
        if self.reserve_bytes < MiB // 4:
            raise ValueError("reserve_bytes must be at least 256KiB")
        if self.max_age < 60:
            raise ValueError("max_age must be at least 60s")


@dataclass(frozen=True)
class RetrySettings:
    initial_backoff: Duration = Duration(1.0)
    max_backoff: Duration = Duration(60.0)
    multiplier: float = 2.0
    # A server's Retry-After is honoured up to this long.
    max_retry_after: Duration = Duration(900.0)

    def validate(self) -> None:
        if self.initial_backoff <= 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 < initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")


@dataclass(frozen=True)
class TLSSettings:
    # A PEM bundle of CAs to trust instead of the system store (pins a private CA).
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    # Turns certificate verification off. Logged loudly at start and shown in /status.
    insecure_skip_verify: bool = False

    def validate(self) -> None:
        if bool(self.client_cert_file) != bool(self.client_key_file):
            raise ValueError("client_cert_file and client_key_file go together")


@dataclass(frozen=True)
class DestinationSettings:
    name: str
    endpoint: HttpUrl
    api_key_file: str | None = None
    api_key_env: str | None = None
    compression: Literal["zstd", "gzip", "none"] = "zstd"
    max_request_bytes: ByteSize = ByteSize(4 * MiB)
    in_flight: int = 1
    # After the queue ran empty, wait this long for more data before sending, so a steady
    # trickle of pushes leaves in a few requests a second rather than one request each.
    linger: Duration = Duration(0.2)
    timeout: Duration = Duration(30.0)
    # /readyz fails when there is data to send and no success for this long.
    ready_threshold: Duration = Duration(300.0)
    # Cap on the bytes per second sent to this destination (0: no cap), so a fleet of relays
    # draining their backlogs after an outage does not flatten the vendor.
    max_bytes_per_second: ByteSize = ByteSize(0)
    retry: RetrySettings = field(default_factory=RetrySettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    # An explicit HTTP proxy (CONNECT for https). Without it, HTTPS_PROXY/HTTP_PROXY and
    # NO_PROXY from the environment apply. NO_PROXY is honoured in both cases.
    proxy_url: HttpUrl | None = None
    proxy_username: str | None = None
    proxy_password_file: str | None = None
    # This destination's own redaction policy; default: policy.file.
    policy_file: str | None = None

    def validate(self) -> None:
        if self.proxy_password_file and not self.proxy_username:
            raise ValueError("proxy_password_file needs proxy_username")
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"name must be letters, digits, '-' or '_', got {self.name!r}")
        if self.api_key_file and self.api_key_env:
            raise ValueError("give api_key_file or api_key_env, not both")
        if not 1024 <= self.max_request_bytes <= OTLP_MAX_REQUEST_BYTES:
            raise ValueError("max_request_bytes must be between 1KiB and 64MiB")
        if not 1 <= self.in_flight <= 32:
            raise ValueError("in_flight must be between 1 and 32")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if not 0 <= self.linger <= 60:
            raise ValueError("linger must be between 0s and 60s")


@dataclass(frozen=True)
class SigningSettings:
    enabled: bool = True
    # Default: <state_dir>/keys. A key is created at first start if there is none.
    key_dir: str | None = None
    # After `keys rotate`, requests carry a second signature by the retired key this long.
    rotation_overlap: Duration = Duration(86400.0)


@dataclass(frozen=True)
class PolicySettings:
    file: str = "/etc/telemetry-relay/policy.yaml"
    # How often the policy files are checked for changes (a changed file is reloaded).
    watch_interval: Duration = Duration(2.0)
    # Cap on the in-memory audit copy of what was shipped (the outbox).
    outbox_bytes: ByteSize = ByteSize(16 * MiB)


@dataclass(frozen=True)
class ServerSettings:
    listen: HostPort = HostPort("127.0.0.1:8788")


@dataclass(frozen=True)
class Config:
    destinations: tuple[DestinationSettings, ...]
    state_dir: str = "/var/lib/telemetry-relay"
    instance_id: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_timeout: Duration = Duration(10.0)
    server: ServerSettings = field(default_factory=ServerSettings)
    sources: SourcesSettings = field(default_factory=SourcesSettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    signing: SigningSettings = field(default_factory=SigningSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)

    def validate(self) -> None:
        if not self.destinations:
            raise ValueError("destinations: at least one destination is required")
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destinations: names must be unique, repeated: {', '.join(dupes)}")


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus what was read beside it (secrets stay out of repr)."""

    config: Config
    path: str
    api_keys: dict[str, str | None] = field(repr=False)
    proxy_passwords: dict[str, str | None] = field(repr=False, default_factory=dict)
    receiver_token: str | None = field(repr=False, default=None)
    target_passwords: dict[str, str | None] = field(repr=False, default_factory=dict)


def _finish(cfg: Config, lines: dict[str, int], path: str) -> LoadedConfig:
    base = Path(path).resolve().parent if path != "<string>" else Path.cwd()
    receiver_token = _receiver_secrets(cfg, lines, path, base)
    if cfg.sources.otlp.auth_token_file or cfg.sources.otlp.tls.cert_file:
        cfg = replace(cfg, sources=replace(cfg.sources, otlp=_resolve_listener_paths(cfg.sources.otlp, lines, path,
                                                                                    base)))
    keys: dict[str, str | None] = {}
    proxy_passwords: dict[str, str | None] = {}
    dests = []
    for i, d in enumerate(cfg.destinations):
        key_path = f"destinations[{i}].api_key_file" if d.api_key_file else f"destinations[{i}].api_key_env"
        file = str(base / d.api_key_file) if d.api_key_file else None
        try:
            keys[d.name] = secrets.read_secret(file, d.api_key_env, "API key file" if file else "API key")
        except secrets.SecretError as e:
            raise SchemaError(path, lines.get(key_path), key_path, str(e)) from None
        pw_path = f"destinations[{i}].proxy_password_file"
        try:
            proxy_passwords[d.name] = secrets.read_secret(
                str(base / d.proxy_password_file) if d.proxy_password_file else None, None, "proxy password file"
            )
        except secrets.SecretError as e:
            raise SchemaError(path, lines.get(pw_path), pw_path, str(e)) from None
        tls = _resolve_files(d.tls, ("ca_file", "client_cert_file", "client_key_file"), "client_key_file",
                             f"destinations[{i}].tls", lines, path, base)
        dests.append(replace(d, tls=tls))
    cfg = _resolve_state_paths(replace(cfg, destinations=tuple(dests)), base)
    target_passwords = _scrape_targets(cfg, lines, path, base)
    return LoadedConfig(cfg, path, keys, proxy_passwords, receiver_token, target_passwords)


def _resolve_state_paths(cfg: Config, base: Path) -> Config:
    """Make the state directory, key directory and policy files absolute (relative to relay.yaml)."""
    dests = tuple(replace(d, policy_file=str(base / d.policy_file))
                  if d.policy_file and not Path(d.policy_file).is_absolute() else d for d in cfg.destinations)
    cfg = replace(cfg, destinations=dests)
    state = Path(cfg.state_dir)
    if not state.is_absolute():
        cfg = replace(cfg, state_dir=str(base / state))
    if not Path(cfg.policy.file).is_absolute():
        cfg = replace(cfg, policy=replace(cfg.policy, file=str(base / cfg.policy.file)))
    if cfg.signing.key_dir is not None and not Path(cfg.signing.key_dir).is_absolute():
        cfg = replace(cfg, signing=replace(cfg.signing, key_dir=str(base / cfg.signing.key_dir)))
    return cfg


def _scrape_targets(cfg: Config, lines: dict[str, int], path: str, base: Path) -> dict[str, str | None]:
    """Read scrape targets' password files, and load their mapping files as the sources will,
    so that a broken rule file fails here (check-config, a reload) with its own file and line."""
    mdir = Path(cfg.sources.mappings_dir) if cfg.sources.mappings_dir else mapping.default_dir()
    passwords: dict[str, str | None] = {}
    for kind, settings in (("jolokia", cfg.sources.jolokia), ("prometheus", cfg.sources.prometheus)):
        for i, t in enumerate(settings.targets):
            key_path = f"sources.{kind}.targets[{i}]"
            for name in t.mappings:
                try:
                    mapping.rule_file(name, mdir)
                except ValueError as e:
                    raise SchemaError(path, lines.get(f"{key_path}.mappings"), f"{key_path}.mappings",
                                      str(e)) from None
            mapping.load(t.mappings, mdir)
            try:
                passwords[t.url] = secrets.read_secret(
                    str(base / t.password_file) if t.password_file else None, None, "scrape password file")
            except secrets.SecretError as e:
                raise SchemaError(path, lines.get(f"{key_path}.password_file"), f"{key_path}.password_file",
                                  str(e)) from None
    return passwords


def _receiver_secrets(cfg: Config, lines: dict[str, int], path: str, base: Path) -> str | None:
    o = cfg.sources.otlp
    key_path = "sources.otlp.auth_token_file"
    try:
        return secrets.read_secret(str(base / o.auth_token_file) if o.auth_token_file else None, None,
                                   "receiver token file")
    except secrets.SecretError as e:
        raise SchemaError(path, lines.get(key_path), key_path, str(e)) from None


def _resolve_files(settings: Any, names: tuple[str, ...], private: str, prefix: str, lines: dict[str, int],
                   path: str, base: Path) -> Any:
    """Make the named file settings absolute, check they exist, and refuse an unsafe key file."""
    for name in names:
        value = getattr(settings, name)
        if value is None:
            continue
        full = base / value
        key_path = f"{prefix}.{name}"
        if not full.is_file():
            raise SchemaError(path, lines.get(key_path), key_path, f"{full} does not exist")
        if name == private:
            try:
                secrets.check_private_file(full, "TLS key file", allow_group=True)
            except secrets.SecretError as e:
                raise SchemaError(path, lines.get(key_path), key_path, str(e)) from None
        resolved: dict[str, Any] = {name: str(full)}
        settings = replace(settings, **resolved)
    return settings


def _resolve_listener_paths(o: OtlpReceiverSettings, lines: dict[str, int], path: str,
                            base: Path) -> OtlpReceiverSettings:
    tls = _resolve_files(o.tls, ("cert_file", "key_file", "client_ca_file"), "key_file", "sources.otlp.tls",
                         lines, path, base)
    token = str(base / o.auth_token_file) if o.auth_token_file else None
    return replace(o, tls=tls, auth_token_file=token)


def policy_file(cfg: Config, destination: DestinationSettings) -> str:
    return destination.policy_file or cfg.policy.file


def key_dir(cfg: Config) -> str:
    return cfg.signing.key_dir or str(Path(cfg.state_dir) / "keys")


def load(path: str) -> LoadedConfig:
    """Load and fully check a config file. Raises SchemaError with file, line and key path."""
    cfg, lines = load_file(path, Config)
    return _finish(cfg, lines, path)


def load_settings(path: str) -> Config:
    """Load and validate a config file without reading any secret or checking other files.

    For the commands that only inspect local state (`policy test`, `policy unhash`, `spool`):
    they need the state directory and the policy files, not the API keys and passwords a start
    needs, so they work where those are not set. Paths are resolved as load() resolves them.
    """
    cfg, _ = load_file(path, Config)
    return _resolve_state_paths(cfg, Path(path).resolve().parent)


def loads(text: str, name: str = "<string>") -> LoadedConfig:
    cfg, lines = load_text(text, Config, name)
    return _finish(cfg, lines, name)
