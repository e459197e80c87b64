"""relay.yaml -> typed, validated settings.

Owns: the settings schema (every key, its type and default) and the checks that need
the file system (secret files). Every error names the file, the line and the key path.
docs/configuration.md documents each key; a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from relay import secrets
from relay.schema import ByteSize, Duration, HostPort, HttpUrl, SchemaError, load_file, load_text

DEFAULT_CONFIG_PATH = "/etc/telemetry-relay/relay.yaml"
OTLP_MAX_REQUEST_BYTES = 64 * 1024 * 1024  # the OTLP/HTTP cap most receivers enforce
MiB = 1024 * 1024


@dataclass(frozen=True)
class HostSourceSettings:
    enabled: bool = True
    interval: Duration = Duration(10.0)

    def validate(self) -> None:
        if self.interval < 0.05:
            raise ValueError("interval must be at least 50ms")


@dataclass(frozen=True)
class InternalSourceSettings:
    enabled: bool = True
    interval: Duration = Duration(10.0)

    def validate(self) -> None:
        if self.interval < 0.05:
            raise ValueError("interval must be at least 50ms")


@dataclass(frozen=True)
class SourcesSettings:
    host: HostSourceSettings = field(default_factory=HostSourceSettings)
    internal: InternalSourceSettings = field(default_factory=InternalSourceSettings)


@dataclass(frozen=True)
class SpoolSettings:
    max_bytes: ByteSize = ByteSize(512 * MiB)
    max_age: Duration = Duration(7 * 86400.0)
    # always: each commit is fsynced (survives power loss); never: survives a process crash only.
    fsync: Literal["always", "never"] = "always"

    def validate(self) -> None:
        if self.max_bytes < 1 * MiB:
            raise ValueError("max_bytes must be at least 1MiB")
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
class DestinationSettings:
    name: str
    endpoint: HttpUrl
    api_key_file: str | None = None
    api_key_env: str | None = None
    compression: Literal["zstd", "gzip", "none"] = "zstd"
    max_request_bytes: ByteSize = ByteSize(4 * MiB)
    in_flight: int = 1
    timeout: Duration = Duration(30.0)
    # /readyz fails when there is data to send and no success for this long.
    ready_threshold: Duration = Duration(300.0)
    retry: RetrySettings = field(default_factory=RetrySettings)

    def validate(self) -> None:
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


def _finish(cfg: Config, lines: dict[str, int], path: str) -> LoadedConfig:
    base = Path(path).resolve().parent if path != "<string>" else Path.cwd()
    keys: dict[str, str | None] = {}
    for i, d in enumerate(cfg.destinations):
        key_path = f"destinations[{i}].api_key_file" if d.api_key_file else f"destinations[{i}].api_key_env"
        file = str(base / d.api_key_file) if d.api_key_file else None
        try:
            keys[d.name] = secrets.read_secret(file, d.api_key_env, "API key file" if file else "API key")
        except secrets.SecretError as e:
            raise SchemaError(path, lines.get(key_path), key_path, str(e)) from None
    state = Path(cfg.state_dir)
    if not state.is_absolute():
        cfg = _replace_state_dir(cfg, str(base / state))
    return LoadedConfig(cfg, path, keys)


def _replace_state_dir(cfg: Config, state_dir: str) -> Config:
    from dataclasses import replace

    return replace(cfg, state_dir=state_dir)


def load(path: str) -> LoadedConfig:
    """Load and fully check a config file. Raises SchemaError with file, line and key path."""
    cfg, lines = load_file(path, Config)
    return _finish(cfg, lines, path)


def loads(text: str, name: str = "<string>") -> LoadedConfig:
    cfg, lines = load_text(text, Config, name)
    return _finish(cfg, lines, name)
