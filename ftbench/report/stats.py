"""Paired statistics for comparing two arms item by item.

Both arms are scored on the same items, so their difference is judged on the paired
per-item outcomes. Each comparison takes its interval and its p-value from ONE procedure,
so that "significant" (the interval excludes 0) and "p < 1 - level" always agree:
- binary outcomes (correct / incorrect): McNemar's exact test and the interval it
  inverts: the Clopper-Pearson interval of the share of discordant items the other arm
  wins, conditional on the number of discordant items, scaled to a difference of means;
- any other outcome (means of n samples, pass@k fractions): a paired percentile bootstrap,
  whose two-sided p is the share of resampled differences on the far side of 0.
The relative gain's interval is always a bootstrap (resamples whose baseline mean is 0 are
dropped and counted).
"""

from __future__ import annotations

import functools
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
    """Interval of the difference at `level`, from the procedure named by `test`."""
    rel_gain: float | None
    """diff / baseline (None when the baseline scores 0)."""
    rel_ci_low: float | None
    rel_ci_high: float | None
    p_value: float
    test: str
    """"mcnemar-exact" (exact conditional interval) or "paired-bootstrap" (percentile)."""
    level: float = 0.95
    rel_dropped: int = 0
    """Bootstrap resamples left out of the relative-gain interval: their baseline mean was
    0, so the ratio is undefined (the interval is then conditional on a baseline above 0)."""
    n_boot: int = 0

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (equivalently, p < 1 - level: same procedure)."""
        return self.ci_low > 0 or self.ci_high < 0


def paired_arrays(a: dict[str, float], b: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Align two {item id: outcome} maps; they must cover the same items."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b))[:3], sorted(set(b) - set(a))[:3]
        raise ValueError(f"the two arms were scored on different items (only in the first: "
                         f"{only_a}, only in the second: {only_b}); compare runs of the same "
                         "task version and limit")
    keys = sorted(a)
    return np.array([a[k] for k in keys], float), np.array([b[k] for k in keys], float)


@functools.lru_cache(maxsize=64)
def _log_comb(m: int) -> np.ndarray:
    """log C(m, i) for i = 0..m."""
    lg = np.array([math.lgamma(x + 1) for x in range(m + 1)])
    return lg[m] - lg - lg[::-1]


def _binom_logpmf(m: int, p: float) -> np.ndarray:
    i = np.arange(m + 1)
    # 0 x log 0 (p = 0 or 1) is nan in the branch np.where discards: not worth a warning.
    with np.errstate(invalid="ignore"):
        log_p = math.log(p) if p > 0 else -np.inf
        log_q = math.log1p(-p) if p < 1 else -np.inf
        return (_log_comb(m) + np.where(i > 0, i * log_p, 0.0)
                + np.where(m - i > 0, (m - i) * log_q, 0.0))


def _tail_le(k: int, m: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(m, p), summed in log space (exact for any m)."""
    if k < 0:
        return 0.0
    if k >= m:
        return 1.0
    lp = _binom_logpmf(m, p)[:k + 1]
    top = lp.max()
    if not np.isfinite(top):
        return 0.0
    return float(min(1.0, math.exp(top) * np.exp(lp - top).sum()))


def mcnemar_exact(base: np.ndarray, other: np.ndarray) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs of binary outcomes:
    2 P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1."""
    b = int(np.sum((base == 1) & (other == 0)))  # baseline right, other wrong
    c = int(np.sum((base == 0) & (other == 1)))
    if b + c == 0:
        return 1.0
    return min(1.0, 2 * _tail_le(min(b, c), b + c, 0.5))


def _solve(f, target: float, increasing: bool) -> float:
    """The p in [0, 1] where the monotone f(p) crosses target (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return (lo + hi) / 2


def clopper_pearson(c: int, m: int, level: float) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial share c / m: the central interval
    that the two-sided exact binomial test inverts."""
    alpha = 1 - level
    lo = 0.0 if c == 0 else _solve(lambda p: 1 - _tail_le(c - 1, m, p), alpha / 2, True)
    hi = 1.0 if c == m else _solve(lambda p: _tail_le(c, m, p), alpha / 2, False)
    return lo, hi


def _relative(mb: np.ndarray, d: np.ndarray, base_mean: float, other_mean: float,
              alpha: float):
    if base_mean <= 0:
        return None, None, None, 0
    rel = (other_mean - base_mean) / base_mean
    keep = mb > 0
    dropped = int((~keep).sum())
    ratios = d[keep] / mb[keep]
    if not len(ratios):
        return rel, None, None, dropped
    lo, hi = (float(x) for x in np.quantile(ratios, [alpha, 1 - alpha]))
    return rel, lo, hi, dropped


def compare(base: np.ndarray, other: np.ndarray, *, n_boot: int = 10_000, level: float = 0.95,
            seed: int = 0) -> PairedComparison:
    """Difference of means with its interval and p from one procedure: exact McNemar and
    its exact conditional interval for 0/1 outcomes, the paired percentile bootstrap
    otherwise (module docstring)."""
    if base.shape != other.shape or base.ndim != 1 or len(base) == 0:
        raise ValueError("compare needs two non-empty 1-D arrays of paired outcomes")
    n = len(base)
    alpha_half = round((1 - level) / 2, 12)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    mb, mo = base[idx].mean(axis=1), other[idx].mean(axis=1)
    d = mo - mb
    base_mean, other_mean = float(base.mean()), float(other.mean())
    rel, rel_lo, rel_hi, dropped = _relative(mb, d, base_mean, other_mean, alpha_half)
    binary = bool(np.all(np.isin(base, (0, 1))) and np.all(np.isin(other, (0, 1))))
    if binary:
        b = int(np.sum((base == 1) & (other == 0)))
        c = int(np.sum((base == 0) & (other == 1)))
        m = b + c
        p = mcnemar_exact(base, other)
        if m == 0:
            lo = hi = 0.0
        else:
            # other - baseline = (c - b) / n = (2 pi - 1) m / n, pi = share won by `other`.
            pi_lo, pi_hi = clopper_pearson(c, m, level)
            lo, hi = (2 * pi_lo - 1) * m / n, (2 * pi_hi - 1) * m / n
        test = "mcnemar-exact"
    else:
        # Order statistics, so that the interval excludes 0 exactly when fewer than
        # n_boot * alpha / 2 resampled differences lie on one side of 0 (p < alpha).
        d_sorted = np.sort(d)
        j = max(0, math.ceil(round(n_boot * alpha_half, 9)) - 1)
        lo, hi = float(d_sorted[j]), float(d_sorted[n_boot - 1 - j])
        below, above = int(np.sum(d <= 0)), int(np.sum(d >= 0))
        p = min(1.0, 2 * min(below, above) / n_boot)
        p = float(max(p, 1 / n_boot))
        test = "paired-bootstrap"
    return PairedComparison(n, base_mean, other_mean, other_mean - base_mean, float(lo),
                            float(hi), rel, rel_lo, rel_hi, float(p), test, level, dropped,
                            n_boot)
