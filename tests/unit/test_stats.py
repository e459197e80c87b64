"""The self-metrics table and the plain copies of counter and gauge values that /status reads."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.selfmetrics import SELF_METRICS, SelfCounter, SelfGauge, SelfMetrics


def _registry_total(counter: SelfCounter, **match: str) -> float:
    """What the readers used to compute, by walking prometheus_client's samples."""
    return sum(s.value for m in counter.collect() for s in m.samples
               if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in match.items()))


def _registry_by_label(counter: SelfCounter, label: str, **match: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in counter.collect():
        for s in m.samples:
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in match.items()):
                out[s.labels.get(label, "")] = out.get(s.labels.get(label, ""), 0.0) + s.value
    return out


def _busy_stats() -> SelfMetrics:
    s = SelfMetrics()
    s.points_dropped.labels("vendor", "max_age").inc(3)
    s.points_dropped.labels("vendor", "max_bytes").inc(5)
    s.points_dropped.labels("backup", "max_bytes").inc(7)
    s.points_dropped.labels("backup", "dead_letter")  # touched, never incremented: a series at 0
    s.points_dropped.labels(destination="vendor", reason="max_age").inc(1)
    s.redactions.labels("vendor", "merge:host", "merge").inc(2)
    s.redactions.labels("vendor", "drop-secrets", "drop").inc(4)
    s.points_shipped.labels("vendor").inc(42)
    s.spool_bytes.set(1234)
    s.backlog_bytes.labels("vendor").set(7)
    s.backlog_bytes.labels("vendor").set(5)
    return s


def test_total_and_by_label_read_what_the_registry_holds() -> None:
    s = _busy_stats()
    dropped = s.points_dropped
    for match in ({}, {"destination": "vendor"}, {"reason": "max_bytes"}, {"destination": "nowhere"},
                  {"no_such_label": "x"}):
        assert dropped.total(**match) == _registry_total(dropped, **match), match
    for label, match in (("reason", {}), ("reason", {"destination": "backup"}), ("destination", {}),
                         ("no_such_label", {})):
        got = dropped.by_label(label, **match)
        assert got == _registry_by_label(dropped, label, **match), (label, match)
        assert list(got) == list(_registry_by_label(dropped, label, **match))  # same order too
    assert dropped.by_label("reason", destination="backup") == {"max_bytes": 7.0, "dead_letter": 0.0}
    assert dropped.total() == 16.0 and dropped.total(destination="vendor", reason="max_age") == 4.0


def test_value_is_one_series_and_by_groups_on_several_labels() -> None:
    s = _busy_stats()
    assert s.points_dropped.value(destination="vendor", reason="max_age") == 4.0
    assert s.points_dropped.value(destination="vendor", reason="never") == 0.0
    assert s.points_shipped.value(destination="vendor") == 42.0
    assert s.spool_bytes.value() == 1234.0
    assert s.backlog_bytes.value(destination="vendor") == 5.0  # a gauge keeps the last value set
    assert s.redactions.by("rule", "action", destination="vendor") == {
        ("merge:host", "merge"): 2.0, ("drop-secrets", "drop"): 4.0}
    with pytest.raises(ValueError, match="labels"):
        s.points_dropped.value(destination="vendor")  # one series means every label


def test_every_counter_and_gauge_copy_agrees_with_metrics_exposition() -> None:
    s = _busy_stats()
    for n, d in enumerate(SELF_METRICS):  # every series-holding metric gets one more series
        metric = getattr(s, d.attr)
        series = metric.labels(*(f"{d.attr}-{label}" for label in d.labels)) if d.labels else metric
        if d.kind == "counter":
            series.inc(n + 0.5)
        elif d.kind == "gauge":
            series.set(-n)
    exposed = {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
               for fam in text_string_to_metric_families(generate_latest(s.registry).decode()) for smp in fam.samples
               if fam.type in ("counter", "gauge")}
    copied = {}
    for d in SELF_METRICS:
        if d.kind == "histogram":
            continue
        name = d.prom_name + ("_total" if d.kind == "counter" else "")
        for key, value in getattr(s, d.attr).by(*d.labels).items():
            copied[(name, tuple(sorted(zip(d.labels, key, strict=True))))] = value
    assert copied == exposed
    assert len(copied) > len(SELF_METRICS)


def test_a_negative_increment_is_refused_and_moves_neither_copy() -> None:
    s = SelfMetrics()
    s.points_shipped.labels("vendor").inc(2)
    with pytest.raises(ValueError):
        s.points_shipped.labels("vendor").inc(-1)
    assert s.points_shipped.value(destination="vendor") == 2.0 == _registry_total(s.points_shipped)


def test_wrong_labels_are_refused_as_prometheus_client_refuses_them() -> None:
    s = SelfMetrics()
    with pytest.raises(ValueError):
        s.points_dropped.labels("vendor")  # two labels declared
    assert s.points_dropped.by("reason") == {}


def test_counts_from_many_threads_add_up_while_status_reads() -> None:
    s = SelfMetrics()
    per_thread, threads = 2000, 4
    stop = threading.Event()
    errors: list[BaseException] = []

    def count(i: int) -> None:
        for n in range(per_thread):
            s.points_spooled.labels(f"signal-{n % 50}-{i}").inc()

    def read() -> None:
        try:
            while not stop.is_set():
                s.points_spooled.by_label("signal")
                s.points_spooled.total()
        except BaseException as e:  # a dict changing size under the reader would land here
            errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    workers = [threading.Thread(target=count, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    reader.join()
    assert not errors
    assert s.points_spooled.total() == per_thread * threads == _registry_total(s.points_spooled)


def test_the_registry_holds_exactly_the_table_in_its_order() -> None:
    s = SelfMetrics()
    families = [f for f in s.registry.collect()]
    assert [f.name for f in families] == [d.prom_name for d in SELF_METRICS]
    for fam, d in zip(families, SELF_METRICS, strict=True):
        assert (fam.type, fam.documentation) == (d.kind, d.help), d.prom_name
        kind = {"counter": SelfCounter, "gauge": SelfGauge}.get(d.kind)
        if kind is not None:
            assert isinstance(getattr(s, d.attr), kind) and getattr(s, d.attr).definition is d
    otlp = [d.otlp_name for d in SELF_METRICS]
    assert len(set(otlp)) == len(otlp) and all(n.startswith("relay.") for n in otlp)
    text = generate_latest(s.registry).decode()
    assert "# HELP relay_export_latency_seconds Time from sending a request to its answer.\n" in text
    assert 'relay_spool_bytes 0.0\n' in text


def test_forgetting_a_source_removes_its_series_from_the_copy_and_from_metrics() -> None:
    s = SelfMetrics()
    for name in ("host", "jolokia pid 41"):
        s.source_runs.labels(name).inc(3)
        s.source_errors.labels(name).inc()
        s.points_collected.labels(name).inc(10)
    s.forget_source("jolokia pid 41")
    s.forget_source("never seen")  # nothing to forget: no error
    exposed = generate_latest(s.registry).decode()
    assert 'source="jolokia pid 41"' not in exposed and 'source="host"' in exposed
    for counter in (s.source_runs, s.source_errors, s.points_collected):
        assert counter.by_label("source") == {"host": counter.value(source="host")}
    s.source_runs.labels("jolokia pid 41").inc()  # should the name come back, it starts afresh
    assert s.source_runs.value(source="jolokia pid 41") == 1
