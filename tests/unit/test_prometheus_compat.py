"""The Prometheus -> OTLP mapping, one test per rule of the OpenTelemetry compatibility spec
(https://opentelemetry.io/docs/specs/otel/compatibility/prometheus_and_openmetrics/),
each on exposition text built here."""

from __future__ import annotations

from typing import Any

from relay.otlp import attributes_dict
from relay.sources.prometheus import map_exposition

OM = True
TEXT = False


def metrics(text: str, openmetrics: bool, **kw: Any) -> dict[str, list[Any]]:
    """OTLP name -> the metrics of that name (a list, so a duplicate name shows)."""
    req = map_exposition(text, openmetrics, None, {"service.name": "t"}, now_ns=10**18, start_ns=5, **kw).request
    out: dict[str, list[Any]] = {}
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out.setdefault(m.name, []).append(m)
    return out


def only(ms: dict[str, list[Any]], name: str) -> Any:
    assert len(ms[name]) == 1, f"{name} appears {len(ms[name])} times"
    return ms[name][0]


def points(m: Any) -> list[Any]:
    return list(getattr(m, m.WhichOneof("data")).data_points)


def test_a_gauge_beside_a_counter_with_total_stays_two_metrics() -> None:
    # What every Go exporter and node_exporter expose: go_memstats_alloc_bytes (gauge)
    # beside go_memstats_alloc_bytes_total (counter).
    text = ("# TYPE alloc_bytes gauge\nalloc_bytes 5\n"
            "# TYPE alloc_bytes_total counter\nalloc_bytes_total 90\n")
    ms = metrics(text, TEXT)
    gauge, counter = only(ms, "alloc_bytes"), only(ms, "alloc_bytes_total")
    assert gauge.WhichOneof("data") == "gauge" and [p.as_double for p in points(gauge)] == [5.0]
    assert counter.sum.is_monotonic and [p.as_double for p in points(counter)] == [90.0]


def test_a_histogram_beside_a_counter_with_total_stays_two_metrics() -> None:
    text = ("# TYPE rpc histogram\n"
            'rpc_bucket{le="1"} 1\nrpc_bucket{le="+Inf"} 2\nrpc_count 2\nrpc_sum 3\n'
            "# TYPE rpc_total counter\nrpc_total 7\n")
    ms = metrics(text, TEXT)
    assert only(ms, "rpc").WhichOneof("data") == "histogram"
    assert only(ms, "rpc_total").WhichOneof("data") == "sum"


def test_counter_keeps_total_by_default_and_trimming_removes_type_and_unit_suffixes() -> None:
    # The spec: the name SHOULD NOT be altered by default; configuration MAY remove suffixes.
    text = ("# TYPE req_seconds_total counter\nreq_seconds_total 1\n"
            "# TYPE legacy counter\nlegacy 4\n")
    ms = metrics(text, TEXT)
    assert set(ms) == {"req_seconds_total", "legacy"}  # as written on the TYPE line
    om = ("# TYPE req_seconds counter\n# UNIT req_seconds seconds\nreq_seconds_total 1\n# EOF\n")
    assert set(metrics(om, OM, trim_suffixes=True)) == {"req"}
    assert set(metrics(text, TEXT, trim_suffixes=True)) == {"req_seconds", "legacy"}  # no UNIT in text


def test_stateset_becomes_a_non_monotonic_sum() -> None:
    text = ("# TYPE door stateset\n"
            'door{door="open"} 1\ndoor{door="closed"} 0\n# EOF\n')
    m = only(metrics(text, OM), "door")
    assert m.WhichOneof("data") == "sum" and not m.sum.is_monotonic
    assert sorted((attributes_dict(p.attributes)["door"], p.as_double) for p in points(m)) == [
        ("closed", 0.0), ("open", 1.0)]


def test_info_becomes_a_non_monotonic_sum() -> None:
    text = '# TYPE build info\nbuild_info{version="1.2"} 1\n# EOF\n'
    m = only(metrics(text, OM), "build")
    assert m.WhichOneof("data") == "sum" and not m.sum.is_monotonic
    assert [attributes_dict(p.attributes) for p in points(m)] == [{"version": "1.2"}]


def test_gaugehistogram_is_dropped() -> None:
    text = ("# TYPE queue gaugehistogram\n"
            'queue_bucket{le="1"} 2\nqueue_bucket{le="+Inf"} 3\nqueue_gcount 3\nqueue_gsum 2\n'
            "# TYPE up gauge\nup 1\n# EOF\n")
    r = map_exposition(text, OM, None, {})
    names = [m.name for m in r.request.resource_metrics[0].scope_metrics[0].metrics]
    assert names == ["up"] and r.dropped == 1


