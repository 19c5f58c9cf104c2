import numpy as np
import pytest

from ftbench.report.stats import compare, mcnemar_exact, paired_arrays


def test_mcnemar_on_a_known_table():
    # 10 items only the baseline gets right, 2 only the other arm: exact two-sided
    # p = 2 * sum_{k<=2} C(12, k) / 2^12 = 2 * 79 / 4096.
    base = np.array([1] * 10 + [0] * 2 + [1] * 30 + [0] * 8)
    other = np.array([0] * 10 + [1] * 2 + [1] * 30 + [0] * 8)
    assert abs(mcnemar_exact(base, other) - 2 * 79 / 4096) < 1e-12
    assert mcnemar_exact(base, base) == 1.0


def test_bootstrap_interval_covers_the_true_difference_at_its_rate():
    # Simulated paired data with a known mean difference of 0.1 between arms.
    rng = np.random.default_rng(0)
    hits, trials = 0, 200
    for t in range(trials):
        item = rng.normal(0, 1, 150)  # shared per-item difficulty makes the pairs correlated
        base = item + rng.normal(0, 0.5, 150)
        other = item + 0.1 + rng.normal(0, 0.5, 150)
        r = compare(base, other, n_boot=2000, seed=t)
        hits += r.ci_low <= 0.1 <= r.ci_high
    assert 0.90 <= hits / trials <= 0.99, hits / trials


def test_relative_gain_and_significance():
    base = np.array([1, 0, 0, 0, 1, 0, 0, 0, 1, 0] * 20, float)   # 0.3
    other = np.array([1, 1, 0, 0, 1, 1, 0, 0, 1, 0] * 20, float)  # 0.5
    r = compare(base, other, n_boot=2000)
    assert r.test == "mcnemar-exact" and r.significant
    assert abs(r.diff - 0.2) < 1e-12 and abs(r.rel_gain - 2 / 3) < 1e-12
    assert r.rel_ci_low < 2 / 3 < r.rel_ci_high
    same = compare(base, base, n_boot=500)
    assert same.p_value == 1.0 and not same.significant and same.ci_low == same.ci_high == 0


def test_items_must_match():
    with pytest.raises(ValueError, match="different items"):
        paired_arrays({"1": 1.0, "2": 0.0}, {"1": 1.0, "3": 0.0})
    a, b = paired_arrays({"2": 0.0, "1": 1.0}, {"1": 0.5, "2": 0.25})
    assert a.tolist() == [1.0, 0.0] and b.tolist() == [0.5, 0.25]
