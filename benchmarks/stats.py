"""Statistics of the quality tables: mean ± std over seeds, and the paired
difference of two methods with a Student-t 95 % interval.

Why paired: every seed of a (model, budget) table starts from the same
reference checkpoint and sees the same data order in every method, so the
seed-to-seed noise is shared; the difference per seed cancels it, and its
t interval (n - 1 degrees of freedom) is the honest statement "A beats B"
at three seeds. With one seed there is no interval (None), never a fake
one.

The t quantile is computed here (no scipy at report time): Student's t CDF
for an integer number of degrees of freedom has a closed form (Abramowitz
& Stegun 26.7.3-26.7.4), inverted by bisection. ``tests/test_bench_stats.py``
checks it against table values and, where installed, scipy.
"""
import math
import statistics
from typing import Dict, Optional, Sequence


def mean_std(xs: Sequence[float]):
    """``(mean, sample std)``; std is None for one value, both None for
    none."""
    xs = [float(x) for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (
        statistics.stdev(xs) if len(xs) > 1 else None)


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with integer ``df`` >= 1."""
    if not isinstance(df, int) or df < 1:
        raise ValueError(f'df must be an int >= 1, got {df!r}')
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta)**2
    if df == 1:
        a = 2 * theta / math.pi
    elif df % 2 == 0:
        # A(t|df) = sin θ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + ...), df/2 terms
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        a = s * total
    else:
        # A(t|df) = 2/π (θ + sin θ cos θ (1 + 2/3 cos²θ + ...)), odd df
        term, total = 1.0, 1.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        a = 2 / math.pi * (theta + s * math.cos(theta) * total)
    # a = P(|T| <= |t|) with the sign of t
    return 0.5 + a / 2


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with integer ``df``."""
    if not 0 < p < 1:
        raise ValueError(f'p must be in (0, 1), got {p!r}')
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):  # far below float resolution long before
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def paired_difference(a: Dict[int, float],
                      b: Dict[int, float],
                      level: float = 0.95) -> Optional[dict]:
    """``a - b`` on the seeds both have, with a two-sided t interval.

    Args:
        a, b (dict): seed -> value (e.g. mAP points).
        level (float): interval coverage. Defaults to 0.95.

    Returns:
        dict | None: ``mean``, ``std`` (of the per-seed differences),
        ``n``, ``seeds``, ``diffs``, ``low``/``high`` (None when n < 2);
        None when no seed is shared.
    """
    if not 0 < level < 1:
        raise ValueError(f'level must be in (0, 1), got {level!r}')
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean, std = mean_std(diffs)
    n = len(diffs)
    low = high = None
    if n > 1:
        half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    return dict(
        mean=mean,
        std=std,
        n=n,
        seeds=seeds,
        diffs=diffs,
        low=low,
        high=high,
        level=level)
