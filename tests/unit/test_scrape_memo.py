"""The scrape memo gives exactly what the full path gives: the same request bytes, counts and
errors, on real bodies (first scrape, new values, a changed shape) and generated ones, in the
Prometheus text format and in OpenMetrics."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import mapping, otlp
from relay.otlp import count_items
from relay.source_settings import PrometheusSettings, ScrapeTargetSettings
from relay.sources import scrape_memo
from relay.sources.exposition import ExpositionLimits
from relay.sources.prometheus import ExpositionError, PrometheusSource, ScrapeReading, map_exposition
from relay.sources.scrape_bounds import Deadline, ScrapeLimitExceeded, short

FIX = Path(__file__).resolve().parents[1] / "fixtures"
URL = "http://127.0.0.1:9404/metrics"
NOW = 1_700_000_000_000_000_000
KAFKA = mapping.load(["kafka", "kraft", "jvm"])
REAL = [("jmx_exporter_kafka-4.4_broker_EXCERPT.prom", KAFKA), ("node_exporter_1.5.0_linux.prom", None)]
REAL_OM = "jmx_exporter_kafka-4.4_broker_EXCERPT.om.txt"  # the same broker's answer to the relay's Accept
# The text-format files of the shared corpus (tests/fixtures/SOURCES.md), with the rules a broker uses.
CORPUS = ["datadog_amazon_msk_jmx_metrics_EXCERPT.prom.txt", "promcommon_expfmt_testdata_text.prom",
          "prometheus_textparse_alltypes_237mfs.prom.txt", "promcommon_fuzz_parse_2_escapes_nan_inf_ts.prom",
          "promcommon_fuzz_parse_3_summary_weird.prom", "node_exporter_textfile_inconsistent_labels.prom",
          "promcommon_fuzz_error_2_newline_in_label.prom", "promcommon_fuzz_error_9_float_timestamp.prom"]
# The OpenMetrics files: _created, exemplars, UNIT, histograms with negative bounds, escapes, timestamps.
CORPUS_OM = ["prometheus_textparse_alltypes_5mfs.om.txt", "telegraf_openmetrics_multiple_summary_unit_created.om.txt",
             "openmetrics_suite_roundtrip.om.txt", "openmetrics_suite_escaping.om.txt",
             "openmetrics_suite_label_escaping.om.txt", "openmetrics_suite_timestamps.om.txt",
             "openmetrics_suite_bad_text_after_eof_0.om.txt"]
VALUE = re.compile(rb"^([^#\n][^\n]* )([-+0-9.eE]+)$", re.M)


def source(maps: mapping.Mappings | None, **kw: Any) -> PrometheusSource:
    src = PrometheusSource(ScrapeTargetSettings(url=URL), None, maps, PrometheusSettings(**kw), {"host.name": "h"})
    src.first_scrape_ns = NOW - 10**9
    return src


def limits(src: PrometheusSource, deadline: Deadline | None = None) -> ExpositionLimits:
    s = src.settings
    return ExpositionLimits(URL, s.max_line_length, s.max_labels_per_series, s.max_series,
                            deadline or Deadline(URL, 10.0, "sources.prometheus.parse_timeout"))


def outcome(fn: Any) -> tuple[Any, ...]:
    """What a mapping gave: the request's bytes and the counts, or the error and its message."""
    try:
        r: ScrapeReading = fn()
    except (ExpositionError, ScrapeLimitExceeded) as e:
        return (type(e), str(e))
    if isinstance(r.request, otlp.EncodedRequest):  # what the runner would count, without decoding
        assert r.request.points == count_items("metrics", r.request.decoded())
    return (r.request.SerializeToString(), r.points, r.families, r.mapped_samples, r.dropped)


def full_path(src: PrometheusSource, body: bytes, now: int, lim: ExpositionLimits, om: bool = False) -> tuple[Any, ...]:
    def run() -> ScrapeReading:
        try:
            return map_exposition(body.decode("utf-8", "replace"), om, src.mappings, src.resource, now,
                                  src.first_scrape_ns, src.passthrough, limits=lim,
                                  trim_suffixes=src.settings.trim_metric_suffixes)
        except ScrapeLimitExceeded:
            raise
        except ExpositionError as e:  # as the source words it
            raise ExpositionError(f"{URL}: {e}") from None
        except Exception as e:
            raise ExpositionError(f"{URL}: cannot map the scrape: {short(f'{e.__class__.__name__}: {e}')}") from None
    return outcome(run)


