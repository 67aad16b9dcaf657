"""What a ChannelPruningHook config resolves to: a method preset's settings
overridden by the arguments given, built and validated before training."""
from typing import Optional, Sequence

from ..allocators.base import BUDGETS
from ..allocators.schedule import PruningSchedule
from ..methods import get_method
from ..registry import ALLOCATORS, CRITERIA, REGULARIZERS, build_from
from ..regularizers import BaseRegularizer


def resolve(method: Optional[str] = None,
            family: Optional[str] = None,
            target: float = 0.5,
            budget: str = 'flops',
            criterion=None,
            allocator: Optional[dict] = None,
            regularizers: Optional[Sequence[dict]] = None,
            residual_mode: Optional[str] = None,
            read_pruning: bool = False,
            by_epoch: bool = True,
            begin: Optional[int] = None,
            end: Optional[int] = None,
            interval: Optional[int] = None,
            ramp: Optional[str] = None,
            soft: Optional[bool] = None,
            scoring_batches: Optional[int] = None,
            exclude_groups: Optional[dict] = None,
            min_keep: int = 8,
            max_prune_ratio: float = 0.8,
            round_to: int = 1,
            search=None,
            latency_table: Optional[str] = None) -> dict:
    """The hook's components and settings (see ChannelPruningHook's Args).

    Returns ``dict(method, target, budget, criterion, allocator_cfg,
    regularizers, residual_mode, read_pruning, soft, scoring_batches,
    exclude_groups, schedule, derive, search, latency_table)``:
    ``schedule`` is a :class:`PruningSchedule`, or None with
    ``derive(max_epochs)`` building it from the preset's schedule rescaled
    to the run (a method without ``begin``); ``search`` is the BPC search
    options the first event runs (:func:`search_options`), or None.
    """
    if budget not in BUDGETS:
        raise ValueError(f'budget must be one of {BUDGETS}, got {budget!r}')
    if budget == 'latency' and not latency_table:
        raise ValueError("budget='latency' needs latency_table: the path of "
                         'a table from tools/analysis/latency_table.py, '
                         'measured on the deployment machine at input_size')
    if latency_table and budget != 'latency':
        raise ValueError(f"latency_table is read only with budget="
                         f"'latency' (budget is {budget!r})")
    preset = get_method(method, family) if method is not None else None
    search = search_options(preset, search, criterion)
    own_allocator = allocator is not None
    if preset is not None:
        criterion = criterion or preset.criterion
        allocator = allocator or preset.allocator
        residual_mode = residual_mode or preset.residual_mode
        if regularizers is None:
            regularizers = list(preset.regularizers)
        if exclude_groups is None:
            exclude_groups = dict(preset.groups)
        if scoring_batches is None:
            # GCP-FRS's scoring subset, BPC's calibration batches (those of
            # the in-training search when it runs)
            scoring_batches = preset.options.get('scoring_batches') or \
                (search or preset.options.get('search', {})).get(
                    'calib_batches')
        ramp = ramp or preset.allocator.get('ramp')
    residual_mode = residual_mode or 'coupled'
    if residual_mode not in ('coupled', 'fine'):
        raise ValueError(f"residual_mode must be one of ('coupled', "
                         f"'fine'), got {residual_mode!r}")
    if read_pruning and residual_mode != 'fine':
        raise ValueError(f"read_pruning=True needs residual_mode='fine' "
                         f'(the readers of a full-width stream gather their '
                         f'own subset of it), got {residual_mode!r}')
    if scoring_batches is not None and not (isinstance(scoring_batches, int)
                                            and scoring_batches >= 1):
        raise ValueError(f'scoring_batches must be an int >= 1, got '
                         f'{scoring_batches!r}')
    crit = build_from(CRITERIA, criterion or 'L1Criterion', 'criterion')
    if crit.needs_scoring_pass and not scoring_batches:
        raise ValueError(f'criterion {type(crit).__name__} needs a scoring '
                         f'pass at each event: set scoring_batches')
    alloc_cfg = dict(allocator or dict(type='BudgetAllocator'))
    if preset is not None and allocator is preset.allocator:
        alloc_cfg['budget'] = budget  # the preset's is only a default
    for k, v in (('min_keep', min_keep), ('max_prune_ratio', max_prune_ratio),
                 ('round_to', round_to), ('budget', budget)):
        alloc_cfg.setdefault(k, v)
    if alloc_cfg['budget'] != budget:
        raise ValueError(f"allocator budget={alloc_cfg['budget']!r} differs "
                         f'from the hook\'s budget={budget!r}: set budget= '
                         f'on the hook only')
    if budget == 'latency' and not own_allocator:
        alloc_cfg = latency_order(alloc_cfg)
    alloc_cfg['ratio'] = 1.0  # set per event
    build_from(ALLOCATORS, alloc_cfg, 'allocator')  # validate now
    regs = [
        build_from(REGULARIZERS, dict(r), 'regularizer')
        for r in (regularizers or ())
    ]
    for r in regs:
        if not isinstance(r, BaseRegularizer):
            raise TypeError(f'regularizer {type(r).__name__} must subclass '
                            f'mmprune.regularizers.BaseRegularizer')
    soft = any(r.selective for r in regs) if soft is None else bool(soft)
    sched = dict(target=target, ramp=ramp or 'cubic', soft=soft)
    schedule, derive = None, None
    if begin is None and preset is not None:
        if end is not None or interval is not None:
            raise ValueError('end/interval need begin: set begin too, or '
                             'none of them for the preset schedule')
        what = f'ChannelPruningHook(method={preset.name!r})'
        if not by_epoch:
            raise ValueError(f'{what}: the preset schedule is in epochs; '
                             f'set begin= (and end=, interval=) for '
                             f'by_epoch=False')
        PruningSchedule((1, ), 1, **sched)  # validate target and ramp now

        def rescaled(max_epochs: int) -> PruningSchedule:
            return PruningSchedule.from_preset(preset.schedule, max_epochs,
                                               what, **sched)

        derive = rescaled
    else:
        schedule = PruningSchedule.from_range(
            1 if begin is None else begin, end,
            1 if interval is None else interval, **sched)
    return dict(
        method=preset.name if preset is not None else None,
        target=float(target),
        budget=budget,
        criterion=crit,
        allocator_cfg=alloc_cfg,
        regularizers=regs,
        residual_mode=residual_mode,
        read_pruning=bool(read_pruning),
        soft=soft,
        scoring_batches=scoring_batches,
        exclude_groups=dict(exclude_groups or {}),
        schedule=schedule,
        derive=derive,
        search=search,
        latency_table=latency_table)


