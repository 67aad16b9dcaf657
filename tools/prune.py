"""One-shot pruning of a detector to a FLOPs target.

    python tools/prune.py CONFIG [--checkpoint CKPT] --flops-ratio R \
        [--criterion NAME] [--residual-mode coupled|fine] [--round-to N] \
        [--input-size H W] [--order score|flops|latency] --work-dir DIR

``--order latency`` times the model's layers here first and removes, at
equal importance, the channels that save the most *time* (pooling and
activations included); the budget stays in FLOPs. On YOLOX-s at 640 px
(one CPU thread, ``round_to=16``, ``max_prune_ratio=0.7``) it turns 0.79
of the FLOPs speedup into 0.93 (``benchmarks/graph_and_speed.py``).

``--flops-ratio`` is the FLOPs to keep, as a fraction of the dense model's
(0.5 = half). Writes into DIR, each file atomically:

* ``pruned.pth``: the compact weights, with the plan in
  ``meta['mmprune']`` (``mmprune.apis.init_pruned_detector`` loads it);
* ``plan.json``: the plan (group -> kept indices);
* ``report.json``: ``flops_before/after`` (MACs at the input size),
  ``params_before/after``, ``input_shape``, ``residual_mode``,
  ``num_groups``, ``max_abs_diff`` (masked vs compact on one random input;
  two-stage detectors on the same proposals, ``max_diff_compared_on``)
  and ``layers`` (module -> [channels before, channels after]);
* ``config.py``: CONFIG with ``custom_imports=['mmprune']`` and the model
  wrapped in ``PrunableDetector``, so ``tools/test.py DIR/config.py
  DIR/pruned.pth`` (or mmdet's own test script) rebuilds the pruned
  structure from the checkpoint before loading its weights.

This command line is a contract other tools and checks rely on.
"""
import argparse
import copy
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='config file (or mmdet::path)')
    p.add_argument('--checkpoint', help='dense (or already pruned) weights')
    p.add_argument('--flops-ratio', type=float, required=True,
                   help='fraction of FLOPs to keep, in (0, 1]')
    p.add_argument('--criterion', default='l1',
                   help='importance criterion name (l1, l2, bn_scale, ...)')
    p.add_argument('--residual-mode', default='coupled',
                   choices=['coupled', 'fine'])
    p.add_argument('--round-to', type=int, default=1,
                   help='kept channel counts are multiples of this')
    p.add_argument('--min-keep', type=int, default=8)
    p.add_argument('--max-prune-ratio', type=float, default=0.8)
    p.add_argument('--input-size', type=int, nargs=2, default=[640, 640],
                   metavar=('H', 'W'), help='input size for FLOPs')
    p.add_argument('--order', default='score',
                   choices=['score', 'flops', 'latency'],
                   help='channel order: by normalised score alone '
                   '(BudgetAllocator), or score divided by the FLOPs or by '
                   'the measured time a channel saves (AdaptiveAllocator, '
                   'cost_weight=1; latency is timed here, at --input-size, '
                   'and suits deployment on a machine like this one)')
    p.add_argument('--work-dir', required=True)
    args = p.parse_args(argv)
    if not 0 < args.flops_ratio <= 1:
        p.error(f'--flops-ratio must be in (0, 1], got {args.flops_ratio}')
    if args.round_to < 1:
        p.error(f'--round-to must be >= 1, got {args.round_to}')
    if min(args.input_size) < 32:
        p.error(f'--input-size must be at least 32x32, got {args.input_size}')
    # a missing config or a file that is not a checkpoint: one line, exit 2
    from mmprune.utils.cli import check_checkpoint_arg, check_config_arg
    check_config_arg(p, args.config)
    check_checkpoint_arg(p, args.checkpoint, '--checkpoint')
    return args


def criterion_by_name(name: str):
    """Resolve ``l1`` / ``L1Criterion`` / ``bn_scale`` to a criterion."""
    from mmprune.registry import CRITERIA
    import mmprune.criteria  # noqa: F401  (registers)
    key = name.replace('_', '').lower()
    data_driven = ('taylorcriterion', 'featurerelevancecriterion',
                   'hrankcriterion', 'blendedcriterion')
    for reg in CRITERIA.module_dict:
        if reg.lower() in (key, key + 'criterion'):
            if reg.lower() in data_driven:
                raise SystemExit(
                    f'--criterion: {reg} needs data or a searched blend; '
                    f'use ChannelPruningHook (training) or '
                    f'tools/search_blend.py. One-shot weight criteria: l1, '
                    f'l2, bn_scale, fpgm, weight_similarity')
            return CRITERIA.module_dict[reg]()
    raise SystemExit(f'--criterion: unknown criterion {name!r}; valid: '
                     f'{sorted(CRITERIA.module_dict)}')


