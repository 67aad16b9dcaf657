"""benchmarks/stats.py: the t quantile against printed tables (and scipy
where installed), the paired difference against a hand computation."""
import math
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.stats import mean_std, paired_difference, t_cdf, t_quantile

# two-sided 95 % (p = 0.975) and one-sided 95 % critical values, from the
# standard Student-t table (4 decimals)
T975 = {
    1: 12.7062,
    2: 4.3027,
    3: 3.1824,
    4: 2.7764,
    5: 2.5706,
    6: 2.4469,
    9: 2.2622,
    10: 2.2281,
    20: 2.0860,
    30: 2.0423
}
T95 = {1: 6.3138, 2: 2.9200, 4: 2.1318, 10: 1.8125}


@pytest.mark.parametrize('df', sorted(T975))
def test_t_quantile_matches_the_table(df):
    assert t_quantile(0.975, df) == pytest.approx(T975[df], abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-T975[df], abs=1e-4)
    if df in T95:
        assert t_quantile(0.95, df) == pytest.approx(T95[df], abs=1e-4)


def test_t_cdf_shape():
    for df in (1, 2, 3, 7, 8):
        assert t_cdf(0.0, df) == pytest.approx(0.5)
        assert t_cdf(1.3, df) + t_cdf(-1.3, df) == pytest.approx(1.0)
        assert t_cdf(-50, df) < t_cdf(-1, df) < t_cdf(1, df) < \
            t_cdf(50, df)
    # df = 1 is Cauchy: F(1) = 3/4; df = 2: F(t) = 1/2 + t / (2 sqrt(2+t²))
    assert t_cdf(1.0, 1) == pytest.approx(0.75)
    assert t_cdf(1.5,
                 2) == pytest.approx(0.5 + 1.5 / (2 * math.sqrt(2 + 1.5**2)))
    with pytest.raises(ValueError, match='df must be'):
        t_cdf(1.0, 0)
    with pytest.raises(ValueError, match='p must be'):
        t_quantile(1.0, 3)


def test_t_against_scipy():
    st = pytest.importorskip('scipy.stats')
    for df in range(1, 41):
        for p in (0.6, 0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(
                st.t.ppf(p, df), rel=1e-7)
        for t in (-3.0, -0.4, 0.7, 2.5):
            assert t_cdf(t, df) == pytest.approx(st.t.cdf(t, df), abs=1e-12)


def test_paired_difference_by_hand():
    # diffs 1, 2, 3: mean 2, sample std 1, half-width t(0.975, 2) / sqrt(3)
    d = paired_difference({
        0: 11.0,
        1: 12.0,
        2: 13.0,
        7: 99.0
    }, {
        0: 10.0,
        1: 10.0,
        2: 10.0
    })
    assert d['seeds'] == [0, 1, 2] and d['n'] == 3  # seed 7 is unpaired
    assert d['diffs'] == [1.0, 2.0, 3.0]
    assert d['mean'] == pytest.approx(2.0) and d['std'] == pytest.approx(1.0)
    half = 4.302652729749464 / math.sqrt(3)
    assert d['low'] == pytest.approx(2.0 - half, abs=1e-9)
    assert d['high'] == pytest.approx(2.0 + half, abs=1e-9)
    # a constant shift has zero spread: a zero-width interval
    d = paired_difference({0: 5.0, 1: 6.0}, {0: 4.0, 1: 5.0})
    assert (d['low'], d['high']) == pytest.approx((1.0, 1.0))
    # one seed: a difference but no interval; none shared: nothing
    d = paired_difference({0: 5.0}, {0: 4.5})
    assert d['mean'] == pytest.approx(0.5) and d['low'] is None
    assert paired_difference({0: 1.0}, {1: 1.0}) is None
    with pytest.raises(ValueError, match='level'):
        paired_difference({0: 1.0}, {0: 1.0}, level=95)


def test_mean_std():
    assert mean_std([]) == (None, None)
    assert mean_std([2.0]) == (2.0, None)
    m, s = mean_std([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3)
    assert s == pytest.approx(
        math.sqrt(((1 - 7 / 3)**2 + (2 - 7 / 3)**2 + (4 - 7 / 3)**2) / 2))
