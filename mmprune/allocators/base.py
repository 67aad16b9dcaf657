"""Shared allocator machinery: argument checks, score preparation and the
exact-cost solvers every allocator uses.

An allocator turns ``{group: (G,) scores}`` into ``{group: kept indices}``
that meet a FLOPs or params target measured by the exact cost model
(:class:`mmprune.costs.flops.CostModel`). Two solvers live here:

* :class:`GlobalOrder`: drop channels in one global ascending order (after
  per-group normalisation), bisecting on *how many* to drop, since cost is
  not additive once both sides of a conv shrink (~log2(#channels) exact
  cost evaluations). Budget, global-threshold and adaptive allocation use
  it.
* :func:`fill_budget` (**our choice**, ``fill=True``): the last channel the
  bisection drops can cost far more than the remaining slack (one channel
  of a wide 3x3 conv is several % of a small net). Filling re-adds, group
  by group, the best dropped channel (one ``round_to`` unit) while the
  target still holds, so every allocator lands within about one channel's
  cost of its target.

Constraints every allocator honours: keep at least ``max(min_keep,
ceil((1 - max_prune_ratio) * dense width))`` channels per group (never
fewer than 1, never more than the current width), at least one channel of
every producer's slice of a group (:class:`SliceGuard`), kept counts
rounded up to multiples of ``round_to`` (unless the group has too few
prunable channels), pinned channels kept, and previously pruned channels
(``pruned=``) kept pruned.

The caps are relative to the *dense* width (docs/methods.md §0.5), not to
the width at the event: applied to the current width they compounded over
events (a 512-wide group ended at 68 channels with a 0.8 cap over 12
events). The dense width of a group comes from the plans already applied
to the model (:func:`mmprune.structures.model_record.model_plans`: the
first plan naming a group recorded its width then), or from
``dense_widths=`` given to ``allocate``.

Caps are in channels. A group whose index stands for several channels (a
GroupNorm block of C/G channels, ``ChannelGroup.unit``) converts them: it
keeps ``ceil(floor / unit)`` indices, and its kept count is a multiple of
``round_to / gcd(round_to, unit)`` indices, so whole GroupNorm groups go
and the channel count is still a multiple of ``round_to``.
"""
import abc
import logging
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

logger = logging.getLogger('mmprune')

NORMALIZATIONS = ('none', 'mean', 'median', 'max', 'l2')
NAN_POLICIES = ('raise', 'skip')
BUDGETS = ('flops', 'params', 'latency')


def check_ratio(ratio, name: str = 'ratio') -> float:
    if isinstance(ratio,
                  bool) or not (isinstance(ratio,
                                           (int, float)) and 0 < ratio <= 1):
        raise ValueError(f'{name} must be in (0, 1], got {ratio!r}')
    return float(ratio)


def normalize_group(s: np.ndarray, free: np.ndarray, mode: str) -> np.ndarray:
    """Scale one group's scores by a statistic of its prunable channels
    (``none``/``mean``/``median``/``max``/``l2``); a non-positive
    statistic leaves them unscaled."""
    if mode == 'none' or not free.any():
        return s
    f = s[free]
    stat = {
        'mean': f.mean,
        'median': lambda: np.median(f),
        'max': f.max,
        'l2': lambda: np.linalg.norm(f)
    }[mode]()
    return s / stat if stat > 0 else s


