"""Global threshold: one cut over normalised scores of every group.

Network Slimming (Liu et al., "Learning Efficient Convolutional Networks
through Network Slimming", ICCV 2017, https://arxiv.org/abs/1708.06519)
prunes every channel whose |gamma| is below one global threshold; FCP
(docs/methods.md §3(b)) and GCP-FRS (§4(b), global selection over per-layer
L2-normalised relevance) do the same.

Our choices: the threshold ``tau`` is found by bisection so that the FLOPs
or params target is met (§3(b)) instead of a fixed percentile of
channels; group scores are first normalised (``normalize``: ``'none'`` for
already comparable scores such as FCP's |gamma| or FRS's L2-normalised
relevance, ``'max'`` by default, or ``'mean'``/``'median'``/``'l2'``);
channels under ``tau`` are pruned unless their group hits its floor
(``min_keep``, ``max_prune_ratio``) - then that group keeps its best ones;
``fill`` (default) re-adds the best dropped channels into the leftover
budget. After :meth:`allocate`, ``threshold_`` holds ``tau``, the highest
normalised score the cut dropped (before filling).
"""

import numpy as np

from ..registry import ALLOCATORS
from .base import NORMALIZATIONS, BaseAllocator, fill_budget, global_entries


@ALLOCATORS.register_module()
class GlobalThresholdAllocator(BaseAllocator):
    """One threshold over normalised scores, set to meet the target.

    Args:
        normalize (str): per-group score normalisation, one of
            ``'none'``, ``'mean'``, ``'median'``, ``'max'``, ``'l2'``.
            Defaults to 'max'.
        Others: see :class:`mmprune.allocators.base.BaseAllocator`.
    """

    threshold_ = None

    def __init__(self, ratio: float = 0.5, normalize: str = 'max', **kwargs):
        super().__init__(ratio, **kwargs)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f'normalize must be one of {NORMALIZATIONS}, '
                             f'got {normalize!r}')
        self.normalize = normalize

    def _allocate(self,
                  model,
                  graph,
                  scores,
                  cost,
                  pruned=None,
                  dense_widths=None):
        """Return ``{group name: kept indices}`` meeting the target.

        Args:
            pruned (dict | None): ``{group: indices}`` already pruned; they
                stay pruned and count towards the target.
            dense_widths: see :meth:`BaseAllocator.allocate`.
        """
        gs = self.prepare(graph, scores)
        groups = [g for g, _ in gs]
        entries = global_entries(gs, self.normalize)
        order = self.global_order(model, groups, entries, dense_widths, pruned)
        measure = self.measure_fn(model, graph, cost)
        base = measure({})
        target = self.ratio * base
        drop = order.solve(measure, target,
                           f'{self.budget} ratio {self.ratio}', base)
        # tau: the highest normalised score the cut dropped (before fill)
        forced = {(gi, c) for gi, f in enumerate(order.forced) for c in f}
        dropped = {(gi, c) for gi, d in enumerate(drop) for c in d} - forced
        self.threshold_ = max(
            (s for s, gi, c in entries if (gi, c) in dropped), default=-np.inf)
        if self.fill:
            rank = {(gi, c): s for s, gi, c in entries}
            prio = [(lambda d, gi=gi: rank.get((gi, d[-1]), -np.inf)
                     if d else -np.inf) for gi in range(len(groups))]
            drop = fill_budget(groups, drop, order.forced, prio,
                               order.round_to, measure, target, order.keep)
        return order.keep(drop)
