"""Runs one fuzz target under atheris (libFuzzer), coverage-guided over the relay's code and
the parsing libraries it relies on:

    python tests/fuzz/fuzz.py <target> [libFuzzer flags] <corpus dir>...

Targets are in tests/fuzz/targets.py; `make fuzz` builds the seed corpora and runs each.
A crash (an error the parser does not document) or a hang (-timeout) exits non-zero and
leaves the input as crash-*/timeout-* in the working directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for `tests.fuzz`

with atheris.instrument_imports(include=["relay", "prometheus_client", "yaml", "http_sf",
                                         "http_message_signatures", "google.protobuf.json_format"]):
    from tests.fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: fuzz.py {{{'|'.join(TARGETS)}}} [libFuzzer flags] [corpus dirs]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
