"""Distributions of per-record numbers: running totals for the manifest, quantiles and histograms
for summary.json (results/summary.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class MetricTotals:
    """Count, mean, min and max of each metric over the records written so far: a few numbers
    whatever the number of records. Empty (no key in the manifest) while no record has metrics."""

    stats: dict[str, list[float]] = field(default_factory=dict)  # name -> [count, sum, min, max]

    def add(self, metrics: dict[str, Any] | None) -> None:
        for name, value in (metrics or {}).items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            count, total, low, high = self.stats.get(name, [0, 0.0, math.inf, -math.inf])
            self.stats[name] = [count + 1, total + value, min(low, value), max(high, value)]

    def to_json(self) -> dict[str, Any]:
        if not self.stats:
            return {}
        return {"metrics": {name: {"count": int(count), "mean": total / count, "min": low, "max": high}
                            for name, (count, total, low, high) in self.stats.items()}}


def distribution(values: list[float], bins: int = 10, log: bool = False) -> dict[str, Any] | None:
    """Quantiles and a histogram of ``values`` (finite ones); ``log``: bins even in log10 (positive values)."""
    data = np.array([v for v in values if isinstance(v, (int, float)) and math.isfinite(v)], dtype=np.float64)
    if log:
        data = data[data > 0]
    if data.size == 0:
        return None
    quantiles = np.quantile(data, [0.0, 0.1, 0.5, 0.9, 1.0])
    counts, edges = np.histogram(np.log10(data) if log else data, bins=bins)
    edges = 10.0 ** edges if log else edges
    return {"count": int(data.size), "mean": float(data.mean()),
            "quantiles": {key: float(q) for key, q in zip(("min", "p10", "median", "p90", "max"), quantiles)},
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}}
