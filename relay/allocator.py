"""The C allocator's settings for a long-running relay on a broker host.

glibc's malloc, left to itself, makes a small Python service grow for hours: its threshold
for serving big blocks by mmap rises after each big free (a 0.5 MiB Jolokia answer, a 4 MiB
batch), so later big blocks land in the heap and pin it; each thread that allocates gets an
arena of its own; and freed heap is given back only above 128 KiB at the top. Measured at the
reference load (a 5,000-series broker every 30 s): the relay's resident memory kept rising
by ~1 MiB a read and peaked ~5 MiB higher than with these settings (`make bench`).

Applied with mallopt() at start, so the same settings hold under systemd, `make run` and the
benchmarks; GLIBC_TUNABLES in the environment, if set, is applied first and wins here too,
because an explicit setting there is the operator's choice.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os

log = logging.getLogger("relay.allocator")

# mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

SETTINGS = {
    _M_MMAP_THRESHOLD: 128 * 1024,  # fixed: big blocks always mmapped, and unmapped when freed
    _M_TRIM_THRESHOLD: 128 * 1024,  # fixed too (setting the mmap threshold alone would leave it dynamic)
    _M_ARENA_MAX: 2,  # the event loop and the spool/worker threads share two arenas
}


def tune() -> bool:
    """Apply SETTINGS; False where the C library is not glibc (nothing to do there)."""
    if "GLIBC_TUNABLES" in os.environ and "glibc.malloc" in os.environ["GLIBC_TUNABLES"]:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt  # glibc's soname on every Linux it runs on
    except (OSError, AttributeError):
        return False
    ok = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    if not ok:
        log.debug("mallopt refused a setting; the allocator keeps its defaults")
    return ok


def settle() -> int:
    """Collect the cyclic garbage that loading leaves behind, once the relay has started (or
    reloaded). PyYAML's loaders are reference cycles that hold the nodes and marks they
    parsed, and a relay at steady state allocates too little for the oldest generation ever
    to be collected: without this
    about 1.3 MiB of config, policy and mapping parse trees stayed for the life of the
    process. Returns the objects collected."""
    return gc.collect()
