"""Adaptive sparsity allocation to a global target, ramped over events.

ACP-TP's "adaptive sparsity control module" (Liu et al., "Adaptive Channel
Pruning for Trainability Protection", PRCV 2023, DOI
10.1007/978-981-99-8549-4_12; abstract only: per-layer pruning rates are
assigned from a preset target). Reconstruction, docs/methods.md §1B(b), all
**our choice**:

* prune events ``k = 1..E``; the cumulative reduction at event ``k`` is
  ``R_k = R* (1 - (1 - k/E)^3)`` (``ramp='cubic'``, Zhu & Gupta,
  https://arxiv.org/abs/1710.01878) or ``R* k / E`` (``'linear'``), where
  ``R* = 1 - ratio``; so event ``k`` keeps ``1 - R_k`` of ``dense_cost``
  (the unpruned model's cost, by default the current model's); the ramp
  is owned by :class:`~mmprune.allocators.schedule.PruningSchedule`;
* scores are layer-normalised by the group median (``normalize``), then
  one global order is cut by the exact-cost budget solver (§0.5); the
  per-group rates emerge from the global ranking - the "adaptive" part;
* optional cost awareness: ``cost_weight`` ``eta`` divides group ``g``'s
  normalised scores by ``(delta_g / mean delta)^eta``, ``delta_g`` the
  exact cost saved by dropping one of its channels, so expensive channels
  go first at equal importance (0 = off, the default); with
  ``cost_measure='latency'`` ``delta_g`` is the *time* saved, predicted by
  the measured :class:`~mmprune.costs.latency_table.LatencyTable` attached
  to the cost model (``cost.latency``), which also charges pooling and
  activations; the budget itself stays in FLOPs/params;
* channels pruned at earlier events (``pruned=``) stay pruned and count
  towards ``R_k`` (hard-masked channels are never revived);
* ``min_keep``, ``max_prune_ratio``, ``round_to``, ``fill`` as in
  :mod:`mmprune.allocators.base`.
"""
from typing import Optional

import numpy as np

from ..registry import ALLOCATORS
from .base import NORMALIZATIONS, BaseAllocator, fill_budget, global_entries
from .schedule import RAMPS, PruningSchedule, _check_int

COST_MEASURES = ('budget', 'latency')


