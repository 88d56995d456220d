"""Seed-paired comparison of two training recipes: the mean difference and its t interval.

Runs that share a seed share their data order, initialisation draws and evaluation set, so the
difference per seed removes most of the seed-to-seed spread that two independent means would
carry. With n seeds the interval is mean(d) ± t_{(1+c)/2, n-1} · sd(d) / sqrt(n) (sd with ddof 1),
the paired t interval; it needs at least two seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedDifference:
    """mean(values - baseline) over the paired seeds, with its confidence interval."""

    mean: float
    low: float  # nan with fewer than 2 pairs
    high: float
    pairs: int
    confidence: float

    @property
    def resolved(self) -> bool:
        """True when the interval exists and excludes zero."""
        return self.pairs >= 2 and (self.low > 0.0 or self.high < 0.0)


def paired_difference(values: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """The paired t interval of `values - baseline`, matched by position (one entry per seed)."""
    if len(values) != len(baseline) or not values:
        raise ValueError(f"paired difference needs equal, non-empty lists; found {len(values)} and {len(baseline)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: found {confidence}, expected 0 < confidence < 1")
    difference = np.asarray(values, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    mean = float(difference.mean())
    pairs = difference.size
    if pairs < 2:
        return PairedDifference(mean, math.nan, math.nan, pairs, confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, pairs - 1) * difference.std(ddof=1) / math.sqrt(pairs))
    return PairedDifference(mean, mean - half, mean + half, pairs, confidence)


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) over seeds."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def std_interval_factors(seeds: int, confidence: float = 0.95) -> tuple[float, float]:
    """How far the true standard deviation may be from a sample std over `seeds` runs: the factors
    (low, high) of the chi-square interval sqrt((n - 1) / chi2_{(1+c)/2}), sqrt((n - 1) / chi2_{(1-c)/2})."""
    if seeds < 2:
        raise ValueError(f"a standard deviation needs at least 2 seeds, found {seeds}")
    df = seeds - 1
    return (math.sqrt(df / float(stats.chi2.ppf(0.5 + confidence / 2.0, df))),
            math.sqrt(df / float(stats.chi2.ppf(0.5 - confidence / 2.0, df))))
