"""The methods the quality suite compares, and when each one prunes under
each protocol.

Methods:

* ``dense``: no pruning (the reference row);
* peers, one-shot: ``l1_uniform`` (mmprune's ``ChannelPruningHook`` with
  the L1 criterion and :class:`~mmprune.allocators.UniformAllocator`:
  every group loses the same fraction), ``tp_magnitude`` and ``tp_taylor``
  (Torch-Pruning 1.6, global ranking, :mod:`benchmarks.tp_peer`);
* mmprune's four method presets through ``ChannelPruningHook(method=...)``;
* ``l1_coupled`` / ``l1_fine``: L1 with the hook's default global
  :class:`~mmprune.allocators.BudgetAllocator`, one-shot, in coupled and
  in fine residual mode (the ResNet comparison; fine with
  ``read_pruning``: each reader of a full-width stream keeps its own
  subset, so fine mode's choices include every coupled one);
* ``random``: the floor. :class:`~mmprune.criteria.RandomCriterion`
  (seeded with the run's seed) with the same global allocator, coupled
  mode and one-shot cut as ``l1_coupled``: any criterion worth its cost
  must beat it by more than the seeds' spread.
* ``bpc_latency``: BPC with a *latency* budget (``budget='latency'``;
  BPC's own uniform allocation solved in ms,
  :func:`mmprune.hooks.settings.latency_order`) at the latency the
  FLOPs-budget BPC rows measured (:data:`LATENCY_MATCH`), from a grid
  table the run measures first (batch 1, torch eager, its thread count,
  cached per machine): issue 13's "at equal measured latency, a latency
  budget keeps at least the mAP of a FLOPs budget". The final models of
  both are timed in the same rounds, so the table shows whether the
  latencies really are equal.
* ``bpc_latency_global``: the same with the latency-aware *global* order
  (``AdaptiveAllocator(cost_weight=1, cost_measure='latency')``: scores
  divided by the time a channel saves, HALP's value per cost), BPC's
  limits; the hook's default under a latency budget before the first
  accuracy run showed its cost.
* ``l1_backbone``: ``l1_coupled`` with the neck and head left dense
  (``exclude_groups``), at the lowest FLOPs that scope reaches
  (:data:`BACKBONE_ONLY_TARGET`), whatever the table's budget: the row
  that shows what pruning necks and heads buys on a ResNet detector. It
  runs once per seed of the first budget, like ``dense``.

Protocol ``'trained'`` (the pruning literature's): every run loads the
same dense reference checkpoint and trains ``epochs`` = F epochs of ``T``
iterations in all. Positions are in iterations (``by_epoch=False``), so
"at the start" really is the start: one-shot methods (the peers, BPC,
``l1_*``, ``random``) cut after iteration 1 and fine-tune the rest; the
methods with a training-time schedule keep its shape, scaled from the
paper's pretrained (or, for GCP-FRS, only) schedule to the window:

* FCP: BN-L1 sparsity training, then one cut at ``T/3`` (paper: 50
  sparsity epochs, cut, 100 fine-tuning epochs);
* ACP-TP: soft events from ``0.02 T`` to ``0.4 T`` (paper, pretrained
  YOLOX: every 2 epochs from 2 to 40 of 100), each selection cut one
  interval later;
* GCP-FRS: hard events from ``0.1 T`` to ``0.7 T`` (paper: 30 to 210 of
  300 epochs).

Gradual schedules keep at most :data:`MAX_GRADUAL_EVENTS` events (each
event traces the graph and scores; the paper's 12-20 events would cost
more than the short window trains).

Protocol ``'scratch'``: every run trains ``epochs`` epochs from random
init; positions are epochs. ``P = round(0.4 * epochs)`` (at least 1, at
most ``epochs - 1``) is the one-shot cut and the last gradual event,
``b = round(0.1 * epochs)`` (at least 1) the first: the papers' schedules
assume a pretrained model or hundreds of epochs; with a few epochs from
scratch a cut after 40 % of training leaves the rest to recover.
"""
from typing import Sequence

#: mmprune's method presets
MMPRUNE_METHODS = ('acp_tp', 'bpc', 'fcp', 'gcp_frs')
#: the baselines mmprune's best method is compared with
PEER_METHODS = ('l1_uniform', 'tp_magnitude', 'tp_taylor')
RESIDUAL_METHODS = ('l1_coupled', 'l1_fine')
FLOOR_METHOD = 'random'
BACKBONE_ONLY = 'l1_backbone'
LATENCY_BUDGET = 'bpc_latency'
LATENCY_GLOBAL = 'bpc_latency_global'
#: runs at a latency budget (not the table's FLOPs budget)
LATENCY_METHODS = (LATENCY_BUDGET, LATENCY_GLOBAL)
ALL_METHODS = ('dense', ) + PEER_METHODS + MMPRUNE_METHODS + \
    RESIDUAL_METHODS + (FLOOR_METHOD, BACKBONE_ONLY) + LATENCY_METHODS
