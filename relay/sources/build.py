"""Sources from settings: the configured ones, and those for a JVM that discovery found.

Owns: which sources a config asks for, loading and compiling the mapping rule files each
scrape target names (so a broken rule file fails here, before a reload touches the running
pipeline), the one way a Jolokia or Prometheus source is made from its target, and which
files of a discovered JVM's log directory are tailed.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from relay import mapping
from relay.config import Config
from relay.selfmetrics import SelfMetrics
from relay.source_settings import ScrapeTargetSettings
from relay.sources.base import Source
from relay.sources.discovery import Discovered
from relay.sources.host import HostSource
from relay.sources.internal import InternalSource
from relay.sources.jolokia import JolokiaSource
from relay.sources.process import ProcessSource
from relay.strict_yaml import HttpUrl

if TYPE_CHECKING:
    from relay.sources.log_tail import FileRules

# The log source and the Prometheus source (with prometheus_client's parsers) are imported
# only by a config that can use them: about 0.9 MiB a relay without them does not hold.
# build_sources() imports them at start and at reload, so that a missing module fails there.

log = logging.getLogger("relay.sources")


def build_sources(config: Config, resource: dict[str, Any], stats: SelfMetrics,
                  passwords: Mapping[str, str | None]) -> list[Source]:
    """The configured sources; `passwords` are the scrape targets' passwords by URL.
    Raises SchemaError naming the file when a mapping rule file does not load."""
    s = config.sources
    rules = _rules_dir(config)
    discovering = s.discovery.kafka
    if s.prometheus.targets or discovering:
        from relay.sources.prometheus import PrometheusSource
    if s.logs.enabled and (s.logs.files or (discovering and s.logs.discovered_files)):
        from relay.sources.logfile import LogFileSource, file_rules
    out: list[Source] = []
    if s.host.enabled:
        out.append(HostSource(s.host.interval, resource))
    if s.internal.enabled:
        out.append(InternalSource(s.internal.interval, resource, stats))
    for t in s.jolokia.targets:
        out.append(JolokiaSource(t, passwords.get(t.url), mapping.load(t.mappings, rules), s.jolokia, resource))
    for t in s.prometheus.targets:
        # A Prometheus target may name no rules: then every series passes through as it is.
        maps = mapping.load(t.mappings, rules) if t.mappings else None
        out.append(PrometheusSource(t, passwords.get(t.url), maps, s.prometheus, resource))
    if s.logs.enabled and s.logs.files:
        out.append(LogFileSource("logs", [(f.path, file_rules(s.logs, f)) for f in s.logs.files], s.logs.interval,
                                 {**resource, "service.name": s.logs.service_name}))
    return out


def sources_for(found: Discovered, config: Config, resource: dict[str, Any]) -> list[Source]:
    """The sources for one JVM that discovery found: its scrape and its process metrics, or
    (for its log directory) its log files."""
    from relay.sources.logfile import LogFileSource
    from relay.sources.prometheus import PrometheusSource

    s = config.sources
    maps = mapping.load(found.mappings, _rules_dir(config))
    if found.protocol == "logs":
        if not (s.logs.enabled and s.logs.discovered_files):
            return []
        return [LogFileSource(f"logs pid {found.pid}", _discovered_log_files(found, config), s.logs.interval,
                              {**resource, "service.name": maps.service_name, "process.pid": found.pid})]
    # Discovery reads no credentials: an agent on loopback is scraped as it answers.
    target = ScrapeTargetSettings(url=HttpUrl(found.url), mappings=found.mappings)
    name = f"{found.protocol} pid {found.pid}"
    out: list[Source] = [
        JolokiaSource(target, None, maps, s.jolokia, resource, name) if found.protocol == "jolokia"
        else PrometheusSource(target, None, maps, s.prometheus, resource, name)
    ]
    if s.discovery.process_metrics:
        try:
            out.append(ProcessSource(found.pid, maps.service_name, s.jolokia.interval,
                                     s.discovery.send_command_line))
        except psutil.Error as e:  # the JVM exited between the scan and now
            log.info("discovery: no process metrics for pid %d: %s", found.pid, e)
    return out


def _discovered_log_files(found: Discovered, config: Config) -> list[tuple[str, FileRules]]:
    """Each name in sources.logs.discovered_files: where the JVM's log4j config writes a file of
    that name, else that name in its log directory."""
    from relay.sources.logfile import file_rules

    logs = config.sources.logs
    named = {os.path.basename(p): p for p in found.log_files}
    out = []
    for f in logs.discovered_files:
        path = named.get(f.path) if not glob.has_magic(f.path) else None
        out.append((path or os.path.join(found.url, f.path), file_rules(logs, f)))
    return out


def _rules_dir(config: Config) -> Path | None:
    """Where the mapping rule files live; None: the shipped ones."""
    return Path(config.sources.mappings_dir) if config.sources.mappings_dir else None
