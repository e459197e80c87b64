from __future__ import annotations

import psutil

from relay.identity import base_resource
from relay.otlp import attributes_dict
from relay.selfmetrics import SelfMetrics
from relay.sources.host import HostSource
from relay.sources.internal import InternalSource


def metrics_by_name(req: object) -> dict[str, object]:
    out = {}
    for rm in req.resource_metrics:  # type: ignore[attr-defined]
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = m
    return out


def test_host_source_uses_hostmetrics_names_and_boot_start_time() -> None:
    src = HostSource(10, base_resource("inst-1"))
    req = src.collect_sync()
    res = attributes_dict(req.resource_metrics[0].resource.attributes)
    assert res["service.instance.id"] == "inst-1" and res["os.type"] == "linux" and res["host.name"]
    m = metrics_by_name(req)
    boot_ns = int(psutil.boot_time() * 1e9)

    cpu = m["system.cpu.time"]
    assert cpu.unit == "s" and cpu.sum.is_monotonic and cpu.sum.aggregation_temporality == 2
    states = {attributes_dict(dp.attributes)["state"] for dp in cpu.sum.data_points}
    assert {"user", "system", "idle", "wait", "interrupt"} <= states
    assert all(dp.start_time_unix_nano == boot_ns for dp in cpu.sum.data_points)
    cpus = {attributes_dict(dp.attributes)["cpu"] for dp in cpu.sum.data_points}
    assert cpus == {f"cpu{i}" for i in range(psutil.cpu_count())}

    mem = m["system.memory.usage"]
    assert mem.unit == "By" and not mem.sum.is_monotonic
    used = [dp.as_int for dp in mem.sum.data_points if attributes_dict(dp.attributes)["state"] == "used"]
    assert used and used[0] > 0

    fs = m["system.filesystem.usage"]
    attrs = attributes_dict(fs.sum.data_points[0].attributes)
    assert set(attrs) == {"device", "mode", "mountpoint", "type", "state"}

    net = m["system.network.io"]
    directions = {attributes_dict(dp.attributes)["direction"] for dp in net.sum.data_points}
    assert directions == {"receive", "transmit"}
    for name in ("system.cpu.load_average.1m", "system.cpu.load_average.5m", "system.cpu.load_average.15m"):
        assert len(m[name].gauge.data_points) == 1
    procs = m["system.processes.count"]
    assert sum(dp.as_int for dp in procs.sum.data_points) > 1
    # Empty metrics are invalid OTLP: none may be sent.
    for metric in m.values():
        kind = metric.WhichOneof("data")
        assert len(getattr(metric, kind).data_points) > 0, metric.name


def test_internal_source_maps_counters_gauges_and_histograms() -> None:
    stats = SelfMetrics()
    stats.points_shipped.labels("vendor").inc(42)
    stats.spool_bytes.set(1234)
    stats.export_latency.labels("vendor").observe(0.02)
    stats.export_latency.labels("vendor").observe(3.0)
    req = InternalSource(10, {"service.name": "telemetry-relay"}, stats).build()
    m = metrics_by_name(req)
    shipped = m["relay.points.shipped"]
    assert shipped.sum.is_monotonic and shipped.sum.data_points[0].as_int == 42
    assert attributes_dict(shipped.sum.data_points[0].attributes) == {"destination": "vendor"}
    assert m["relay.spool.bytes"].gauge.data_points[0].as_double == 1234
    hist = m["relay.export.latency"].histogram.data_points[0]
    assert hist.count == 2 and abs(hist.sum - 3.02) < 1e-9
    assert sum(hist.bucket_counts) == 2  # de-cumulated
    assert len(hist.bucket_counts) == len(hist.explicit_bounds) + 1


def test_targets_behind_one_host_and_port_are_named_apart_by_path() -> None:
    from relay.source_settings import PrometheusSettings, ScrapeTargetSettings
    from relay.sources.prometheus import PrometheusSource

    def name(url: str) -> str:
        settings = ScrapeTargetSettings(url=url)
        return PrometheusSource(settings, None, None, PrometheusSettings(), {"host.name": "h"}).name

    assert name("http://127.0.0.1:9404/metrics") == "prometheus 127.0.0.1:9404"
    assert name("http://127.0.0.1:9404/") == "prometheus 127.0.0.1:9404"
    assert name("http://127.0.0.1:9404/relay/kafka") != name("http://127.0.0.1:9404/relay/node")
