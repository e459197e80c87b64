from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from relay.identity import base_resource
from relay.sources.host import HostSource

ROOT = Path(__file__).parents[2]


def test_metrics_doc_is_current() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_metrics_doc.py")], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert out == (ROOT / "docs" / "metrics.md").read_text(), \
        "docs/metrics.md is stale: run python scripts/gen_metrics_doc.py > docs/metrics.md"


def test_every_host_metric_is_documented() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    req = HostSource(10, base_resource("x")).collect_sync()
    for m in req.resource_metrics[0].scope_metrics[0].metrics:
        name = m.name
        if name.startswith("system.cpu.load_average."):
            name = "system.cpu.load_average.1m / .5m / .15m"
        assert f"`{name}`" in doc, name
