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


# ---- McNemar: the exact test against scipy, the normal approximation past 1,000 -------

def _discordant(b: int, c: int, concordant: int = 5):
    """Outcome arrays with b items only the baseline gets right and c only the other."""
    base = np.array([1] * b + [0] * c + [1] * concordant + [0] * concordant)
    other = np.array([0] * b + [1] * c + [1] * concordant + [0] * concordant)
    return base, other


@pytest.mark.parametrize("b,c", [(0, 1), (1, 0), (3, 3), (7, 2), (480, 520), (520, 480)])
def test_mcnemar_exact_equals_scipy_binomial_test(b, c):
    from scipy.stats import binomtest

    expected = binomtest(min(b, c), b + c, 0.5).pvalue
    assert abs(mcnemar_exact(*_discordant(b, c)) - expected) < 1e-12
    if b == c:
        assert mcnemar_exact(*_discordant(b, c)) == 1.0  # capped at 1, never above


def test_mcnemar_stays_exact_past_1000_discordant_pairs():
    from scipy.stats import binomtest

    for b, c in ((520, 481), (700, 640), (3000, 3120)):
        assert abs(mcnemar_exact(*_discordant(b, c)) - binomtest(c, b + c, 0.5).pvalue) < 1e-12


@pytest.mark.parametrize("b,c,n", [(3, 10, 100), (0, 7, 50), (12, 2, 40), (5, 5, 30),
                                   (480, 560, 2000)])
def test_binary_interval_is_the_exact_one_mcnemar_inverts(b, c, n):
    # Clopper-Pearson interval of the share of discordant items won by the other arm
    # (scipy's exact binomial interval), scaled to a difference of means: (2 pi - 1) m / n.
    from scipy.stats import binomtest

    base, other = _discordant(b, c, concordant=(n - b - c) // 2)
    r = compare(base.astype(float), other.astype(float), n_boot=200)
    m, n_items = b + c, len(base)
    ci = binomtest(c, m, 0.5).proportion_ci(0.95, method="exact")
    assert r.test == "mcnemar-exact"
    assert abs(r.ci_low - (2 * ci.low - 1) * m / n_items) < 1e-9
    assert abs(r.ci_high - (2 * ci.high - 1) * m / n_items) < 1e-9
    assert abs(r.p_value - binomtest(c, m, 0.5).pvalue) < 1e-12


def _printed(text: str) -> tuple[float, float, bool]:
    """(printed lower bound, printed upper bound, marked n.s.) of a table cell."""
    import re

    lo, hi = re.search(r"CI \[([-+][0-9.e-]+), ([-+][0-9.e-]+)\]", text).groups()
    return float(lo), float(hi), text.endswith("(n.s.)")


def test_no_cell_prints_an_interval_that_contradicts_its_mark():
    from ftbench.report.tables import Cell, cell_text

    rng = np.random.default_rng(0)
    cases = []
    for n in (10, 40, 100, 300, 1000):  # binary: every (b, c) of a grid, as McNemar sees them
        for b in range(0, 40, 3):
            for c in range(0, 46, 2):
                if b + c <= n:
                    base, other = _discordant(b, c, concordant=0)
                    pad = np.zeros(n - b - c)
                    cases.append((np.r_[base[:b + c], pad], np.r_[other[:b + c], pad]))
    for t in range(150):  # means of 5 samples: the bootstrap, near the boundary too
        rate = rng.uniform(0.1, 0.9, 60)
        cases.append((rng.binomial(5, rate) / 5, rng.binomial(5, np.clip(rate + 0.08 * (t % 3), 0, 1)) / 5))
    seen = {True: 0, False: 0}
    for i, (base, other) in enumerate(cases):
        # Few resamples too: at 40 the 95 % interval is [min, max] of the differences, at
        # 100 the cut (2.5 resamples a side) falls between two order statistics.
        for n_boot in ((400,) if i < len(cases) - 150 else (40, 100, 400)):
            r = compare(base.astype(float), other.astype(float), n_boot=n_boot, seed=len(base))
            lo, hi, ns = _printed(cell_text(Cell(float(other.mean()), r)))
            excludes_zero = lo > 0 or hi < 0
            assert excludes_zero != ns, (cell_text(Cell(float(other.mean()), r)), r)
            assert (r.p_value < 0.05) == r.significant == excludes_zero, r
            seen[excludes_zero] += 1
    assert min(seen.values()) > 50  # both readings occur in the grid


def test_the_audit_example_is_not_significant_either_way():
    # n = 100, 3 items only the baseline gets right, 10 only the other arm: exact p = 0.092;
    # the interval must then hold 0 (a bootstrap percentile interval gave [+1.0, +14.0]).
    base, other = _discordant(3, 10, concordant=0)
    base, other = np.r_[base[:13], np.zeros(87)], np.r_[other[:13], np.zeros(87)]
    r = compare(base, other)
    assert abs(r.p_value - 0.0923) < 1e-3
    assert r.ci_low < 0 < r.ci_high and not r.significant


# ---- the paired bootstrap on non-binary outcomes ----------------------------------------
# A Free arm's generative score is a mean over n samples per item (0, 0.2, ..., 1 for
# n = 5), so every such comparison goes through the bootstrap, not McNemar.

def test_identical_non_binary_arms_give_p_one_and_a_zero_interval():
    x = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.2, 0.4])
    r = compare(x, x.copy(), n_boot=1000)
    assert r.test == "paired-bootstrap" and r.p_value == 1.0 and not r.significant
    assert r.ci_low == r.ci_high == r.diff == 0.0


