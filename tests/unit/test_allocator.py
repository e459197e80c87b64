"""relay.allocator: the glibc settings are applied, and an operator's GLIBC_TUNABLES wins."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import sys
from relay import allocator
print(allocator.tune() if sys.argv[1] == "tune" else "untuned")
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])
# One big block freed: left to itself, glibc now serves blocks this big from the heap.
first = bytearray(4 << 20)
del first
before = rss()
blocks = [bytearray(4 << 20) for _ in range(8)]
for b in blocks:
    b[::4096] = b'x' * len(b[::4096])
pins = [bytes(2000) for _ in range(50)]  # small blocks allocated after them, still alive
peak = rss()
del blocks, b
print(before, peak, rss())
"""


def _probe(env_extra: dict[str, str], mode: str = "tune") -> tuple[str, list[int]]:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    applied, sizes = out.stdout.splitlines()
    return applied, [int(x) for x in sizes.split()]


def test_tuned_allocator_returns_big_blocks_at_once() -> None:
    applied, (before, peak, after) = _probe({})
    assert applied == "True"
    assert peak - before > 30_000  # KiB: the blocks were really touched
    assert after - before < 4_000
    # The same without the settings: the freed blocks stay resident behind the small ones.
    _, (before, peak, after) = _probe({}, "untuned")
    assert after - before > 30_000


def test_an_operators_glibc_tunables_are_left_alone() -> None:
    applied, _ = _probe({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
    assert applied == "False"


def test_settle_collects_the_cycles_loading_leaves() -> None:
    # A PyYAML loader is a reference cycle (its state is one of its own bound methods), as is
    # the one strict_yaml keeps to construct scalars; with automatic collection off (as good
    # as off for the oldest generation of a quiet relay) only settle() frees it.
    import gc
    import weakref

    import yaml

    from relay import allocator

    loader = yaml.SafeLoader("a: [1, 2]\n")
    gone = weakref.ref(loader)
    gc.disable()
    try:
        del loader
        assert gone() is not None  # a cycle: reference counting alone does not free it
        assert allocator.settle() > 0
        assert gone() is None
    finally:
        gc.enable()
