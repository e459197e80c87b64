"""What fuzzing found, each kept as a regression test on the function that failed (the
inputs are also in tests/fuzz/regressions/, so every fuzz run starts from them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay import config
from relay.strict_yaml import SchemaError
from tests.fuzz.targets import TARGETS

REGRESSIONS = Path(__file__).with_name("regressions")


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*/*")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_found_input_is_handled(path: Path) -> None:
    TARGETS[path.parent.name](path.read_bytes())  # raises if the finding is back


@pytest.mark.parametrize("text", ["", "\r#!v ", "# only a comment\n"])
def test_an_empty_relay_yaml_is_a_schema_error_not_an_attribute_error(text: str) -> None:
    # The yaml target: a file with no node had no line to name and raised AttributeError.
    with pytest.raises(SchemaError, match="destinations: required key is missing"):
        config.loads(text, "relay.yaml")
