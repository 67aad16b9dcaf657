"""Uniform allocation: the same prune ratio in every group.

The classic layer-wise-uniform protocol (e.g. FPGM, He et al. CVPR 2019,
https://arxiv.org/abs/1811.00250; the probable BPC protocol, docs/methods.md
§2B(b)): every group drops the same fraction ``p`` of its width, keeping
its highest-scoring channels, and ``p`` is solved so that the FLOPs or
params target is met.

Our choices: group ``g`` keeps ``max(floor_g, ceil((1 - p) * W_g))``
channels rounded up to ``round_to``; ``p`` is found by bisection over the
finite set of ratios ``j / W_g`` where some group's count changes (exact
cost at each step). With ``fill`` (default) the leftover budget is then
filled one unit at a time, most-pruned groups first, so groups differ by at
most about one unit from a common ratio and the target is met tightly.
Scores only choose *which* channels go; the counts do not depend on them.
"""
import math
from typing import List

import numpy as np

from ..registry import ALLOCATORS
from .base import BaseAllocator, SliceGuard, fill_budget


@ALLOCATORS.register_module()
class UniformAllocator(BaseAllocator):
    """Same prune ratio per group, solved to meet the target.

    Args: see :class:`mmprune.allocators.base.BaseAllocator`.

    Examples:
        >>> alloc = UniformAllocator(ratio=0.5, round_to=8)
        >>> keep = alloc.allocate(model, graph, scores, cost)
        >>> alloc.prune_ratio_     # the common ratio found
    """

    prune_ratio_ = None

    def _allocate(self, model, graph, scores, cost, dense_widths=None):
        """See :meth:`BaseAllocator.allocate`."""
        gs = self.prepare(graph, scores)
        groups = [g for g, _ in gs]
        orders = []
        for g, s in gs:
            free = np.nonzero(~np.asarray(g.pinned))[0]
            orders.append(free[np.argsort(s[free], kind='stable')].tolist())
        floors = self.floors(model, groups, dense_widths)
        rounds = [self.round_unit(g) for g in groups]
        guards = [SliceGuard(g) for g in groups]

        def drops(p: float) -> List[List[int]]:
            out = []
            for g, order, fl, gd, r in zip(groups, orders, floors, guards,
                                           rounds):
                kept = max(fl, math.ceil((1 - p) * g.width - 1e-9))
                kept = min(g.width, -(-kept // r) * r)
                n = min(g.width - kept, len(order))
                if gd.slices:  # lowest scores first, one per slice stays
                    left = gd.start()
                    order = [c for c in order if gd.allow(left, c)]
                out.append(order[:n])
            return out

        def keep_of(drop):
            keep = {}
            for g, d in zip(groups, drop):
                mask = np.ones(g.width, dtype=bool)
                mask[d] = False
                keep[g.name] = np.nonzero(mask)[0]
            return keep

        measure = self.measure_fn(model, graph, cost)
        base = measure({})
        target = self.ratio * base
        ratios = sorted(
            {j / g.width
             for g in groups
             for j in range(g.width + 1)})
        if measure(keep_of(drops(ratios[-1]))) > target:
            most = measure(keep_of(drops(ratios[-1])))
            raise ValueError(
                f'{self.budget} ratio {self.ratio} cannot be met under '
                f'min_keep={self.min_keep}, max_prune_ratio='
                f'{self.max_prune_ratio}: the most it can prune reaches '
                f'{most / max(base, 1):.3f}')
        lo, hi = 0, len(ratios) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if measure(keep_of(drops(ratios[mid]))) <= target:
                hi = mid
            else:
                lo = mid + 1
        self.prune_ratio_ = ratios[lo]
        drop = drops(ratios[lo])
        if self.fill:
            prio = [(lambda d, w=g.width: len(d) / w) for g in groups]
            drop = fill_budget(groups, drop, [[] for _ in groups], prio,
                               rounds, measure, target, keep_of)
        return keep_of(drop)
