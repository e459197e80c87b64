"""Builds the seed corpus of every fuzz target from tests/fixtures and configs/, plus what
the fuzzers found before (tests/fuzz/regressions/<target>/): one directory per target.
Run by `make fuzz` and the short run in the test suite: python -m tests.fuzz.corpus <dir>"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"


def seeds() -> dict[str, list[bytes]]:
    from relay.otlp import from_json
    from tests.fuzz.targets import seed_signature

    example = (FIX / "otlp_proto_examples_metrics.json").read_bytes()
    out: dict[str, list[bytes]] = {
        # otlp: first byte 0 = metrics protobuf, 4 = metrics JSON
        "otlp": [b"\x00" + from_json("metrics", example).SerializeToString(), b"\x04" + example],
        # exposition: first byte even = text, odd = OpenMetrics
        "exposition": [b"\x00" + p.read_bytes() for p in sorted(FIX.glob("*.prom*"))]
        + [b"\x01" + p.read_bytes() for p in sorted(FIX.glob("*.om.txt"))],
        "jolokia": [p.read_bytes() for p in sorted(FIX.glob("*jolokia*.json"))],
        # yaml: first byte even = relay.yaml, odd = policy.yaml
        "yaml": [b"\x00" + (ROOT / "configs" / "relay.yaml").read_bytes(),
                 b"\x01" + (ROOT / "configs" / "policy.yaml").read_bytes(),
                 b"\x01" + (FIX / "policy-pass-through.yaml").read_bytes()],
        "signature": [seed_signature()],
    }
    return out


REGRESSIONS = Path(__file__).with_name("regressions")  # inputs the fuzzers found, one folder per target


def build(directory: Path) -> dict[str, Path]:
    dirs = {}
    found = {d.name: sorted(p.read_bytes() for p in d.iterdir()) for d in REGRESSIONS.iterdir() if d.is_dir()}
    for target, inputs in seeds().items():
        inputs = inputs + found.get(target, [])
        d = directory / target
        d.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(inputs):
            (d / f"seed-{i:03d}").write_bytes(data)
        dirs[target] = d
    return dirs


if __name__ == "__main__":
    for target, d in build(Path(sys.argv[1])).items():
        print(f"{target}: {d}")
