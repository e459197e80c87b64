"""Merging data points whose identities collide once the policy removed or blanked an attribute.

Owns: what a collision means (same attributes, start and time) and how points merge so the
vendor still receives correct data: sums add, histograms with the same bounds add their buckets,
gauges, summaries and unmergeable histograms keep the latest point.
"""

from __future__ import annotations

from typing import Any


def attribute_identity(dp: Any) -> tuple[tuple[str, bytes], ...]:
    """The part of a point's identity its attributes make (in any order)."""
    return tuple(sorted((kv.key, kv.value.SerializeToString()) for kv in dp.attributes))


def _identity(dp: Any) -> tuple[Any, ...]:
    return attribute_identity(dp), dp.start_time_unix_nano, dp.time_unix_nano


def merge_points(kind: str, points: Any) -> int:
    """Merge data points whose identity now collides; returns how many were merged away."""
    first: dict[tuple[Any, ...], Any] = {}
    doomed: list[int] = []
    for i, dp in enumerate(points):
        ident = _identity(dp)
        keep = first.get(ident)
        if keep is None:
            first[ident] = dp
            continue
        if kind == "sum":
            if keep.WhichOneof("value") == "as_int" and dp.WhichOneof("value") == "as_int":
                keep.as_int += dp.as_int
            else:
                total = _num(keep) + _num(dp)
                keep.as_double = total
        elif kind == "histogram" and list(keep.explicit_bounds) == list(dp.explicit_bounds):
            keep.count += dp.count
            keep.sum += dp.sum
            for b in range(len(keep.bucket_counts)):
                keep.bucket_counts[b] += dp.bucket_counts[b]
        else:  # gauges and summaries (and unmergeable histograms): the latest point stands
            if dp.time_unix_nano >= keep.time_unix_nano:
                keep.CopyFrom(dp)
        doomed.append(i)
    for i in reversed(doomed):
        del points[i]
    return len(doomed)


def _num(dp: Any) -> float:
    return float(dp.as_int) if dp.WhichOneof("value") == "as_int" else float(dp.as_double)
