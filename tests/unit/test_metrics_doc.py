from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from google.protobuf.message import Message

from relay.identity import base_resource
from relay.otlp import MetricSpec, attributes_dict
from relay.sources import host, process
from relay.sources.host import HostSource
from relay.sources.process import ProcessSource

ROOT = Path(__file__).parents[2]
KIND_OF = {("sum", True): "counter", ("sum", False): "updowncounter", ("gauge", None): "gauge"}


def test_metrics_doc_is_current() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_metrics_doc.py")], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert out == (ROOT / "docs" / "metrics.md").read_text(), \
        "docs/metrics.md is stale: run python scripts/gen_metrics_doc.py > docs/metrics.md"


def _documented(heading: str) -> list[str]:
    """The metric names in the first column of the table under a heading of docs/metrics.md."""
    doc = (ROOT / "docs" / "metrics.md").read_text()
    section = doc.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)


def _emitted_as_declared(req: Message, declared: tuple[MetricSpec, ...]) -> list[str]:
    """Names the request holds, each checked against its declaration (kind, unit, description,
    the attribute keys of every point)."""
    specs = {s.name: s for s in declared}
    names = []
    for m in req.resource_metrics[0].scope_metrics[0].metrics:  # type: ignore[attr-defined]
        assert m.name in specs, f"{m.name} is emitted but not declared in METRICS"
        spec, data = specs[m.name], m.WhichOneof("data")
        container = getattr(m, data)
        assert KIND_OF[(data, container.is_monotonic if data == "sum" else None)] == spec.kind, m.name
        assert (m.unit, m.description) == (spec.unit, spec.description), m.name
        for dp in container.data_points:
            assert tuple(attributes_dict(dp.attributes)) == spec.attributes, m.name
        names.append(m.name)
    return names


def test_host_metrics_are_the_declared_ones_and_the_documented_ones() -> None:
    emitted = _emitted_as_declared(HostSource(10, base_resource("x")).collect_sync(), host.METRICS)
    declared = [s.name for s in host.METRICS]
    # A host without swap has no paging points, and empty metrics are not sent.
    optional = set() if host._swap_devices() else {"system.paging.usage"}
    assert emitted == [n for n in declared if n in emitted] and set(declared) - set(emitted) <= optional
    assert _documented("## Host") == declared
    doc = (ROOT / "docs" / "metrics.md").read_text()
    for name in emitted:
        assert f"`{name}`" in doc, name


def test_process_metrics_are_the_declared_ones_and_the_documented_ones() -> None:
    emitted = _emitted_as_declared(ProcessSource(os.getpid(), "svc", 10, False).collect_sync(), process.METRICS)
    declared = [s.name for s in process.METRICS]
    assert emitted == declared
    assert _documented("## Broker JVM processes") == declared
