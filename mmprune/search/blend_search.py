"""BPC's blend search, end to end: one entry point for the hook and the tool.

Paper: He, Huang, Liang, Liang, Yang, "Blending Pruning Criteria for
Convolutional Neural Networks", ICANN 2021, LNCS 12894 pp. 3-15,
arXiv 2107.05033. Specification: docs/methods.md §2 (the steps below are
§2B(a); everything concrete is our choice, see that section).

:func:`search_blend` runs, on a dense model and the groups a method prunes:

1. the criteria pool on ``calib_batches`` calibration batches
   (:func:`~mmprune.search.fitness.calibrate_pool`; data-driven members
   attach to those groups only);
2. Spearman clustering of the criteria per group, medoids as candidates,
   candidates voted per stage (:func:`~mmprune.criteria.blended.cluster_pool`);
   one gene per (stage, candidate) (:class:`~mmprune.criteria.blended.
   BlendLayout`);
3. kept counts fixed once from the uniform blend by the caller's allocator
   (the EA compares criteria, not allocations, §2B(b));
4. the EA (:func:`~mmprune.search.evolution.evolve`) over the calibration
   factors; fitness of a genome = minus the detection loss on held-out
   batches after masking the genome's pruning and adaptive BN on
   ``bn_batches`` calibration batches
   (:class:`~mmprune.search.fitness.MaskedEvaluator`), within the budget
   ``max_evals`` / ``time_budget_s``.

It returns the blend (kwargs of ``BlendedCriterion``), the best blend's
scores for the searched groups and a report (evaluations, seconds, best
versus uniform fitness). ``tools/search_blend.py`` calls the same function.
"""
import itertools
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..criteria.blended import (DEFAULT_POOL, BlendLayout, blend_scores,
                                cluster_pool, make_stage_fn)
from ..registry import ALLOCATORS, CRITERIA, build_from
from .evolution import EAConfig, evolve
from .fitness import (BlendFitness, MaskedEvaluator, calibrate_pool, counts_of,
                      mmdet_forward, mmdet_loss, negative_loss)

FITNESSES = ('neg_det_loss', )
ALLOCATIONS = ('uniform', 'global')


