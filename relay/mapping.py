"""Mapping rules as data: which MBean attribute or Prometheus series becomes which OTLP metric.

Owns: the rule file schema (configs/mappings/*.yaml, validated strictly like the config),
attribute expressions, and compiling rules into lookups the Jolokia and Prometheus sources
apply. It sits below both of its users: config loads every rule file it names at load time
(so check-config and a reload refuse a broken one), and the sources apply what it compiles.
Rule files follow the shape of the OpenTelemetry JMX scraper's rules so they read familiar:
`bean`/`beans`, `metricAttribute`, `mapping: {Attribute[.path]: {metric, type, unit, desc}}`.

Attribute expressions: `const(x)` (or a plain string), `param(key)` (an ObjectName key),
`beanattr(Attr)` (another attribute of the same MBean), `label(name)` (a Prometheus label),
and `lowercase(...)` around any of them. A Prometheus rule's `match: {label: ""}` takes only
samples without that label (the broker-wide sample beside the per-topic ones).
`provided_by` says which Kafka versions or configurations expose a rule's bean or series, where
that is not every broker from 2.0 on (docs/metrics.md shows it; the real-broker coverage test
takes it as the reason a rule matched nothing).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from relay.strict_yaml import SchemaError, load_file, load_text

MetricType = Literal["counter", "updowncounter", "gauge"]


@dataclass(frozen=True)
class MetricMapping:
    metric: str
    type: MetricType | None = None
    unit: str | None = None
    desc: str = ""
    # Multiply the value (e.g. 1e-9 for nanoseconds to seconds).
    scale: float = 1.0
    # JMX reports "undefined" as -1 (for example an unbounded memory pool's max).
    drop_negative: bool = False
    metricAttribute: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JolokiaRule:
    bean: str | None = None
    beans: tuple[str, ...] = ()
    prefix: str = ""
    type: MetricType = "gauge"
    unit: str = ""
    metricAttribute: dict[str, str] = field(default_factory=dict)
    mapping: dict[str, MetricMapping] = field(default_factory=dict)
    provided_by: str = ""

    def validate(self) -> None:
        if bool(self.bean) == bool(self.beans):
            raise ValueError("give exactly one of bean or beans")
        if not self.mapping:
            raise ValueError("mapping: at least one attribute is required")
        for b in self.all_beans:
            domain, _, props = b.partition(":")
            if not domain or "=" not in props:
                raise ValueError(f"{b!r} is not an MBean name or pattern (domain:key=value,...); "
                                 "in a YAML [list], quote names that contain commas")

    @property
    def all_beans(self) -> tuple[str, ...]:
        return (self.bean,) if self.bean else self.beans


@dataclass(frozen=True)
class PrometheusRule:
    # The exposed sample name, suffix included (`..._total`, `..._count`); several allowed.
    series: tuple[str, ...]
    metric: str
    type: MetricType = "gauge"
    unit: str = ""
    desc: str = ""
    scale: float = 1.0
    # Only samples whose labels have these values (for example a quantile).
    match: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)
    provided_by: str = ""


@dataclass(frozen=True)
class MappingFile:
    service_name: str
    description: str = ""
    jolokia: tuple[JolokiaRule, ...] = ()
    prometheus: tuple[PrometheusRule, ...] = ()


# -- attribute expressions ---------------------------------------------------------------------------

Context = Mapping[str, Any]  # {"params": {...}, "bean": {...}, "labels": {...}}
Expr = Callable[[Context], str | None]

_CALL = re.compile(r"^(const|param|beanattr|label|lowercase)\((.*)\)$")


def _constant(value: str) -> Expr:
    def const(_ctx: Context) -> str | None:
        return value

    return const


def compile_expr(text: str) -> Expr:
    m = _CALL.match(text.strip())
    if not m:
        return _constant(text)
    fn, arg = m.group(1), m.group(2).strip()
    if fn == "const":
        return _constant(arg)
    if fn == "lowercase":
        inner = compile_expr(arg)

        def lower(ctx: Context) -> str | None:
            v = inner(ctx)
            return v.lower() if v is not None else None

        return lower
    source = {"param": "params", "beanattr": "bean", "label": "labels"}[fn]

    def lookup(ctx: Context) -> str | None:
        v = ctx.get(source, {}).get(arg)
        return None if v is None else str(v)

    return lookup


def check_expr(text: str) -> None:
    t = text.strip()
    while True:
        m = _CALL.match(t)
        if not m:
            if "(" in t and t.split("(")[0].isidentifier():
                raise ValueError(f"unknown attribute expression {text!r}")
            return
        if m.group(1) != "lowercase":
            return
        t = m.group(2).strip()


# -- compiled rules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledJolokia:
    """One attribute of one bean pattern, with where its value goes."""

    pattern: str  # as sent to Jolokia
    attribute: str  # top-level MBean attribute
    path: tuple[str, ...]  # into a composite value
    metric: str
    type: MetricType
    unit: str
    desc: str
    scale: float
    drop_negative: bool
    attrs: tuple[tuple[str, Expr], ...]


@dataclass(frozen=True)
class CompiledPrometheus:
    metric: str
    type: MetricType
    unit: str
    desc: str
    scale: float
    # label -> wanted value; None: the label must be absent (an empty value in the rule file).
    match: tuple[tuple[str, str | None], ...]
    attrs: tuple[tuple[str, Expr], ...]


@dataclass
class Mappings:
    """The rules of one or more mapping files, ready to apply to one target."""

    service_name: str
    jolokia: list[CompiledJolokia] = field(default_factory=list)
    prometheus: dict[str, list[CompiledPrometheus]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    # Attributes beanattr() expressions need, per bean pattern.
    extra_reads: dict[str, set[str]] = field(default_factory=dict)
    # Which rules apply to an ObjectName, per distinct name (matching every rule's pattern
    # against every bean each scrape would cost ~1 s of CPU for a 5,000-series broker). One
    # shared tuple per distinct rule set, so the memo costs a name and a pointer per bean.
    # Attributes and ObjectName properties are worked out afresh each scrape instead: about
    # 20 ms of CPU every 30 s for such a broker, where keeping them cost ~5 MiB of memory.
    _by_bean: dict[str, tuple[CompiledJolokia, ...]] = field(default_factory=dict, repr=False)
    _rule_sets: dict[tuple[CompiledJolokia, ...], tuple[CompiledJolokia, ...]] = field(default_factory=dict,
                                                                                      repr=False)

    @staticmethod
    def params_for(bean_name: str) -> dict[str, str]:
        return parse_props(bean_name.partition(":")[2])

    @staticmethod
    def attrs_for(rule: CompiledJolokia, ctx: Context) -> dict[str, str]:
        """A rule's point attributes for one MBean."""
        attrs: dict[str, str] = {}
        for k, expr in rule.attrs:
            v = expr(ctx)
            if v is not None:
                attrs[k] = v
        return attrs

    def rules_for(self, bean_name: str) -> tuple[CompiledJolokia, ...]:
        """The rules whose bean pattern matches an ObjectName, memoized per distinct name."""
        rules = self._by_bean.get(bean_name)
        if rules is None:
            found = tuple(r for r in self.jolokia if bean_matches(r.pattern, bean_name))
            rules = self._rule_sets.setdefault(found, found)
            if len(self._by_bean) < 100_000:  # bounded: bean names come from the target
                self._by_bean[bean_name] = rules
        return rules

    def read_plan(self) -> dict[str, list[str]]:
        """Bean pattern -> attributes to read: one bulk entry per pattern."""
        out: dict[str, list[str]] = {}
        for r in self.jolokia:
            attrs = out.setdefault(r.pattern, [])
            if r.attribute not in attrs:
                attrs.append(r.attribute)
        for bean, extra in self.extra_reads.items():
            for a in sorted(extra):
                if a not in out.setdefault(bean, []):
                    out[bean].append(a)
        return out