def scrape(src: PrometheusSource, body: bytes, now: int = NOW, deadline: Deadline | None = None,
           om: bool = False) -> None:
    """One scrape through the source's own mapping (memo and all), checked against the full path."""
    lim = limits(src, deadline)
    got = outcome(lambda: src._map(body, om, now, lim))
    assert got == full_path(src, body, now, limits(src, deadline), om), f"memo stats {src.memo.stats}"


def moved(body: bytes, k: int, keep: bytes = b"") -> bytes:
    """The body with every plain value token changed, as the next scrape of a target has it
    (a token float() refuses stays as it is, as does one on a line with `keep` in it)."""
    def move(m: re.Match[bytes]) -> bytes:
        if keep and keep in m.group(1):
            return m.group(0)
        try:
            return m.group(1) + repr(float(m.group(2)) * (1 + k) + k).encode()
        except ValueError:
            return m.group(0)
    return VALUE.sub(move, body)


@pytest.mark.parametrize(("name", "maps"), REAL)
def test_real_bodies_come_out_the_same_on_first_and_later_scrapes(name: str, maps: mapping.Mappings | None) -> None:
    body = (FIX / name).read_bytes()
    src = source(maps)
    for k in range(4):
        scrape(src, moved(body, k), NOW + k * 10**9)
    assert src.memo.stats.fast == 3 and src.memo.stats.full == 1


@pytest.mark.parametrize("name", CORPUS)
def test_corpus_bodies_come_out_the_same(name: str) -> None:
    body = (FIX / name).read_bytes()
    src = source(KAFKA)
    for k in range(3):
        scrape(src, moved(body, k), NOW + k)


def test_a_real_openmetrics_body_comes_out_the_same_and_hits_the_memo() -> None:
    body = (FIX / REAL_OM).read_bytes()
    src = source(KAFKA)
    for k in range(4):  # info series stay 1 on a real target, as OpenMetrics asks
        scrape(src, moved(body, k, keep=b"_info{"), NOW + k * 10**9, om=True)
    assert src.memo.stats.fast == 3 and src.memo.stats.full == 1
    # A memo hit hands the runner the request encoded, as the full path's message would encode.
    hit = src._map(moved(body, 5, keep=b"_info{"), True, NOW, limits(src))
    assert isinstance(hit.request, otlp.EncodedRequest)
    assert count_items("metrics", hit.request.decoded()) == hit.points == 1142
    assert count_items("metrics", hit.request) == hit.points  # what the runner calls today


@pytest.mark.parametrize("name", CORPUS_OM)
def test_openmetrics_corpus_bodies_come_out_the_same(name: str) -> None:
    body = (FIX / name).read_bytes()
    for maps in (KAFKA, None):
        src = source(maps)
        for k in [0, 1, 2, 0, 3]:
            scrape(src, moved(body, k), NOW + k, om=True)


def _mutations(body: bytes) -> dict[str, bytes]:
    lines = body.split(b"\n")
    sample = next(i for i, line in enumerate(lines) if line.startswith(b"kafka_server") and b"{" in line)
    gauge = next(i for i, line in enumerate(lines) if line.startswith(b"# TYPE") and line.endswith(b" gauge"))
    added = [*lines[:sample + 1], lines[sample].replace(b'="', b'="new-', 1), *lines[sample + 1:]]
    removed = lines[:sample] + lines[sample + 1:]
    retyped = [*lines[:gauge], lines[gauge][:-len(b"gauge")] + b"counter", *lines[gauge + 1:]]
    relabelled = [*lines[:sample], lines[sample].replace(b'="', b'="other-', 1), *lines[sample + 1:]]
    return {k: b"\n".join(v) for k, v in
            {"added": added, "removed": removed, "retyped": retyped, "relabelled": relabelled}.items()}


@pytest.mark.parametrize("change", ["added", "removed", "retyped", "relabelled"])
def test_a_changed_series_takes_the_full_path_and_the_next_scrapes_the_fast_one(change: str) -> None:
    body = (FIX / REAL[0][0]).read_bytes()
    changed = _mutations(body)[change]
    src = source(KAFKA)
    for k, b in enumerate([body, moved(body, 1), changed, moved(changed, 2), moved(changed, 3), body]):
        scrape(src, b, NOW + k)
    assert src.memo.stats.full == 3 and src.memo.stats.fast == 3


@pytest.mark.parametrize("token", [b"-0", b"+0", b"08", b"1_000", b"nan", b"inf", b"-Inf", b"NaN", b"0x1f", b"1e400",
                                   b"-1e-400", b"9" * 400, b"1" * 39, b".", b"1.5.5", b"+", b"e5", b"1e", b"\xc2\xa0",
                                   b"12345678901234567890123", b"1.0E-4", b"+.5"])