#: methods whose FLOPs do not follow the table's budget (run once)
BUDGET_FREE = ('dense', BACKBONE_ONLY)
#: the groups ``l1_backbone`` leaves whole (group names are their first
#: writer's module name)
NECK_AND_HEAD = (r'^neck\.', r'^(bbox|rpn)_head\.', r'^roi_head\.')
#: the lowest FLOPs fraction a backbone-only cut reaches on RetinaNet R18
#: at 128 px with the default allocator's caps: 0.868 (coupled) measured
#: by ``reachable_cost``; tests/test_bench_methods.py checks it still holds
BACKBONE_ONLY_TARGET = 0.87
PROTOCOLS = ('trained', 'scratch')
#: FLOPs budget -> the latency fraction ``bpc_latency`` targets there: the
#: dense-relative latency the FLOPs-budget ``bpc`` runs measured in the
#: committed session run (YOLOX-tiny, 128 px, batch 1, torch, one thread:
#: 15.1 / 21.1 ms at 50 %, 12.4 / 21.1 ms at 30 %;
#: benchmarks/results/session/results.md)
LATENCY_MATCH = {0.5: 0.72, 0.3: 0.59}

LABELS = dict(
    dense='dense',
    l1_uniform='L1 uniform (one-shot)',
    tp_magnitude='Torch-Pruning magnitude (global)',
    tp_taylor='Torch-Pruning Taylor (global)',
    acp_tp='mmprune ACP-TP',
    bpc='mmprune BPC',
    fcp='mmprune FCP',
    gcp_frs='mmprune GCP-FRS',
    l1_coupled='L1 global, coupled residuals',
    l1_fine='L1 global, fine residuals (readers gather)',
    random='random channels (floor)',
    l1_backbone='L1 global, backbone only (lowest reachable FLOPs)',
    bpc_latency='mmprune BPC, latency budget (at bpc\'s measured latency)',
    bpc_latency_global='mmprune BPC, latency budget, global latency-aware '
    'order')

PRUNE_FRACTION = 0.4
BEGIN_FRACTION = 0.1
#: at most this many gradual events (the short schedules have few epochs)
MAX_GRADUAL_EVENTS = 4
#: batches the Taylor peer backpropagates to score (no optimizer step)
TP_TAYLOR_BATCHES = 8
#: protocol 'trained': (first, last) event as fractions of the window for
#: the methods whose paper schedule trains between events (module doc)
TRAINED_WINDOWS = dict(
    fcp=(1 / 3, 1 / 3), acp_tp=(0.02, 0.4), gcp_frs=(0.1, 0.7))


def prune_epoch(epochs: int) -> int:
    """``P``: the one-shot cut, and the last gradual event (scratch)."""
    return max(
        1, min(epochs - 1 if epochs > 1 else 1,
               round(PRUNE_FRACTION * epochs)))


