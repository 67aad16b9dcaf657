"""ChannelPruningHook: prune channels during ordinary mmdet training.

The hook decides *when*; the graph says what is coupled, the criterion which
channels matter, the allocator how many to keep, the pruner cuts, and
:mod:`mmprune.runtime.rebind` keeps optimizer, EMA and DDP consistent.

Schedule: prune *events* at epochs (or iterations) ``begin, begin +
interval, ...`` up to ``end``. Event ``k`` of ``E`` brings the model to the
cumulative FLOPs (or params) fraction ``1 - (1 - target) * ramp(k / E)``
of the dense model, with a cubic ramp ``1 - (1 - x)^3`` (Zhu & Gupta) or a
linear one.

* ``soft=False``: each event removes channels at once (hard event).
* ``soft=True``: each event *selects* channels; they are masked (or, with a
  ``regularizer``, penalised while still trainable) until the next schedule
  position, where they are removed. The last selection is removed one
  ``interval`` after the last event.

Every rank computes the same plan (rank 0's plan is broadcast) and a hash of
the resulting structure is compared across ranks after each event.
"""
import hashlib
import json
import logging
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.hooks import Hook
from mmdet.registry import HOOKS

from .. import apis
from ..methods import get_method
from ..models.prunable_detector import make_prunable
from ..pruners.masking import build_mask
from ..registry import ALLOCATORS, CRITERIA, build_from
from ..runtime.atomic_checkpoint import make_checkpoints_atomic
from ..runtime.rebind import (find_ema, prune_runner, rebind_optimizer,
                              refresh_ema_cache, rewrap, unwrap)
from ..structures import (META_KEY, PruningPlan, StructureError, make_meta,
                          read_meta)
from ..utils.latency_table import LatencyTable

logger = logging.getLogger('mmprune')

RAMPS = ('cubic', 'linear')


def _ramp(kind: str, x: float) -> float:
    return 1 - (1 - x)**3 if kind == 'cubic' else x


