"""The redaction policy file (policy.yaml): its schema, validated as strictly as the config.

Owns: what a policy can say. Unknown keys, bad regexes, unknown detectors and bad globs are
errors naming the file, the line and the key path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from relay.policy.detectors import DETECTORS

Action = Literal["keep", "drop", "hash", "mask"]
ValueAction = Literal["mask", "hash", "drop_attribute", "drop_item"]
SignalName = Literal["metrics", "logs", "traces"]


@dataclass(frozen=True)
class KeyRule:
    key: str  # a glob over attribute keys
    action: Action
    name: str | None = None
    metrics: tuple[str, ...] = ()
    signals: tuple[SignalName, ...] = ()


@dataclass(frozen=True)
class AttributePolicy:
    # What happens to a key no rule names. `drop` is allowlist mode.
    default: Action = "drop"
    rules: tuple[KeyRule, ...] = ()


@dataclass(frozen=True)
class ValueRule:
    action: ValueAction
    detector: str | None = None
    regex: str | None = None
    name: str | None = None
    # Only for attribute keys matching these globs (empty: every kept string value, log
    # bodies and span names).
    keys: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    signals: tuple[SignalName, ...] = ()

    def validate(self) -> None:
        if bool(self.detector) == bool(self.regex):
            raise ValueError("give exactly one of detector or regex")
        if self.detector and self.detector not in DETECTORS:
            raise ValueError(f"unknown detector {self.detector!r} (known: {', '.join(sorted(DETECTORS))})")
        if self.regex:
            try:
                re.compile(self.regex)
            except re.error as e:
                raise ValueError(f"bad regex {self.regex!r}: {e}") from None

    @property
    def label(self) -> str:
        return self.name or (f"detector:{self.detector}" if self.detector else f"regex:{self.regex}")


@dataclass(frozen=True)
class MetricsPolicy:
    # A metric in neither list: `allow` ships it, `deny` drops it. deny wins over allow.
    default: Literal["allow", "deny"] = "allow"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class PolicyFile:
    version: Literal[1] = 1
    description: str = ""
    metrics: MetricsPolicy = field(default_factory=MetricsPolicy)
    resource_attributes: AttributePolicy = field(default_factory=AttributePolicy)
    attributes: AttributePolicy = field(default_factory=AttributePolicy)
    values: tuple[ValueRule, ...] = ()
    # Fields the installed OTLP version does not know: the policy cannot vouch for what it cannot
    # read, so they are dropped. `keep` lets them through as they came (for a vendor that needs a
    # field newer than this relay, knowing that nothing in them is redacted).
    unknown_fields: Literal["drop", "keep"] = "drop"