def test_a_value_comes_out_as_the_full_path_reads_it_or_fails_as_it_fails(token: bytes) -> None:
    base = (b"# TYPE g gauge\ng{a=\"1\"} 1\n# TYPE c counter\nc_total 2\nu 3\n"
            b"# TYPE kafka_server_brokertopicmetrics_messagesin_total counter\n"
            b"kafka_server_brokertopicmetrics_messagesin_total{topic=\"t\",} 4\n"
            b"# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 5\ns_count 6\n")
    src = source(KAFKA)
    scrape(src, base)
    for i in range(7):  # each value in turn, and the scrape after it
        tokens = [b"1", b"2", b"3", b"4", b"1", b"5", b"6"]
        tokens[i] = token
        it = iter(tokens)
        scrape(src, re.sub(rb" \d$", lambda _: b" " + next(it), base, flags=re.M))  # noqa: B023 - used at once
        scrape(src, base)


def test_malformed_text_after_a_plan_fails_with_the_full_paths_error() -> None:
    body = b"# TYPE g gauge\ng{a=\"1\"} 1\ng{a=\"2\"} 2\n"
    src = source(None)
    scrape(src, body)
    scrape(src, moved(body, 1))
    for bad in [b"# TYPE g gauge\ng{a=\"1} 1\ng{a=\"2\"} 2\n", b"# TYPE g gauge\ng{a=\"1\"} 1\ng{a=\"2\"} x\n",
                b"# TYPE g gauge\ng{a=\"1\"} 1\ng{a=\"2\"} 1e\n"]:
        scrape(src, bad)
        assert outcome(lambda b=bad: src._map(b, False, NOW, limits(src)))[0] is ExpositionError
        scrape(src, moved(body, 2))


def test_the_parse_deadline_and_line_length_hold_on_the_fast_path() -> None:
    body = b"# TYPE g gauge\n" + b"".join(b"g{a=\"%d\"} %d\n" % (i, i) for i in range(5000))
    src = source(None)
    scrape(src, body)
    expired = Deadline(URL, 0.0, "sources.prometheus.parse_timeout")
    expired.end -= 1
    got = outcome(lambda: src._map(moved(body, 1), False, NOW, limits(src, expired)))
    assert got[0] is ScrapeLimitExceeded and "parsing took longer than 0s" in got[1]
    assert src.memo.stats.fast == 0
    # A value long enough to pass the line length limit: the full path measures and refuses it.
    src = source(None, max_line_length=256)
    key = b"g{a=\"" + b"x" * 230 + b"\"}"
    scrape(src, key + b" 1\n")
    scrape(src, key + b" 1.000000000000000000000000000001\n")
    assert outcome(lambda: src._map(key + b" 1.000000000000000000000000000001\n", False, NOW, limits(src)))[0] \
        is ScrapeLimitExceeded


def test_timestamps_are_not_planned_and_a_churning_target_is_planned_ever_more_rarely() -> None:
    src = source(None)
    for k in range(3):
        scrape(src, b"g 1 %d\n" % (1000 + k), NOW + k)
    assert src.memo.stats.unplannable >= 1 and src.memo.stats.fast == 0
    src = source(None)
    for k in range(40):  # a new series every scrape: no plan is ever used
        scrape(src, b"".join(b"g{a=\"%d\"} 1\n" % i for i in range(k + 1)), NOW + k)
    stats = src.memo.stats
    assert stats.fast == 0 and stats.full == 40 and stats.plans < 10 and stats.skipped > 30


def test_a_plan_past_its_byte_bound_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scrape_memo, "PLAN_MAX_BYTES", 1000)
    body = (FIX / REAL[1][0]).read_bytes()
    src = source(None)
    for k in range(3):
        scrape(src, moved(body, k), NOW + k)
    assert src.memo.stats.too_big >= 1 and src.memo.stats.fast == 0


def test_a_plan_is_not_used_under_other_settings() -> None:
    body = b"# TYPE g gauge\ng 1\n"
    src = source(None)
    scrape(src, body)
    src.first_scrape_ns += 1  # the start time every cumulative point carries
    scrape(src, moved(body, 1))
    assert src.memo.stats.fast == 0


# -- generated expositions ---------------------------------------------------------------------------

_names = st.sampled_from(["a", "b", "a_total", "a_count", "kafka_server_brokertopicmetrics_messagesin_total",
                          "jvm_memory_bytes_used", "target_info", "h_bucket", "h"])
_labels = st.dictionaries(st.sampled_from(["topic", "le", "quantile", "area", "x"]),
                          st.sampled_from(["t", "0.5", "+Inf", "1", "heap", "", 'q"u\\o']), max_size=3)
