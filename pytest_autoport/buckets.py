"""Bucketing, as NxD Inference does it: one static-shape graph per bucket, inputs padded up to the
smallest bucket that fits."""

from __future__ import annotations

MIN_BUCKET = 16


def powers_of_two(maximum: int, minimum: int = MIN_BUCKET) -> list[int]:
    """16, 32, 64, ... up to ``maximum``, which is always the last bucket."""
    buckets = []
    size = min(minimum, maximum)
    while size < maximum:
        buckets.append(size)
        size *= 2
    return buckets + [maximum]


def smallest_fitting(needed: int, buckets: list[int]) -> int | None:
    return next((b for b in buckets if b >= needed), None)
