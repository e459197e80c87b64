"""Host metrics via psutil, named as the OTel Collector's hostmetrics receiver names them.

Owns: reading CPU, memory, load, filesystem, disk, network, paging and process counts,
and building one ExportMetricsServiceRequest per run; METRICS declares every metric it emits
(docs/metrics.md is generated from it). psutil calls block, so the whole collection runs
in a worker thread. Cumulative sums start at boot time.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psutil
from google.protobuf.message import Message

from relay import __version__
from relay.otlp import MetricsBuilder, MetricSpec
from relay.sources.base import Source

SCOPE = "telemetry-relay/host"

CPU_TIME = MetricSpec("system.cpu.time", "counter", "s", ("cpu", "state"),
                      "Seconds each logical CPU spent on each mode.")
MEMORY_USAGE = MetricSpec("system.memory.usage", "updowncounter", "By", ("state",), "Bytes of memory in use.")
LOAD_AVERAGE = tuple(
    MetricSpec(f"system.cpu.load_average.{window}", "gauge", "{thread}", (), f"Average CPU load over {window}.")
    for window in ("1m", "5m", "15m")
)
FILESYSTEM_USAGE = MetricSpec("system.filesystem.usage", "updowncounter", "By",
                              ("device", "mode", "mountpoint", "type", "state"), "Filesystem bytes used.")
DISK_IO = MetricSpec("system.disk.io", "counter", "By", ("device", "direction"), "Disk bytes transferred.")
DISK_OPERATIONS = MetricSpec("system.disk.operations", "counter", "{operations}", ("device", "direction"),
                             "Disk operations count.")
NETWORK_IO = MetricSpec("system.network.io", "counter", "By", ("device", "direction"),
                        "Bytes transmitted and received.")
NETWORK_PACKETS = MetricSpec("system.network.packets", "counter", "{packets}", ("device", "direction"),
                             "Packets transmitted and received.")
NETWORK_ERRORS = MetricSpec("system.network.errors", "counter", "{errors}", ("device", "direction"),
                            "Errors encountered.")
NETWORK_DROPPED = MetricSpec("system.network.dropped", "counter", "{packets}", ("device", "direction"),
                             "Packets dropped.")
PAGING_USAGE = MetricSpec("system.paging.usage", "updowncounter", "By", ("device", "state"),
                          "Swap space used and free.")
PROCESSES_COUNT = MetricSpec("system.processes.count", "updowncounter", "{processes}", ("status",),
                             "Processes by status.")
# In the order a run emits them.
METRICS: tuple[MetricSpec, ...] = (
    CPU_TIME, MEMORY_USAGE, *LOAD_AVERAGE, FILESYSTEM_USAGE, DISK_IO, DISK_OPERATIONS,
    NETWORK_IO, NETWORK_PACKETS, NETWORK_ERRORS, NETWORK_DROPPED, PAGING_USAGE, PROCESSES_COUNT,
)

_CPU_STATES = {
    "user": "user", "system": "system", "idle": "idle", "irq": "interrupt",
    "nice": "nice", "softirq": "softirq", "steal": "steal", "iowait": "wait",
}
# Virtual block devices whose counters only add noise.
_SKIP_DISK_PREFIXES = ("loop", "ram")


def _swap_devices() -> list[tuple[str, int, int]]:
    """(device, used bytes, free bytes) per swap area, from /proc/swaps."""
    out: list[tuple[str, int, int]] = []
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and parts[2].isdigit() and parts[3].isdigit():
            size, used = int(parts[2]) * 1024, int(parts[3]) * 1024
            out.append((parts[0], used, size - used))
    return out


class HostSource(Source):
    name = "host"

    def __init__(self, interval: float, resource: dict[str, Any]) -> None:
        self.interval = interval
        self.resource = resource
        self.boot_ns = int(psutil.boot_time() * 1e9)

    async def collect(self) -> list[Message]:
        return [await asyncio.to_thread(self.collect_sync)]

    def collect_sync(self) -> Message:
        b = MetricsBuilder(self.resource, SCOPE, __version__)
        now = time.time_ns()
        start = self.boot_ns
        self._cpu(b, now, start)
        self._memory(b, now)
        self._load(b, now)
        self._filesystem(b, now)
        self._disk(b, now, start)
        self._network(b, now, start)
        self._paging(b, now)
        self._processes(b, now)
        return b.finish()

    def _cpu(self, b: MetricsBuilder, now: int, start: int) -> None:
        m = b.metric_for(CPU_TIME)
        for i, times in enumerate(psutil.cpu_times(percpu=True)):
            for field, state in _CPU_STATES.items():
                value = getattr(times, field, None)
                if value is not None:
                    b.point(m, float(value), now, start, {"cpu": f"cpu{i}", "state": state})

    def _memory(self, b: MetricsBuilder, now: int) -> None:
        vm = psutil.virtual_memory()
        m = b.metric_for(MEMORY_USAGE)
        for state, value in (
            ("used", vm.used), ("free", vm.free),
            ("buffered", getattr(vm, "buffers", None)), ("cached", getattr(vm, "cached", None)),
        ):
            if value is not None:
                b.point(m, int(value), now, attrs={"state": state})

    def _load(self, b: MetricsBuilder, now: int) -> None:
        for spec, value in zip(LOAD_AVERAGE, psutil.getloadavg(), strict=True):
            b.point(b.metric_for(spec), float(value), now)

    def _filesystem(self, b: MetricsBuilder, now: int) -> None:
        m = b.metric_for(FILESYSTEM_USAGE)
        seen: set[str] = set()
        for part in psutil.disk_partitions(all=False):
            if part.mountpoint in seen:
                continue
            seen.add(part.mountpoint)
            try:
                u = psutil.disk_usage(part.mountpoint)
            except OSError:
                continue  # unmounted between the listing and the read, or not permitted
            mode = "ro" if "ro" in part.opts.split(",") else "rw"
            attrs = {"device": part.device, "mode": mode, "mountpoint": part.mountpoint, "type": part.fstype}
            reserved = max(0, u.total - u.used - u.free)
            for state, value in (("used", u.used), ("free", u.free), ("reserved", reserved)):
                b.point(m, int(value), now, attrs={**attrs, "state": state})

    def _disk(self, b: MetricsBuilder, now: int, start: int) -> None:
        counters = psutil.disk_io_counters(perdisk=True) or {}
        io = b.metric_for(DISK_IO)
        ops = b.metric_for(DISK_OPERATIONS)
        for dev, c in sorted(counters.items()):
            if dev.startswith(_SKIP_DISK_PREFIXES):
                continue
            for direction, nbytes, count in (
                ("read", c.read_bytes, c.read_count), ("write", c.write_bytes, c.write_count)
            ):
                attrs = {"device": dev, "direction": direction}
                b.point(io, int(nbytes), now, start, attrs)
                b.point(ops, int(count), now, start, attrs)

    def _network(self, b: MetricsBuilder, now: int, start: int) -> None:
        counters = psutil.net_io_counters(pernic=True) or {}
        io = b.metric_for(NETWORK_IO)
        packets = b.metric_for(NETWORK_PACKETS)
        errors = b.metric_for(NETWORK_ERRORS)
        dropped = b.metric_for(NETWORK_DROPPED)
        for dev, c in sorted(counters.items()):
            for direction, nbytes, npk, nerr, ndrop in (
                ("receive", c.bytes_recv, c.packets_recv, c.errin, c.dropin),
                ("transmit", c.bytes_sent, c.packets_sent, c.errout, c.dropout),
            ):
                attrs = {"device": dev, "direction": direction}
                b.point(io, int(nbytes), now, start, attrs)
                b.point(packets, int(npk), now, start, attrs)
                b.point(errors, int(nerr), now, start, attrs)
                b.point(dropped, int(ndrop), now, start, attrs)

    def _paging(self, b: MetricsBuilder, now: int) -> None:
        m = b.metric_for(PAGING_USAGE)
        for dev, used, free in _swap_devices():
            b.point(m, used, now, attrs={"device": dev, "state": "used"})
            b.point(m, free, now, attrs={"device": dev, "state": "free"})

    def _processes(self, b: MetricsBuilder, now: int) -> None:
        counts: dict[str, int] = {}
        for p in psutil.process_iter(["status"]):
            status = p.info.get("status") or "unknown"
            status = {"disk-sleep": "blocked", "zombie": "zombies"}.get(status, status)
            counts[status] = counts.get(status, 0) + 1
        m = b.metric_for(PROCESSES_COUNT)
        for status, n in sorted(counts.items()):
            b.point(m, n, now, attrs={"status": status})