@HOOKS.register_module()
class ChannelPruningHook(Hook):
    """Prune a detector to a FLOPs/params target while it trains.

    Args:
        method (str, optional): a method preset (``'acp_tp'``, ``'bpc'``,
            ``'fcp'``, ``'gcp_frs'``; see :mod:`mmprune.methods`). It
            supplies the criterion, allocator, regularisers, residual mode,
            soft/hard events, scoring pass and group filter; any argument
            given here overrides it.
        target (float): fraction of the dense FLOPs (or params) to keep,
            in (0, 1]. Defaults to 0.5.
        budget (str): ``'flops'`` or ``'params'``. Defaults to 'flops'.
        criterion (str | dict): a registered criterion. Defaults to
            'L1Criterion'.
        allocator (dict, optional): allocator cfg; ``ratio`` is set per
            event. Defaults to ``BudgetAllocator`` with ``min_keep``,
            ``max_prune_ratio`` and ``round_to``.
        residual_mode (str): ``'coupled'`` or ``'fine'``. Defaults to
            'coupled'.
        by_epoch (bool): schedule in epochs (else iterations).
        begin (int): first event, after this many epochs/iters. Defaults 1.
        end (int, optional): last event at or before this. Defaults to
            ``begin`` (a single event).
        interval (int): epochs/iters between events. Defaults to 1.
        ramp (str, optional): ``'cubic'`` or ``'linear'``. Defaults to the
            preset allocator's ramp, else 'cubic'.
        soft (bool, optional): select at events, cut at the next one.
            Defaults to True when a selection regulariser (TPP) is set.
        regularizers (list[dict], optional): REGULARIZERS cfgs. A
            regulariser with ``set_selection`` (TPP) penalises the channels
            selected at a soft event; one with ``attach`` (BN-L1) acts on
            every prunable channel all along. Their ``loss(model)`` terms
            are added to the detector's loss.
        scoring_batches (int, optional): for data-driven criteria with
            ``attach`` (feature relevance): run this many training batches
            (eval mode, no update) at each event to score. Without it such
            a criterion accumulates during training (Taylor).
        exclude_groups (dict, optional): ``filter_groups`` arguments
            (``exclude_coupled``, ``exclude`` regexes).
        input_size (tuple): (H, W) for FLOPs. Defaults to (640, 640).
        trace_size (tuple): (H, W) of the dummy image for the graph trace.
        ignored_layers (Sequence[str]): modules whose outputs never prune.
        min_keep, max_prune_ratio, round_to: allocator limits.

    Note:
        Priority 40 runs it before mmdet's YOLOX hooks (``SyncNormHook`` and
        ``YOLOXModeSwitchHook`` at 48) and ``EMAHook`` (49): a cut must
        reach the EMA copy before EMAHook updates or swaps it in the same
        stage, and after a resume the structure must be rebuilt before
        EMAHook loads its state dict.
    """

    priority = 40

    def __init__(self, method: Optional[str] = None, target: float = 0.5,
                 budget: str = 'flops', criterion=None,
                 allocator: Optional[dict] = None,
                 regularizers: Optional[Sequence[dict]] = None,
                 residual_mode: Optional[str] = None, by_epoch: bool = True,
                 begin: int = 1, end: Optional[int] = None,
                 interval: int = 1, ramp: Optional[str] = None,
                 soft: Optional[bool] = None,
                 scoring_batches: Optional[int] = None,
                 exclude_groups: Optional[dict] = None,
                 input_size: Sequence[int] = (640, 640),
                 trace_size: Sequence[int] = apis.TRACE_SIZE,
                 ignored_layers: Sequence[str] = (), min_keep: int = 8,
                 max_prune_ratio: float = 0.8, round_to: int = 1):
        preset = get_method(method) if method is not None else None
        if preset is not None:
            criterion = criterion or preset.criterion
            allocator = allocator or preset.allocator
            residual_mode = residual_mode or preset.residual_mode
            if regularizers is None:
                regularizers = list(preset.regularizers)
            if exclude_groups is None:
                exclude_groups = dict(preset.groups)
            if scoring_batches is None:
                # data-driven presets score on a few batches at the event
                # (GCP-FRS's scoring subset, BPC's calibration batches)
                if 'scoring_images' in preset.options:
                    scoring_batches = 16
                elif 'search' in preset.options:
                    scoring_batches = preset.options['search'].get(
                        'calib_batches', 32)
            if ramp is None:
                ramp = preset.allocator.get('ramp', 'cubic')
        criterion = criterion or 'L1Criterion'
        ramp = ramp or 'cubic'
        residual_mode = residual_mode or 'coupled'
        regularizers = [dict(r) for r in (regularizers or ())]
        if not (isinstance(target, (int, float)) and 0 < target <= 1):
            raise ValueError(f'target must be in (0, 1], got {target!r}')
        if budget not in ('flops', 'params'):
            raise ValueError(f"budget must be 'flops' or 'params', got "
                             f'{budget!r}')
        if residual_mode not in ('coupled', 'fine'):
            raise ValueError(f"residual_mode must be one of ('coupled', "
                             f"'fine'), got {residual_mode!r}")
        if ramp not in RAMPS:
            raise ValueError(f'ramp must be one of {RAMPS}, got {ramp!r}')
        end = begin if end is None else end
        for name, v in (('begin', begin), ('end', end), ('interval',
                                                          interval)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f'{name} must be a non-negative int, got '
                                 f'{v!r}')
        if interval < 1:
            raise ValueError(f'interval must be >= 1, got {interval}')
        if begin < 1:
            # events run after an epoch (iteration) ends: "after 0" never
            # happens; pruning before any training is tools/prune.py's job
            raise ValueError(f'begin must be >= 1 (the first event runs '
                             f'after epoch/iteration `begin`), got {begin}')
        if end < begin:
            raise ValueError(f'end ({end}) is before begin ({begin})')
        if scoring_batches is not None and not (
                isinstance(scoring_batches, int) and scoring_batches >= 1):
            raise ValueError(f'scoring_batches must be an int >= 1, got '
                             f'{scoring_batches!r}')
        self.method = preset.name if preset is not None else None
        self.criterion = build_from(CRITERIA, criterion, 'criterion')
        alloc_cfg = dict(allocator or dict(type='BudgetAllocator'))
        alloc_cfg.setdefault('min_keep', min_keep)
        alloc_cfg.setdefault('max_prune_ratio', max_prune_ratio)
        alloc_cfg.setdefault('round_to', round_to)
        alloc_cfg.setdefault('budget', budget)
        alloc_cfg['ratio'] = 1.0
        build_from(ALLOCATORS, alloc_cfg, 'allocator')  # validate now
        self.allocator_cfg = alloc_cfg
        from ..registry import REGULARIZERS
        self.regularizers = [build_from(REGULARIZERS, r, 'regularizer')
                             for r in regularizers]
        selective = any(hasattr(r, 'set_selection')
                        for r in self.regularizers)
        self.target, self.budget = float(target), budget
        self.residual_mode = residual_mode
        self.by_epoch, self.ramp = by_epoch, ramp
        self.soft = selective if soft is None else bool(soft)
        self.scoring_batches = scoring_batches
        self.exclude_groups = dict(exclude_groups or {})
        self.positions = list(range(begin, end + 1, interval))
        self.interval = interval
        self.input_size = tuple(input_size)
        self.trace_size = tuple(trace_size)
        self.ignored_layers = tuple(ignored_layers)
        # training state, JSON-safe, saved in checkpoints
        self.state = dict(events_done=0, dense_cost=None, dense_params=None,
                          pending=None, latency=None)
        self._mask = None
        self._scalars = {}  # the curves, re-sent every iteration (see below)

    # ------------------------------------------------------------ setup
    @property
    def num_events(self) -> int:
        return len(self.positions)

    def _cut_positions(self):
        """Positions where pending soft selections are removed."""
        return self.positions[1:] + [self.positions[-1] + self.interval]

    def before_run(self, runner) -> None:
        model = unwrap(runner.model)
        make_prunable(model)
        # a checkpoint written during (or right after) an event is the only
        # record of the structure: never leave it half-written
        make_checkpoints_atomic(runner)
        if self.regularizers:
            # read through runner.model: DDP may be re-wrapped after a cut
            model._mmprune_loss_terms = [
                (lambda r=r: r.loss(unwrap(runner.model)))
                for r in self.regularizers]

    def before_train(self, runner) -> None:
        last = self._cut_positions()[-1] if self.soft else self.positions[-1]
        total = runner.max_epochs if self.by_epoch else runner.max_iters
        unit = 'epoch' if self.by_epoch else 'iteration'
        if last > total:
            raise ValueError(
                f'ChannelPruningHook: the schedule ends at {unit} {last}, '
                f'after training ends ({total} {unit}s)')
        if self.by_epoch:
            for hook in runner.hooks:
                n = getattr(hook, 'num_last_epochs', None)
                # mmdet switches at the start of 1-based epoch total - n,
                # so total - n is already trained without Mosaic/MixUp
                if type(hook).__name__ == 'YOLOXModeSwitchHook' and n and \
                        last > total - n - 1:
                    raise ValueError(
                        f'ChannelPruningHook: pruning must finish before '
                        f'the no-augmentation epochs (the last {n + 1}: '
                        f'mmdet switches at the start of epoch {total - n}); '
                        f'the schedule ends at epoch {last}')
        model = unwrap(runner.model)
        self._check_ranks(model, 'before training')
        if self.state['dense_cost'] is None:
            # fail before training if the graph cannot be analysed
            graph = apis.analyze(model, self.residual_mode, self.trace_size,
                                 self.ignored_layers)
            self.state['dense_cost'] = self._cost(model, graph)
            runner.logger.info('mmprune: ' + graph.summary().split('\n')[0])
            self._check_reachable(model, graph)
        if self._wants_latency() and self.state.get('latency') is None:
            self._measure_latency(runner, model)
        if self.state.get('dense_params') is None:  # also: old checkpoints
            self.state['dense_params'] = sum(
                p.numel() for p in model.parameters()) if not \
                apis.model_plans(model) else None
        self._update_scalars(model)
        self._use_loss_scale(runner)
        self._attach(model)

    def _wants_latency(self) -> bool:
        cfg = self.allocator_cfg
        return cfg.get('cost_measure') == 'latency' and \
            cfg.get('cost_weight', 0) > 0

    def _measure_latency(self, runner, model) -> None:
        """Time the model's leaf modules once, on rank 0, before training
        (not at an event: the table is the dense model's and serves every
        event, see :mod:`mmprune.utils.latency_table`). Every rank gets
        rank 0's table, and it goes into the checkpointed state, so ranks
        and resumed runs order channels alike."""
        from mmengine.dist import broadcast_object_list, get_rank
        box = [None]
        if get_rank() == 0:
            box[0] = apis.cost_model(model, self.input_size,
                                     latency=True).latency.to_dict()
        broadcast_object_list(box)
        self.state['latency'] = box[0]
        self._costs = None  # re-attach the table on the next cost query
        meta = box[0]['meta']
        runner.logger.info(
            f"mmprune: latency table of {len(box[0]['entries'])} modules, "
            f"{meta['total_ms']:.1f} ms per image at {self.input_size} on "
            f"{meta['device']} with {meta['threads']} thread(s)")

    def _check_reachable(self, model, graph) -> None:
        """Refuse, before training, a target the allocator limits cannot
        reach: even with every pruned group at its smallest allowed width
        (``min_keep``, ``max_prune_ratio`` applied at each event; pinned
        channels kept) the model would cost more than ``target``."""
        alloc = build_from(ALLOCATORS, dict(self.allocator_cfg,
                                            ratio=self.target), 'allocator')
        names = None
        if self.exclude_groups:
            from ..methods import filter_groups
            names = set(filter_groups(graph, **self.exclude_groups))
        keep = {}
        for g in graph.prunable_groups():
            if names is not None and g.name not in names:
                continue
            width = g.width
            for _ in range(self.num_events):
                width = alloc.floor(width)
            order = np.concatenate([np.nonzero(g.pinned)[0],
                                    np.nonzero(~g.pinned)[0]])
            keep[g.name] = np.sort(order[:max(width, int(g.pinned.sum()))])
        smallest = self._cost(model, graph, keep) / self.state['dense_cost']
        if smallest > self.target + 1e-9:
            cfg = self.allocator_cfg
            raise ValueError(
                f'ChannelPruningHook: target={self.target} ({self.budget}) '
                f'cannot be reached: with min_keep={cfg["min_keep"]} and '
                f'max_prune_ratio={cfg["max_prune_ratio"]} over '
                f'{self.num_events} event(s) the smallest model keeps '
                f'{smallest:.3f} of the dense {self.budget} ({len(keep)} '
                f'group(s) may be pruned; frozen modules, ignored_layers '
                f'and exclude_groups leave the others whole). Lower '
                f'min_keep, raise max_prune_ratio or add events, or raise '
                f'target')

    def _use_loss_scale(self, runner) -> None:
        """AMP: a criterion accumulating gradients during training (Taylor)
        divides each backward's contribution by the optimizer wrapper's
        current loss scale (mmengine ``AmpOptimWrapper.loss_scaler``)."""
        scaler = getattr(getattr(runner, 'optim_wrapper', None),
                         'loss_scaler', None)
        if scaler is None or not hasattr(scaler, 'get_scale') or \
                self.scoring_batches:
            return  # the scoring pass runs its own unscaled backward
        if hasattr(self.criterion, 'loss_scale') and \
                self.criterion.loss_scale is None:
            self.criterion.loss_scale = scaler.get_scale

    def _graph(self, model):
        return apis.analyze(model, self.residual_mode, self.trace_size,
                            self.ignored_layers)

    def _attach(self, model, graph=None) -> None:
        """(Re)attach whole-model regularisers and in-training criteria to
        the current structure."""
        if hasattr(self.criterion, 'detach'):
            # forward hooks bound to the old structure must not see the
            # trace of the new one
            self.criterion.detach()
        graph = graph or self._graph(model)
        for r in self.regularizers:
            if hasattr(r, 'attach'):
                r.attach(graph)
            if hasattr(r, 'set_selection') and not self.state['pending']:
                r.set_selection(graph, {})
        if hasattr(self.criterion, 'attach') and not self.scoring_batches:
            self.criterion.attach(model, graph)

    # ------------------------------------------------------- the events
    def _cost_model(self, model):
        # spatial sizes never change with pruning, so one shape pass serves
        # the whole run (the model reads current widths at every call)
        if getattr(self, '_costs', None) is None or \
                self._costs_for is not model:
            self._costs = apis.cost_model(model, self.input_size)
            self._costs_for = model
            if self.state.get('latency') is not None:
                self._costs.latency = LatencyTable.from_dict(
                    self.state['latency'])
        return self._costs

    def _cost(self, model, graph=None, keep=None) -> float:
        cost = self._cost_model(model)
        if self.budget == 'flops':
            return float(cost.flops(graph, keep) if keep else cost.flops())
        return float(cost.params_after(model, graph, keep) if keep else
                     cost.params(model))

    def target_at(self, k: int) -> float:
        """Cumulative cost fraction of dense after event k (1-based)."""
        return 1 - (1 - self.target) * _ramp(self.ramp, k / self.num_events)

    def _position(self, runner) -> int:
        return (runner.epoch + 1) if self.by_epoch else (runner.iter + 1)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        # LoggerHook (priority BELOW_NORMAL, after us) averages each train
        # scalar over the values it received since the last log line. A value
        # sent only at events would be averaged with older events' values,
        # so the current ones are sent every iteration: the curves step
        # exactly at the cuts, in scalars.json and in TensorBoard alike.
        for key, value in self._scalars.items():
            runner.message_hub.update_scalar(key, value)
        for r in self.regularizers:
            if hasattr(r, 'step'):
                r.step()
        if self._mask is not None:
            model = unwrap(runner.model)
            self._mask.apply(model)
            optimizer = getattr(runner.optim_wrapper, 'optimizer', None)
            if optimizer is not None:
                self._mask.apply_state(model, optimizer)
        if not self.by_epoch:
            self._maybe_event(runner)

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch:
            self._maybe_event(runner)

    def _maybe_event(self, runner) -> None:
        pos = self._position(runner)
        cut = self.soft and self.state['pending'] is not None and \
            pos in self._cut_positions()
        event = pos in self.positions and \
            self.state['events_done'] < self.num_events and \
            self.positions[self.state['events_done']] == pos
        if cut or event:
            # rank 0's plan is applied everywhere: a rank whose model
            # differs would fail alone and leave the others waiting
            self._check_ranks(unwrap(runner.model), f'before the prune step '
                              f'at {"epoch" if self.by_epoch else "iter"} '
                              f'{pos}')
        if cut:
            # clear 'pending' first: the re-attach inside _cut then drops the
            # regulariser's selection, whose positions refer to the old
            # widths (an event that finds its target met selects nothing new)
            plan, self.state['pending'] = self.state['pending'], None
            self._cut(runner, PruningPlan.from_dict(plan))
        if event:
            self._event(runner)

    def _event(self, runner) -> None:
        from mmengine.dist import broadcast_object_list, get_rank
        model = unwrap(runner.model)
        k = self.state['events_done'] + 1
        graph = apis.analyze(model, self.residual_mode, self.trace_size,
                             self.ignored_layers)
        current = self._cost(model, graph)
        goal = self.target_at(k) * self.state['dense_cost']
        plan = None
        scores = self._scores(runner, model, graph) if current > goal \
            else None
        failure = None
        if get_rank() == 0 and current > goal:
            try:
                cfg = dict(self.allocator_cfg, ratio=min(1.0,
                                                         goal / current))
                allocator = build_from(ALLOCATORS, cfg, 'allocator')
                keep = allocator.allocate(model, graph, scores,
                                          self._cost_model(model))
                plan = apis.make_plan(graph, keep).to_dict()
            except ValueError as e:
                # the other ranks wait for the plan: tell them, or they
                # sit in the broadcast until this process is gone
                failure = e
        box = [plan, None if failure is None else str(failure)]
        broadcast_object_list(box)  # every rank applies rank 0's plan
        if failure is not None:
            raise failure
        if box[1] is not None:
            raise ValueError(f'mmprune: prune event {k} failed on rank 0: '
                             f'{box[1]}')
        plan = box[0]
        self.state['events_done'] = k
        if plan is None:
            runner.logger.info(f'mmprune: event {k}/{self.num_events}: '
                               f'target already met')
            return
        if self.soft:
            self.state['pending'] = plan
            self._select(runner, model, graph, PruningPlan.from_dict(plan))
            runner.logger.info(f'mmprune: event {k}/{self.num_events}: '
                               f'selected channels (soft), removal at the '
                               f'next position')
        else:
            self._cut(runner, PruningPlan.from_dict(plan), graph)

    def _scores(self, runner, model, graph) -> dict:
        """Scores of the groups this method prunes, identical on all ranks
        (data-driven criteria all-reduce their sums)."""
        crit = self.criterion
        if hasattr(crit, 'attach') and self.scoring_batches:
            self._scoring_pass(runner, model, graph)
        if hasattr(crit, 'sync'):
            crit.sync()
        names = None
        if self.exclude_groups:
            from ..methods import filter_groups
            names = filter_groups(graph, **self.exclude_groups)
        scores = crit.score(model, graph, names)
        if hasattr(crit, 'detach') and self.scoring_batches:
            crit.detach()
        if hasattr(crit, 'reset') and not self.scoring_batches:
            crit.reset()
        return scores

    def _scoring_pass(self, runner, model, graph) -> None:
        """Backward ``scoring_batches`` training batches (BN in eval mode,
        no optimizer step) so a relevance criterion can accumulate."""
        from mmengine.dist import get_rank
        from mmengine.utils import ProgressBar
        self.criterion.attach(model, graph)
        loader = runner.train_dataloader
        bar = ProgressBar(self.scoring_batches) if get_rank() == 0 else None
        was_training = model.training
        model.eval()
        try:
            for i, batch in enumerate(loader):
                if i >= self.scoring_batches:
                    break
                # training=False: no random resize of the scoring images
                data = model.data_preprocessor(batch, False)
                losses = model(**data, mode='loss')
                loss, _ = model.parse_losses(losses)
                loss.backward()
                if bar is not None:
                    bar.update()
        finally:
            model.train(was_training)
            model.zero_grad(set_to_none=True)
        if hasattr(self.criterion, 'sync'):
            self.criterion.sync()

    def _select(self, runner, model, graph, plan: PruningPlan) -> None:
        """Soft event: penalise (TPP) or mask the selected channels."""
        keep = plan.keep_arrays()
        selective = [r for r in self.regularizers
                     if hasattr(r, 'set_selection')]
        if not selective:
            self._mask = build_mask(model, graph, keep)
            self._mask.apply(model)
            return
        drop = {}
        for g in graph.groups:
            if g.name in keep:
                d = np.setdiff1d(np.arange(g.width), keep[g.name])
                if len(d):
                    drop[g.name] = d.tolist()
        window = self.interval * (len(runner.train_dataloader)
                                  if self.by_epoch else 1)
        for r in selective:
            if hasattr(r, 'delta_for_window') and hasattr(r, 'delta'):
                # lambda ramps 0 -> lambda_max over the window to the cut
                r.delta = r.delta_for_window(window, r.lambda_max,
                                             getattr(r, 'interval', 1))
            r.set_selection(graph, drop, reset_lambda=True)

    def _cut(self, runner, plan: PruningPlan, graph=None) -> None:
        model = unwrap(runner.model)
        if graph is None:
            graph = apis.analyze(model, self.residual_mode, self.trace_size,
                                 self.ignored_layers)
        plan.check_against(graph)
        before = self._cost(model, graph)
        if hasattr(self.criterion, 'detach'):
            self.criterion.detach()
        prune_runner(runner, graph, plan.keep_arrays())
        model = unwrap(runner.model)
        plans = apis.model_plans(model) + [plan]
        apis._record(model, plans, self.trace_size)
        ema = find_ema(runner)
        if ema is not None:
            apis._record(ema.module, plans, self.trace_size)
        self._mask = None
        self._attach(model)
        self._check_ranks(model, 'after a cut')
        self._log(runner, model, before)

    # ---------------------------------------------------- consistency
    @staticmethod
    def structure_hash(model) -> str:
        shapes = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
        return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]

    def _check_ranks(self, model, when: str) -> None:
        """Compare the structure hash of every rank; all ranks raise
        together (one collective), so none is left waiting."""
        from mmengine.dist import all_gather_object, get_world_size
        if get_world_size() < 2:
            return
        hashes = all_gather_object(self.structure_hash(model))
        if len(set(hashes)) != 1:
            per_rank = ', '.join(f'rank {i}: {h}'
                                 for i, h in enumerate(hashes))
            raise RuntimeError(
                f'mmprune: ranks disagree on the model structure {when} '
                f'({per_rank}); every rank must build, load or resume the '
                f'same model')

    def _log(self, runner, model, before) -> None:
        from ..utils.report import stage_table
        after = self._cost(model)
        dense = self.state['dense_cost']
        runner.logger.info(
            f'mmprune: cut at {"epoch" if self.by_epoch else "iter"} '
            f'{self._position(runner)}: {self.budget} {before / dense:.3f} '
            f'-> {after / dense:.3f} of dense (target {self.target})\n' +
            stage_table(model, self._cost_model(model)))
        self._update_scalars(model, after)

    def _update_scalars(self, model, cost: Optional[float] = None) -> None:
        """The curves logged every iteration: the budget's fraction of the
        dense model, the parameter count and the parameter sparsity."""
        dense = self.state['dense_cost']
        cost = self._cost(model) if cost is None else cost
        params = sum(p.numel() for p in model.parameters())
        self._scalars = {
            f'train/prune_{self.budget}_ratio': cost / dense,
            'train/prune_params_M': params / 1e6,
        }
        if self.state.get('dense_params'):
            self._scalars['train/prune_sparsity'] = \
                1 - params / self.state['dense_params']

    # ---------------------------------------------------- checkpoints
    @staticmethod
    def _checked_state(state: dict) -> dict:
        """Schema-check the hook state stored in a checkpoint (it decides
        what the resumed run does, so a bad value must not surface later
        as a TypeError in the middle of training)."""
        def bad(key, want):
            raise StructureError(f'mmprune training state: {key!r} must be '
                                 f'{want}, got {state[key]!r}')

        if 'events_done' in state:
            v = state['events_done']
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                bad('events_done', 'an int >= 0')
        for key in ('dense_cost', 'dense_params'):
            v = state.get(key)
            if v is not None and (
                    isinstance(v, bool) or not isinstance(v, (int, float))
                    or not np.isfinite(v) or v <= 0):
                bad(key, 'a finite number > 0 or null')
        if state.get('pending') is not None:
            try:
                PruningPlan.from_dict(state['pending'])
            except ValueError as e:
                raise StructureError(f'mmprune training state: pending '
                                     f'selection: {e}') from e
        if state.get('latency') is not None:
            try:
                LatencyTable.from_dict(state['latency'])
            except (ValueError, KeyError, TypeError) as e:
                raise StructureError(f'mmprune training state: {e}') from e
        regs = state.get('regularizers', [])
        if not isinstance(regs, list) or not all(isinstance(r, dict)
                                                 for r in regs):
            bad('regularizers', 'a list of dicts')
        return state

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = unwrap(runner.model)
        state = dict(self.state)
        state['regularizers'] = [r.state_dict() for r in self.regularizers
                                 if hasattr(r, 'state_dict')]
        checkpoint.setdefault('meta', {})[META_KEY] = make_meta(
            apis.model_plans(model), self.trace_size, state)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = (checkpoint.get('meta') or {}).get(META_KEY)
        if meta is None:
            return
        src = getattr(runner, '_load_from', None) or \
            f'the latest checkpoint in {runner.work_dir}'
        try:
            plans, size, state = read_meta(meta)
            state = self._checked_state(state)
        except StructureError as e:
            raise StructureError(f'{src}: {e}') from e
        model = unwrap(runner.model)
        old = dict(model.named_parameters())
        try:
            applied = apis.replay(model, plans, size)
        except ValueError as e:
            raise StructureError(
                f'{src}: its pruned structure does not fit the '
                f'{type(model).__name__} built from the config (a checkpoint '
                f'of another model or config?): {e}') from e
        if applied:
            # the optimizer was built on the dense parameters; its state
            # (when resuming) is loaded after this hook, already pruned
            optimizer = getattr(getattr(runner, 'optim_wrapper', None),
                                'optimizer', None)
            if isinstance(optimizer, torch.optim.Optimizer):
                rebind_optimizer(optimizer, old,
                                 dict(model.named_parameters()), {})
            ema = find_ema(runner)
            if ema is not None:
                apis.replay(ema.module, plans, size)
                refresh_ema_cache(ema)
            rewrap(runner, model)
        # NOTE: mmengine exposes "is this a resume" only as runner._resume
        if getattr(runner, '_resume', False) and state:
            self.state.update({k: state[k] for k in self.state if k in state})
            regs = [r for r in self.regularizers if hasattr(r,
                                                            'state_dict')]
            saved = state.get('regularizers', [])
            graph = None
            if self.state.get('pending') or regs:
                graph = self._graph(model)
            for r, st in zip(regs, saved):
                if 'graph' in r.load_state_dict.__code__.co_varnames:
                    r.load_state_dict(st, graph=graph)
                else:
                    r.load_state_dict(st)
            if self.state.get('pending') and not any(
                    hasattr(r, 'set_selection') for r in self.regularizers):
                self._mask = build_mask(model, graph, PruningPlan.from_dict(
                    self.state['pending']).keep_arrays())