def test_a_constant_shift_gives_the_smallest_p_the_resample_count_allows():
    # Every resampled difference is +0.55: none falls at or below zero, so p is the
    # floor 1 / n_boot (a +55-point gain that is certain, whatever n_boot).
    base = np.array([0.0, 0.2, 0.4, 0.2, 0.0, 0.4, 0.2, 0.0, 0.2, 0.4] * 3)
    other = base + 0.55
    for n_boot in (1000, 10_000):
        r = compare(base, other, n_boot=n_boot)
        assert r.test == "paired-bootstrap" and r.p_value == 1 / n_boot and r.significant
        assert abs(r.diff - 0.55) < 1e-12 and abs(r.ci_low - 0.55) < 1e-12
        assert abs(r.ci_high - 0.55) < 1e-12
    assert compare(base, other).p_value == 1e-4  # the default resample count: 10,000
    assert compare(other, base, n_boot=1000).p_value == 1 / 1000  # two-sided


@pytest.mark.parametrize("diffs,expected", [
    # Two items: a resample holds item 1 twice (1/4), item 2 twice (1/4) or both (1/2),
    # so the resampled mean difference takes three values with known probabilities.
    ([+1.0, -1.0], 1.0),    # P(d <= 0) = P(d >= 0) = 3/4: p = min(1, 2 * 3/4)
    ([-0.5, +1.5], 0.5),    # d in {-0.5, 0.5, 1.5}: P(d <= 0) = 1/4, p = 2 * 1/4
    ([+0.5, -1.5], 0.5),    # the mirror image
    ([+0.25, +0.75], 1e-4),  # always above zero: the floor 1 / n_boot
])
def test_bootstrap_p_value_on_two_items_equals_the_hand_computed_one(diffs, expected):
    base = np.array([0.5, 0.25])  # exact in binary: a zero difference is exactly 0
    r = compare(base, base + np.array(diffs), n_boot=10_000, seed=1)
    assert r.test == "paired-bootstrap"
    # 10,000 resamples: P(d <= 0) = 1/4 is estimated within 4 sd = 0.017 (p within 0.035).
    assert abs(r.p_value - expected) < 0.035, (diffs, r.p_value)


def test_a_simulated_null_is_rejected_about_five_percent_of_the_time():
    # Both arms are scored as means of 5 samples of one per-item success rate: no true
    # difference. At level 0.95 a calibrated test rejects 5 % of the time; over 400
    # simulated comparisons that rate is 0.05 +- 0.011 (one sd).
    rng = np.random.default_rng(0)
    rejections, trials = 0, 400
    for t in range(trials):
        rate = rng.uniform(0.05, 0.95, 80)
        base = rng.binomial(5, rate) / 5
        other = rng.binomial(5, rate) / 5
        r = compare(base, other, n_boot=1000, seed=t)
        assert r.test == "paired-bootstrap" or np.isin(np.r_[base, other], (0, 1)).all()
        rejections += r.significant
    assert 0.02 <= rejections / trials <= 0.09, rejections / trials
    # A real +0.15 gain on the same design is found nearly always.
    found = 0
    for t in range(50):
        rate = rng.uniform(0.05, 0.8, 80)
        found += compare(rng.binomial(5, rate) / 5, rng.binomial(5, rate + 0.15) / 5,
                         n_boot=1000, seed=t).significant
    assert found >= 45


def test_interval_width_follows_the_normal_law():
    # 400 paired differences with sd s: the 95 % percentile interval is about
    # mean +- 1.96 s / sqrt(n) (CLT). A 90 % or a 96.7 % interval would be 16 % narrower
    # or 9 % wider; the bootstrap's own noise at 20,000 resamples is about 2 %.
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, 400)
    other = base + rng.normal(0.1, 1, 400)
    s = np.std(other - base)
    r = compare(base, other, n_boot=20_000)
    half = (r.ci_high - r.ci_low) / 2
    assert abs(half / (1.96 * s / 20) - 1) < 0.04, half / (1.96 * s / 20)
    assert abs((r.ci_high + r.ci_low) / 2 - r.diff) < 0.2 * half
    r80 = compare(base, other, n_boot=20_000, level=0.8)
    assert abs((r80.ci_high - r80.ci_low) / 2 / (1.2816 * s / 20) - 1) < 0.04
    assert r80.level == 0.8