@dataclass
class BlendSearchConfig(EAConfig):
    """BPC search options (defaults: docs/methods.md §2B(e)); the keys of
    ``get_method('bpc').options['search']`` plus the search budget.

    Args:
        pool (Sequence[str] | dict): keys of ``DEFAULT_POOL`` or ``{key:
            criterion config}``. Defaults to the six criteria of §2A.
        rho_threshold (float): Spearman cut of the clustering. Defaults
            to 0.9.
        vote (float): fraction of a stage's groups in which a criterion
            must be a medoid to be a candidate there. Defaults to 0.5.
        normalize (str): ``'rank'`` or ``'minmax'``. Defaults to 'rank'.
        stages (Sequence | None): ``(regex, stage)`` overrides of the
            default stage map. Defaults to None.
        pop_size, generations, elite, crossover_p, mutation_sigma,
        mutation_p, tournament, low, high: the EA, inherited from
        :class:`EAConfig`.
        calib_batches (int): calibration batches for the data-driven
            criteria. Defaults to 32.
        bn_batches (int): adaptive-BN batches per genome (the first ones of
            the calibration data). Defaults to 50.
        fitness_images (int): held-out images of the fitness. Defaults to
            200.
        fitness (str): ``'neg_det_loss'`` (the only built-in fitness; pass
            ``eval_fn`` to :func:`search_blend` for another). Defaults to
            'neg_det_loss'.
        allocation (str): ``'uniform'`` or ``'global'``: the allocator the
            tool builds when the caller gives none. Defaults to 'uniform'.
        max_evals (int | None): fitness evaluations at most. Defaults to
            None (``pop_size + generations * (pop_size - elite)``).
        time_budget_s (float | None): no new evaluation after this many
            seconds of EA. Defaults to None.
        seed_uniform (bool): put the uniform blend in generation 0 (with
            the one-hot blends). Defaults to True.
        seed (int): EA seed. Defaults to 0.
    """
    pool: Union[Sequence[str], Dict[str, dict]] = tuple(DEFAULT_POOL)
    rho_threshold: float = 0.9
    vote: float = 0.5
    normalize: str = 'rank'
    stages: Optional[Sequence[Tuple[str, str]]] = None
    calib_batches: int = 32
    bn_batches: int = 50
    fitness_images: int = 200
    fitness: str = 'neg_det_loss'
    allocation: str = 'uniform'
    seed_uniform: bool = True

    def __post_init__(self):
        super().__post_init__()  # the EA's own checks
        for name in ('calib_batches', 'bn_batches', 'fitness_images'):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, int) and v >= 1):
                raise ValueError(f'{name} must be an int >= 1, got {v!r}')
        if not (isinstance(self.rho_threshold,
                           (int, float)) and -1 <= self.rho_threshold <= 1):
            raise ValueError(f'rho_threshold must be in [-1, 1], got '
                             f'{self.rho_threshold!r}')
        if not (isinstance(self.vote, (int, float)) and 0 <= self.vote <= 1):
            raise ValueError(f'vote must be in [0, 1], got {self.vote!r}')
        if self.normalize not in ('rank', 'minmax'):
            raise ValueError(f"normalize must be 'rank' or 'minmax', got "
                             f'{self.normalize!r}')
        if self.fitness not in FITNESSES:
            raise ValueError(f'fitness must be one of {FITNESSES} (or pass '
                             f'eval_fn), got {self.fitness!r}')
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f'allocation must be one of {ALLOCATIONS}, got '
                             f'{self.allocation!r}')
        self.pool_cfg()  # validate the pool now

    @classmethod
    def from_options(cls, options=None, **overrides) -> 'BlendSearchConfig':
        """Build from a dict such as the BPC preset's ``options['search']``
        (unknown keys raise a ValueError naming them), then ``overrides``."""
        if isinstance(options, cls):
            options = asdict(options)
        merged = dict(options or {})
        merged.update(overrides)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f'unknown BPC search option(s) {unknown}; valid '
                             f'options: {sorted(known)}')
        return cls(**merged)

    def pool_cfg(self) -> Dict[str, dict]:
        """``{key: criterion config}`` of the pool."""
        if isinstance(self.pool, dict):
            pool = {str(k): dict(v) for k, v in self.pool.items()}
        else:
            keys = list(self.pool)
            unknown = [k for k in keys if k not in DEFAULT_POOL]
            if unknown:
                raise ValueError(f'pool names unknown criteria {unknown}; '
                                 f'valid keys: {sorted(DEFAULT_POOL)} (or '
                                 f'pass a dict key -> criterion config)')
            pool = {k: dict(DEFAULT_POOL[k]) for k in keys}
        if len(pool) < 1:
            raise ValueError('pool must name at least one criterion')
        return pool

    def ea_config(self) -> EAConfig:
        """The EA part of this config (its :class:`EAConfig` fields)."""
        return EAConfig(
            **{f.name: getattr(self, f.name)
               for f in fields(EAConfig)})


@dataclass
class BlendSearchResult:
    """What :func:`search_blend` found.

    Attributes:
        blend (dict): kwargs of ``BlendedCriterion`` (``criteria``,
            ``alphas``, ``normalize``, optional ``stages``).
        scores (dict): ``{group: (G,) float32}`` the best blend's scores of
            the searched groups (feed them to the allocator).
        report (dict): JSON-safe: ``evaluations``, ``seconds`` (total),
            ``seconds_pool``, ``seconds_search``, ``seconds_per_eval``,
            ``best_fitness``, ``uniform_fitness``, ``first_best``,
            ``stopped``, ``generations_run``, ``genes``, ``clusters``,
            ``counts``, ``history`` and the data sizes used.
    """
    blend: dict
    scores: Dict[str, torch.Tensor]
    report: dict = field(default_factory=dict)


def take_batches(data: Iterable, n: int, what: str) -> list:
    """The first ``n`` batches of ``data`` (fewer if it ends). Reads no
    batch beyond them: calibration and held-out batches may come from one
    iterator, one after the other."""
    if data is None:
        raise ValueError(f'{what} is None; pass an iterable of batches')
    out = list(itertools.islice(data, n))
    if not out:
        raise ValueError(f'{what} yielded no batch')
    return out


def batch_images(batch) -> int:
    """Images in one batch: ``len(inputs)`` of an mmdet data dict, the
    first dimension of a tensor (or of a tuple's first tensor), else 1."""
    if isinstance(batch, dict) and 'inputs' in batch:
        return len(batch['inputs'])
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (tuple, list)) and batch and \
            isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    return 1


