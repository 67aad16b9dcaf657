"""BPC blend search: find calibration factors for a pool of criteria.

    python tools/search_blend.py CONFIG CHECKPOINT --flops-ratio 0.5 \
        --out work_dirs/blend.py [--pool l1,l2,fpgm,bn_scale,taylor,hrank] \
        [--pop-size 32 --generations 20 --elite 8 --seed 0] \
        [--calib-batches 32 --bn-batches 50 --fitness-images 200]

Steps (methods spec §2B; the search is our choice, see
:mod:`mmprune.criteria.blended` and :mod:`mmprune.search`):

1. build the detector from CONFIG, load CHECKPOINT, trace its groups
   (BPC excludes residual streams and FPN/heads by default);
2. compute the pool of criteria on every group (Taylor/HRank on
   ``--calib-batches`` train batches);
3. cluster the criteria per group (Spearman, rho >= ``--rho``), vote the
   candidates per stage; one gene per (stage, candidate);
4. fix per-group kept counts for the FLOPs target (uniform by default);
5. run the EA; fitness = negative detection loss on ``--fitness-images``
   held-out (val) images after adaptive-BN recalibration on
   ``--bn-batches`` train batches;
6. write ``blend = dict(...)`` to ``--out`` atomically (usable as
   ``criterion=dict(type='BlendedCriterion', **blend)``) and a JSON report
   next to it.

``search_blend(model, graph, ...)`` runs steps 2-5 on a model object (for
tests and notebooks).
"""
import argparse
import math
import os.path as osp
import pprint
import sys
from typing import Callable, Dict, Optional, Sequence

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

ALLOCATIONS = ('uniform', 'global')


def search_blend(model, graph, *, cost, ratio: float, train_batches,
                 loss_fn: Callable, forward_fn: Callable,
                 val_batches: Sequence = (),
                 eval_fn: Optional[Callable] = None,
                 pool: Optional[Dict[str, dict]] = None,
                 groups: Optional[Sequence[str]] = None,
                 allocation: str = 'uniform', rho_threshold: float = 0.9,
                 vote: float = 0.5, ea=None, calib_batches: int = 32,
                 bn_batches: int = 50, stages=None, normalize: str = 'rank',
                 min_keep: int = 8, max_prune_ratio: float = 0.8,
                 round_to: int = 1, log: Optional[Callable] = None) -> dict:
    """Search a blend on ``model`` (dense, trained) and ``graph``.

    Args:
        cost: the model's :class:`~mmprune.utils.flops.CostModel`.
        ratio (float): FLOPs to keep, in (0, 1].
        train_batches (Sequence): calibration and adaptive-BN batches.
        loss_fn (Callable): ``(model, batch) -> scalar loss``.
        forward_fn (Callable): ``(model, batch)`` forward (adaptive BN).
        val_batches (Sequence): held-out batches for the default fitness
            (``-mean loss_fn``).
        eval_fn (Callable | None): ``model -> float`` fitness instead.
        pool (dict | None): ``{key: criterion config}``. Defaults to
            ``DEFAULT_POOL``.
        groups (Sequence[str] | None): groups to prune (default: all
            prunable groups).
        allocation (str): ``'uniform'`` or ``'global'`` counts, fixed from
            the uniform blend for the whole search.
        ea (EAConfig | None): EA settings.

    Returns:
        dict: ``blend`` (kwargs of BlendedCriterion), ``result``
        (EAResult), ``clusters`` (see ``cluster_pool``), ``counts``.
    """
    import numpy as np

    from mmprune.allocators import GlobalThresholdAllocator, UniformAllocator
    from mmprune.criteria.blended import (DEFAULT_POOL, BlendLayout,
                                          blend_scores, cluster_pool,
                                          make_stage_fn)
    from mmprune.registry import CRITERIA, build_from
    from mmprune.search import (BlendFitness, EAConfig, MaskedEvaluator,
                                calibrate_pool, counts_of, evolve,
                                negative_loss)

    if allocation not in ALLOCATIONS:
        raise ValueError(f'allocation must be one of {ALLOCATIONS}, got '
                         f'{allocation!r}')
    pool_cfg = dict(DEFAULT_POOL if pool is None else pool)
    criteria = {k: build_from(CRITERIA, cfg, 'criterion')
                for k, cfg in pool_cfg.items()}
    train_batches = list(train_batches)
    say = log or (lambda msg: None)
    say(f'computing the pool {sorted(criteria)} on {len(graph.groups)} '
        f'groups')
    pool_scores = calibrate_pool(model, graph, criteria, train_batches,
                                 loss_fn, calib_batches)
    if groups is not None:
        keep_names = set(groups)
        unknown = keep_names - set(next(iter(pool_scores.values())))
        if unknown:
            raise ValueError(f'groups not prunable or unknown: '
                             f'{sorted(unknown)[:5]}')
        pool_scores = {k: {g: s for g, s in v.items() if g in keep_names}
                       for k, v in pool_scores.items()}
    if not next(iter(pool_scores.values())):
        raise ValueError('no group to search a blend for')
    stage_fn = make_stage_fn(stages)
    clusters = cluster_pool(pool_scores, stage_fn, rho_threshold, vote)
    layout = BlendLayout(clusters['stages'])
    say(f'{len(layout)} genes: {layout.genes}')
    uniform_blend = blend_scores(pool_scores, layout.alphas(
        np.ones(len(layout))), stage_fn, normalize)
    alloc_cls = UniformAllocator if allocation == 'uniform' else \
        GlobalThresholdAllocator
    allocator = alloc_cls(ratio, min_keep=min_keep,
                          max_prune_ratio=max_prune_ratio, round_to=round_to)
    counts = counts_of(allocator.allocate(model, graph, uniform_blend, cost))
    if eval_fn is None:
        eval_fn = negative_loss(val_batches, loss_fn)
    evaluator = MaskedEvaluator(model, graph, counts, eval_fn, train_batches,
                                forward_fn, bn_batches)
    fitness = BlendFitness(pool_scores, layout, evaluator, stage_fn,
                           normalize)
    result = evolve(fitness, len(layout), ea or EAConfig(),
                    seeds=layout.seeds(), log=say)
    blend = dict(criteria={k: dict(pool_cfg[k]) for k in layout.keys},
                 alphas=layout.alphas(result.best), normalize=normalize)
    if stages:
        blend['stages'] = [list(s) for s in stages]
    return dict(blend=blend, result=result, clusters=clusters,
                counts=counts)