def _spread(begin: int, end: int, total: int, soft: bool) -> dict:
    """At most MAX_GRADUAL_EVENTS positions from ``begin`` to at most
    ``end``; a soft schedule's last cut (one interval later) stays within
    ``total``."""
    span = end - begin
    interval = max(1, -(-span // (MAX_GRADUAL_EVENTS - 1))) if span else 1
    end = begin + (span // interval) * interval
    if soft:
        while end + interval > total and end > begin:
            end -= interval
    return dict(begin=begin, end=end, interval=interval)


def gradual_positions(epochs: int, soft: bool) -> dict:
    """``begin``/``end``/``interval`` (epochs) for gradual events ending at
    ``P`` (protocol 'scratch')."""
    end = prune_epoch(epochs)
    begin = min(end, max(1, round(BEGIN_FRACTION * epochs)))
    return _spread(begin, end, epochs, soft)


def trained_positions(method: str, total_iters: int) -> dict:
    """``begin``/``end``/``interval`` in iterations for protocol
    'trained': after iteration 1 for one-shot methods, else the method's
    :data:`TRAINED_WINDOWS` scaled to ``total_iters``."""
    if total_iters < 2:
        raise ValueError(f'the fine-tuning window must have at least 2 '
                         f'iterations, got {total_iters}')
    if method not in TRAINED_WINDOWS:
        return dict(begin=1, end=1, interval=1)
    first, last = TRAINED_WINDOWS[method]
    begin = min(total_iters - 1, max(1, round(first * total_iters)))
    end = min(total_iters - 1, max(begin, round(last * total_iters)))
    return _spread(begin, end, total_iters, soft=method == 'acp_tp')


def method_spec(method: str,
                epochs: int,
                target: float,
                input_size: Sequence[int],
                batches_per_epoch: int,
                protocol: str = 'scratch',
                seed: int = 0) -> dict:
    """How a quality run of ``method`` prunes.

    Args:
        method (str): one of :data:`ALL_METHODS`.
        epochs (int): the run's epochs (F or E).
        target (float): FLOPs fraction to keep.
        input_size (Sequence[int]): (H, W).
        batches_per_epoch (int): iterations per epoch.
        protocol (str): 'trained' or 'scratch'. Defaults to 'scratch'.
        seed (int): the run's seed (the random floor's draw).

    Returns:
        dict: ``kind`` ('dense', 'mmprune' or 'torch_pruning') and
        ``hook``: a ``ChannelPruningHook`` config (mmprune) or the
        :class:`benchmarks.tp_peer.TorchPruningHook` arguments.
    """
    if method not in ALL_METHODS:
        raise ValueError(f'unknown benchmark method {method!r}; valid: '
                         f'{ALL_METHODS}')
    if protocol not in PROTOCOLS:
        raise ValueError(f'protocol must be one of {PROTOCOLS}, got '
                         f'{protocol!r}')
    if method == 'dense':
        return dict(kind='dense', hook=None)
    size = tuple(input_size)
    trained = protocol == 'trained'
    if trained:
        pos = trained_positions(method, epochs * batches_per_epoch)
        when = dict(pos, by_epoch=False)
    else:
        p = prune_epoch(epochs)
        when = dict(begin=p)
        if method in ('acp_tp', 'gcp_frs'):
            when = gradual_positions(epochs, soft=method == 'acp_tp')
    if method.startswith('tp_'):
        at = dict(iteration=when['begin']) if trained else \
            dict(epoch=when['begin'])
        return dict(
            kind='torch_pruning',
            hook=dict(
                importance=method[3:],
                target=target,
                input_size=size,
                taylor_batches=min(TP_TAYLOR_BATCHES, batches_per_epoch),
                **at))
    hook = dict(
        type='ChannelPruningHook', target=target, input_size=size, **when)
    if method == 'l1_uniform':
        hook.update(
            criterion='L1Criterion', allocator=dict(type='UniformAllocator'))
    elif method in RESIDUAL_METHODS:
        mode = method.split('_')[1]
        # fine: readers gather their own stream subsets, so every coupled
        # choice is also a fine one (FCP's claim, docs/methods.md §3(d))
        hook.update(
            criterion='L1Criterion',
            residual_mode=mode,
            read_pruning=mode == 'fine')
    elif method == BACKBONE_ONLY:
        hook.update(
            criterion='L1Criterion',
            residual_mode='coupled',
            target=max(target, BACKBONE_ONLY_TARGET),
            exclude_groups=dict(exclude=list(NECK_AND_HEAD)))
    elif method == FLOOR_METHOD:
        hook.update(
            criterion=dict(type='RandomCriterion', seed=seed),
            residual_mode='coupled')
    elif method in LATENCY_METHODS:
        key = round(target, 2)
        if key not in LATENCY_MATCH:
            raise ValueError(
                f'{method}: no matched latency for the FLOPs '
                f'budget {target}; known: {sorted(LATENCY_MATCH)}')
        hook.update(
            method='bpc',
            budget='latency',
            target=LATENCY_MATCH[key],
            scoring_batches=min(32, batches_per_epoch))
        if method == LATENCY_GLOBAL:  # BPC's limits, HALP-like order
            hook['allocator'] = dict(
                type='AdaptiveAllocator',
                normalize='median',
                cost_weight=1.0,
                cost_measure='latency',
                min_keep=8,
                max_prune_ratio=0.8,
                round_to=1)
        # the run measures the table (benchmarks.quality.latency_table)
        # and sets hook['latency_table'] to its path before training
        return dict(
            kind='mmprune',
            hook=hook,
            latency_table=dict(
                backend='torch', batch=1, points=3, level_runs=10))
    else:
        hook['method'] = method
        if method == 'bpc':  # the preset's 32 calibration batches
            hook['scoring_batches'] = min(32, batches_per_epoch)
        elif method == 'gcp_frs':
            hook['scoring_batches'] = min(16, batches_per_epoch)
    return dict(kind='mmprune', hook=hook)