_values = st.one_of(st.integers(-10**20, 10**20).map(str), st.floats(allow_nan=True).map(repr),
                    st.sampled_from(["NaN", "+Inf", "-Inf", "-0", "08", "1e5", "1.0E-4", "nan", "1_0"]))


@st.composite
def _exposition(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """Lines with a `{v}` where each value goes, and the values."""
    lines: list[str] = []
    values: list[str] = []
    for _ in range(draw(st.integers(1, 6))):
        name = draw(_names)
        kind = draw(st.sampled_from(["gauge", "counter", "untyped", "summary", "histogram", "info", None]))
        if draw(st.booleans()):
            lines.append(f"# HELP {name} help for {name}")
        if kind:
            lines.append(f"# TYPE {name} {kind}")
        for _ in range(draw(st.integers(0, 4))):
            suffix = draw(st.sampled_from(["", "", "_total", "_count", "_sum", "_bucket", "_created"]))
            labels = draw(_labels)
            text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            stamp = " 1700000000000" if draw(st.integers(0, 9)) == 0 else ""
            lines.append(f"{name}{suffix}{{{text}}} {{v}}{stamp}" if labels else f"{name}{suffix} {{v}}{stamp}")
            values.append(draw(_values))
        if draw(st.integers(0, 5)) == 0:
            lines.append("")
    return lines, values


def _render(lines: list[str], values: list[str]) -> bytes:
    it = iter(values)
    return ("\n".join(line.replace("{v}", next(it)) if "{v}" in line else line for line in lines) + "\n").encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_exposition(), st.lists(_values, min_size=30, max_size=30), _exposition())
