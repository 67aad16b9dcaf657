"""BPC blend search: find calibration factors for a pool of criteria.

    python tools/search_blend.py CONFIG CHECKPOINT --flops-ratio 0.5 \
        --out work_dirs/blend.py [--pool l1,l2,fpgm,bn_scale,taylor,hrank] \
        [--pop-size 32 --generations 20 --elite 8 --seed 0] \
        [--calib-batches 32 --bn-batches 50 --fitness-images 200] \
        [--max-evals N --time-budget SECONDS]

Steps (docs/methods.md §2B):

1. build the detector from CONFIG, load CHECKPOINT, trace its groups and
   keep the ones the BPC preset prunes (``get_method('bpc').groups``:
   residual streams and the RoI head left out; ``--include-coupled``
   keeps streams);
2. run :func:`mmprune.search.search_blend` on those groups, the same entry
   point the training hook calls: the pool on ``--calib-batches`` train
   batches, Spearman clustering (``--rho``), medoids, per-group counts
   fixed by the ``--allocation`` allocator at ``--flops-ratio``, and the
   EA whose fitness is minus the detection loss on ``--fitness-images``
   val images after adaptive BN on ``--bn-batches`` train batches;
3. write ``blend = dict(...)`` to ``--out`` atomically (usable as
   ``criterion=dict(type='BlendedCriterion', **blend)``) and the search
   report as JSON next to it.
"""
import argparse
import os.path as osp
import pprint
import sys
from typing import Sequence

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

# --allocation -> the allocator that fixes the kept counts (§2B(b))
ALLOCATORS = {
    'uniform': 'UniformAllocator',
    'global': 'GlobalThresholdAllocator'
}


