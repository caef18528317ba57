"""Summaries of timing samples: the median, and the spread around it, because one number hides the noise."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def summarize(samples_ms: Sequence[float]) -> dict[str, float | int]:
    """median, p10/p90, min/max and stdev of samples in milliseconds (rounded to 0.1 ms)."""
    values = sorted(samples_ms)
    if not values:
        return {"samples": 0}
    if len(values) >= 2:
        deciles = statistics.quantiles(values, n=10, method="inclusive")
        p10, p90 = deciles[0], deciles[-1]
        stdev = statistics.stdev(values)
    else:
        p10 = p90 = values[0]
        stdev = 0.0
    summary = {
        "median": statistics.median(values),
        "p10": p10,
        "p90": p90,
        "min": values[0],
        "max": values[-1],
        "stdev": stdev,
    }
    return {"samples": len(values), **{name: round(value, 1) for name, value in summary.items()}}