def take_images(data: Iterable, n: int, what: str) -> list:
    """Batches of ``data`` until they hold ``n`` images."""
    if data is None:
        raise ValueError(f'{what} is None; pass an iterable of batches')
    out, seen, it = [], 0, iter(data)
    while seen < n:
        batch = next(it, None)
        if batch is None:
            break
        out.append(batch)
        seen += batch_images(batch)
    if not out:
        raise ValueError(f'{what} yielded no batch')
    return out


def build_allocator(allocator, what: str = 'allocator'):
    """An allocator instance from an instance or a config dict."""
    if isinstance(allocator, dict):
        return build_from(ALLOCATORS, dict(allocator), what)
    if not callable(getattr(allocator, 'allocate', None)):
        raise ValueError(f'{what} must be an allocator or its config dict, '
                         f'got {allocator!r}')
    return allocator


def search_blend(
        model: nn.Module,
        graph,
        groups: Sequence[str],
        calib_data: Iterable,
        heldout_data: Iterable,
        *,
        cost,
        allocator,
        options=None,
        seed: Optional[int] = None,
        loss_fn: Callable = mmdet_loss,
        forward_fn: Callable = mmdet_forward,
        eval_fn: Optional[Callable[[nn.Module], float]] = None,
        log: Optional[Callable[[str], None]] = None) -> BlendSearchResult:
    """Search BPC's calibration factors for ``groups`` of ``model``.

    Deterministic given ``seed`` (and the batches), unless
    ``time_budget_s`` stops the EA. The model comes back as it went in:
    same weights, BN statistics and per-module train/eval flags, gradients
    cleared (``None``). Data-driven pool members all-reduce their sums
    under torch.distributed, so in a distributed run every rank must call
    this function (the EA itself is rank-local: broadcast rank 0's
    result).

    Args:
        model (nn.Module): the dense detector (unwrapped from DDP), trained
            or pretrained. mmdet data batches go through its
            ``data_preprocessor`` (``training=False``).
        graph (ChannelGraph): its channel graph (``apis.analyze``).
        groups (Sequence[str]): names of the prunable groups to prune
            (e.g. ``filter_groups(graph, **preset.groups)``); only these
            are scored, clustered and masked.
        calib_data (Iterable): calibration batches, as the train
            dataloader yields them; the first ``max(calib_batches,
            bn_batches)`` are read once and kept (every genome sees the
            same adaptive-BN batches).
        heldout_data (Iterable): held-out batches (e.g. the val
            dataloader, with annotations); batches are read until
            ``fitness_images`` images.
        cost (CostModel): the model's cost model (``apis.cost_model``).
        allocator (dict | BaseAllocator): fixes the kept count per group
            from the uniform blend, e.g. ``dict(type='UniformAllocator',
            ratio=0.5, min_keep=8)``; ``ratio`` is the cost to keep
            relative to the model as it is now.
        options (dict | BlendSearchConfig | None): BPC search options
            (:class:`BlendSearchConfig`), e.g. the preset's
            ``options['search']`` plus ``max_evals``/``time_budget_s``.
        seed (int | None): overrides ``options['seed']``.
        loss_fn (Callable): ``(model, batch) -> scalar loss``. Defaults to
            :func:`mmdet_loss`.
        forward_fn (Callable): ``(model, batch)`` forward for adaptive BN.
            Defaults to :func:`mmdet_forward`.
        eval_fn (Callable | None): ``model -> float`` (higher is better)
            instead of minus the mean ``loss_fn`` on the held-out batches.
        log (Callable | None): called with progress lines.

    Returns:
        BlendSearchResult: the blend, its scores and the report.

    Examples:
        >>> res = search_blend(model, graph, names, runner.train_dataloader,
        ...                    runner.val_dataloader, cost=cost,
        ...                    allocator=dict(type='UniformAllocator',
        ...                                   ratio=0.5),
        ...                    options=dict(pop_size=8, generations=2,
        ...                                 elite=2, max_evals=12))
        >>> keep = allocator.allocate(model, graph, res.scores, cost)
    """
    t0 = time.perf_counter()
    say = log or (lambda msg: None)
    cfg = BlendSearchConfig.from_options(
        options, **({} if seed is None else dict(seed=seed)))
    groups = list(dict.fromkeys(groups or ()))
    if not groups:
        raise ValueError('search_blend: groups is empty; pass the names of '
                         'the prunable groups to prune')
    prunable = {g.name for g in graph.prunable_groups()}
    unknown = [n for n in groups if n not in prunable]
    if unknown:
        raise ValueError(f'search_blend: groups {unknown[:5]} are not '
                         f'prunable groups of the graph')
    alloc = build_allocator(allocator)
    pool_cfg = cfg.pool_cfg()
    criteria = {
        k: build_from(CRITERIA, c, f'pool[{k!r}]')
        for k, c in pool_cfg.items()
    }
    calib = take_batches(calib_data, max(cfg.calib_batches, cfg.bn_batches),
                         'calib_data')
    heldout = None
    if eval_fn is None:
        heldout = take_images(heldout_data, cfg.fitness_images, 'heldout_data')
        eval_fn = negative_loss(heldout, loss_fn)

    # 1. the pool, on the searched groups only
    say(f'BPC: scoring the pool {sorted(criteria)} on {len(groups)} groups '
        f'({min(len(calib), cfg.calib_batches)} calibration batches)')
    pool = calibrate_pool(
        model,
        graph,
        criteria,
        calib,
        loss_fn,
        cfg.calib_batches,
        names=groups)
    t_pool = time.perf_counter() - t0

    # 2. clusters, medoids, genes
    stage_fn = make_stage_fn(cfg.stages)
    clusters = cluster_pool(pool, stage_fn, cfg.rho_threshold, cfg.vote)
    layout = BlendLayout(clusters['stages'])
    say(f'BPC: {len(layout)} genes {layout.genes}')

    # 3. counts fixed from the uniform blend
    uniform = np.ones(len(layout))
    uniform_scores = blend_scores(pool, layout.alphas(uniform), stage_fn,
                                  cfg.normalize)
    counts = counts_of(alloc.allocate(model, graph, uniform_scores, cost))

    # 4. the EA on the masked-model fitness
    evaluator = MaskedEvaluator(model, graph, counts, eval_fn, calib,
                                forward_fn, cfg.bn_batches)
    fitness = BlendFitness(pool, layout, evaluator, stage_fn, cfg.normalize)
    seeds = layout.seeds()
    if not cfg.seed_uniform:
        seeds = seeds[:-1]  # BlendLayout.seeds() puts uniform last
    t1 = time.perf_counter()
    try:
        res = evolve(
            fitness, len(layout), cfg.ea_config(), seeds=seeds, log=say)
        # the baseline: the uniform blend under the same fitness (a cache
        # hit when it was seeded)
        uniform_fitness = fitness(uniform)
    finally:
        evaluator.restore()
        model.zero_grad(set_to_none=True)
    t_search = time.perf_counter() - t1
    blend = dict(
        criteria={k: dict(pool_cfg[k])
                  for k in layout.keys},
        alphas=layout.alphas(res.best),
        normalize=cfg.normalize)
    if cfg.stages:
        blend['stages'] = [list(s) for s in cfg.stages]
    calls = max(1, evaluator.calls)
    report = dict(
        evaluations=res.evaluations,
        evaluator_calls=evaluator.calls,
        seconds=time.perf_counter() - t0,
        seconds_pool=t_pool,
        seconds_search=t_search,
        seconds_per_eval=t_search / calls,
        best_fitness=res.best_fitness,
        uniform_fitness=float(uniform_fitness),
        first_best=res.first_best,
        stopped=res.stopped,
        generations_run=max(0,
                            len(res.history) - 1),
        best_genome=[float(x) for x in res.best],
        genes=[list(g) for g in layout.genes],
        clusters=clusters,
        counts=counts,
        history=res.history,
        calib_batches=min(len(calib), cfg.calib_batches),
        bn_batches=min(len(calib), cfg.bn_batches),
        heldout_images=(sum(
            batch_images(b)
            for b in heldout) if heldout is not None else None),
        ea=asdict(cfg.ea_config()))
    say(f'BPC: best fitness {res.best_fitness:.6g} vs uniform '
        f'{uniform_fitness:.6g}; {evaluator.calls} evaluations in '
        f'{t_search:.1f} s ({report["seconds_per_eval"]:.2f} s each), '
        f'stopped by {res.stopped}')
    if not math.isfinite(res.best_fitness):
        raise RuntimeError(f'BPC search: no genome had a finite fitness '
                           f'(held-out loss is NaN/inf for all '
                           f'{res.evaluations} evaluated blends)')
    return BlendSearchResult(
        blend=blend, scores=fitness.scores(res.best), report=report)