@ALLOCATORS.register_module()
class AdaptiveAllocator(BaseAllocator):
    """ACP-TP adaptive allocation to a global target with a ramp.

    Args:
        ratio (float): final cost to keep, fraction of ``dense_cost`` in
            (0, 1] (``R* = 1 - ratio``). Defaults to 0.5.
        ramp (str): ``'cubic'`` or ``'linear'``. Defaults to 'cubic'.
        normalize (str): per-group normalisation (``'median'``, ``'mean'``,
            ``'max'``, ``'l2'``, ``'none'``). Defaults to 'median'.
        cost_weight (float): ``eta`` >= 0 (see module docstring). Defaults
            to 0.
        cost_measure (str): what ``delta_g`` measures for ``cost_weight``:
            ``'budget'`` (the FLOPs/params budget itself) or ``'latency'``
            (needs ``cost.latency``). Defaults to 'budget'.
        Others: see :class:`mmprune.allocators.base.BaseAllocator`.

    Examples:
        >>> alloc = AdaptiveAllocator(ratio=0.5, round_to=8)
        >>> keep = alloc.allocate(model, graph, scores, cost, event=3,
        ...                       num_events=18, pruned=previous_pruned)
    """

    def __init__(self,
                 ratio: float = 0.5,
                 ramp: str = 'cubic',
                 normalize: str = 'median',
                 cost_weight: float = 0.0,
                 cost_measure: str = 'budget',
                 **kwargs):
        super().__init__(ratio, **kwargs)
        if ramp not in RAMPS:
            raise ValueError(f'ramp must be one of {RAMPS}, got {ramp!r}')
        if normalize not in NORMALIZATIONS:
            raise ValueError(f'normalize must be one of {NORMALIZATIONS}, '
                             f'got {normalize!r}')
        if isinstance(
                cost_weight,
                bool) or not (isinstance(cost_weight,
                                         (int, float)) and cost_weight >= 0):
            raise ValueError(f'cost_weight must be a number >= 0, got '
                             f'{cost_weight!r}')
        if cost_measure not in COST_MEASURES:
            raise ValueError(f'cost_measure must be one of {COST_MEASURES}, '
                             f'got {cost_measure!r}')
        self.ramp, self.normalize = ramp, normalize
        self.cost_weight = float(cost_weight)
        self.cost_measure = cost_measure

    def target_ratio(self,
                     event: Optional[int] = None,
                     num_events: Optional[int] = None) -> float:
        """Cost to keep at ``event`` of ``num_events`` (both None: the final
        ``ratio``), as a fraction of the dense cost."""
        if event is None and num_events is None:
            return self.ratio
        if event is None or num_events is None:
            raise ValueError('event and num_events must be given together')
        return self.schedule(num_events).target_at(event)

    def schedule(self, num_events: int) -> PruningSchedule:
        """This allocator's ramp over ``num_events`` events (positions
        1..E) as a :class:`~mmprune.allocators.schedule.PruningSchedule`,
        the one owner of the per-event targets."""
        _check_int('num_events', num_events, 1)
        return PruningSchedule.from_range(
            1, num_events, 1, target=self.ratio, ramp=self.ramp)

    def _allocate(self,
                  model,
                  graph,
                  scores,
                  cost,
                  event=None,
                  num_events=None,
                  pruned=None,
                  dense_cost=None,
                  dense_widths=None):
        """Return ``{group name: kept indices}`` for event ``event``.

        Args:
            event (int | None): prune event, 1-based. Defaults to None (the
                final target).
            num_events (int | None): number of events E.
            pruned (dict | None): ``{group: indices}`` pruned earlier.
            dense_cost (float | None): reference cost of the unpruned
                model. Defaults to the current model's cost.
            dense_widths: see :meth:`BaseAllocator.allocate`.
        """
        keep_ratio = self.target_ratio(event, num_events)
        gs = self.prepare(graph, scores)
        groups = [g for g, _ in gs]
        measure = self.measure_fn(model, graph, cost)
        base = measure({})
        if dense_cost is None:
            dense_cost = base
        elif not (isinstance(dense_cost, (int, float)) and dense_cost > 0):
            raise ValueError(f'dense_cost must be > 0, got {dense_cost!r}')
        weights = None
        if self.cost_weight > 0:
            if self.cost_measure == 'latency':
                table = getattr(cost, 'latency', None)
                if table is None:
                    raise ValueError(
                        "AdaptiveAllocator(cost_measure='latency') needs a "
                        'measured latency table on the cost model '
                        '(cost.latency); ChannelPruningHook and '
                        'tools/prune.py attach one, or use '
                        'mmprune.apis.cost_model(model, size, latency=True)')
                timed = lambda keep: table.predict(graph, keep)  # noqa: E731
                # a measured grid is stepped (kernels pad widths to
                # multiples of 8): one channel less can save nothing or
                # sit on a cliff, so time about a quarter of the group,
                # a multiple of 8 channels
                weights = self._cost_weights(
                    groups, timed, timed({}), span=0.25, align=8)
            else:
                weights = self._cost_weights(groups, measure, base)
        entries = global_entries(gs, self.normalize, weights)
        order = self.global_order(model, groups, entries, dense_widths, pruned)
        target = keep_ratio * dense_cost
        when = 'the final target' if event is None else \
            f'event {event}/{num_events}'
        drop = order.solve(
            measure, target,
            f'{self.budget} ratio {keep_ratio:.4f} of the dense cost at '
            f'{when} (min_keep={self.min_keep}, max_prune_ratio='
            f'{self.max_prune_ratio}, round_to={self.round_to})', dense_cost)
        if self.fill:
            rank = {(gi, c): s for s, gi, c in entries}
            prio = [(lambda d, gi=gi: rank.get((gi, d[-1]), -np.inf)
                     if d else -np.inf) for gi in range(len(groups))]
            drop = fill_budget(groups, drop, order.forced, prio,
                               order.round_to, measure, target, order.keep)
        return order.keep(drop)

    def _cost_weights(self,
                      groups,
                      measure,
                      base,
                      span: float = 0.0,
                      align: int = 1):
        """``(delta_g / mean delta)^eta`` per group slot: ``delta_g`` the
        cost saved per channel when one channel of the group goes, or
        (``span`` > 0) when about ``span`` of its free channels go, rounded
        to a multiple of ``align`` (at least ``align``)."""
        delta = []
        for g in groups:
            free = np.nonzero(~np.asarray(g.pinned))[0]
            step = 1
            if span > 0:
                step = min(
                    len(free),
                    max(align,
                        int(round(len(free) * span / align)) * align))
                step = max(step, 1)
            kept = np.setdiff1d(np.arange(g.width), free[:step])
            saved = (base - measure({g.name: kept})) / step
            delta.append(max(saved, 1e-12))
        delta = np.asarray(delta, dtype=np.float64)
        return (delta / delta.mean())**self.cost_weight
