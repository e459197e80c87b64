"""Where the relay's CPU goes on the scrape path of bench/prom_agent.py: py-spy attached to the
running relay for the measured window, its collapsed stacks summed per function.

py-spy is not a dependency of the project: BENCH_PROM_PROFILE names its binary (or `1` for
bench/work/tools/bin/py-spy, where `pip install --target bench/work/tools py-spy` puts it).
It samples from outside the process (`--nonblocking`: the relay is never paused), so the
profile costs the relay nothing, but it takes CPU of its own on the same two cores: the
figures of a profiled run are not the ones reported.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import WORK

_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    """The py-spy binary BENCH_PROM_PROFILE asks for, or None when no profile is wanted."""
    want = os.environ.get("BENCH_PROM_PROFILE", "")
    if not want:
        return None
    path = str(WORK / "tools" / "bin" / "py-spy") if want == "1" else want
    if not Path(path).exists():
        raise SystemExit(f"bench: BENCH_PROM_PROFILE: no py-spy at {path} "
                         "(pip install --target bench/work/tools py-spy)")
    return path


def record(binary: str, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `seconds`, collapsed stacks into `out`; wait() on the result."""
    with open(out.with_suffix(".log"), "wb") as log:  # the child has its own copy of the descriptor
        return subprocess.Popen([binary, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                                 "--rate", "100", "--nonblocking", "--format", "raw", "-o", str(out)],
                                stdout=log, stderr=subprocess.STDOUT)


def top(collapsed: str, n: int = 15) -> dict[str, Any]:
    """Per function (line numbers dropped): the share of samples it was on the stack
    (inclusive) and at the top of it (self), the n largest of each."""
    total, inclusive, own = 0, Counter[str](), Counter[str]()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        total += k
        own[frames[-1]] += k
        for f in set(frames):
            inclusive[f] += k

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(f, k / total) for f, k in c.most_common(n)] if total else []

    return {"samples": total, "inclusive": share(inclusive), "self": share(own)}
