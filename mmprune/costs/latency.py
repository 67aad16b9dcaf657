"""CPU latency of forwards, measured so that two models can be compared.

The models are timed in *interleaved* rounds (A, B, A, B, ...) after
warm-up rounds, and each one's median is reported: on a shared machine a
burst of load then slows both alike instead of whichever ran during it.
The caller sets the thread count (``torch.set_num_threads``); batch and
input are whatever the callables run.
"""
import time
from typing import Any, Callable, Dict, List, Tuple

import torch


def measure_latency(fns: Dict[str, Callable[[], Any]],
                    runs: int = 20,
                    warmup: int = 3) -> Dict[str, dict]:
    """Time each callable ``runs`` times, interleaved, under ``no_grad``.

    Args:
        fns (dict): name -> a callable running one forward.
        runs (int): timed rounds. Defaults to 20.
        warmup (int): untimed rounds first. Defaults to 3.

    Returns:
        dict: name -> ``{'median_ms', 'min_ms', 'runs'}``.
    """
    if runs < 1:
        raise ValueError(f'runs must be >= 1, got {runs}')
    if warmup < 0:
        raise ValueError(f'warmup must be >= 0, got {warmup}')
    times = {k: [] for k in fns}
    with torch.no_grad():
        for r in range(warmup + runs):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                if r >= warmup:
                    times[name].append(time.perf_counter() - t)
    out = {}
    for name, ts in times.items():
        ts = sorted(ts)
        mid = len(ts) // 2
        median = ts[mid] if len(ts) % 2 else (ts[mid - 1] + ts[mid]) / 2
        out[name] = dict(
            median_ms=median * 1e3, min_ms=ts[0] * 1e3, runs=len(ts))
    return out


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