def _merge_attrs(*layers: Mapping[str, str]) -> tuple[tuple[str, Expr], ...]:
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update(layer)
    return tuple((k, compile_expr(v)) for k, v in merged.items())


_BEANATTR = re.compile(r"beanattr\(([^)]+)\)")


def compile_files(files: list[tuple[str, MappingFile]]) -> Mappings:
    out = Mappings(service_name=files[0][1].service_name if files else "unknown")
    extra_reads = out.extra_reads
    # A combined KRaft node loads kafka and kraft, which both read the controller beans: the
    # same read into the same metric twice would be one series reported twice.
    seen_reads: set[tuple[str, str, str]] = set()
    seen_series: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
    for name, f in files:
        out.names.append(name)
        for rule in f.jolokia:
            for bean in rule.all_beans:
                for key, mm in rule.mapping.items():
                    if (bean, key, rule.prefix + mm.metric) in seen_reads:
                        continue
                    seen_reads.add((bean, key, rule.prefix + mm.metric))
                    attribute, *path = key.split(".")
                    attr_texts = {**rule.metricAttribute, **mm.metricAttribute}
                    for text in attr_texts.values():
                        for needed in _BEANATTR.findall(text):
                            extra_reads.setdefault(bean, set()).add(needed)
                    out.jolokia.append(CompiledJolokia(
                        pattern=bean, attribute=attribute, path=tuple(path),
                        metric=rule.prefix + mm.metric, type=mm.type or rule.type, unit=mm.unit or rule.unit,
                        desc=mm.desc, scale=mm.scale, drop_negative=mm.drop_negative,
                        attrs=_merge_attrs(rule.metricAttribute, mm.metricAttribute),
                    ))
        for prule in f.prometheus:
            compiled = CompiledPrometheus(
                metric=prule.metric, type=prule.type, unit=prule.unit, desc=prule.desc, scale=prule.scale,
                match=tuple((k, v or None) for k, v in prule.match.items()), attrs=_merge_attrs(prule.attributes),
            )
            for s in prule.series:
                series_key = (s, prule.metric, tuple(sorted(prule.match.items())))
                if series_key not in seen_series:
                    seen_series.add(series_key)
                    out.prometheus.setdefault(s, []).append(compiled)
    return out


