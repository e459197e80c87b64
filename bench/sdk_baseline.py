"""Baseline: the OpenTelemetry Python SDK's OTLP/HTTP exporter sending the benchmark's
points to the same ingest. Prints one JSON line: points, wall and CPU seconds of the
export loop alone (data construction and imports are not timed)."""

from __future__ import annotations

import argparse
import json
import time

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import MetricExportResult

from bench.workload import points_per_request, sdk_metrics_data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--requests", type=int, required=True)
    args = ap.parse_args()
    batches = sdk_metrics_data(args.requests)
    exporter = OTLPMetricExporter(endpoint=args.endpoint + "/v1/metrics", timeout=60)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for data in batches:
        if exporter.export(data) != MetricExportResult.SUCCESS:
            raise SystemExit("SDK export failed")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(json.dumps({"points": points_per_request() * args.requests, "wall": wall, "cpu": cpu}))


if __name__ == "__main__":
    main()
