"""The short fuzz run of `make test`: every target in tests/fuzz/targets.py runs for a few
seconds from the seed corpus, as a real subprocess under libFuzzer; a crash or a hang fails.
`make fuzz` runs the same targets for longer (FUZZ_SECONDS each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.corpus import build
from tests.fuzz.targets import TARGETS

FUZZ = Path(__file__).with_name("fuzz.py")
SECONDS = 3


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_fuzz_run_finds_nothing(target: str, tmp_path: Path) -> None:
    corpus = build(tmp_path / "corpus")[target]
    p = subprocess.run(
        [sys.executable, str(FUZZ), target, f"-max_total_time={SECONDS}", "-timeout=10", "-rss_limit_mb=1536",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert p.returncode == 0, f"fuzz target {target} found a crash or hang:\n{p.stderr[-4000:]}"
    assert "DONE" in p.stderr  # libFuzzer ran to its time limit, it did not just start
