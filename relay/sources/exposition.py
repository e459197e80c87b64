"""Bounded parsing of Prometheus text and OpenMetrics exposition, with prometheus_client's parsers.

Owns: feeding the parser line by line while enforcing the line length, labels per series,
series per scrape and parse-time limits; the name each family was exposed under (the text
parser renames counters, the compatibility spec wants the name as written); and turning
whatever the parser raises on malformed input into one ExpositionError that names the
line and quotes a short excerpt of it, never the whole input.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import parser as text_parser
from prometheus_client.openmetrics import parser as om_parser

from relay.sources.scrape_bounds import Deadline, ScrapeLimitExceeded, excerpt, short

# What prometheus_client can raise on malformed input (its parsers are not written for hostile text).
PARSER_ERRORS = (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError, RecursionError)


class ExpositionError(Exception):
    """The scraped text is not valid exposition format."""


@dataclass
class ExpositionLimits:
    """The bounds one scrape is parsed under; the defaults are the config's."""

    source: str = "exposition"  # the target, named in every limit error
    max_line_length: int = 64 * 1024
    max_labels_per_series: int = 128
    max_series: int = 100_000
    deadline: Deadline | None = field(default=None)

    def exceeded(self, what: str, setting: str) -> ScrapeLimitExceeded:
        return ScrapeLimitExceeded(self.source, what, f"sources.prometheus.{setting}")


class _Lines:
    """The text, line by line, as the parser reads it: each line is checked before the
    parser sees it, and the position is kept for error messages."""

    def __init__(self, text: str, limits: ExpositionLimits) -> None:
        self._lines = io.StringIO(text)
        self.limits = limits
        self.number = 0
        self.offset = 0
        self.line = ""
        self.counters_declared: set[str] = set()  # `# TYPE x counter` names, as written

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        self.offset += len(self.line)
        line = next(self._lines)
        self.number += 1
        self.line = line
        lim = self.limits
        if len(line) > lim.max_line_length:
            raise lim.exceeded(f"line {self.number} is {len(line)} characters long, at offset {self.offset}",
                               f"max_line_length = {lim.max_line_length}")
        # Every label is `name="...`; a value can add at most one more `="` (its last `=`
        # before the closing quote). Refusing here spares the parser's quadratic label split.
        if line.count('="') > 2 * lim.max_labels_per_series:
            raise lim.exceeded(f"line {self.number} has more than {lim.max_labels_per_series} labels",
                               f"max_labels_per_series = {lim.max_labels_per_series}")
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4 and parts[3] == "counter":
                self.counters_declared.add(parts[2].strip('"'))
        if lim.deadline is not None and self.number % 256 == 0:
            lim.deadline.check()
        return line


def parse_families(text: str, openmetrics: bool, limits: ExpositionLimits | None = None) -> Iterator[tuple[Any, str]]:
    """(family, the name it was exposed under), one family at a time, within the limits.
    Raises ExpositionError (malformed) or ScrapeLimitExceeded (a limit passed)."""
    limits = limits or ExpositionLimits()
    lines = _Lines(text, limits)
    parser = om_parser if openmetrics else text_parser
    series = 0
    try:
        for fam in parser.text_fd_to_metric_families(lines):
            series += len(fam.samples)
            if series > limits.max_series:
                raise limits.exceeded(f"more than {limits.max_series} series",
                                      f"max_series = {limits.max_series}")
            for s in fam.samples:
                if len(s.labels) > limits.max_labels_per_series:
                    raise limits.exceeded(f"series {s.name} has {len(s.labels)} labels",
                                          f"max_labels_per_series = {limits.max_labels_per_series}")
            yield fam, _exposed_name(fam, openmetrics, lines.counters_declared)
    except PARSER_ERRORS as e:
        fmt = "OpenMetrics" if openmetrics else "Prometheus text"
        detail = short(f"{e.__class__.__name__}: {e}" if not str(e) else str(e), 120)
        raise ExpositionError(f"malformed {fmt} exposition at line {lines.number}: {detail}; "
                              f"the line: {excerpt(text, lines.offset)}") from None


def _exposed_name(fam: Any, openmetrics: bool, counters_declared: set[str]) -> str:
    # The text parser drops a counter's `_total` from the family name (and adds it to
    # samples declared without it); the name as written is what the TYPE line said.
    if openmetrics or fam.type != "counter" or fam.name in counters_declared:
        return str(fam.name)
    return f"{fam.name}_total"
