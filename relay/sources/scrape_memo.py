"""The scrape memo: one target's last exposition, planned, so an unchanged scrape costs a line split,
one comparison and a float parse per sample instead of the full parse and mapping.

Owns: the plan (what the full path decided for one exposition, kept as the OTLP request it
built, encoded, with the byte offset of every point's time and value), the check that a new
body has the same shape (every line equal to the planned one but for the value token that
ends a sample line), filling the new values into a copy of the planned bytes (handed on
encoded, as an EncodedRequest), and the bounds and counts of the memo.

Why it is exact: the full path's output is a function of the lines. For counters, gauges and
untyped series a value only ever becomes the double of its own point, so two bodies that
differ only in value tokens give requests that differ only in those doubles (fixed 8-byte
fields: the encoding keeps its length). What it cannot fill in, it leaves to the full path:
a line that differs, a value token not in the plain number form the parsers read the same
way as float() (nor too long, nor one `-0` would change), a series with a timestamp or an
exemplar. A histogram or summary family (its counts become varints, and a NaN count drops a
point) is mapped afresh on every scrape by the full path's own family mapping, from the
labels the plan keeps and the new values. OpenMetrics (what the JMX exporter answers the
relay's Accept with) adds: `# UNIT` and `# EOF` are lines like any other; a `_created` value
is a start time and info, stateset and gaugehistogram values are all the parser allows, so
those tokens are shape (a changed one sends the scrape the full way); and a value the
OpenMetrics parser refuses where its sample's suffix puts it (a NaN or negative `_total`, a
non-integer `_count`, a histogram's buckets out of order) sends the scrape the full way,
which fails it with the parser's own error. Prometheus keeps a
per-target cache for the same reason, from the exposed series text to its parsed labels and
storage reference (scrape/scrape.go, scrapeCache); this memo keys the whole exposition rather
than each series, because the OTLP mapping of a series depends on its neighbours (its family's
TYPE line, names shared across families, target_info): a changed line sends that scrape the
full way, and the plan it leaves serves the scrapes after it.

Bounds: one plan per target; a plan larger than PLAN_MAX_BYTES is not kept; a target whose
plans go unused (its exposition changes every scrape) gets plans ever more rarely. Each
outcome is counted (MemoStats), and /status shows the counts.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.samples import Sample

from relay import wire
from relay.otlp import EncodedRequest, MetricsBuilder
from relay.sources.scrape_bounds import Deadline

PLAN_MAX_BYTES = 64 * 1024 * 1024  # the plan of a 100,000-series exposition is ~25 MiB
MAX_BACKOFF = 32  # scrapes between plans, at most, for a target whose plans go unused
_NUMBER_CHARS = b"0123456789.eE+-"
_SPECIAL = frozenset((b"NaN", b"+Inf", b"-Inf", b"Inf"))
_MAX_TOKEN = 40  # longer is not a plain number: left to the full path
_DEADLINE_EVERY = 4096  # lines between deadline checks
_FIXED64 = struct.Struct("<Q")
_DOUBLE = struct.Struct("<d")
_TIME_FIELD, _VALUE_FIELD = 3, 4  # NumberDataPoint.time_unix_nano, .as_double
# What the OpenMetrics parser asks of a value (text_fd_to_metric_families), by the sample's
# suffix after its family's name: a bit each, checked on the fast path as the parser would.
_NOT_NAN, _NOT_NEGATIVE, _INTEGER = 1, 2, 4
_OM_CHECKS = {"_total": _NOT_NAN | _NOT_NEGATIVE, "_sum": _NOT_NAN | _NOT_NEGATIVE, "_gsum": _NOT_NAN,
              "_count": _NOT_NAN | _NOT_NEGATIVE | _INTEGER, "_gcount": _NOT_NAN | _NOT_NEGATIVE | _INTEGER,
              "_bucket": _NOT_NAN | _NOT_NEGATIVE | _INTEGER}
# Families whose every value the parser or the mapping reads as more than a double (info must
# be 1, a stateset 0 or 1; a gaugehistogram is dropped but checked): their values are shape.
_OM_FIXED_TYPES = frozenset(("info", "stateset", "gaugehistogram"))
# The parser's own check of a histogram's values (untyped there): the fast path runs it as is.
_CHECK_HISTOGRAM: Callable[[list[Sample], str], None] = om_parser._check_histogram


@dataclass
class ScrapeReading:
    request: Message | EncodedRequest
    points: int
    families: int
    mapped_samples: int
    dropped: int = 0  # families or points the spec says to drop (gaugehistogram, no _count, ...)


@dataclass
class MemoStats:
    fast: int = 0  # scrapes served from the plan
    full: int = 0  # scrapes that took the full path
    plans: int = 0  # plans made
    unplannable: int = 0  # full scrapes that left no plan (timestamps, an unusual line, ...)
    too_big: int = 0  # plans not kept: past PLAN_MAX_BYTES
    skipped: int = 0  # full scrapes not planned: the target's plans went unused (backoff)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def split_values(body: bytes) -> tuple[bytes, list[bytes]] | None:
    """The body's shape (each line, less the value token that ends a sample line) and the
    value tokens in order; None if a sample line has no space before its value."""
    keys: list[bytes] = []
    tokens: list[bytes] = []
    add_key, add_token = keys.append, tokens.append
    for line in body.split(b"\n"):
        if not line or line[0] == 35:  # b"#": comments (HELP, TYPE) are kept whole
            add_key(line)
            continue
        key, sep, token = line.rpartition(b" ")
        if not sep:
            return None
        add_key(key)
        add_token(token)
    return b"\n".join(keys), tokens


def parse_value(token: bytes) -> float | None:
    """The value as the full path reads it (prometheus_client's int-then-float, then float()),
    or None when the token is not in the plain form where that is sure."""
    if len(token) > _MAX_TOKEN:
        return None
    if token.isdigit():
        return float(int(token))
    if token.translate(None, _NUMBER_CHARS):
        return float(token) if token in _SPECIAL else None
    if token[1:].isdigit():  # signed integer: int() first, so "-0" is 0.0 as there
        return float(int(token)) if token[0] in b"+-" else None
    try:
        return float(token)
    except ValueError:
        return None


@dataclass
class _Family:
    """A histogram or summary family: what its full mapping needs besides the values."""

    name: str
    type: str
    unit: str
    documentation: str
    exposed: str
    samples: list[tuple[int, str, dict[str, str]]]  # (value token index, sample name, labels)


@dataclass
class _Plan:
    key: tuple[Any, ...]  # the settings the plan was made under
    shape: bytes
    tokens: int
    head: bytes  # resource_metrics' own fields before scope_metrics (the resource)
    scope: bytes  # scope_metrics' own fields (scope, schema_url)
    tail: bytes  # resource_metrics' fields after scope_metrics
    template: bytearray  # the encoded metrics fields, histogram/summary metrics cut out
    cuts: list[tuple[int, _Family]]  # where in template each such family's metric goes
    # Per point: (offset of time_unix_nano, offset of as_double, token index, a rule's scale or None).
    points: list[tuple[int, int, int, float | None]]
    static_points: int
    families: int
    mapped: int
    static_dropped: int
    longest_key: int  # bytes, of the longest line less its value
    openmetrics: bool = False
    fixed: list[tuple[int, bytes]] = field(default_factory=list)  # (token index, the token it must be)
    checks: list[tuple[int, int]] = field(default_factory=list)  # (token index, _OM_CHECKS bits)
    hits: int = 0

    def size(self) -> int:
        return len(self.shape) + 2 * len(self.template) + 64 * len(self.points) + 200 * len(self.cuts)


class Unplannable(Exception):
    """The full path did something the plan cannot reproduce; the scrape is still good."""


class Trace:
    """Recorded during one full mapping: which sample each point's value came from, and which
    metrics a histogram or summary family made. map_exposition calls it; it builds nothing."""

    def __init__(self) -> None:
        self.samples: list[Any] = []  # every sample in order: the n-th is the n-th value token
        self.kinds: list[tuple[str, str]] = []  # each sample's family: (name, type)
        self.index: dict[int, int] = {}  # id(sample) -> its place
        self.created: list[Any] = []  # metrics in the order they were made
        self.by_metric: dict[int, int] = {}  # id(metric) -> creation index
        self.sources: dict[int, list[tuple[int, float | None]]] = {}  # creation index -> per point (sample, scale)
        self.families: dict[int, _Family] = {}  # creation index -> the family it maps
        self.counts: list[int] = []  # creation index -> points
        self._pending: tuple[int, float | None] | None = None
        self._family: _Family | None = None
        self.broken = ""

    def builder(self, resource: dict[str, Any], scope: str, version: str) -> MetricsBuilder:
        return _TracingBuilder(self, resource, scope, version)

    def sample(self, s: Any, fam: Any) -> None:
        if s.timestamp is not None or getattr(s, "exemplar", None):
            self.broken = self.broken or "a sample with a timestamp or exemplar"
        self.index[id(s)] = len(self.samples)
        self.samples.append(s)
        self.kinds.append((str(fam.name), str(fam.type)))

    def value_from(self, s: Any, scale: float | None = None) -> None:
        """The next point's value is this sample's (times `scale`, when a rule scales it)."""
        self._pending = (self.index[id(s)], scale)

    def family(self, fam: Any, exposed: str, samples: list[Any]) -> None:
        """A histogram or summary family is being mapped: its metric is made afresh each scrape."""
        self._family = _Family(str(fam.name), str(fam.type), fam.unit or "", fam.documentation or "", exposed,
                               [(self.index[id(s)], s.name, dict(s.labels)) for s in samples])

    def family_done(self) -> None:
        self._family = None

    def _created(self, m: Any) -> None:
        i = len(self.created)
        self.created.append(m)
        self.by_metric[id(m)] = i
        self.sources[i] = []
        self.counts.append(0)
        if self._family is not None:
            self.families[i] = self._family

    def _point(self, m: Any) -> None:
        i = self.by_metric[id(m)]
        self.counts[i] += 1
        if i in self.families:
            return
        if self._pending is None:
            self.broken = self.broken or "a point not from a sample"
            return
        self.sources[i].append(self._pending)
        self._pending = None


class _TracingBuilder(MetricsBuilder):
    def __init__(self, trace: Trace, resource: dict[str, Any], scope: str, version: str) -> None:
        super().__init__(resource, scope, version)
        self._trace = trace

    def sum(self, name: str, unit: str, description: str = "", monotonic: bool = True) -> Any:
        m = super().sum(name, unit, description, monotonic)
        self._trace._created(m)
        return m

    def gauge(self, name: str, unit: str, description: str = "") -> Any:
        m = super().gauge(name, unit, description)
        self._trace._created(m)
        return m

    def histogram(self, name: str, unit: str, description: str = "") -> Any:
        m = super().histogram(name, unit, description)
        self._trace._created(m)
        return m

    def summary(self, name: str, unit: str, description: str = "") -> Any:
        m = super().summary(name, unit, description)
        self._trace._created(m)
        return m

    def point(self, metric: Any, value: float | int, time_ns: int, start_ns: int = 0,
              attrs: Any = None) -> None:
        super().point(metric, value, time_ns, start_ns, attrs)
        self._trace._point(metric)

    def histogram_point(self, metric: Any, *args: Any, **kw: Any) -> None:
        super().histogram_point(metric, *args, **kw)
        self._trace._point(metric)

    def summary_point(self, metric: Any, *args: Any, **kw: Any) -> None:
        super().summary_point(metric, *args, **kw)
        self._trace._point(metric)


# The full path, as the memo calls it: (text, trace) -> reading; and one histogram or summary
# family mapped alone: (family, samples, now_ns) -> (encoded metrics fields, points, dropped).
FullMap = Callable[[str, Trace | None], ScrapeReading]
FamilyMap = Callable[[_Family, list[Any], int], tuple[bytes, int, int]]


@dataclass
class ScrapeMemo:
    """One target's plan. Not shared between threads: a source maps one scrape at a time."""

    stats: MemoStats = field(default_factory=MemoStats)
    _plan: _Plan | None = None
    _backoff: int = 0  # full scrapes still to go before the next plan
    _unused: int = 0  # plans in a row that served no scrape

    def map(self, body: bytes, key: tuple[Any, ...], now_ns: int, deadline: Deadline | None,
            max_line_length: int, full: FullMap, family: FamilyMap, openmetrics: bool = False) -> ScrapeReading:
        """The reading for this body: from the plan when the shape matches, else the full path
        (which raises ExpositionError or ScrapeLimitExceeded exactly as without the memo).
        `key` holds the settings the mapping depends on; a plan made under others is not used."""
        key = (openmetrics, *key)
        split = split_values(body)
        plan = self._plan
        if split is not None and plan is not None and plan.key == key and plan.shape == split[0]:
            reading = _fill(plan, split[1], now_ns, deadline, max_line_length, family)
            if reading is not None:
                plan.hits += 1
                self.stats.fast += 1
                return reading
        self.stats.full += 1
        if self._plan is not None:
            self._unused = 0 if self._plan.hits else self._unused + 1
            self._plan = None
        if split is None or self._backoff > 0:
            self._backoff -= split is not None
            self.stats.skipped += split is not None
            return full(body.decode("utf-8", "replace"), None)
        trace = Trace()
        reading = full(body.decode("utf-8", "replace"), trace)
        try:
            self._plan = _make_plan(reading, trace, split, key, now_ns, family, openmetrics)
            self.stats.plans += 1
        except Unplannable as e:
            self.stats.too_big += str(e) == "too big"
            self.stats.unplannable += str(e) != "too big"
            self._unused += 1
        self._backoff = min(2 ** self._unused - 1, MAX_BACKOFF) if self._unused else 0
        return reading


def _make_plan(reading: ScrapeReading, trace: Trace, split: tuple[bytes, list[bytes]], key: tuple[Any, ...],
               now_ns: int, family: FamilyMap, openmetrics: bool = False) -> _Plan:
    shape, tokens = split
    if trace.broken:
        raise Unplannable(trace.broken)
    if len(trace.samples) != len(tokens):
        raise Unplannable("lines and samples do not pair up")
    fixed: list[tuple[int, bytes]] = []
    checks: list[tuple[int, int]] = []
    for i, (s, token) in enumerate(zip(trace.samples, tokens, strict=True)):
        if openmetrics:
            name, kind = trace.kinds[i]
            # A `_created` value is a start time (Timestamp-precise), not a double: shape, as
            # are the values the parser only lets through as one or two numbers.
            if kind in _OM_FIXED_TYPES or s.name.endswith("_created"):
                fixed.append((i, token))
                continue
            bits = _OM_CHECKS.get(s.name[len(name):], 0) if s.name.startswith(name) else 0
            if kind == "summary" and s.name == name:
                bits = _NOT_NEGATIVE  # a quantile's value
            if bits:
                checks.append((i, bits))
        v = parse_value(token)
        if v is None or not _same(float(s.value), v):
            raise Unplannable("a value token not in plain form")
    try:
        head, scope, tail, metrics = _split_request(memoryview(reading.request.SerializeToString()))
        template = bytearray()
        cuts: list[tuple[int, _Family]] = []
        points: list[tuple[int, int, int, float | None]] = []
        family_points = family_dropped = 0
        out = iter(metrics)
        for i in range(len(trace.created)):
            fam = trace.families.get(i)
            if fam is not None:
                samples = [Sample(name, labels, trace.samples[k].value, None) for k, name, labels in fam.samples]
                encoded, n, d = family(fam, samples, now_ns)
                # MetricsBuilder.finish drops a metric without points: then nothing was encoded.
                if n and bytes(next(out, b"")) != encoded:
                    raise Unplannable("a family mapped alone differs")
                family_points += n
                family_dropped += d
                cuts.append((len(template), fam))
            elif trace.counts[i]:
                whole = next(out, None)
                if whole is None:
                    raise Unplannable("fewer metrics than made")
                base = len(template)
                template.extend(whole)
                _point_offsets(whole, base, trace.sources[i], points)
        if next(out, None) is not None:
            raise Unplannable("more metrics than made")
    except wire.Malformed:
        raise Unplannable("an encoding not walked") from None
    plan = _Plan(key, shape, len(tokens), head, scope, tail, template, cuts, points,
                 reading.points - family_points, reading.families, reading.mapped_samples,
                 reading.dropped - family_dropped, max(map(len, shape.split(b"\n"))), openmetrics, fixed, checks)
    if plan.size() > PLAN_MAX_BYTES:
        raise Unplannable("too big")
    return plan


def _split_request(data: memoryview) -> tuple[bytes, bytes, bytes, list[memoryview]]:
    """An encoded request of one resource and one scope taken apart: the resource's fields
    before and after its scope, the scope's own fields, and each metric field (tag included)."""
    top = list(wire.fields(data))
    if len(top) != 1 or top[0][0] != 1:
        raise Unplannable("not one resource")
    head, tail, scope = bytearray(), bytearray(), bytearray()
    metrics: list[memoryview] = []
    scopes = 0
    for number, whole, value in wire.fields(top[0][2]):
        if number != 2:
            (tail if scopes else head).extend(whole)
            continue
        scopes += 1
        for n2, w2, _ in wire.fields(value):
            if n2 == 2:
                metrics.append(w2)
            else:
                scope.extend(w2)
    if scopes != 1:
        raise Unplannable("not one scope")
    return bytes(head), bytes(scope), bytes(tail), metrics


def _same(a: float, b: float) -> bool:
    return _DOUBLE.pack(a) == _DOUBLE.pack(b)


def _point_offsets(whole: memoryview, base: int, sources: list[tuple[int, float | None]],
                   out: list[tuple[int, int, int, float | None]]) -> None:
    """The time and value offsets (in the template, where `whole`, the metric field, starts
    at `base`) of each point of a gauge or sum metric, with the value token each comes from."""
    _, _, metric = next(wire.fields(whole))
    pos = base + len(whole) - len(metric)
    n = 0
    for number, field_bytes, value in wire.fields(metric):
        if number in (5, 7):  # gauge, sum
            dpos = pos + len(field_bytes) - len(value)
            for f, w, v in wire.fields(value):
                if f == 1:
                    if n >= len(sources):
                        raise Unplannable("more points than traced")
                    t_off, v_off = _number_point(v, dpos + len(w) - len(v))
                    token, scale = sources[n]
                    out.append((t_off, v_off, token, scale))
                    n += 1
                dpos += len(w)
        elif number in (9, 10, 11):
            raise Unplannable("a histogram not from a family")
        pos += len(field_bytes)
    if n != len(sources):
        raise Unplannable("fewer points than traced")


def _number_point(point: memoryview, base: int) -> tuple[int, int]:
    t_off = v_off = -1
    pos = base
    for f, w, v in wire.fields(point):
        if f == _TIME_FIELD and len(v) == 8:
            t_off = pos + len(w) - 8
        elif f == _VALUE_FIELD and len(v) == 8:
            v_off = pos + len(w) - 8
        elif f in (_TIME_FIELD, _VALUE_FIELD, 6):  # 6: as_int, which the full path never writes
            raise Unplannable("a point encoded otherwise")
        pos += len(w)
    if t_off < 0 or v_off < 0:
        raise Unplannable("a point without time or value")
    return t_off, v_off


def _fill(plan: _Plan, tokens: list[bytes], now_ns: int, deadline: Deadline | None, max_line_length: int,
          family: FamilyMap) -> ScrapeReading | None:
    """The plan with this scrape's values; None if a token is not in plain form, or a line
    could be past the line length limit (the full path then measures it, in characters)."""
    if tokens and plan.longest_key + 2 + max(map(len, tokens)) > max_line_length:
        return None
    for i, token in plan.fixed:
        if tokens[i] != token:
            return None
    values: list[float] = []
    add = values.append
    for i, token in enumerate(tokens):
        v = parse_value(token)
        if v is None:
            return None
        add(v)
        if deadline is not None and i % _DEADLINE_EVERY == 0:
            deadline.check()
    for i, bits in plan.checks:
        if not _om_value_ok(values[i], tokens[i], bits):
            return None  # the full path fails this scrape, with the parser's error
    buf = bytearray(plan.template)
    pack_time, pack_value = _FIXED64.pack_into, _DOUBLE.pack_into
    for t_off, v_off, k, scale in plan.points:
        pack_time(buf, t_off, now_ns)
        pack_value(buf, v_off, values[k] if scale is None else values[k] * scale)
    points, dropped = plan.static_points, plan.static_dropped
    parts: list[bytes | memoryview] = [plan.scope]
    view = memoryview(buf)
    at = 0
    for cut, fam in plan.cuts:
        parts.append(view[at:cut])
        samples = [Sample(name, labels, _full_value(tokens[i]), None) for i, name, labels in fam.samples]
        if plan.openmetrics and fam.type == "histogram" and not _om_histogram_ok(samples, fam.name):
            return None
        encoded, n, d = family(fam, samples, now_ns)
        parts.append(encoded)
        points += n
        dropped += d
        at = cut
    parts.append(view[at:])
    scope_metrics: list[bytes | memoryview] = []
    wire.emit(scope_metrics, 2, parts)
    resource_metrics: list[bytes | memoryview] = []
    wire.emit(resource_metrics, 1, [plan.head, *scope_metrics, plan.tail])
    return ScrapeReading(EncodedRequest(b"".join(resource_metrics), points), points, plan.families, plan.mapped,
                         dropped)


def _om_value_ok(value: float, token: bytes, bits: int) -> bool:
    """Whether the OpenMetrics parser takes this value where its sample's suffix puts it."""
    if bits & _NOT_NAN and value != value:
        return False
    if bits & _NOT_NEGATIVE and value < 0:
        return False
    return not bits & _INTEGER or value.is_integer() or token.isdigit()


def _om_histogram_ok(samples: list[Sample], name: str) -> bool:
    """The parser's own check of a histogram's values (buckets in order, _count equal to the
    +Inf bucket): it raises ValueError where the full path fails the scrape."""
    try:
        _CHECK_HISTOGRAM(samples, name)
    except ValueError:
        return False
    return True


def _full_value(token: bytes) -> float | int:
    """A histogram or summary sample's value as the text parser gives it (int when it reads as one)."""
    return int(token) if token.isdigit() or (token[1:].isdigit() and token[0] in b"+-") else float(token)