def pruned_config(cfg):
    """``cfg`` with mmprune imported and its detector in PrunableDetector."""
    imports = list((cfg.get('custom_imports') or {}).get('imports', []))
    if 'mmprune' not in imports:
        imports.append('mmprune')
    cfg.custom_imports = dict(imports=imports, allow_failed_imports=False)
    if cfg.model.get('type') != 'PrunableDetector':
        cfg.model = dict(type='PrunableDetector', architecture=cfg.model)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    import torch
    from mmengine.runner import load_checkpoint
    from mmengine.runner.checkpoint import _load_checkpoint

    import mmprune  # noqa: F401
    from mmprune import apis
    from mmprune.allocators import AdaptiveAllocator, BudgetAllocator
    from mmprune.adapters import compare_with_reference, reference_outputs
    from mmprune.pruners.masking import build_mask
    from mmprune.utils.io import (atomic_write, write_json_atomic,
                                  write_text_atomic)
    from mmprune.utils.report import module_widths
    from mmprune.utils.offline import check_offline_weights
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    criterion = criterion_by_name(args.criterion)
    cfg = apis.load_config(args.config)
    check_offline_weights(cfg)
    model = MODELS.build(cfg.model)
    if args.checkpoint:
        ckpt = _load_checkpoint(args.checkpoint, map_location='cpu')
        meta = (ckpt.get('meta') or {}).get(apis.META_KEY)
        if meta is not None:  # already pruned: rebuild that structure first
            old, size, _ = apis.read_meta(meta)
            apis.replay(model, old, size)
        load_checkpoint(model, args.checkpoint, map_location='cpu',
                        strict=True)
    model.eval()
    size = tuple(args.input_size)
    t0 = time.perf_counter()
    graph = apis.analyze(model, args.residual_mode)
    t_graph = time.perf_counter() - t0
    cost = apis.cost_model(model, size, latency=args.order == 'latency')
    dense_flops, dense_params = cost.flops(), cost.params(model)
    widths_before = module_widths(model)
    scores = criterion.score(model, graph)
    limits = dict(min_keep=args.min_keep,
                  max_prune_ratio=args.max_prune_ratio,
                  round_to=args.round_to)
    if args.order == 'score':
        allocator = BudgetAllocator(args.flops_ratio, **limits)
    else:
        allocator = AdaptiveAllocator(
            args.flops_ratio, cost_weight=1.0, normalize='median',
            cost_measure='budget' if args.order == 'flops' else 'latency',
            **limits)
    keep = allocator.allocate(model, graph, scores, cost)
    plan = apis.make_plan(graph, keep)
    # masked vs compact on the same random input (the input size of the
    # FLOPs count): the cut must change nothing but the zeroed channels;
    # two-stage detectors are compared on the same proposals
    # (mmprune/adapters/compare.py says why)
    masked = copy.deepcopy(model)
    build_mask(masked, graph, keep).apply(masked)
    reference = reference_outputs(masked, size, seed=0)
    del masked
    apis.prune(model, plan, graph)
    diff = compare_with_reference(model, reference)
    plans = apis.model_plans(model)
    pruned_flops = apis.cost_model(model, size).flops()
    pruned_params = sum(p.numel() for p in model.parameters())
    widths_after = module_widths(model)

    layers = {name: [w, widths_after.get(name, 0)]
              for name, w in widths_before.items()}
    report = dict(
        config=args.config, checkpoint=args.checkpoint,
        criterion=args.criterion, residual_mode=args.residual_mode,
        flops_ratio_target=args.flops_ratio, input_size=list(size),
        input_shape=[1, 3, *size],
        flops_before=dense_flops, flops_after=pruned_flops,
        params_before=dense_params, params_after=pruned_params,
        flops_ratio=pruned_flops / dense_flops,
        params_ratio=pruned_params / dense_params,
        num_groups=len(graph.groups),
        num_pruned_groups=sum(
            1 for g in graph.groups
            if len(keep.get(g.name, range(g.width))) < g.width),
        max_abs_diff=diff['max_abs_diff'],
        max_rel_diff=diff['max_rel_diff'],
        max_diff_compared_on=diff['compared_on'],
        graph_seconds=round(t_graph, 3),
        order=args.order,
        layers=layers,
        dense=dict(flops=dense_flops, params=dense_params),
        pruned=dict(flops=pruned_flops, params=pruned_params),
        groups={g.name: dict(width=g.width, kept=len(keep.get(g.name,
                                                               range(g.width))))
                for g in graph.groups})
    if cost.latency is not None:
        # the table's prediction on this machine (tools/analysis/
        # complexity.py measures the compact model itself)
        report['latency_ms_before'] = round(cost.latency.predict(graph), 3)
        report['latency_ms_predicted'] = round(
            cost.latency.predict(graph, keep), 3)
        report['latency_table'] = cost.latency.meta
    ckpt = dict(state_dict=model.state_dict(),
                meta={apis.META_KEY: apis.make_meta(plans, apis.TRACE_SIZE)})
    # DIR/config.py: CONFIG with mmprune imported and the model wrapped in
    # PrunableDetector, whose state-dict pre-hook replays the structure
    # stored in pruned.pth, so tools/test.py and mmdet's stock test script
    # (strict=False loading) rebuild the compact model before the weights.
    cfg = pruned_config(cfg)
    os.makedirs(args.work_dir, exist_ok=True)
    atomic_write(osp.join(args.work_dir, 'pruned.pth'),
                 lambda p: torch.save(ckpt, p))
    write_text_atomic(osp.join(args.work_dir, 'plan.json'), plan.to_json())
    write_json_atomic(report, osp.join(args.work_dir, 'report.json'),
                      indent=1)
    write_text_atomic(osp.join(args.work_dir, 'config.py'), cfg.pretty_text)
    print(f'{"":8}{"FLOPs (G)":>12}{"params (M)":>12}')
    print(f'{"dense":8}{dense_flops / 1e9:12.3f}{dense_params / 1e6:12.3f}')
    print(f'{"pruned":8}{pruned_flops / 1e9:12.3f}'
          f'{pruned_params / 1e6:12.3f}')
    print(f'FLOPs ratio {report["flops_ratio"]:.3f} (target '
          f'{args.flops_ratio}), written to {args.work_dir}')
    return report


if __name__ == '__main__':
    main()
