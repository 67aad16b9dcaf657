"""ChannelPruningHook: prune channels during ordinary mmdet training.

The hook decides *when*. The schedule (``allocators/schedule.py``) owns
the positions and each event's ramped target; the graph says what is
coupled; the criterion (lifecycle declared on ``BaseCriterion``) which
channels matter; the allocator how many to keep and whether the target is
reachable; the pruner cuts; ``runtime/`` keeps optimizer, EMA and DDP
consistent after a cut and rebuilds the structure on resume; regularisers
(``BaseRegularizer``) add their loss terms.

* ``soft=False``: each event removes channels at once (hard event).
* ``soft=True``: each event *selects* channels; they are masked (or, with a
  selective regulariser such as TPP, penalised while still trainable) until
  the next schedule position, where they are removed. The last selection is
  removed one ``interval`` after the last event.

Every rank computes the same plan (rank 0's plan is broadcast) and a hash of
the resulting structure is compared across ranks after each event.
"""
import json
from inspect import signature
from typing import Optional, Sequence

import numpy as np
from mmdet.registry import HOOKS
from mmengine.hooks import Hook

from .. import apis
from ..adapters.hooks import no_augmentation_epochs
from ..allocators.schedule import fits
from ..criteria.scoring import score_event
from ..methods import filter_groups
from ..models.prunable_detector import make_prunable
from ..pruners.masking import build_mask
from ..registry import ALLOCATORS, CRITERIA, build_from
from ..runtime.atomic_checkpoint import make_checkpoints_atomic
from ..runtime.consistency import check_ranks, rank0_result
from ..runtime.rebind import prune_runner, unwrap
from ..runtime.resume import record_runner, replay_runner
from ..structures import META_KEY, PruningPlan, make_meta
from .costs import CostTracker
from .settings import resolve
from .state import check_state, new_state

# what the checkpointed state keeps of a BPC search report
SEARCH_REPORT = ('evaluations', 'evaluator_calls', 'seconds', 'seconds_pool',
                 'seconds_search', 'seconds_per_eval', 'best_fitness',
                 'uniform_fitness', 'first_best', 'stopped', 'generations_run',
                 'best_genome', 'genes', 'counts', 'calib_batches',
                 'bn_batches', 'heldout_images', 'ea')


def cycle(loader):
    """Batches of ``loader``, epoch after epoch (a small training set
    still gives the search its calibration and held-out batches)."""
    while True:
        seen = False
        for batch in loader:
            seen = True
            yield batch
        if not seen:
            return


