"""Global budget solver: drop the least important channels until a FLOPs or
params target is met (docs/methods.md §0.5, our choice).

Scores are made comparable across groups by dividing each group's scores by
their mean over its prunable channels. Channels are then removed in one
global ascending order, subject to per-group limits:

* keep at least ``max(min_keep, ceil((1 - max_prune_ratio) * width))``;
* kept counts rounded up to a multiple of ``round_to`` (for speed);
* pinned channels are never removed, and no group is ever emptied.

Cost is not additive once both sides of a conv shrink, so instead of summing
marginal costs we bisect on *how many* channels of the global order to drop
and evaluate the exact cost model at each step (~log2(#channels) passes).
The machinery is shared with the other allocators
(:mod:`mmprune.allocators.base`).
"""

from ..registry import ALLOCATORS
from .base import BaseAllocator, fill_budget, global_entries


@ALLOCATORS.register_module()
class BudgetAllocator(BaseAllocator):
    """The global order cut as a plain prefix: the arguments are
    :class:`~mmprune.allocators.base.BaseAllocator`'s, with ``fill``
    defaulting to False (the original behaviour; see
    :func:`mmprune.allocators.base.fill_budget` for what True adds).
    """

    normalize = 'mean'
    default_fill = False

    def _allocate(self, model, graph, scores, cost, dense_widths=None):
        """See :meth:`BaseAllocator.allocate`."""
        gs = self.prepare(graph, scores)
        groups = [g for g, _ in gs]
        entries = global_entries(gs, self.normalize)
        order = self.global_order(model, groups, entries, dense_widths)
        measure = self.measure_fn(model, graph, cost)
        base = measure({})
        target = self.ratio * base
        drop = order.solve(
            measure, target,
            f'{self.budget} ratio {self.ratio} under min_keep='
            f'{self.min_keep}, max_prune_ratio={self.max_prune_ratio}', base)
        if self.fill:
            rank = {(gi, c): i for i, (_, gi, c) in enumerate(entries)}
            prio = [(lambda d, gi=gi: rank[(gi, d[-1])] if d else -1)
                    for gi in range(len(groups))]
            drop = fill_budget(groups, drop, order.forced, prio,
                               order.round_to, measure, target, order.keep)
        return order.keep(drop)