def blend_source(blend: dict, header: Sequence[str] = ()) -> str:
    """The text of a config snippet defining ``blend``."""
    lines = [
        '# BPC blend found by tools/search_blend.py. Use it as',
        "#   criterion=dict(type='BlendedCriterion', **blend)"
    ]
    lines += [f'# {h}' for h in header]
    lines.append('blend = ' + pprint.pformat(blend, width=76, sort_dicts=True))
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    from mmprune.utils.cli import (add_input_size_arg, add_limit_args,
                                   add_residual_mode_arg)
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='config file (or mmdet::path)')
    p.add_argument('checkpoint', help='trained dense weights')
    p.add_argument(
        '--flops-ratio',
        type=float,
        required=True,
        help='fraction of FLOPs to keep, in (0, 1]')
    p.add_argument('--out', required=True, help='blend .py file to write')
    p.add_argument(
        '--pool',
        default='l1,l2,fpgm,bn_scale,taylor,hrank',
        help='comma-separated criteria of the default pool')
    add_residual_mode_arg(p)
    p.add_argument(
        '--include-coupled',
        action='store_true',
        help='also prune residual streams / FPN laterals')
    p.add_argument(
        '--allocation', default='uniform', choices=sorted(ALLOCATORS))
    p.add_argument(
        '--rho',
        type=float,
        default=0.9,
        help='Spearman threshold of the clustering')
    p.add_argument('--pop-size', type=int, default=32)
    p.add_argument('--generations', type=int, default=20)
    p.add_argument('--elite', type=int, default=8)
    p.add_argument('--crossover-p', type=float, default=0.5)
    p.add_argument('--mutation-sigma', type=float, default=0.2)
    p.add_argument('--mutation-p', type=float, default=0.1)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument(
        '--max-evals',
        type=int,
        default=None,
        help='stop the EA after this many fitness evaluations')
    p.add_argument(
        '--time-budget',
        type=float,
        default=None,
        help='stop the EA after this many seconds')
    p.add_argument('--calib-batches', type=int, default=32)
    p.add_argument('--bn-batches', type=int, default=50)
    p.add_argument('--fitness-images', type=int, default=200)
    add_limit_args(p)
    p.add_argument('--round-to', type=int, default=1)
    add_input_size_arg(p)
    p.add_argument('--device', default='cpu')
    args = p.parse_args(argv)
    if not 0 < args.flops_ratio <= 1:
        p.error(f'--flops-ratio must be in (0, 1], got {args.flops_ratio}')
    for name in ('calib_batches', 'bn_batches', 'fitness_images'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1')
    if not 0 < args.rho <= 1:
        p.error(f'--rho must be in (0, 1], got {args.rho}')
    if args.max_evals is not None and args.max_evals < 1:
        p.error(f'--max-evals must be >= 1, got {args.max_evals}')
    if args.time_budget is not None and args.time_budget <= 0:
        p.error(f'--time-budget must be > 0, got {args.time_budget}')
    return args


def main(argv=None):
    args = parse_args(argv)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner, load_checkpoint

    import mmprune  # noqa: F401
    from mmprune import apis
    from mmprune.criteria.blended import DEFAULT_POOL
    from mmprune.methods import filter_groups, get_method
    from mmprune.search import BlendSearchConfig, search_blend
    from mmprune.utils.io import write_json_atomic, write_text_atomic
    from mmprune.utils.offline import check_offline_weights

    keys = [k.strip() for k in args.pool.split(',') if k.strip()]
    unknown = [k for k in keys if k not in DEFAULT_POOL]
    if unknown:
        raise SystemExit(f'--pool: unknown criteria {unknown}; valid: '
                         f'{sorted(DEFAULT_POOL)}')
    options = BlendSearchConfig.from_options(
        get_method('bpc').options['search'],
        pool=keys,
        rho_threshold=args.rho,
        allocation=args.allocation,
        pop_size=args.pop_size,
        generations=args.generations,
        elite=args.elite,
        crossover_p=args.crossover_p,
        mutation_sigma=args.mutation_sigma,
        mutation_p=args.mutation_p,
        seed=args.seed,
        calib_batches=args.calib_batches,
        bn_batches=args.bn_batches,
        fitness_images=args.fitness_images,
        max_evals=args.max_evals,
        time_budget_s=args.time_budget)
    register_all_modules()
    cfg = apis.load_config(args.config)
    check_offline_weights(cfg)
    model = MODELS.build(cfg.model)
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    model.to(args.device).eval()
    graph = apis.analyze(model, args.residual_mode)
    cost = apis.cost_model(model, tuple(args.input_size))
    # filter first: only the groups BPC prunes are scored (HRank cannot
    # score the RoI head's fully connected groups)
    group_filter = dict(get_method('bpc').groups)
    if args.include_coupled:
        for key in ('exclude_coupled', 'exclude_streams'):
            group_filter.pop(key, None)
    groups = filter_groups(graph, **group_filter)
    if not groups:
        raise SystemExit(f'{args.config}: BPC prunes no group of this model '
                         f'(filter {group_filter})')
    allocator = dict(
        type=ALLOCATORS[args.allocation],
        ratio=args.flops_ratio,
        min_keep=args.min_keep,
        max_prune_ratio=args.max_prune_ratio,
        round_to=args.round_to)
    out = search_blend(
        model,
        graph,
        groups,
        Runner.build_dataloader(cfg.train_dataloader),
        Runner.build_dataloader(cfg.val_dataloader),
        cost=cost,
        allocator=allocator,
        options=options,
        log=print)
    rep = out.report
    header = [
        f'config: {args.config}', f'checkpoint: {args.checkpoint}',
        f'flops ratio {args.flops_ratio}, fitness -det loss: best '
        f'{rep["best_fitness"]:.6g} (uniform blend '
        f'{rep["uniform_fitness"]:.6g}), seed {args.seed}, '
        f'{rep["evaluator_calls"]} evaluations in '
        f'{rep["seconds"]:.0f} s'
    ]
    write_text_atomic(args.out, blend_source(out.blend, header))
    report = dict(
        config=args.config,
        checkpoint=args.checkpoint,
        flops_ratio=args.flops_ratio,
        groups=groups,
        search=rep,
        blend=out.blend)
    write_json_atomic(report, osp.splitext(args.out)[0] + '.json', indent=1)
    print(f'blend written to {args.out}')
    return out


if __name__ == '__main__':
    main()
