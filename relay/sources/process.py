"""Process metrics for one discovered JVM, named as the hostmetrics `process` scraper names them.

Owns: process.cpu.time, process.memory.usage, process.open_file_descriptors and
process.threads for a pid, with process.pid, process.executable.name and process.command
(the executable; the full command line only when asked, as it can hold secrets).
METRICS declares the four (docs/metrics.md is generated from it).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import psutil
from google.protobuf.message import Message

from relay import __version__
from relay.otlp import MetricsBuilder, MetricSpec
from relay.sources.base import Source

SCOPE = "telemetry-relay/process"

CPU_TIME = MetricSpec("process.cpu.time", "counter", "s", ("state",),
                      "Total CPU seconds broken down by different states.")
MEMORY_USAGE = MetricSpec("process.memory.usage", "updowncounter", "By", (), "The amount of physical memory in use.")
OPEN_FILE_DESCRIPTORS = MetricSpec("process.open_file_descriptors", "updowncounter", "{count}", (),
                                   "Number of file descriptors in use by the process.")
THREADS = MetricSpec("process.threads", "updowncounter", "{threads}", (), "Process threads count.")
METRICS: tuple[MetricSpec, ...] = (CPU_TIME, MEMORY_USAGE, OPEN_FILE_DESCRIPTORS, THREADS)


class ProcessSource(Source):
    def __init__(self, pid: int, service_name: str, interval: float, send_command_line: bool) -> None:
        self.pid = pid
        self.name = f"process {pid}"
        self.interval = interval
        self.proc = psutil.Process(pid)
        with self.proc.oneshot():
            cmdline = self.proc.cmdline()
            self.start_ns = int(self.proc.create_time() * 1e9)
            exe = self.proc.exe() if cmdline else ""
        self.resource: dict[str, Any] = {
            "service.name": service_name, "host.name": socket.gethostname(), "process.pid": pid,
            "process.executable.name": self.proc.name(), "process.command": cmdline[0] if cmdline else exe,
        }
        if send_command_line:
            self.resource["process.command_line"] = " ".join(cmdline)

    async def collect(self) -> list[Message]:
        return [await asyncio.to_thread(self.collect_sync)]

    def collect_sync(self) -> Message:
        b = MetricsBuilder(self.resource, SCOPE, __version__)
        now = time.time_ns()
        with self.proc.oneshot():
            cpu = self.proc.cpu_times()
            mem = self.proc.memory_info()
            fds = self.proc.num_fds()
            threads = self.proc.num_threads()
        m = b.metric_for(CPU_TIME)
        b.point(m, float(cpu.user), now, self.start_ns, {"state": "user"})
        b.point(m, float(cpu.system), now, self.start_ns, {"state": "system"})
        b.point(b.metric_for(MEMORY_USAGE), int(mem.rss), now, self.start_ns)
        b.point(b.metric_for(OPEN_FILE_DESCRIPTORS), int(fds), now, self.start_ns)
        b.point(b.metric_for(THREADS), int(threads), now, self.start_ns)
        return b.finish()

    def details(self) -> dict[str, Any]:
        return {"pid": self.pid}