def latency_order(alloc_cfg: dict) -> dict:
    """The allocator of a latency budget when the config names none.

    The method keeps its own allocation (BPC's uniform rate, FCP's global
    threshold, ACP-TP's and GCP-FRS's ramps): only the budget it solves
    becomes milliseconds predicted by the measured table, so every
    candidate plan, rounding included, is priced in time. A cost-aware
    :class:`~mmprune.allocators.AdaptiveAllocator` (``cost_weight`` > 0)
    prices its per-channel cost in time too (``cost_measure='latency'``).

    Why not the latency-aware *global* order (scores divided by the time a
    channel saves) for every method: in the accuracy benchmark
    (benchmarks/results/latency_vs_flops, YOLOX-tiny trained, 5 seeds) it
    turned BPC's uniform cut into a global one that thinned the
    high-resolution layers, and lost 3.9 mAP [-5.45, -2.35] against BPC's
    FLOPs budget while running no faster (8.0 vs 7.7 ms). That order stays
    one allocator away: ``allocator=dict(type='AdaptiveAllocator',
    cost_weight=1, cost_measure='latency')``. An allocator given
    explicitly is kept as it is.
    """
    out = dict(alloc_cfg)
    if out.get('type') == 'AdaptiveAllocator' and \
            out.get('cost_weight', 0) > 0:
        out['cost_measure'] = 'latency'
    return out


def search_options(preset, search, criterion) -> Optional[dict]:
    """The BPC search the hook runs at its first event, or None.

    A preset with ``options['hook_search']`` (BPC) searches unless
    ``search=False`` or a ``criterion`` is given (e.g. a blend found
    offline by ``tools/search_blend.py``). The options are the preset's
    ``options['search']``, then its in-training budget
    ``options['hook_search']``, then ``search`` (a dict of
    :class:`~mmprune.search.BlendSearchConfig` fields); validated now.
    """
    if search is not None and not isinstance(search, (bool, dict)):
        raise ValueError(f'search must be a dict of BPC search options, '
                         f'True or False, got {search!r}')
    hook_search = preset.options.get('hook_search') \
        if preset is not None else None
    if hook_search is None:
        if search:
            raise ValueError('search= applies to a method with an '
                             "in-training search (method='bpc')")
        return None
    if search is False or (criterion is not None and not search):
        return None
    from ..search import BlendSearchConfig
    opts = dict(preset.options['search'], **hook_search)
    opts.update(search if isinstance(search, dict) else {})
    BlendSearchConfig.from_options(opts)  # unknown or bad keys: now
    return opts