def test_histogram_without_count_is_dropped_and_without_sum_has_no_sum() -> None:
    no_count = ("# TYPE lat histogram\n"
                'lat_bucket{le="1"} 4\nlat_bucket{le="+Inf"} 6\n# EOF\n')
    r = map_exposition(no_count, OM, None, {})
    assert not r.request.resource_metrics[0].scope_metrics[0].metrics and r.dropped == 1
    no_sum = ("# TYPE lat histogram\n"
              'lat_bucket{le="1"} 4\nlat_bucket{le="+Inf"} 6\nlat_count 6\n')
    (dp,) = points(only(metrics(no_sum, TEXT), "lat"))
    assert dp.count == 6 and list(dp.bucket_counts) == [4, 2] and not dp.HasField("sum")


def test_summary_without_count_is_dropped_and_without_sum_has_sum_zero() -> None:
    text = ("# TYPE a summary\n"
            'a{quantile="0.5"} 1\na_sum 3\n'
            "# TYPE b summary\n"
            'b{quantile="0.5"} 1\nb_count 4\n')
    ms = metrics(text, TEXT)
    assert "a" not in ms
    (dp,) = points(only(ms, "b"))
    assert dp.count == 4 and dp.sum == 0.0


def test_target_info_becomes_resource_attributes_and_is_not_sent() -> None:
    for text, om in (('# TYPE target info\ntarget_info{env="prod",region="eu"} 1\n# TYPE up gauge\nup 1\n# EOF\n',
                      OM),
                     ('# TYPE target_info gauge\ntarget_info{env="prod",region="eu"} 1\nup 1\n', TEXT)):
        req = map_exposition(text, om, None, {"service.name": "svc"}).request
        assert [m.name for m in req.resource_metrics[0].scope_metrics[0].metrics] == ["up"]
        assert attributes_dict(req.resource_metrics[0].resource.attributes) == {
            "service.name": "svc", "env": "prod", "region": "eu"}


def test_exemplars_on_counters_and_buckets_are_kept() -> None:
    trace, span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    text = ("# TYPE req counter\n"
            f'req_total 5 # {{trace_id="{trace}",span_id="{span}",user="u1"}} 1.5 1700000000.5\n'
            "# TYPE lat histogram\n"
            'lat_bucket{le="1"} 2 # {trace_id="nothex"} 0.3\n'
            'lat_bucket{le="+Inf"} 3\nlat_count 3\nlat_sum 2\n# EOF\n')
    ms = metrics(text, OM)
    (ex,) = points(only(ms, "req"))[0].exemplars
    assert (ex.trace_id.hex(), ex.span_id.hex(), ex.as_double) == (trace, span, 1.5)
    assert ex.time_unix_nano == 1_700_000_000_500_000_000
    assert attributes_dict(ex.filtered_attributes) == {"user": "u1"}
    (bucket_ex,) = points(only(ms, "lat"))[0].exemplars
    # Not an id: kept as an attribute; no timestamp: the point's time.
    assert bucket_ex.trace_id == b"" and attributes_dict(bucket_ex.filtered_attributes) == {"trace_id": "nothex"}
    assert bucket_ex.time_unix_nano == 10**18


def test_units_are_carried_over_in_ucum() -> None:
    text = ("# TYPE wait_seconds gauge\n# UNIT wait_seconds seconds\nwait_seconds 1\n"
            "# TYPE rate_bytes_per_second gauge\n# UNIT rate_bytes_per_second bytes_per_second\n"
            "rate_bytes_per_second 1\n"
            "# TYPE used_ratio gauge\n# UNIT used_ratio ratio\nused_ratio 0.5\n# EOF\n")
    ms = metrics(text, OM)
    assert {n: only(ms, n).unit for n in ms} == {"wait_seconds": "s", "rate_bytes_per_second": "By/s",
                                                 "used_ratio": "1"}


def test_help_becomes_description_and_type_goes_into_metadata() -> None:
    text = "# HELP up Whether it is up.\n# TYPE up gauge\nup 1\nother 2\n"
    ms = metrics(text, TEXT)
    assert only(ms, "up").description == "Whether it is up."
    assert attributes_dict(only(ms, "up").metadata) == {"prometheus.type": "gauge"}
    assert attributes_dict(only(ms, "other").metadata) == {"prometheus.type": "unknown"}


def test_created_gives_the_start_time_else_the_first_scrape() -> None:
    text = ("# TYPE c counter\nc_total 1\nc_created 1700000000\n"
            "# TYPE d counter\nd_total 1\n# EOF\n")
    ms = metrics(text, OM)
    assert points(only(ms, "c"))[0].start_time_unix_nano == 1_700_000_000 * 10**9
    assert points(only(ms, "d"))[0].start_time_unix_nano == 5
