"""core.stats: the one CI record and its estimators, against simulation, known values and scipy."""

import math

import numpy as np
import pytest

from innerprobe.core import stats as S
from innerprobe.errors import DataError


def test_t_interval_covers_at_nominal_rate():
    rng = np.random.default_rng(0)  # fixed seed: 2000 samples of 5 seeds each, true mean 1.0
    hits = sum(S.t_interval(rng.normal(1.0, 2.0, 5)).contains(1.0) for _ in range(2000))
    assert 0.935 <= hits / 2000 <= 0.965  # binomial sd ~0.005 around 0.95


def test_t_interval_matches_formula_and_scipy():
    v = [0.2, 0.5, 0.9, 0.4]
    ci = S.t_interval(v)
    from scipy import stats

    lo, hi = stats.t.interval(0.95, 3, loc=np.mean(v), scale=stats.sem(v))
    assert ci.estimate == pytest.approx(np.mean(v)) and ci.lo == pytest.approx(lo) and ci.hi == pytest.approx(hi)
    assert (ci.n, ci.method, ci.level) == (4, "t", 0.95)


def test_one_value_has_no_interval_never_nan():
    for ci in (
        S.t_interval([0.7]),
        S.bootstrap([0.7]),
        S.paired_difference([1.0], [0.5]),
        S.geometric_mean_ratio([2.0]),
        S.nested_bootstrap([[0.7]]),
    ):
        assert ci.lo is None and ci.hi is None and ci.n == 1 and not ci.defined
        assert "no CI" in str(ci)
    assert S.t_interval([]).estimate is None and S.proportion(0, 0).estimate is None


def test_non_finite_refused_by_name_or_omitted():
    with pytest.raises(DataError, match="NaN"):
        S.t_interval([1.0, float("nan"), 2.0])
    ci = S.t_interval([1.0, None, float("nan"), 3.0], nan_policy="omit")
    assert ci.n == 2 and ci.estimate == 2.0
    with pytest.raises(DataError):
        S.CI(float("nan"), None, None)


def test_clopper_pearson_known_values():
    # Clopper & Pearson (1934) / R binom.test(7, 20)$conf.int = 0.1539092 0.5921885
    ci = S.proportion(7, 20)
    assert (ci.lo, ci.hi) == pytest.approx((0.1539092, 0.5921885), abs=1e-6)
    assert S.proportion(0, 10).lo == 0.0 and S.proportion(0, 10).hi == pytest.approx(1 - 0.025**0.1)
    w = S.proportion(7, 20, method="wilson")  # Wilson score closed form
    z, p, n = 1.959963985, 0.35, 20
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (w.lo, w.hi) == pytest.approx((c - h, c + h), abs=1e-6)
    with pytest.raises(DataError):
        S.proportion(3, 2)


def test_bootstrap_percentile_and_bca_bracket_the_mean():
    x = np.random.default_rng(1).exponential(1.0, 60)
    p, b = S.bootstrap(x, seed=0), S.bootstrap(x, method="bca", seed=0)
    for ci in (p, b):
        assert ci.lo < x.mean() < ci.hi and ci.n == 60
    assert p.method == "bootstrap-percentile" and b.method == "bootstrap-bca"
    assert S.bootstrap(x, seed=3) == S.bootstrap(x, seed=3)  # deterministic per seed


def test_bootstrap_paired_statistic_and_constant_data():
    rng = np.random.default_rng(2)
    a = rng.normal(size=40)
    b = a + rng.normal(scale=0.3, size=40)
    ci = S.bootstrap(a, lambda u, v: np.corrcoef(u, v)[0, 1], paired=(b,), n_resamples=300)
    assert 0.8 < ci.lo < ci.estimate < ci.hi <= 1.0
    c = S.bootstrap(np.ones(10), method="bca")
    assert c.lo == c.hi == 1.0 and "percentile" in c.method


def test_paired_difference_and_geometric_mean_ratio():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 1.5, 2.0, 3.5])
    d = S.paired_difference(a, b)
    assert d.estimate == pytest.approx(0.625) and d.method == "paired-t"
    t = S.t_interval(a - b)
    assert (d.lo, d.hi, d.n) == (t.lo, t.hi, t.n)
    g = S.geometric_mean_ratio([1.0, 10.0, 100.0])
    assert g.estimate == pytest.approx(10.0) and g.lo < 10.0 < g.hi and g.method == "t-log"
    assert S.geometric_mean_ratio([2.0, 8.0], [1.0, 2.0]).estimate == pytest.approx(math.sqrt(8))
    with pytest.raises(DataError, match="positive"):
        S.geometric_mean_ratio([1.0, 0.0])


def test_nested_bootstrap_two_levels():
    d = np.random.default_rng(4).normal(0.5, 1.0, (3, 50))
    d[0, 0] = np.nan
    ci = S.nested_bootstrap(d, n_resamples=500)
    assert ci.n == 149 and ci.lo < ci.estimate < ci.hi
    assert ci.estimate == pytest.approx(np.nanmean(d))


def test_bootstrap_independent_samples():
    rng = np.random.default_rng(5)
    a, b = rng.lognormal(1.0, 0.5, 80), rng.lognormal(0.0, 0.5, 50)
    ratio = lambda u, v: np.median(u) / np.median(v)  # noqa: E731
    ci = S.bootstrap(a, ratio, independent=(b,), n_resamples=500)
    assert ci.lo < ci.estimate < ci.hi and ci.estimate == pytest.approx(np.median(a) / np.median(b))
    assert ci.lo < np.e < ci.hi  # true ratio of medians e^1 / e^0
