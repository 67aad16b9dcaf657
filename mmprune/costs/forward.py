"""One traced forward pass with temporary forward hooks, shared by the cost
models (:mod:`mmprune.costs.flops`, :mod:`mmprune.costs.latency_grid`)."""
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn


def forward_with_hooks(modules: Iterable[nn.Module], hook: Callable,
                       forward_fn: Callable,
                       inputs: Sequence[torch.Tensor]) -> None:
    """Run ``forward_fn(*inputs)`` under ``no_grad`` with ``hook``
    registered as a forward hook on each of ``modules`` (in order); the
    hooks are removed afterwards, also when the forward raises."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            forward_fn(*inputs)
    finally:
        for h in handles:
            h.remove()