def blend_source(blend: dict, header: Sequence[str] = ()) -> str:
    """The text of a config snippet defining ``blend``."""
    lines = ['# BPC blend found by tools/search_blend.py. Use it as',
             "#   criterion=dict(type='BlendedCriterion', **blend)"]
    lines += [f'# {h}' for h in header]
    lines.append('blend = ' + pprint.pformat(blend, width=76,
                                             sort_dicts=True))
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='config file (or mmdet::path)')
    p.add_argument('checkpoint', help='trained dense weights')
    p.add_argument('--flops-ratio', type=float, required=True,
                   help='fraction of FLOPs to keep, in (0, 1]')
    p.add_argument('--out', required=True, help='blend .py file to write')
    p.add_argument('--pool', default='l1,l2,fpgm,bn_scale,taylor,hrank',
                   help='comma-separated criteria of the default pool')
    p.add_argument('--residual-mode', default='coupled',
                   choices=['coupled', 'fine'])
    p.add_argument('--include-coupled', action='store_true',
                   help='also prune residual streams / FPN laterals')
    p.add_argument('--allocation', default='uniform', choices=ALLOCATIONS)
    p.add_argument('--rho', type=float, default=0.9,
                   help='Spearman threshold of the clustering')
    p.add_argument('--pop-size', type=int, default=32)
    p.add_argument('--generations', type=int, default=20)
    p.add_argument('--elite', type=int, default=8)
    p.add_argument('--crossover-p', type=float, default=0.5)
    p.add_argument('--mutation-sigma', type=float, default=0.2)
    p.add_argument('--mutation-p', type=float, default=0.1)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--calib-batches', type=int, default=32)
    p.add_argument('--bn-batches', type=int, default=50)
    p.add_argument('--fitness-images', type=int, default=200)
    p.add_argument('--min-keep', type=int, default=8)
    p.add_argument('--max-prune-ratio', type=float, default=0.8)
    p.add_argument('--round-to', type=int, default=1)
    p.add_argument('--input-size', type=int, nargs=2, default=[640, 640],
                   metavar=('H', 'W'), help='input size for FLOPs')
    p.add_argument('--device', default='cpu')
    args = p.parse_args(argv)
    if not 0 < args.flops_ratio <= 1:
        p.error(f'--flops-ratio must be in (0, 1], got {args.flops_ratio}')
    for name in ('calib_batches', 'bn_batches', 'fitness_images'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1')
    if not 0 < args.rho <= 1:
        p.error(f'--rho must be in (0, 1], got {args.rho}')
    return args


def _take(loader, n: int) -> list:
    out = []
    for batch in loader:
        if len(out) >= n:
            break
        out.append(batch)
    return out


def main(argv=None):
    args = parse_args(argv)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner, load_checkpoint

    import mmprune  # noqa: F401
    from mmprune import apis
    from mmprune.criteria.blended import DEFAULT_POOL
    from mmprune.methods import filter_groups, get_method
    from mmprune.search import EAConfig, mmdet_forward, mmdet_loss
    from mmprune.utils.io import write_json_atomic, write_text_atomic
    from mmprune.utils.offline import check_offline_weights

    keys = [k.strip() for k in args.pool.split(',') if k.strip()]
    unknown = [k for k in keys if k not in DEFAULT_POOL]
    if unknown:
        raise SystemExit(f'--pool: unknown criteria {unknown}; valid: '
                         f'{sorted(DEFAULT_POOL)}')
    ea = EAConfig(pop_size=args.pop_size, generations=args.generations,
                  elite=args.elite, crossover_p=args.crossover_p,
                  mutation_sigma=args.mutation_sigma,
                  mutation_p=args.mutation_p, seed=args.seed)
    register_all_modules()
    cfg = apis.load_config(args.config)
    check_offline_weights(cfg)
    model = MODELS.build(cfg.model)
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    model.to(args.device).eval()
    graph = apis.analyze(model, args.residual_mode)
    cost = apis.cost_model(model, tuple(args.input_size))
    group_filter = dict(get_method('bpc').groups)
    if args.include_coupled:
        group_filter['exclude_coupled'] = False
    groups = filter_groups(graph, **group_filter)
    train_loader = Runner.build_dataloader(cfg.train_dataloader)
    val_loader = Runner.build_dataloader(cfg.val_dataloader)
    n_train = max(args.calib_batches, args.bn_batches)
    train_batches = _take(train_loader, n_train)
    val_bs = cfg.val_dataloader.get('batch_size', 1)
    val_batches = _take(val_loader, math.ceil(args.fitness_images / val_bs))
    out = search_blend(
        model, graph, cost=cost, ratio=args.flops_ratio,
        train_batches=train_batches, val_batches=val_batches,
        loss_fn=mmdet_loss, forward_fn=mmdet_forward,
        pool={k: DEFAULT_POOL[k] for k in keys}, groups=groups,
        allocation=args.allocation, rho_threshold=args.rho, ea=ea,
        calib_batches=args.calib_batches, bn_batches=args.bn_batches,
        min_keep=args.min_keep, max_prune_ratio=args.max_prune_ratio,
        round_to=args.round_to, log=print)
    res = out['result']
    header = [f'config: {args.config}', f'checkpoint: {args.checkpoint}',
              f'flops ratio {args.flops_ratio}, fitness -det loss: best '
              f'{res.best_fitness:.6g} (generation 0: '
              f'{res.first_best:.6g}), seed {args.seed}']
    write_text_atomic(args.out, blend_source(out['blend'], header))
    report = dict(config=args.config, checkpoint=args.checkpoint,
                  flops_ratio=args.flops_ratio, ea=vars(ea),
                  result=res.to_dict(), clusters=out['clusters'],
                  counts=out['counts'], blend=out['blend'])
    write_json_atomic(report, osp.splitext(args.out)[0] + '.json', indent=1)
    print(f'blend written to {args.out}')
    return out


if __name__ == '__main__':
    main()
