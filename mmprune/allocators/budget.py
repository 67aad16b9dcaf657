"""Global budget solver: drop the least important channels until a FLOPs or
params target is met (methods spec §0.5, our choice).

Scores are made comparable across groups by dividing each group's scores by
their mean over its prunable channels. Channels are then removed in one
global ascending order, subject to per-group limits:

* keep at least ``max(min_keep, ceil((1 - max_prune_ratio) * width))``;
* kept counts rounded up to a multiple of ``round_to`` (for speed);
* pinned channels are never removed, and no group is ever emptied.

Cost is not additive once both sides of a conv shrink, so instead of summing
marginal costs we bisect on *how many* channels of the global order to drop
and evaluate the exact cost model at each step (~log2(#channels) passes).
"""
import math
from typing import Dict

import numpy as np
import torch

from ..registry import ALLOCATORS


@ALLOCATORS.register_module()
class BudgetAllocator:
    """Args:
        ratio (float): target cost as a fraction of the current cost, in
            (0, 1]. 0.5 means "keep half the FLOPs".
        budget (str): ``'flops'`` or ``'params'``. Defaults to 'flops'.
        min_keep (int): fewest channels kept per group. Defaults to 8.
        max_prune_ratio (float): largest fraction removed from one group.
            Defaults to 0.8.
        round_to (int): kept counts are multiples of this. Defaults to 1.
    """

    def __init__(self, ratio: float = 0.5, budget: str = 'flops',
                 min_keep: int = 8, max_prune_ratio: float = 0.8,
                 round_to: int = 1):
        if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
            raise ValueError(f'ratio must be in (0, 1], got {ratio!r}')
        if budget not in ('flops', 'params'):
            raise ValueError(f"budget must be 'flops' or 'params', got "
                             f'{budget!r}')
        if not (isinstance(min_keep, int) and min_keep >= 1):
            raise ValueError(f'min_keep must be an int >= 1, got {min_keep!r}')
        if not 0 <= max_prune_ratio < 1:
            raise ValueError(f'max_prune_ratio must be in [0, 1), got '
                             f'{max_prune_ratio!r}')
        if not (isinstance(round_to, int) and round_to >= 1):
            raise ValueError(f'round_to must be an int >= 1, got {round_to!r}')
        self.ratio, self.budget = float(ratio), budget
        self.min_keep, self.max_prune_ratio = min_keep, max_prune_ratio
        self.round_to = round_to

    def _floor(self, width: int) -> int:
        keep = max(self.min_keep,
                   math.ceil((1 - self.max_prune_ratio) * width))
        return min(width, keep)

    def allocate(self, model, graph, scores: Dict[str, torch.Tensor], cost
                 ) -> Dict[str, np.ndarray]:
        """Return ``{group name: kept indices}`` meeting the target."""
        groups = [g for g in graph.prunable_groups() if g.name in scores]
        entries = []  # (normalised score, group slot, channel)
        for gi, g in enumerate(groups):
            s = scores[g.name].double().numpy()
            if s.shape != (g.width, ):
                raise ValueError(f'criterion gave {s.shape} scores for group '
                                 f'{g.name!r} of width {g.width}')
            if not np.all(np.isfinite(s)):
                raise ValueError(f'non-finite scores in group {g.name!r}')
            free = ~g.pinned
            mean = s[free].mean() if free.any() else 1.0
            s = s / mean if mean > 0 else s
            for c in np.nonzero(free)[0]:
                entries.append((s[c], gi, int(c)))
        entries.sort(key=lambda e: (e[0], e[1], e[2]))
        caps = [g.width - self._floor(g.width) for g in groups]

        def plan(n: int) -> Dict[str, np.ndarray]:
            drop = [[] for _ in groups]
            for _, gi, c in entries[:n]:
                if len(drop[gi]) < caps[gi]:
                    drop[gi].append(c)
            keep = {}
            for gi, g in enumerate(groups):
                d = drop[gi]
                kept = g.width - len(d)
                rounded = min(g.width, -(-kept // self.round_to) *
                              self.round_to)
                d = d[:len(d) - (rounded - kept)]  # un-drop the best ones
                mask = np.ones(g.width, dtype=bool)
                mask[d] = False
                keep[g.name] = np.nonzero(mask)[0]
            return keep

        measure = (lambda k: cost.flops(graph, k)) if self.budget == 'flops' \
            else (lambda k: cost.params_after(model, graph, k))
        base = measure({})
        target = self.ratio * base
        lo, hi = 0, len(entries)
        if measure(plan(hi)) > target:
            best = plan(hi)
            raise ValueError(
                f'{self.budget} ratio {self.ratio} cannot be met under '
                f'min_keep={self.min_keep}, max_prune_ratio='
                f'{self.max_prune_ratio}: the most it can prune reaches '
                f'{measure(best) / base:.3f}')
        while lo < hi:  # smallest n with cost <= target
            mid = (lo + hi) // 2
            if measure(plan(mid)) <= target:
                hi = mid
            else:
                lo = mid + 1
        return plan(lo)
