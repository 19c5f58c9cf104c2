"""Paired statistics for comparing two arms item by item.

Both arms are scored on the same items, so their difference is judged on the paired
per-item outcomes: a paired bootstrap for any outcome (means, pass@k fractions), and
McNemar's exact test for binary outcomes (correct / incorrect).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    n: int
    baseline: float
    other: float
    diff: float
    """other - baseline (absolute gain)."""
    ci_low: float
    ci_high: float
    """Bootstrap percentile interval of the difference at `level`."""
    rel_gain: float | None
    """diff / baseline (None when the baseline scores 0)."""
    rel_ci_low: float | None
    rel_ci_high: float | None
    p_value: float
    test: str
    level: float = 0.95

    @property
    def significant(self) -> bool:
        return self.p_value < 1 - self.level


def paired_arrays(a: dict[str, float], b: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Align two {item id: outcome} maps; they must cover the same items."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b))[:3], sorted(set(b) - set(a))[:3]
        raise ValueError(f"the two arms were scored on different items (only in the first: "
                         f"{only_a}, only in the second: {only_b}); compare runs of the same "
                         "task version and limit")
    keys = sorted(a)
    return np.array([a[k] for k in keys], float), np.array([b[k] for k in keys], float)


def mcnemar_exact(base: np.ndarray, other: np.ndarray) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs of binary outcomes."""
    b = int(np.sum((base == 1) & (other == 0)))  # baseline right, other wrong
    c = int(np.sum((base == 0) & (other == 1)))
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    if n <= 1000:
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    else:  # normal approximation with continuity correction
        z = (abs(b - c) - 1) / math.sqrt(n)
        tail = 0.5 * math.erfc(z / math.sqrt(2))
    return min(1.0, 2 * tail)


def compare(base: np.ndarray, other: np.ndarray, *, n_boot: int = 10_000, level: float = 0.95,
            seed: int = 0) -> PairedComparison:
    """Difference of means with a paired bootstrap CI; McNemar's p for 0/1 outcomes, the
    bootstrap's two-sided p otherwise."""
    if base.shape != other.shape or base.ndim != 1 or len(base) == 0:
        raise ValueError("compare needs two non-empty 1-D arrays of paired outcomes")
    n = len(base)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    mb, mo = base[idx].mean(axis=1), other[idx].mean(axis=1)
    d = mo - mb
    alpha = (1 - level) / 2
    lo, hi = np.quantile(d, [alpha, 1 - alpha])
    base_mean, other_mean = float(base.mean()), float(other.mean())
    rel = rel_lo = rel_hi = None
    if base_mean > 0:
        rel = (other_mean - base_mean) / base_mean
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(mb > 0, d / mb, np.nan)
        ratios = ratios[np.isfinite(ratios)]
        if len(ratios):
            rel_lo, rel_hi = (float(x) for x in np.quantile(ratios, [alpha, 1 - alpha]))
    binary = bool(np.all(np.isin(base, (0, 1))) and np.all(np.isin(other, (0, 1))))
    if binary:
        p, test = mcnemar_exact(base, other), "mcnemar-exact"
    else:
        # Two-sided: how often the resampled difference falls on the far side of zero.
        p = min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))
        p, test = float(max(p, 1 / n_boot)), "paired-bootstrap"
    return PairedComparison(n, base_mean, other_mean, other_mean - base_mean, float(lo),
                            float(hi), rel, rel_lo, rel_hi, float(p), test, level)
