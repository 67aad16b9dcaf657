"""CPU latency of forwards, measured so that two models can be compared.

The models are timed in *interleaved* rounds (A, B, A, B, ...) after
warm-up rounds, and each one's median is reported: on a shared machine a
burst of load then slows both alike instead of whichever ran during it.
The caller sets the thread count (``torch.set_num_threads``); batch and
input are whatever the callables run.
"""
import time
from typing import Any, Callable, Dict

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
