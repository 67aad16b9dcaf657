"""CPU latency of forwards, measured so that two models can be compared.

The models are timed in *interleaved* rounds (A, B, A, B, ...) after
warm-up rounds, and each one's median is reported: on a shared machine a
burst of load then slows both alike instead of whichever ran during it.
The caller sets the thread count (``torch.set_num_threads``); batch and
input are whatever the callables run.
"""
import math
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch


def measure_latency(fns: Dict[str, Callable[[], Any]],
                    runs: int = 20,
                    warmup: int = 3,
                    clock: Callable[[], float] = None) -> Dict[str, dict]:
    """Time each callable ``runs`` times, interleaved, under ``no_grad``.

    Args:
        fns (dict): name -> a callable running one forward.
        runs (int): timed rounds. Defaults to 20.
        warmup (int): untimed rounds first. Defaults to 3.
        clock (Callable | None): seconds now (a backend's clock, so tests
            can time with a fake one). Defaults to ``time.perf_counter``.

    Returns:
        dict: name -> ``{'median_ms', 'min_ms', 'runs', 'times_ms'}``,
        ``times_ms`` in round order (round ``i`` of every name ran back to
        back, so :func:`paired_ratio` can pair them).
    """
    if runs < 1:
        raise ValueError(f'runs must be >= 1, got {runs}')
    if warmup < 0:
        raise ValueError(f'warmup must be >= 0, got {warmup}')
    clock = clock or time.perf_counter
    times = {k: [] for k in fns}
    with torch.no_grad():
        for r in range(warmup + runs):
            for name, fn in fns.items():
                t = clock()
                fn()
                if r >= warmup:
                    times[name].append(clock() - t)
    out = {}
    for name, ts in times.items():
        out[name] = dict(
            median_ms=_median(ts) * 1e3,
            min_ms=min(ts) * 1e3,
            runs=len(ts),
            times_ms=[t * 1e3 for t in ts])
    return out


def _median(xs: Sequence[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def paired_ratio(base_ms: Sequence[float],
                 other_ms: Sequence[float],
                 confidence: float = 0.95) -> dict:
    """``other / base`` from interleaved rounds, with an interval.

    Why per round: on a shared machine the load drifts over a measurement;
    the two models of one round ran back to back under about the same load,
    so the per-round ratio cancels the drift that a ratio of two medians
    taken over the whole measurement keeps. The ratio is the median of the
    ``n`` per-round ratios, and ``[low, high]`` a distribution-free interval
    for it: the order statistics ``(k, n + 1 - k)`` of the sorted ratios
    with the largest ``k`` whose binomial(n, 1/2) coverage is still at least
    ``confidence`` (None when ``n`` is too small for any, ``n < 6`` at
    95 %).

    Args:
        base_ms (Sequence[float]): per-round times of the reference (dense).
        other_ms (Sequence[float]): per-round times of the other model, the
            same rounds in the same order.
        confidence (float): coverage of the interval. Defaults to 0.95.

    Returns:
        dict: ``ratio``, ``low``, ``high`` (None without an interval),
        ``n`` and ``confidence``.
    """
    if len(base_ms) != len(other_ms) or not base_ms:
        raise ValueError(f'paired_ratio needs the same non-zero number of '
                         f'rounds, got {len(base_ms)} and {len(other_ms)}')
    if not 0 < confidence < 1:
        raise ValueError(f'confidence must be in (0, 1), got {confidence}')
    r = sorted(o / b for b, o in zip(base_ms, other_ms))
    n = len(r)
    low = high = None
    # coverage of [r_(k), r_(n+1-k)] is 1 - 2 P(Binomial(n, 1/2) < k)
    tail, best = 0.0, None
    for k in range(1, n // 2 + 1):
        tail += math.comb(n, k - 1) / 2**n  # P(X <= k - 1)
        if 1 - 2 * tail >= confidence:
            best = k
        else:
            break
    if best is not None:
        low, high = r[best - 1], r[n - best]
    return dict(
        ratio=_median(r), low=low, high=high, n=n, confidence=confidence)


def within(stats: dict, target: float, tol: float) -> Any:
    """Whether a :func:`paired_ratio` meets ``target`` within ``tol``
    (relative): True when its whole interval lies in the band, False when
    the whole interval lies outside it, None when the interval straddles an
    edge (the measurement cannot tell on this machine) or there is none."""
    lo_band, hi_band = target * (1 - tol), target * (1 + tol)
    low, high = stats.get('low'), stats.get('high')
    if low is None or high is None:
        return None
    if lo_band <= low and high <= hi_band:
        return True
    if high < lo_band or low > hi_band:
        return False
    return None


def calibrate_latency(target: float,
                      allocate: Callable[[float], Any],
                      measure: Callable[[Any], float],
                      rounds: int = 3,
                      tol: float = 0.05) -> Tuple[Any, List[dict]]:
    """Close the loop between a latency table and the device.

    A table predicts each layer in isolation; in the whole forward the
    compact model's layers can run relatively slower (caches, fixed
    per-op overheads that do not shrink with the widths), so a plan
    predicted at ``target`` can measure above it. Each round allocates at
    a predicted ratio ``r`` (``allocate(r)`` -> plan), measures the
    compact model's real ratio ``m`` (``measure(plan)``, dense and compact
    timed together), and corrects ``r <- r * target / m``, until ``m`` is
    within ``tol`` (relative) of ``target`` or ``rounds`` are spent.

    Returns:
        tuple: the plan whose measured ratio is closest to ``target``
        among those not above ``target * (1 + tol)`` (else the closest),
        and the rounds ``[{'predicted_target', 'measured_ratio'}]``.
    """
    if not 0 < target <= 1:
        raise ValueError(f'target must be in (0, 1], got {target!r}')
    if rounds < 1:
        raise ValueError(f'rounds must be >= 1, got {rounds}')
    r, history, tried = target, [], []
    for _ in range(rounds):
        plan = allocate(r)
        m = float(measure(plan))
        history.append(dict(predicted_target=r, measured_ratio=m))
        tried.append((plan, m))
        if abs(m - target) <= tol * target:
            break
        r = min(1.0, r * target / m)
    fits = [t for t in tried if t[1] <= target * (1 + tol)]
    plan, _ = min(fits or tried, key=lambda t: abs(t[1] - target))
    return plan, history
