"""The short fuzz run of `make test`: every target in tests/fuzz/targets.py runs for a few
seconds from the seed corpus, as a real subprocess under libFuzzer; a crash or a hang fails.
The targets run side by side, so the whole run takes one target's start-up plus SECONDS.
`make fuzz` runs the same targets for longer (FUZZ_SECONDS each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fuzz.corpus import build
from tests.fuzz.targets import TARGETS

FUZZ = Path(__file__).with_name("fuzz.py")
SECONDS = 3


def test_short_fuzz_run_of_every_target_finds_nothing(tmp_path: Path) -> None:
    corpora = build(tmp_path / "corpus")
    runs = {}
    for target in sorted(TARGETS):
        out = tmp_path / target
        out.mkdir()
        runs[target] = subprocess.Popen(
            [sys.executable, str(FUZZ), target, f"-max_total_time={SECONDS}", "-timeout=10", "-rss_limit_mb=1536",
             f"-artifact_prefix={out}/", str(corpora[target])],
            stdout=subprocess.DEVNULL, stderr=open(out / "log", "wb"), cwd=out,  # noqa: SIM115 - the child's
        )
    failed = {}
    for target, p in runs.items():
        rc = p.wait(timeout=180)
        log = (tmp_path / target / "log").read_text(errors="replace")
        # rc 0 and DONE: libFuzzer ran to its time limit, it did not just start and stop.
        if rc != 0 or "DONE" not in log:
            failed[target] = f"exit {rc}:\n{log[-3000:]}"
    assert not failed, "fuzz targets found a crash or hang:\n" + "\n".join(f"== {t}: {m}" for t, m in failed.items())