def test_resamples_draw_every_item():
    # Item 0 alone differs between the arms: a bootstrap that never drew it (or always
    # did) would give a zero (or constant) difference.
    base = np.zeros(4) + 0.5
    other = np.array([0.9, 0.5, 0.5, 0.5])
    r = compare(base, other, n_boot=4000)
    # Draws of item 0 in 4 ~ Binomial(4, 1/4): P(0) = 0.32, P(<= 2) = 0.949, P(<= 3) = 0.996.
    assert r.ci_low == 0.0 and abs(r.ci_high - 0.3) < 1e-12
    assert abs(r.diff - 0.1) < 1e-12


def test_comparison_records_every_figure_and_is_reproducible():
    base = np.array([0.2, 0.4, 0.6, 0.0, 0.8, 0.4])
    other = np.array([0.4, 0.4, 1.0, 0.2, 0.8, 0.6])
    r = compare(base, other)
    assert r.n == 6 and abs(r.baseline - 0.4) < 1e-12 and abs(r.other - 17 / 30) < 1e-12
    assert abs(r.diff - (17 / 30 - 0.4)) < 1e-12 and r.level == 0.95
    assert abs(r.rel_gain - (17 / 30 - 0.4) / 0.4) < 1e-12
    again = compare(base, other)  # the default seed: the report's numbers are reproducible
    assert (r.ci_low, r.ci_high, r.p_value) == (again.ci_low, again.ci_high, again.p_value)
    seeded = compare(base, other, seed=0)
    assert (r.ci_low, r.ci_high, r.rel_ci_low) == (seeded.ci_low, seeded.ci_high,
                                                   seeded.rel_ci_low)


def test_a_binary_baseline_against_fractions_uses_the_bootstrap():
    base = np.array([1, 0, 1, 0, 1, 1, 0, 0], float)
    other = np.array([0.8, 0.2, 1.0, 0.4, 0.6, 1.0, 0.0, 0.2])
    assert compare(base, other, n_boot=500).test == "paired-bootstrap"
    assert compare(other, base, n_boot=500).test == "paired-bootstrap"


def test_relative_gain_is_undefined_for_a_zero_baseline_and_warns_nothing():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # resamples with a zero baseline mean: no warning
        zero = compare(np.zeros(5), np.array([0.2, 0.0, 0.4, 0.0, 0.0]), n_boot=500)
        assert zero.rel_gain is None and zero.rel_ci_low is None and zero.rel_ci_high is None
        # 0/0 and x/0 in the resamples (base mean 0 in a third of them) are dropped.
        r = compare(np.array([0.6, 0.0, 0.0]), np.array([0.6, 0.2, 0.0]), n_boot=2000)
    assert abs(r.rel_gain - 1 / 3) < 1e-12
    assert r.rel_ci_low is not None and np.isfinite([r.rel_ci_low, r.rel_ci_high]).all()


@pytest.mark.parametrize("base,other", [
    (np.zeros(3), np.zeros(4)),         # different lengths
    (np.zeros((2, 2)), np.zeros((2, 2))),  # not 1-D
    (np.zeros(0), np.zeros(0)),         # empty
    (np.zeros((1, 3)), np.zeros(3)),    # same size, different shape
])
def test_compare_refuses_what_is_not_two_paired_vectors(base, other):
    with pytest.raises(ValueError,
                       match=r"^compare needs two non-empty 1-D arrays of paired outcomes$"):
        compare(base, other)


def test_unmatched_items_are_named_three_at_most():
    a = {k: 1.0 for k in "abcdq"}
    b = {k: 1.0 for k in "qvwxyz"}
    with pytest.raises(ValueError) as err:
        paired_arrays(a, b)
    assert ("only in the first: ['a', 'b', 'c'], only in the second: ['v', 'w', 'x']"
            in str(err.value))
    assert "compare runs of the same task version and limit" in str(err.value)
    x, y = paired_arrays({"1": 1, "2": 0}, {"1": 0, "2": 1})
    assert x.dtype == y.dtype == np.float64


def test_resamples_dropped_from_the_relative_interval_are_counted():
    # Only item 0 has a nonzero baseline: a resample of 3 items misses it with probability
    # (2/3)^3 = 8/27, and those resamples have no relative gain.
    n_boot = 20_000
    r = compare(np.array([0.6, 0.0, 0.0]), np.array([0.6, 0.2, 0.0]), n_boot=n_boot)
    sd = (8 / 27 * 19 / 27 / n_boot) ** 0.5
    assert abs(r.rel_dropped / n_boot - 8 / 27) < 4 * sd and r.n_boot == n_boot
    assert compare(np.ones(4), np.ones(4), n_boot=100).rel_dropped == 0


