"""What one application of the redaction policy did, as both of its paths report it.

Owns: the counts per (rule, action) and the items in and out, which the per-point engine
(relay.policy.engine) and the metrics fast path (relay.policy.shapes) both add to, and which
the shipper turns into its redaction counters.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

# One rule's decision and how often it was taken, as memoized by either path.
Events = tuple[tuple[tuple[str, str], int], ...]


@dataclass
class Outcome:
    """What one application of the policy did: counts per (rule, action), items in and out."""

    counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    items_in: int = 0
    items_out: int = 0

    def add(self, rule: str, action: str, n: int = 1) -> None:
        self.counts[(rule, action)] += n