@HOOKS.register_module()
class ChannelPruningHook(Hook):
    """Prune a detector to a FLOPs/params target while it trains.

    Args:
        method (str, optional): a method preset (``'acp_tp'``, ``'bpc'``,
            ``'fcp'``, ``'gcp_frs'``; see :mod:`mmprune.methods`). It
            supplies the criterion, allocator, regularisers, residual mode,
            soft/hard events, scoring pass, group filter and the default
            schedule; any argument given here overrides it.
        family (str, optional): which of the preset's schedules is the
            default (e.g. ``'yolox_pretrained'``). Defaults to the preset's.
        target (float): fraction of the dense FLOPs (or params) to keep,
            in (0, 1]. Defaults to 0.5.
        budget (str): ``'flops'``, ``'params'`` or ``'latency'`` (ms
            predicted by ``latency_table``; ``target`` is then a fraction
            of the dense model's predicted latency; the method keeps its
            allocation and solves that budget from the table,
            :func:`mmprune.hooks.settings.latency_order`). Defaults to
            'flops'.
        latency_table (str, optional): with ``budget='latency'`` (and
            only then, where it is required): a table written by
            ``tools/analysis/latency_table.py`` for this model at
            ``input_size``. Read once before training, checked against the
            model (a table of another model or input size is refused by
            name) and kept in the checkpointed state, so a resumed run
            needs no file.
        search (dict | bool, optional): ``method='bpc'``: options of the
            blend search the first event runs
            (:class:`~mmprune.search.BlendSearchConfig` fields, over the
            preset's bounded in-training budget, see
            :mod:`mmprune.methods.bpc`), or False to score with the
            preset's uniform blend. An explicit ``criterion`` also skips
            the search.
        criterion (str | dict): a registered criterion. Defaults to
            'L1Criterion'.
        allocator (dict, optional): allocator cfg; ``ratio`` is set per
            event. Defaults to ``BudgetAllocator`` with ``min_keep``,
            ``max_prune_ratio`` and ``round_to``.
        residual_mode (str): ``'coupled'`` or ``'fine'``. Defaults to
            'coupled'.
        read_pruning (bool): fine mode only: each conv/linear reading a
            full-width residual stream keeps its own subset of it (a reader
            group, gathered in the compact model; docs/methods.md §3(d)),
            so every coupled choice is also a fine one. Scored by criteria
            that can score input columns (``scores_readers``: L1, BN
            scale); others leave the readers whole. Defaults to False.
        by_epoch (bool): schedule in epochs (else iterations).
        begin (int, optional): first event, after this many epochs/iters.
            Without it, a ``method``'s schedule is the preset's rescaled to
            the run's ``max_epochs`` in ``before_train``
            (``PruningSchedule.from_preset``: ACP-TP's events after epochs
            30, 40, ..., 200 of 300 become 1 and 2 of a 3-epoch run); a
            preset schedule not in epochs refuses with a message saying
            what to set. Without a method: 1.
        end (int, optional): last event at or before this. Defaults to
            ``begin`` (a single event).
        interval (int, optional): epochs/iters between events. Defaults
            to 1.
        ramp (str, optional): ``'cubic'`` or ``'linear'``. Defaults to the
            preset allocator's ramp, else 'cubic'.
        soft (bool, optional): select at events, cut at the next one.
            Defaults to True when a selective regulariser (TPP) is set.
        regularizers (list[dict], optional): REGULARIZERS cfgs
            (:class:`~mmprune.regularizers.BaseRegularizer`); their
            ``loss(model)`` terms are added to the detector's loss.
        scoring_batches (int, optional): data-driven criteria score on this
            many training batches at each event (train mode, batch
            statistics, no update); without it they accumulate during
            training (Taylor). Criteria that need a pass (LRP) require it.
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

    def __init__(self,
                 method: Optional[str] = None,
                 by_epoch: bool = True,
                 input_size: Sequence[int] = (640, 640),
                 trace_size: Sequence[int] = apis.TRACE_SIZE,
                 ignored_layers: Sequence[str] = (),
                 **settings):
        unknown = sorted(set(settings) - set(signature(resolve).parameters))
        if unknown:
            raise TypeError(f'ChannelPruningHook got unknown arguments '
                            f'{unknown}')
        # the method's components and schedule: hooks/settings.py
        settings = resolve(method, by_epoch=by_epoch, **settings)
        self._derive = settings.pop('derive')
        for key, value in settings.items():
            setattr(self, key, value)
        self.by_epoch = by_epoch
        self.costs = CostTracker(self.budget, input_size, self._graph)
        self.input_size = tuple(input_size)
        self.trace_size = tuple(trace_size)
        self.ignored_layers = tuple(ignored_layers)
        self.state = new_state()  # JSON-safe, saved in checkpoints
        self._mask = None
        self._scalars = {}  # the curves, re-sent every iteration (see below)

    # ------------------------------------------------------------ setup
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
                for r in self.regularizers
            ]

    def before_train(self, runner) -> None:
        total = runner.max_epochs if self.by_epoch else runner.max_iters
        if self._derive is not None:
            self.schedule = self._derive(total)
            runner.logger.info(f'mmprune: events after epochs '
                               f'{list(self.schedule.positions)}')
        fits(self.schedule, total, 'epoch' if self.by_epoch else 'iteration',
             no_augmentation_epochs(runner.hooks) if self.by_epoch else ())
        model = unwrap(runner.model)
        self.criterion.check_model(model)  # e.g. LRP on SiLU: refuse now
        check_ranks(model, 'before training')
        graph = self._graph(model)  # fails before training if it cannot
        if self.budget == 'latency':
            self._load_latency_grid(runner, model)
        if self.search:
            self._check_search_budget()
        if self.state['dense_cost'] is None:
            self.state['dense_cost'] = self._cost(model, graph)
            runner.logger.info('mmprune: ' + graph.summary().split('\n')[0])
            self._check_reachable(model, graph)
        if self._wants_latency() and self.state.get('latency') is None:
            # once, before training: ranks and resumed runs share the table
            self.state['latency'] = self.costs.measure_latency(
                model, runner.logger)
        if self.state.get('dense_params') is None:  # also: old checkpoints
            self.state['dense_params'] = sum(
                p.numel() for p in model.parameters()) if not \
                apis.model_plans(model) else None
        self._update_scalars(model)
        # AMP: a criterion accumulating gradients during training (Taylor)
        # divides each backward's contribution by the current loss scale
        # (a scoring pass runs its own unscaled backward)
        scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
        if scaler is not None and self.criterion.data_driven and \
                not self.scoring_batches and \
                self.criterion.loss_scale is None:
            self.criterion.loss_scale = scaler.get_scale
        self._attach(model, graph)

    def _wants_latency(self) -> bool:
        """The latency-aware order wants the linear LatencyTable (with a
        latency budget the grid serves it)."""
        cfg = self.allocator_cfg
        return cfg.get('cost_measure') == 'latency' and \
            cfg.get('cost_weight', 0) > 0 and self.budget != 'latency'

    def _load_latency_grid(self, runner, model) -> None:
        """budget='latency': the table, read once (a resumed run takes it
        from the state) and checked against the model before training."""
        from ..costs.latency_grid import LatencyGrid
        if self.state.get('latency_grid') is None:
            grid = LatencyGrid.load(self.latency_table)
        else:
            grid = LatencyGrid.from_dict(
                self.state['latency_grid'],
                source='latency table (from the checkpoint)')
        # a table of another model, input size or structure: refused here
        grid.check(model, input_size=self.input_size)
        self.state['latency_grid'] = grid.to_dict()
        self.costs.use_grid(grid)
        k = grid.key
        runner.logger.info(
            f"mmprune: latency budget: {grid.source}, backend "
            f"{k['backend']} on {k['device_name']}, batch {k['batch']}, "
            f"{k['input_size']}; dense {grid.total_ms:.2f} ms predicted")

    def _check_search_budget(self) -> None:
        from mmengine.dist import get_world_size
        if get_world_size() > 1 and self.search.get('time_budget_s'):
            raise ValueError(
                "ChannelPruningHook(method='bpc'): search time_budget_s "
                'would let ranks evaluate different numbers of blends '
                '(SyncBN/all-reduced statistics then hang); bound the '
                'search with max_evals in distributed training')

    def _check_reachable(self, model, graph) -> None:
        """Refuse, before training, a target the allocator's limits cannot
        reach over the schedule's events."""
        alloc = build_from(ALLOCATORS,
                           dict(self.allocator_cfg, ratio=self.target),
                           'allocator')
        names = self._names(graph)
        smallest = alloc.reachable_cost(
            model,
            graph,
            self.costs.model(model),
            names,
            events=self.schedule.num_events) / self.state['dense_cost']
        if smallest > self.target + 1e-9:
            n = len(graph.prunable_groups() if names is None else names)
            raise ValueError(
                f'ChannelPruningHook: target={self.target} ({self.budget}) '
                f'cannot be reached: with min_keep={alloc.min_keep} and '
                f'max_prune_ratio={alloc.max_prune_ratio} over '
                f'{self.schedule.num_events} event(s) the smallest model '
                f'keeps {smallest:.3f} of the dense {self.budget} ({n} '
                f'group(s) may be pruned; frozen modules, ignored_layers '
                f'and exclude_groups leave the others whole). Lower '
                f'min_keep, raise max_prune_ratio or add events, or raise '
                f'target')

    def _graph(self, model):
        return apis.analyze(
            model,
            self.residual_mode,
            self.trace_size,
            self.ignored_layers,
            read_pruning=self.read_pruning)

    def _names(self, graph):
        """The groups this method prunes (None: every prunable group)."""
        return filter_groups(graph, **self.exclude_groups) \
            if self.exclude_groups else None

    def _attach(self, model, graph=None) -> None:
        """(Re)attach regularisers and in-training criteria to the current
        structure."""
        # forward hooks bound to the old structure must not see the trace
        # of the new one
        self.criterion.detach()
        graph = graph or self._graph(model)
        for r in self.regularizers:
            r.attach(graph)
            if r.selective and not self.state['pending']:
                r.set_selection(graph, {})
        if self.criterion.data_driven and not self.scoring_batches:
            self.criterion.attach(model, graph)

    # ------------------------------------------------------- the events
    def _cost(self, model, graph=None, keep=None) -> float:
        self.costs.use_latency(self.state.get('latency'))
        return self.costs(model, graph, keep)

    def _position(self, runner) -> int:
        return (runner.epoch + 1) if self.by_epoch else (runner.iter + 1)

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None) -> None:
        # LoggerHook averages each train scalar since its last line: values
        # sent only at events would be averaged with older ones, so they go
        # every iteration and the curves step exactly at the cuts
        for key, value in self._scalars.items():
            runner.message_hub.update_scalar(key, value)
        for r in self.regularizers:
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
        cut = self.state['pending'] is not None and self.schedule.is_cut(pos)
        event = self.schedule.is_event(pos, self.state['events_done'])
        if cut or event:
            # rank 0's plan is applied everywhere: a rank whose model
            # differs would fail alone and leave the others waiting
            unit = 'epoch' if self.by_epoch else 'iter'
            check_ranks(
                unwrap(runner.model), f'before the prune step at {unit} {pos}')
        if cut:
            # clear 'pending' first: the re-attach inside _cut then drops the
            # regulariser's selection, whose positions refer to the old
            # widths (an event that finds its target met selects nothing new)
            plan, self.state['pending'] = self.state['pending'], None
            self._cut(runner, PruningPlan.from_dict(plan))
        if event:
            self._event(runner)

    def _event(self, runner) -> None:
        model = unwrap(runner.model)
        k = self.state['events_done'] + 1
        graph = self._graph(model)
        current = self._cost(model, graph)
        goal = self.schedule.target_at(k) * self.state['dense_cost']
        plan = None
        if current > goal:
            ratio = min(1.0, goal / current)
            if self.search and self.state.get('blend') is None:
                scores = self._search(runner, model, graph, ratio)
            else:
                scores = self._scores(runner, model, graph)

            def allocate():
                cfg = dict(self.allocator_cfg, ratio=ratio)
                keep = build_from(ALLOCATORS, cfg, 'allocator').allocate(
                    model, graph, scores, self.costs.model(model))
                return apis.make_plan(graph, keep).to_dict()

            # every rank applies rank 0's plan
            plan = rank0_result(allocate, f'prune event {k}')
        self.state['events_done'] = k
        n = self.schedule.num_events
        if plan is None:
            runner.logger.info(f'mmprune: event {k}/{n}: target already met')
            return
        if self.soft:
            self.state['pending'] = plan
            self._select(runner, model, graph, PruningPlan.from_dict(plan))
            runner.logger.info(f'mmprune: event {k}/{n}: selected channels '
                               f'(soft), removal at the next position')
        else:
            self._cut(runner, PruningPlan.from_dict(plan), graph)

    def _scores(self, runner, model, graph) -> dict:
        from mmengine.dist import get_rank
        from mmengine.utils import ProgressBar
        bar = ProgressBar(self.scoring_batches) if get_rank() == 0 and \
            self.scoring_batches and self.criterion.data_driven else None
        return score_event(model, self.criterion, graph, self._names(graph),
                           runner.train_dataloader, self.scoring_batches, bar)

    def _search(self, runner, model, graph, ratio: float) -> dict:
        """BPC: search the blend on this event's model (every rank: the
        pool's data-driven statistics are all-reduced; rank 0's plan is
        applied), keep it for later events, return its scores."""
        from ..search import search_blend
        names = self._names(graph)
        if names is None:
            names = [g.name for g in graph.prunable_groups()]
        data = cycle(runner.train_dataloader)  # calibration, then held-out
        res = search_blend(
            model,
            graph,
            names,
            data,
            data,
            cost=self.costs.model(model),
            allocator=dict(self.allocator_cfg, ratio=ratio),
            options=self.search,
            seed=getattr(runner, 'seed', None) or 0,
            log=runner.logger.info)
        rep = res.report
        found = json.loads(
            json.dumps(
                dict(
                    blend=res.blend,
                    search={k: rep[k]
                            for k in SEARCH_REPORT if k in rep}),
                default=float))
        # ranks search on their own batches: all keep rank 0's blend (the
        # plan of this event is rank 0's too)
        found = rank0_result(lambda: found, 'BPC search')
        self.state.update(found)
        self._use_blend()
        runner.logger.info(
            f"mmprune: BPC search: {rep['evaluator_calls']} evaluations in "
            f"{rep['seconds']:.1f} s ({rep['seconds_per_eval']:.2f} s each, "
            f"stopped by {rep['stopped']}); fitness (-det loss) best "
            f"{rep['best_fitness']:.5g} vs uniform blend "
            f"{rep['uniform_fitness']:.5g}; blend {res.blend['alphas']}")
        return res.scores

    def _use_blend(self) -> None:
        """Score with the searched blend from now on (also on resume)."""
        self.criterion.detach()
        self.criterion = build_from(
            CRITERIA, dict(type='BlendedCriterion', **self.state['blend']),
            'criterion')

    def _select(self, runner, model, graph, plan: PruningPlan) -> None:
        """Soft event: penalise (TPP) or mask the selected channels."""
        keep = plan.keep_arrays()
        selective = [r for r in self.regularizers if r.selective]
        if not selective:
            self._mask = build_mask(model, graph, keep)
            self._mask.apply(model)
            return
        # {group: to-prune indices}: the complement of the kept ones
        drop = {
            n: np.setdiff1d(np.arange(plan.widths[n]), k).tolist()
            for n, k in keep.items() if len(k) < plan.widths[n]
        }
        # the penalty ramps 0 -> lambda_max over the window to the cut
        window = self.schedule.window(
            len(runner.train_dataloader) if self.by_epoch else 1)
        for r in selective:
            r.set_selection(graph, drop, window=window)

    def _cut(self, runner, plan: PruningPlan, graph=None) -> None:
        model = unwrap(runner.model)
        graph = graph or self._graph(model)
        plan.check_against(graph)
        before = self._cost(model, graph)
        self.criterion.detach()
        prune_runner(runner, graph, plan.keep_arrays())
        record_runner(runner, plan, self.trace_size)
        model = unwrap(runner.model)
        self._mask = None
        self._attach(model)
        check_ranks(model, 'after a cut')
        self._log(runner, model, before)

    # ---------------------------------------------------------- logs
    def _log(self, runner, model, before) -> None:
        from ..utils.report import stage_table
        after = self._cost(model)
        dense = self.state['dense_cost']
        runner.logger.info(
            f'mmprune: cut at {"epoch" if self.by_epoch else "iter"} '
            f'{self._position(runner)}: {self.budget} {before / dense:.3f} '
            f'-> {after / dense:.3f} of dense (target {self.target})\n' +
            stage_table(model, self.costs.model(model)))
        self._update_scalars(model, after)

    def _update_scalars(self, model, cost: Optional[float] = None) -> None:
        self._scalars = self.costs.scalars(model, self.state['dense_cost'],
                                           self.state['dense_params'], cost)

    # ---------------------------------------------------- checkpoints
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = unwrap(runner.model)
        state = dict(
            self.state,
            regularizers=[r.state_dict() for r in self.regularizers])
        checkpoint.setdefault('meta', {})[META_KEY] = make_meta(
            apis.model_plans(model), self.trace_size, state)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = replay_runner(runner, checkpoint, check_state)
        # NOTE: mmengine exposes "is this a resume" only as runner._resume
        if not state or not getattr(runner, '_resume', False):
            return
        self.state.update({k: state[k] for k in self.state if k in state})
        if self.search and self.state.get('blend') is not None:
            self._use_blend()  # the searched blend, not a new search
        model = unwrap(runner.model)
        graph = None
        if self.state.get('pending') or self.regularizers:
            graph = self._graph(model)
        for r, st in zip(self.regularizers, state.get('regularizers', [])):
            r.load_state_dict(st, graph=graph)
        if self.state.get('pending') and not any(r.selective
                                                 for r in self.regularizers):
            self._mask = build_mask(
                model, graph,
                PruningPlan.from_dict(self.state['pending']).keep_arrays())
