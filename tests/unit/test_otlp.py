"""MetricsBuilder's histograms and summaries, and the one rule that turns Prometheus cumulative
buckets into OTLP bucket counts, seen alone and through both sources that use it."""

from __future__ import annotations

import math

from relay.otlp import MetricsBuilder, attributes_dict, count_items, cumulative_buckets
from relay.selfmetrics import SelfMetrics
from relay.sources.internal import InternalSource
from relay.sources.prometheus import map_exposition

INF = math.inf


def test_buckets_with_inf_are_de_cumulated_and_inf_is_no_bound() -> None:
    assert cumulative_buckets([(0.1, 1), (1.0, 3), (INF, 4)], 4) == ([0.1, 1.0], [1, 2, 1])


def test_buckets_are_taken_in_order_of_their_bound() -> None:
    assert cumulative_buckets([(INF, 4), (1.0, 3), (0.1, 1)], 4) == ([0.1, 1.0], [1, 2, 1])


def test_a_missing_inf_bucket_is_implied_from_the_count() -> None:
    assert cumulative_buckets([(0.1, 1), (1.0, 3)], 5) == ([0.1, 1.0], [1, 2, 2])


def test_no_buckets_at_all_give_one_bucket_holding_the_count() -> None:
    assert cumulative_buckets([], 7) == ([], [7])


def test_a_cumulative_count_that_goes_down_gives_zero_not_a_negative_count() -> None:
    # 5 then 3: malformed; OTLP counts are unsigned, so that bucket is 0 and the next one
    # is taken against the count as written (3), not the clamped sum.
    assert cumulative_buckets([(1.0, 5), (2.0, 3), (INF, 6)], 6) == ([1.0, 2.0], [5, 0, 3])


def test_builder_histogram_point_is_cumulative_and_counted() -> None:
    b = MetricsBuilder({"service.name": "t"}, "scope")
    m = b.histogram("latency", "s", "Time to answer.")
    b.histogram_point(m, 20, 10, count=3, sum=1.5, bounds=[0.5], bucket_counts=[1, 2], attrs={"k": "v"})
    b.histogram_point(m, 20, count=0, sum=None, bounds=[], bucket_counts=[0])
    req = b.finish()
    assert b.points == 2 == count_items("metrics", req)
    out = req.resource_metrics[0].scope_metrics[0].metrics[0]
    assert (out.name, out.unit, out.description) == ("latency", "s", "Time to answer.")
    assert out.histogram.aggregation_temporality == 2  # cumulative
    first, second = out.histogram.data_points
    assert (first.time_unix_nano, first.start_time_unix_nano, first.count, first.sum) == (20, 10, 3, 1.5)
    assert list(first.explicit_bounds) == [0.5] and list(first.bucket_counts) == [1, 2]
    assert attributes_dict(first.attributes) == {"k": "v"}
    assert first.HasField("sum") and not second.HasField("sum")  # None leaves the optional sum unset
    assert second.start_time_unix_nano == 0 and not second.attributes


def test_builder_summary_point_keeps_quantiles_in_order() -> None:
    b = MetricsBuilder({}, "scope")
    m = b.summary("rpc", "ms")
    b.summary_point(m, 20, 10, count=4, sum=8.0, quantiles=[(0.5, 1.0), (0.99, 3.0)], attrs={"k": "v"})
    req = b.finish()
    assert b.points == 1 == count_items("metrics", req)
    dp = req.resource_metrics[0].scope_metrics[0].metrics[0].summary.data_points[0]
    assert (dp.time_unix_nano, dp.start_time_unix_nano, dp.count, dp.sum) == (20, 10, 4, 8.0)
    assert [(q.quantile, q.value) for q in dp.quantile_values] == [(0.5, 1.0), (0.99, 3.0)]
    assert attributes_dict(dp.attributes) == {"k": "v"}


def test_a_histogram_or_summary_without_points_is_not_sent() -> None:
    b = MetricsBuilder({}, "scope")
    b.histogram("h", "s")
    b.summary("q", "s")
    assert not b.finish().resource_metrics[0].scope_metrics[0].metrics


def _only_histogram_point(req: object) -> object:
    metrics = [m for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics  # type: ignore[attr-defined]
               if m.WhichOneof("data") == "histogram"]
    assert len(metrics) == 1 and len(metrics[0].histogram.data_points) == 1
    return metrics[0].histogram.data_points[0]


def test_relay_histogram_gets_one_count_per_bucket_and_no_extra_bucket() -> None:
    # prometheus_client always writes +Inf: nothing is implied, and the sum is set even at 0.
    stats = SelfMetrics()
    for seconds in (0.001, 0.02, 0.02, 3.0, 100.0):
        stats.export_latency.labels("vendor").observe(seconds)
    dp = _only_histogram_point(InternalSource(10, {}, stats).build())
    bounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
    assert list(dp.explicit_bounds) == bounds  # type: ignore[attr-defined]
    assert list(dp.bucket_counts) == [1, 0, 2, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1]  # type: ignore[attr-defined]
    assert dp.count == 5 and abs(dp.sum - 103.041) < 1e-9  # type: ignore[attr-defined]

    zero = SelfMetrics()
    zero.export_latency.labels("vendor").observe(0.0)
    assert _only_histogram_point(InternalSource(10, {}, zero).build()).HasField("sum")  # type: ignore[attr-defined]


def test_scraped_histogram_without_inf_gets_the_rest_in_an_implied_bucket() -> None:
    text = ("# TYPE rpc_seconds histogram\n"
            'rpc_seconds_bucket{le="0.1"} 2\nrpc_seconds_bucket{le="1"} 5\n'
            "rpc_seconds_count 9\nrpc_seconds_sum 4.5\n")
    dp = _only_histogram_point(map_exposition(text, False, None, {}, now_ns=5).request)
    assert list(dp.explicit_bounds) == [0.1, 1.0]  # type: ignore[attr-defined]
    assert list(dp.bucket_counts) == [2, 3, 4]  # type: ignore[attr-defined]
    assert dp.count == 9 and dp.sum == 4.5  # type: ignore[attr-defined]


def test_scraped_histogram_whose_buckets_go_down_is_clamped_and_still_valid_otlp() -> None:
    text = ("# TYPE rpc_seconds histogram\n"
            'rpc_seconds_bucket{le="0.1"} 5\nrpc_seconds_bucket{le="1"} 3\nrpc_seconds_bucket{le="+Inf"} 6\n'
            "rpc_seconds_count 6\n")
    req = map_exposition(text, False, None, {}, now_ns=5).request
    dp = _only_histogram_point(req)
    assert list(dp.bucket_counts) == [5, 0, 3]  # type: ignore[attr-defined]
    assert not dp.HasField("sum")  # type: ignore[attr-defined]  # no _sum line: left unset, not 0
    req.SerializeToString()


def test_an_encoded_request_is_counted_and_serialized_without_a_decode() -> None:
    from relay.otlp import EncodedRequest

    # Bytes that would not even decode: neither count_items nor SerializeToString may try.
    req = EncodedRequest(b"\xff\xff\xff", 7)
    assert count_items("metrics", req) == 7
    assert req.SerializeToString() == b"\xff\xff\xff"
    assert req._decoded is None