# ---- the exact binomial pieces against scipy, edges included ------------------------------

@pytest.mark.parametrize("m", [0, 1, 2, 7, 40, 1500])
@pytest.mark.parametrize("p", [0.0, 1e-12, 0.03, 0.5, 0.91, 1.0])
def test_binomial_pmf_and_tail_equal_scipy(m, p):
    from scipy.stats import binom

    from ftbench.report.stats import _binom_logpmf, _tail_le

    import warnings

    ks = np.arange(m + 1)
    with warnings.catch_warnings():
        # log 0 at p = 0 or 1 is expected, not something to print into a user's report run.
        warnings.simplefilter("error")
        ours = _binom_logpmf(m, p)
    ref = binom.logpmf(ks, m, p)
    assert np.array_equal(np.isneginf(ours), np.isneginf(ref))
    finite = np.isfinite(ref)
    assert np.allclose(ours[finite], ref[finite], rtol=1e-10, atol=1e-10)
    for k in sorted({-3, -1, 0, 1, m // 3, m // 2, m - 1, m, m + 2}):
        assert abs(_tail_le(k, m, p) - binom.cdf(k, m, p)) < 1e-10, (k, m, p)


def test_binomial_tail_is_a_probability_exactly_at_its_ends():
    """Summed pmfs round to 1 +- a few ulps (e.g. m = 2: 0.9999999999999999; m = 10,
    p = 0.01, k = 9: 1.0000000000000004). P(X <= m) is 1 and a tail never exceeds 1,
    exactly: p-values of 1 and bounds of [0, 1] are printed as such."""
    from ftbench.report.stats import _tail_le

    for m in range(1, 60):
        for p in (0.5, 0.3, 0.01, 1e-3):
            assert _tail_le(m, m, p) == 1.0, (m, p)
            assert all(_tail_le(k, m, p) <= 1.0 for k in range(m)), (m, p)


@pytest.mark.parametrize("level", [0.8, 0.95, 0.99])
@pytest.mark.parametrize("c,m", [(0, 1), (1, 1), (0, 9), (9, 9), (1, 9), (8, 9), (4, 9),
                                 (0, 250), (250, 250), (117, 250), (3, 1200)])
def test_clopper_pearson_equals_the_beta_quantiles(c, m, level):
    # The exact interval by its closed form: Beta(a/2; c, m - c + 1) and
    # Beta(1 - a/2; c + 1, m - c), with the bound at 0 (c = 0) or 1 (c = m).
    from scipy.stats import beta

    from ftbench.report.stats import clopper_pearson

    a = 1 - level
    lo = 0.0 if c == 0 else beta.ppf(a / 2, c, m - c + 1)
    hi = 1.0 if c == m else beta.ppf(1 - a / 2, c + 1, m - c)
    got = clopper_pearson(c, m, level)
    assert abs(got[0] - lo) < 1e-9 and abs(got[1] - hi) < 1e-9, (got, (lo, hi))
    if c == 0:
        assert got[0] == 0.0  # by definition, not a bisection's 1e-16
    if c == m:
        assert got[1] == 1.0


def test_one_discordant_item_gives_the_exact_interval_of_one_trial():
    # Clopper-Pearson for 0 of 1 at 95 %: [0, 1 - 0.025] = [0, 0.975]; as a difference
    # of means over n = 10 items: [(2 * 0 - 1) / 10, (2 * 0.975 - 1) / 10].
    base = np.array([1.0] + [0.0] * 9)
    r = compare(base, np.zeros(10), n_boot=100)
    assert abs(r.ci_low + 0.1) < 1e-12 and abs(r.ci_high - 0.095) < 1e-9
    assert r.p_value == 1.0


def test_binary_arms_with_no_discordant_item_give_a_zero_interval_and_p_one():
    base = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    r = compare(base, base.copy(), n_boot=100)
    assert r.test == "mcnemar-exact"
    assert (r.ci_low, r.ci_high, r.p_value, r.diff) == (0.0, 0.0, 1.0, 0.0)
    assert not r.significant


def test_a_baseline_of_zero_has_no_relative_gain_and_drops_no_resample():
    r = compare(np.zeros(8), np.array([0.2, 0.4, 0.0, 0.6, 0.2, 0.0, 0.8, 0.2]), n_boot=200)
    assert r.test == "paired-bootstrap"
    assert (r.rel_gain, r.rel_ci_low, r.rel_ci_high, r.rel_dropped) == (None, None, None, 0)