# -- loading -----------------------------------------------------------------------------------------


def default_dir() -> Path:
    """Where the shipped rules live: an installed copy, else the source tree's configs/mappings."""
    env = os.environ.get("TELEMETRY_RELAY_MAPPINGS")
    if env:
        return Path(env)
    installed = Path("/usr/share/telemetry-relay/mappings")
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[1] / "configs" / "mappings"


# Parsed rule files by path and content. Config validation and the source build both load
# every rule file, and the strict YAML parse is what costs (~30 ms for kafka.yaml): keyed on
# the content itself, an edited file is always parsed afresh.
_PARSED: dict[tuple[str, str], MappingFile] = {}
_PARSED_LIMIT = 64


def load_mapping_file(path: Path) -> MappingFile:
    """One rule file, parsed and checked; SchemaError (file, line, key path) when it is not valid."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        mf, lines = load_file(path, MappingFile)  # names the problem as for any settings file
        _check_expressions(mf, lines, str(path))
        return mf
    key = (str(path), text)
    if key not in _PARSED:
        mf, lines = load_text(text, MappingFile, str(path))
        _check_expressions(mf, lines, str(path))
        if len(_PARSED) >= _PARSED_LIMIT:
            _PARSED.clear()
        _PARSED[key] = mf
    return _PARSED[key]


def _check_expressions(mf: MappingFile, lines: dict[str, int], file: str) -> None:
    """Refuse an attribute expression that names no known function, at its rule's line."""
    checks: list[tuple[str, str, dict[str, str]]] = []
    for i, rule in enumerate(mf.jolokia):
        for key, mm in rule.mapping.items():
            checks.append((f"jolokia[{i}]", f"jolokia[{i}].mapping.{key}", {**rule.metricAttribute,
                                                                             **mm.metricAttribute}))
    for i, prule in enumerate(mf.prometheus):
        checks.append((f"prometheus[{i}]", f"prometheus[{i}].attributes", prule.attributes))
    for rule_path, key_path, exprs in checks:
        for expr in exprs.values():
            try:
                check_expr(expr)
            except ValueError as e:
                raise SchemaError(file, lines.get(rule_path), key_path, str(e)) from None


def rule_file(name: str, directory: Path) -> Path:
    """Where the rule set `name` lives; ValueError, listing the ones there are, if nowhere."""
    path = directory / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in directory.glob("*.yaml"))) or "none"
        raise ValueError(f"no mapping file {name!r} in {directory} (available: {available})")
    return path


def load(names: list[str] | tuple[str, ...], directory: Path | None = None) -> Mappings:
    """The named rule files of `directory` (default: the shipped ones), compiled together."""
    d = directory or default_dir()
    files = []
    for name in names:
        try:
            path = rule_file(name, d)
        except ValueError as e:
            raise SchemaError(str(d / f"{name}.yaml"), None, "", str(e)) from None
        files.append((name, load_mapping_file(path)))
    return compile_files(files)


def bean_matches(pattern: str, name: str) -> bool:
    """Does an ObjectName match a (wildcard) pattern? Key order does not matter."""
    pd, _, pprops = pattern.partition(":")
    nd, _, nprops = name.partition(":")
    if not fnmatch.fnmatchcase(nd, pd):
        return False
    want = parse_props(pprops)
    have = parse_props(nprops)
    open_ended = want.pop("*", None) is not None
    if not open_ended and set(want) != set(have):
        return False
    return all(k in have and fnmatch.fnmatchcase(have[k], v) for k, v in want.items())


def parse_props(props: str) -> dict[str, str]:
    """ObjectName key properties; a bare '*' stands for 'any further keys'. Quoted values keep
    their commas and are unquoted."""
    out: dict[str, str] = {}
    if '"' not in props:  # the usual case: nothing quoted, so a comma always separates
        for part in props.split(",") if props else ():
            key, _, value = part.partition("=")
            out[key] = "*" if part == "*" else value
        return out
    buf, in_quote, i = [], False, 0
    parts: list[str] = []
    while i < len(props):
        c = props[i]
        if c == '"':
            in_quote = not in_quote
            buf.append(c)
        elif c == "\\" and in_quote and i + 1 < len(props):
            buf.append(props[i : i + 2])
            i += 1
        elif c == "," and not in_quote:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(c)
        i += 1
    if buf:
        parts.append("".join(buf))
    for part in parts:
        if part == "*":
            out["*"] = "*"
            continue
        key, _, value = part.partition("=")
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[key] = value
    return out