def test_generated_expositions_come_out_the_same(first: tuple[list[str], list[str]], again: list[str],
                                                 other: tuple[list[str], list[str]]) -> None:
    src = source(KAFKA)
    lines, values = first
    new_values = (again * (len(values) // 30 + 1))[: len(values)]
    for k, body in enumerate([_render(lines, values), _render(lines, new_values), _render(lines, values),
                              _render(*other), _render(lines, new_values)]):
        scrape(src, body, NOW + k)


# -- OpenMetrics ---------------------------------------------------------------------------------------

OM_BASE = (b"# TYPE c counter\n# HELP c a counter\nc_total{a=\"1\"} 1\nc_created{a=\"1\"} 1700000000.5\n"
           b"# TYPE g gauge\n# UNIT g_seconds seconds\ng_seconds 2\nu 3\n"
           b"# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 5\ns_count 6\ns_created 1700000001\n"
           b"# TYPE h histogram\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n"
           b"h_created 1700000002.25\n"
           b"# TYPE i info\ni_info{v=\"1\"} 1\n# TYPE st stateset\nst{st=\"a\"} 1\nst{st=\"b\"} 0\n"
           b"# TYPE gh gaugehistogram\ngh_bucket{le=\"+Inf\"} 1\ngh_gcount 1\ngh_gsum 1\n# EOF\n")
OM_TOKENS = [line.rpartition(b" ")[2] for line in OM_BASE.split(b"\n") if line and not line.startswith(b"#")]


def _om_with(i: int, token: bytes) -> bytes:
    it = iter([token if k == i else t for k, t in enumerate(OM_TOKENS)])
    return b"\n".join(line if not line or line.startswith(b"#") else line.rpartition(b" ")[0] + b" " + next(it)
                      for line in OM_BASE.split(b"\n"))


def test_openmetrics_values_come_out_as_the_full_path_reads_them_or_fail_as_it_fails() -> None:
    fast = 0
    for i in range(len(OM_TOKENS)):  # each value in turn, against a fresh plan, and the scrape after it
        for token in [b"NaN", b"-1", b"1.5", b"0", b"2", b"1e3", b"+Inf", b"-0", b"1700000000.75"]:
            src = source(KAFKA)
            scrape(src, OM_BASE, NOW, om=True)
            scrape(src, _om_with(i, token), NOW + 1, om=True)
            scrape(src, OM_BASE, NOW + 2, om=True)
            fast += src.memo.stats.fast
    assert fast > len(OM_TOKENS) * 5


def test_openmetrics_created_is_shape_and_a_changed_one_takes_the_full_path() -> None:
    src = source(None)
    created = OM_TOKENS.index(b"1700000000.5")
    later = _om_with(created, b"1700000010.5")  # the counter was reset
    for k, body in enumerate([OM_BASE, _om_with(0, b"9"), later, later.replace(b"\"} 1\n", b"\"} 4\n", 1)]):
        scrape(src, body, NOW + k, om=True)
    assert src.memo.stats.full == 2 and src.memo.stats.fast == 2


def test_openmetrics_exemplars_and_timestamps_take_the_full_path() -> None:
    src = source(None)
    with_exemplar = OM_BASE.replace(b"c_total{a=\"1\"} 1\n", b"c_total{a=\"1\"} 1 # {trace_id=\"ab\"} 1.0 1700000000\n")
    with_stamp = OM_BASE.replace(b"g_seconds 2\n", b"g_seconds 2 1700000000.5\n")
    for k, body in enumerate([OM_BASE, with_exemplar, with_exemplar, OM_BASE, with_stamp, with_stamp, OM_BASE]):
        scrape(src, body, NOW + k, om=True)
    assert src.memo.stats.fast == 0 and src.memo.stats.full == 7 and src.memo.stats.unplannable >= 1


def test_a_text_plan_is_not_used_for_openmetrics() -> None:
    body = b"# TYPE g gauge\ng 1\n# EOF\n"
    src = source(None)
    scrape(src, body)
    scrape(src, body, om=True)
    assert src.memo.stats.fast == 0


_om_values = st.one_of(st.integers(-5, 10**6).map(str), st.floats(allow_nan=True).map(repr),
                       st.sampled_from(["NaN", "+Inf", "-Inf", "-0", "1.5", "1700000000.5", "1", "0", "1e3"]))


@st.composite
def _om_exposition(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """OpenMetrics lines, mostly well formed for their TYPE, with a `{v}` where each value goes."""
    lines: list[str] = []
    values: list[str] = []
    used: set[str] = set()
    for n in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["gauge", "counter", "unknown", "summary", "histogram", "info", "stateset",
                                     "gaugehistogram", None]))
        name = draw(st.sampled_from(["a", "b", "jvm_memory_bytes_used", "target", "h", "x_seconds"]))
        name = f"{name}{n}" if name in used else name
        used.add(name)
        lines.append(f"# TYPE {name} {kind}" if kind else f"# HELP {name} help")
        if kind and name.endswith("_seconds") and kind not in ("info", "stateset") and draw(st.booleans()):
            lines.append(f"# UNIT {name} seconds")
        suffixes = {"counter": ["_total", "_created"], "summary": ["", "_sum", "_count", "_created"],
                    "histogram": ["_bucket", "_bucket", "_sum", "_count", "_created"],
                    "gaugehistogram": ["_bucket", "_gcount", "_gsum"], "info": ["_info"]}.get(kind or "", [""])
        for g in range(draw(st.integers(0, 3))):
            for suffix in draw(st.lists(st.sampled_from(suffixes), min_size=1, max_size=4)):
                labels = {"g": str(g)}
                if suffix == "_bucket":
                    labels["le"] = draw(st.sampled_from(["1.0", "+Inf"]))
                if kind == "summary" and suffix == "":
                    labels["quantile"] = draw(st.sampled_from(["0.5", "0.9"]))
                if kind == "stateset":
                    labels[name] = draw(st.sampled_from(["on", "off"]))
                text = ",".join(f'{k}="{v}"' for k, v in labels.items())
                tail = draw(st.sampled_from(["", "", "", "", "", " 1700000000", " # {t=\"1\"} 1.0"]))
                lines.append(f"{name}{suffix}{{{text}}} {{v}}{tail}")
                values.append(draw(_om_values))
    lines.append("# EOF")
    return lines, values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_om_exposition(), st.lists(_om_values, min_size=30, max_size=30), _om_exposition(), st.booleans())
def test_generated_openmetrics_come_out_the_same(first: tuple[list[str], list[str]], again: list[str],
                                                 other: tuple[list[str], list[str]], maps: bool) -> None:
    src = source(KAFKA if maps else None)
    lines, values = first
    new_values = (again * (len(values) // 30 + 1))[: len(values)]
    for k, body in enumerate([_render(lines, values), _render(lines, new_values), _render(lines, values),
                              _render(*other), _render(lines, new_values)]):
        scrape(src, body, NOW + k, om=True)


def test_an_encoded_request_reads_as_the_message_it_encodes_and_copies() -> None:
    body = (FIX / REAL[1][0]).read_bytes()
    src = source(None)
    src._map(body, False, NOW, limits(src))
    hit = src._map(moved(body, 1), False, NOW + 1, limits(src)).request
    assert isinstance(hit, otlp.EncodedRequest)
    message = hit.decoded()
    assert hit.resource_metrics == message.resource_metrics and hit.ByteSize() == message.ByteSize()
    assert copy.copy(hit).SerializeToString() == message.SerializeToString() == hit.data