class BaseAllocator(metaclass=abc.ABCMeta):
    """Validated common arguments and helpers.

    Args:
        ratio (float): cost to keep as a fraction of the reference cost,
            in (0, 1]. 0.5 = keep half the FLOPs.
        budget (str): ``'flops'``, ``'params'`` or ``'latency'`` (ms
            predicted by ``cost.latency``, a measured
            :class:`~mmprune.costs.latency_grid.LatencyGrid`; ``ratio`` is
            then a fraction of the dense predicted latency). Defaults to
            'flops'.
        min_keep (int): fewest channels kept per group, >= 1. Defaults
            to 8.
        max_prune_ratio (float): largest fraction removed from one group,
            in [0, 1). Defaults to 0.8.
        round_to (int): kept counts are multiples of this. Defaults to 1.
        nan_policy (str): non-finite scores in a group: ``'raise'`` a
            ValueError naming it, or ``'skip'`` the group (kept whole,
            logged once). Defaults to 'raise'.
        fill (bool, optional): fill the leftover budget (see module
            docstring). Defaults to the class's ``default_fill`` (True
            here; a subclass that follows a paper's plain prefix of the
            global order sets it False).
    """

    #: ``fill`` when the config does not say
    default_fill = True

    def __init__(self,
                 ratio: float = 0.5,
                 budget: str = 'flops',
                 min_keep: int = 8,
                 max_prune_ratio: float = 0.8,
                 round_to: int = 1,
                 nan_policy: str = 'raise',
                 fill: Optional[bool] = None):
        self.ratio = check_ratio(ratio)
        if budget not in BUDGETS:
            raise ValueError(f'budget must be one of {BUDGETS}, got '
                             f'{budget!r}')
        if isinstance(
                min_keep,
                bool) or not (isinstance(min_keep, int) and min_keep >= 1):
            raise ValueError(f'min_keep must be an int >= 1, got {min_keep!r}')
        if isinstance(max_prune_ratio,
                      bool) or not (isinstance(max_prune_ratio, (int, float))
                                    and 0 <= max_prune_ratio < 1):
            raise ValueError(f'max_prune_ratio must be in [0, 1), got '
                             f'{max_prune_ratio!r}')
        if isinstance(
                round_to,
                bool) or not (isinstance(round_to, int) and round_to >= 1):
            raise ValueError(f'round_to must be an int >= 1, got {round_to!r}')
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f'nan_policy must be one of {NAN_POLICIES}, got '
                             f'{nan_policy!r}')
        self.budget = budget
        self.min_keep, self.max_prune_ratio = min_keep, float(max_prune_ratio)
        self.round_to = round_to
        self.nan_policy = nan_policy
        self.fill = self.default_fill if fill is None else bool(fill)
        self._warned = set()

    def allocate(self, model, graph, scores: Dict[str, torch.Tensor], cost,
                 *args, **kwargs) -> Dict[str, np.ndarray]:
        """Return ``{group name: kept indices}`` meeting the target.

        Args:
            model: the model being pruned.
            graph: its channel graph.
            scores (dict): ``{group: (G,) scores}``.
            cost: the exact cost model.
            *args, **kwargs: the allocator's options (its ``_allocate``);
                every allocator takes ``dense_widths`` (dict | None):
                ``{group: width}`` before any pruning, for the caps
                (default: from the model's applied plans,
                :meth:`BaseAllocator.dense_widths`).
        """
        return self._allocate(model, graph, scores, cost, *args, **kwargs)

    @abc.abstractmethod
    def _allocate(self, model, graph, scores, cost, *args,
                  **kwargs) -> Dict[str, np.ndarray]:
        """:meth:`allocate` with the allocator's own options."""

    def global_order(self,
                     model,
                     groups,
                     entries,
                     dense_widths: Optional[Dict[str, int]] = None,
                     pruned: Optional[dict] = None) -> 'GlobalOrder':
        """A :class:`GlobalOrder` over ``groups`` in the order of
        ``entries`` (``(score, slot, channel)``), with this allocator's
        floors, rounding and (with ``pruned``) forced drops."""
        floors = self.floors(model, groups, dense_widths)
        rounds = [self.round_unit(g) for g in groups]
        return GlobalOrder(groups, [(gi, c) for _, gi, c in entries], floors,
                           rounds, self.forced_drops(groups, pruned))

    # ------------------------------------------------------------ helpers
    def floor(self,
              width: int,
              dense_width: Optional[int] = None,
              unit: int = 1) -> int:
        """Fewest indices a group may keep: ``width`` indices now,
        ``dense_width`` before any pruning (default: ``width``), ``unit``
        channels per index. Caps apply to the dense channel count."""
        dense = width if dense_width is None else max(width, dense_width)
        keep_ch = max(
            self.min_keep,
            math.ceil((1 - self.max_prune_ratio) * dense * unit - 1e-9))
        return max(1, min(width, -(-keep_ch // unit)))

    def round_unit(self, group) -> int:
        """``round_to`` in group indices (see module docstring)."""
        unit = getattr(group, 'unit', 1)
        return self.round_to // math.gcd(self.round_to, unit)

    def dense_widths(self,
                     model,
                     groups,
                     given: Optional[Dict[str, int]] = None) -> List[int]:
        """Dense width (indices) of each of ``groups``: ``given[name]``,
        else the width the first plan applied to ``model`` recorded for
        it, else its current width (never pruned)."""
        known: Dict[str, int] = {}
        if given:
            known.update({k: int(v) for k, v in given.items()})
        elif model is not None:
            from ..structures.model_record import model_plans
            for plan in model_plans(model):
                for name, w in plan.widths.items():
                    known.setdefault(name, int(w))
        return [max(g.width, known.get(g.name, g.width)) for g in groups]

    def floors(self,
               model,
               groups,
               given: Optional[Dict[str, int]] = None) -> List[int]:
        """:meth:`floor` of each of ``groups`` against its dense width."""
        return [
            self.floor(g.width, d, getattr(g, 'unit', 1))
            for g, d in zip(groups, self.dense_widths(model, groups, given))
        ]

    def reachable_cost(self,
                       model,
                       graph,
                       cost,
                       names: Optional[Sequence[str]] = None,
                       events: int = 1) -> float:
        """The smallest cost these limits allow: every group in ``names``
        (default: every prunable group) cut to its :meth:`floor` (pinned
        channels kept). A caller refuses a target below it before any
        training (the hook does). The caps are relative to the dense
        width, so more ``events`` reach no further (kept for callers)."""
        wanted = None if names is None else set(names)
        groups = [
            g for g in graph.prunable_groups()
            if wanted is None or g.name in wanted
        ]
        keep = {}
        for g, width in zip(groups, self.floors(model, groups)):
            r = self.round_unit(g)  # allocators round kept counts up
            width = min(g.width, -(-width // r) * r)
            # pinned channels first: they are kept whatever the floor says
            order = np.concatenate(
                [np.nonzero(g.pinned)[0],
                 np.nonzero(~g.pinned)[0]])
            keep[g.name] = np.sort(order[:max(width, int(g.pinned.sum()))])
        return float(self.measure_fn(model, graph, cost)(keep))

    def measure_fn(self, model, graph, cost) -> Callable[[dict], float]:
        if self.budget == 'flops':
            return lambda keep: cost.flops(graph, keep)
        if self.budget == 'latency':
            # ms predicted by a measured table (mmprune.costs.latency_grid)
            # on the graph of the model as it is now
            table = getattr(cost, 'latency', None)
            if table is None:
                raise ValueError(
                    f"{type(self).__name__}(budget='latency') needs a "
                    f'latency table on the cost model (cost.latency = '
                    f'LatencyGrid.load(path)); tools/prune.py '
                    f'--latency-table and ChannelPruningHook(latency_table='
                    f'...) attach one')
            return lambda keep: table.predict(graph, keep)
        return lambda keep: cost.params_after(model, graph, keep)

    def prepare(
            self, graph,
            scores: Dict[str,
                         torch.Tensor]) -> List[Tuple[object, np.ndarray]]:
        """``[(group, (G,) float64 scores)]`` of the prunable groups that
        have scores, validated (shape, finiteness per ``nan_policy``)."""
        out = []
        for g in graph.prunable_groups():
            if g.name not in scores:
                continue
            s = scores[g.name]
            s = s.detach().double().cpu().numpy() if isinstance(
                s, torch.Tensor) else np.asarray(
                    s, dtype=np.float64)
            if s.shape != (g.width, ):
                raise ValueError(f'criterion gave {s.shape} scores for group '
                                 f'{g.name!r} of width {g.width}')
            if not np.all(np.isfinite(s)):
                if self.nan_policy == 'raise':
                    raise ValueError(
                        f'non-finite scores (NaN/Inf) in group {g.name!r}; '
                        f"set nan_policy='skip' to keep such groups whole")
                if g.name not in self._warned:
                    self._warned.add(g.name)
                    logger.warning(
                        'mmprune: group %s has non-finite scores; '
                        'it is kept whole', g.name)
                continue
            out.append((g, s))
        return out

    def forced_drops(self, groups, pruned: Optional[dict]) -> List[List[int]]:
        """Per group slot, the already pruned channels (kept pruned)."""
        forced = [[] for _ in groups]
        if not pruned:
            return forced
        names = {g.name: i for i, g in enumerate(groups)}
        for name, idx in pruned.items():
            if name not in names:
                continue
            g = groups[names[name]]
            idx = sorted({int(i) for i in np.asarray(idx).reshape(-1)})
            if idx and (idx[0] < 0 or idx[-1] >= g.width):
                raise ValueError(f'pruned[{name!r}] has indices outside '
                                 f'[0, {g.width})')
            if any(g.pinned[i] for i in idx):
                raise ValueError(f'pruned[{name!r}] names pinned channels')
            forced[names[name]] = idx
        return forced


class SliceGuard:
    """Keeps at least one channel of each producer's slice of a group.

    A concat whose output is added to another tensor couples several
    producers into one group where each writes only a *slice* of the group
    indices ([0, c_a) from conv a, [c_a, c_a + c_b) from conv b). A cut
    that keeps no channel of one slice would leave that conv with zero
    outputs. Producers writing every group channel need no guard (the
    group floor is >= 1), so for most detectors ``slices`` is empty.
    """

    def __init__(self, group):
        self.slices = []
        for m in group.producers():
            idx = set(np.unique(m.group_index).tolist())
            if len(idx) < group.width:
                self.slices.append(idx)

    def start(self, dropped=()) -> List[int]:
        """Kept count per slice once ``dropped`` channels are gone."""
        gone = set(dropped)
        return [len(s - gone) for s in self.slices]

    def allow(self, left: List[int], c: int) -> bool:
        """Whether channel ``c`` may go (and count it in ``left``)."""
        hit = [i for i, s in enumerate(self.slices) if c in s]
        if any(left[i] <= 1 for i in hit):
            return False
        for i in hit:
            left[i] -= 1
        return True


class GlobalOrder:
    """Drop a prefix of one global order, with per-group caps, forced drops
    and ``round_to`` rounding.

    Args:
        groups (list): channel groups (slot = position in this list).
        entries (list[tuple]): ``(slot, channel)`` in drop order.
        floors (list[int]): fewest kept channels per slot.
        round_to (int | list[int]): kept counts rounded up to multiples of
            this (one per slot: see :meth:`BaseAllocator.round_unit`).
        forced (list[list[int]]): channels dropped regardless of ``n``.
    """

    def __init__(self,
                 groups,
                 entries,
                 floors,
                 round_to=1,
                 forced: Optional[List[List[int]]] = None):
        self.groups = groups
        self.floors = floors
        self.round_to = per_slot(round_to, len(groups))
        self.forced = forced or [[] for _ in groups]
        self.guards = [SliceGuard(g) for g in groups]
        fset = [set(f) for f in self.forced]
        self.entries = [(gi, c) for gi, c in entries if c not in fset[gi]]

    def drops(self, n: int) -> List[List[int]]:
        """Per slot dropped channels for the first ``n`` order entries:
        forced ones first, then in order, then rounded."""
        drop = [list(f) for f in self.forced]
        left = [gd.start(f) for gd, f in zip(self.guards, self.forced)]
        for gi, c in self.entries[:n]:
            if self.groups[gi].width - len(drop[gi]) > self.floors[gi] and \
                    self.guards[gi].allow(left[gi], c):
                drop[gi].append(c)
        for gi, g in enumerate(self.groups):
            d, nf = drop[gi], len(self.forced[gi])
            kept, r = g.width - len(d), self.round_to[gi]
            rounded = min(g.width, -(-kept // r) * r)
            undo = min(rounded - kept, len(d) - nf)  # never un-drop forced
            drop[gi] = d[:len(d) - undo]
        return drop

    def keep(self, drop: List[List[int]]) -> Dict[str, np.ndarray]:
        keep = {}
        for gi, g in enumerate(self.groups):
            mask = np.ones(g.width, dtype=bool)
            mask[drop[gi]] = False
            keep[g.name] = np.nonzero(mask)[0]
        return keep

    def solve(self, measure, target: float, what: str,
              base: float) -> List[List[int]]:
        """Smallest prefix whose cost is <= ``target``; raises a
        ValueError quoting ``what`` when even the largest misses it."""
        lo, hi = 0, len(self.entries)
        most = measure(self.keep(self.drops(hi)))
        if most > target:
            raise ValueError(
                f'{what} cannot be met: the most it can prune reaches '
                f'{most / max(base, 1):.3f} of the reference cost (target '
                f'{target / max(base, 1):.3f})')
        while lo < hi:
            mid = (lo + hi) // 2
            if measure(self.keep(self.drops(mid))) <= target:
                hi = mid
            else:
                lo = mid + 1
        return self.drops(lo)


def per_slot(round_to, n: int) -> List[int]:
    """``round_to`` as one int per group slot (an int serves them all)."""
    if isinstance(round_to, int):
        return [round_to] * n
    if len(round_to) != n:
        raise ValueError(f'round_to has {len(round_to)} entries for {n} '
                         f'groups')
    return [int(r) for r in round_to]


def fill_budget(groups, drop: List[List[int]], forced: List[List[int]],
                priority: Sequence[Callable[[List[int]], float]], round_to,
                measure, target: float, keep_fn) -> List[List[int]]:
    """Re-add dropped channels while the cost stays <= ``target``.

    Each round offers every group one unit: its last ``round_to`` non-forced
    dropped channels (``drop`` lists are in drop order, so the last are the
    most important), groups ordered by ``priority[slot](drop)`` descending.
    Rounds repeat until no group accepts.
    """
    drop = [list(d) for d in drop]
    nforced = [len(f) for f in forced]
    round_to = per_slot(round_to, len(groups))
    changed = True
    while changed:
        changed = False
        order = sorted(
            range(len(groups)), key=lambda gi: (-priority[gi](drop[gi]), gi))
        for gi in order:
            free = len(drop[gi]) - nforced[gi]
            if free <= 0:
                continue
            unit = min(round_to[gi], free)
            trial = list(drop)
            trial[gi] = drop[gi][:len(drop[gi]) - unit]
            if measure(keep_fn(trial)) <= target:
                drop = trial
                changed = True
    return drop


def global_entries(groups_scores,
                   normalize: str,
                   weights: Optional[Sequence[float]] = None
                   ) -> List[Tuple[float, int, int]]:
    """``(normalised score, slot, channel)`` of every prunable channel,
    sorted ascending (ties by slot, channel). ``weights[slot]`` divides a
    group's scores (cost-aware orders)."""
    entries = []
    for gi, (g, s) in enumerate(groups_scores):
        free = ~np.asarray(g.pinned)
        s = normalize_group(s, free, normalize)
        if weights is not None:
            s = s / weights[gi]
        for c in np.nonzero(free)[0]:
            entries.append((float(s[c]), gi, int(c)))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    return entries
