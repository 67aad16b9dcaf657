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
(0.5 = half). ``--latency-ratio R`` / ``--latency-ms T`` budget latency
instead: R of the dense latency, or T milliseconds, predicted by a measured
latency grid (:mod:`mmprune.costs.latency_grid`) at ``--input-size``,
``--batch`` on ``--backend`` (torch, cuda, onnxruntime): read from
``--latency-table FILE`` (``tools/analysis/latency_table.py`` on the
deployment machine; refused if it does not fit) or measured here. The
report then holds ``latency``: target, predicted and measured ms of the
dense and compact models (median of interleaved rounds, this machine).
Writes into DIR, each file atomically:

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
    from mmprune.utils.cli import (add_input_size_arg, add_limit_args,
                                   add_residual_mode_arg)
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='config file (or mmdet::path)')
    p.add_argument('--checkpoint', help='dense (or already pruned) weights')
    p.add_argument(
        '--flops-ratio',
        type=float,
        help='fraction of FLOPs to keep, in (0, 1]')
    p.add_argument(
        '--latency-ratio',
        type=float,
        help='fraction of the dense latency to keep, in (0, 1]')
    p.add_argument(
        '--latency-ms', type=float, help='latency to reach, in milliseconds')
    p.add_argument(
        '--latency-table',
        help='latency grid JSON (tools/analysis/latency_table.py)'
        '; default: measure one here')
    p.add_argument(
        '--backend',
        choices=['torch', 'cuda', 'onnxruntime'],
        help='latency backend (default: the table\'s, or torch)')
    p.add_argument(
        '--batch',
        type=int,
        help='latency batch (default: the table\'s, or 1)')
    p.add_argument(
        '--calibrate-rounds',
        type=int,
        default=3,
        help='latency budget: rounds of prune, measure, correct the '
        'predicted target (0: trust the table)')
    p.add_argument(
        '--latency-runs',
        type=int,
        default=10,
        help='interleaved rounds timing dense vs compact')
    p.add_argument(
        '--criterion',
        default='l1',
        help='importance criterion name (l1, l2, bn_scale, ...)')
    add_residual_mode_arg(p)
    p.add_argument(
        '--round-to',
        type=int,
        default=1,
        help='kept channel counts are multiples of this')
    add_limit_args(p)
    add_input_size_arg(p)
    p.add_argument(
        '--order',
        default='score',
        choices=['score', 'flops', 'latency'],
        help='channel order: by normalised score alone '
        '(BudgetAllocator), or score divided by the FLOPs or by '
        'the measured time a channel saves (AdaptiveAllocator, '
        'cost_weight=1; latency is timed here, at --input-size, '
        'and suits deployment on a machine like this one)')
    p.add_argument('--work-dir', required=True)
    args = p.parse_args(argv)
    given = [
        f for f in ('flops_ratio', 'latency_ratio', 'latency_ms')
        if getattr(args, f) is not None
    ]
    if len(given) != 1:
        p.error('give exactly one budget: --flops-ratio, --latency-ratio or '
                '--latency-ms')
    for f in ('flops_ratio', 'latency_ratio'):
        v = getattr(args, f)
        if v is not None and not 0 < v <= 1:
            p.error(f"--{f.replace('_', '-')} must be in (0, 1], got {v}")
    if args.latency_ms is not None and args.latency_ms <= 0:
        p.error(f'--latency-ms must be > 0, got {args.latency_ms}')
    if args.batch is not None and args.batch < 1:
        p.error(f'--batch must be >= 1, got {args.batch}')
    if args.calibrate_rounds < 0:
        p.error(f'--calibrate-rounds must be >= 0, got '
                f'{args.calibrate_rounds}')
    args.budget = 'flops' if args.flops_ratio is not None else 'latency'
    if args.round_to < 1:
        p.error(f'--round-to must be >= 1, got {args.round_to}')
    if min(args.input_size) < 32:
        p.error(f'--input-size must be at least 32x32, got {args.input_size}')
    # a missing config or a file that is not a checkpoint: one line, exit 2
    from mmprune.utils.cli import (check_checkpoint_arg, check_config_arg,
                                   check_file_arg)
    check_config_arg(p, args.config)
    check_checkpoint_arg(p, args.checkpoint, '--checkpoint')
    check_file_arg(p, args.latency_table, '--latency-table')
    return args


def criterion_by_name(name: str):
    """Resolve ``l1`` / ``L1Criterion`` / ``bn_scale`` to a criterion."""
    import mmprune.criteria  # noqa: F401  (registers)
    from mmprune.registry import CRITERIA
    key = name.replace('_', '').lower()
    for reg in CRITERIA.module_dict:
        if reg.lower() in (key, key + 'criterion'):
            try:
                criterion = CRITERIA.module_dict[reg]()
            except TypeError:  # needs arguments: a searched blend (BPC)
                criterion = None
            # a criterion declares whether it reads data (BaseCriterion)
            if criterion is None or criterion.data_driven:
                raise SystemExit(
                    f'--criterion: {reg} needs data or a searched blend; '
                    f'use ChannelPruningHook (training) or '
                    f'tools/search_blend.py. One-shot weight criteria: l1, '
                    f'l2, bn_scale, fpgm, weight_similarity')
            return criterion
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


def latency_budget(args, model, graph, size):
    """``(grid, ratio, info)``: the latency grid (read from
    ``--latency-table`` and checked against the model, or measured here),
    the budget as a fraction of its dense prediction, and what the report
    needs."""
    import torch

    from mmprune.costs.latency_backends import make_backend
    from mmprune.costs.latency_grid import (LatencyGrid, default_cache_dir,
                                            measure_grid)
    if args.latency_table:
        try:
            grid = LatencyGrid.load(args.latency_table)
            grid.check(
                model, input_size=size, batch=args.batch, backend=args.backend)
        except ValueError as e:  # LatencyTableMismatch names the field
            raise SystemExit(f'--latency-table: {e}')
        backend_name, batch = grid.key['backend'], grid.key['batch']
        # time the compact model as the table was timed
        torch.set_num_threads(grid.key['threads'])
    else:
        backend_name, batch = args.backend or 'torch', args.batch or 1
        try:
            # a table timed before for this model, input and machine is
            # reused (tools/analysis/latency_table.py --no-cache times anew)
            grid = measure_grid(
                model,
                size,
                batch,
                make_backend(backend_name),
                graph,
                cache_dir=default_cache_dir(),
                level_runs=args.latency_runs)
            if grid.cached:
                print(f'latency table read from the cache: {grid.cached}')
        except RuntimeError as e:  # no CUDA here, no onnxruntime
            raise SystemExit(f'--backend: {e}')
    dense_ms = grid.predict(graph)
    if args.latency_ms is not None:
        if args.latency_ms >= dense_ms:
            raise SystemExit(
                f'--latency-ms: {args.latency_ms} ms is not below the dense '
                f'model\'s predicted {dense_ms:.3f} ms ({backend_name}, '
                f'batch {batch}): nothing to prune')
        ratio = args.latency_ms / dense_ms
    else:
        ratio = args.latency_ratio
    return grid, ratio, dict(
        backend=backend_name,
        batch=batch,
        threads=grid.key['threads'],
        dense_predicted_ms=dense_ms,
        target_ms=ratio * dense_ms,
        ratio_target=ratio)


def timing_backend(lat):
    """The backend that times dense vs compact: the table's, with its
    thread count (onnxruntime's is its own setting)."""
    from mmprune.costs.latency_backends import make_backend
    kw = dict(threads=lat['threads']) \
        if lat['backend'] == 'onnxruntime' else {}
    return make_backend(lat['backend'], **kw)


def compact_ratio_fn(lat, graph, dense_model, size, runs):
    """``measure(keep)`` -> measured compact / dense latency of the plan
    ``keep`` (interleaved rounds on the table's backend and batch), or None
    when that backend cannot run here (a CUDA table on a CPU machine)."""
    from mmprune import apis
    from mmprune.costs.latency_grid import measured_ratio
    try:
        backend = timing_backend(lat)
    except RuntimeError:
        return None

    def measure(keep):
        compact = copy.deepcopy(dense_model)
        apis.prune(compact, apis.make_plan(graph, keep), graph)
        return measured_ratio(dense_model, compact, size, lat['batch'],
                              backend, runs)

    return measure


def latency_measured(args, lat, grid, graph, keep, models, size):
    """Predicted vs measured latency of the dense and compact models on
    this machine (median of ``--latency-runs`` interleaved rounds, with the
    grid's backend, batch and input size)."""
    from mmprune.costs.latency import within
    from mmprune.costs.latency_grid import ratio_stats
    out = dict(
        lat,
        predicted_ms=grid.predict(graph, keep),
        table=grid.key,
        table_file=args.latency_table,
        measured_ms=None,
        dense_measured_ms=None,
        runs=args.latency_runs)
    try:
        backend = timing_backend(lat)
    except RuntimeError as e:  # e.g. a CUDA table used on a CPU machine
        out['not_measured'] = str(e)
        return out
    st = ratio_stats(
        models['dense'],
        models['pruned'],
        size,
        lat['batch'],
        backend,
        runs=args.latency_runs)
    out['dense_measured_ms'] = st['dense_ms']
    out['measured_ms'] = st['compact_ms']
    # the median of per-round ratios (each round times both models back to
    # back under the same load) and its distribution-free interval
    out['measured_ratio'] = st['ratio']
    out['measured_ratio_interval'] = [st['low'], st['high']]
    # the budget met within 5 %: True/False when the interval decides it,
    # None when it straddles an edge of the band (too noisy to tell)
    out['within_5pct'] = within(st, lat['ratio_target'], 0.05)
    out['measured_on'] = backend.device_name()
    return out


def main(argv=None):
    args = parse_args(argv)
    import torch
    from mmengine.runner.checkpoint import _load_checkpoint

    import mmprune  # noqa: F401
    from mmprune import apis
    from mmprune.adapters import compare_with_reference, reference_outputs
    from mmprune.allocators import AdaptiveAllocator, BudgetAllocator
    from mmprune.costs.latency import calibrate_latency
    from mmprune.pruners.masking import build_mask
    from mmprune.runtime.rebuild import build_detector, load_pruned_detector
    from mmprune.utils.io import (atomic_write, write_json_atomic,
                                  write_text_atomic)
    from mmprune.utils.report import module_widths

    criterion = criterion_by_name(args.criterion)
    cfg = apis.load_config(args.config)
    model = build_detector(cfg)
    if args.checkpoint:
        # already pruned: the one loader rebuilds that structure first
        ckpt = _load_checkpoint(args.checkpoint, map_location='cpu')
        load_pruned_detector(cfg, ckpt, source=args.checkpoint, model=model)
    model.eval()
    size = tuple(args.input_size)
    t0 = time.perf_counter()
    graph = apis.analyze(model, args.residual_mode)
    t_graph = time.perf_counter() - t0
    cost = apis.cost_model(
        model,
        size,
        latency=args.order == 'latency' and args.budget == 'flops')
    ratio = args.flops_ratio
    if args.budget == 'latency':  # a measured grid predicts the budget
        cost.latency, ratio, lat = latency_budget(args, model, graph, size)
        dense_model = copy.deepcopy(model)  # timed beside the compact one
    dense_flops, dense_params = cost.flops(), cost.params(model)
    widths_before = module_widths(model)
    scores = criterion.score(model, graph)
    limits = dict(
        min_keep=args.min_keep,
        max_prune_ratio=args.max_prune_ratio,
        round_to=args.round_to)
    limits['budget'] = args.budget

    def allocate(r):
        if args.order == 'score':
            allocator = BudgetAllocator(r, **limits)
        else:
            allocator = AdaptiveAllocator(
                r,
                cost_weight=1.0,
                normalize='median',
                cost_measure='budget' if args.order == 'flops' else 'latency',
                **limits)
        return allocator.allocate(model, graph, scores, cost)

    measure = None
    if args.budget == 'latency' and args.calibrate_rounds > 0:
        measure = compact_ratio_fn(lat, graph, dense_model, size,
                                   args.latency_runs)
    if measure is not None:
        # the table predicts, the device decides: correct the predicted
        # target until the measured ratio meets the budget
        keep, lat['calibration'] = calibrate_latency(ratio, allocate, measure,
                                                     args.calibrate_rounds)
    else:
        keep = allocate(ratio)
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

    layers = {
        name: [w, widths_after.get(name, 0)]
        for name, w in widths_before.items()
    }
    report = dict(
        config=args.config,
        checkpoint=args.checkpoint,
        criterion=args.criterion,
        residual_mode=args.residual_mode,
        flops_ratio_target=args.flops_ratio,
        input_size=list(size),
        input_shape=[1, 3, *size],
        flops_before=dense_flops,
        flops_after=pruned_flops,
        params_before=dense_params,
        params_after=pruned_params,
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
        groups={
            g.name:
            dict(width=g.width, kept=len(keep.get(g.name, range(g.width))))
            for g in graph.groups
        })
    if cost.latency is not None:
        # the table's prediction on this machine (tools/analysis/
        # complexity.py measures the compact model itself)
        report['latency_ms_before'] = round(cost.latency.predict(graph), 3)
        report['latency_ms_predicted'] = round(
            cost.latency.predict(graph, keep), 3)
        report['latency_table'] = cost.latency.meta
    if args.budget == 'latency':
        report['budget'] = 'latency'
        report['latency'] = latency_measured(
            args, lat, cost.latency, graph, keep,
            dict(dense=dense_model, pruned=model), size)
    ckpt = dict(
        state_dict=model.state_dict(),
        meta={apis.META_KEY: apis.make_meta(plans, apis.TRACE_SIZE)})
    # DIR/config.py: CONFIG with mmprune imported and the model wrapped in
    # PrunableDetector, whose state-dict pre-hook replays the structure
    # stored in pruned.pth, so tools/test.py and mmdet's stock test script
    # (strict=False loading) rebuild the compact model before the weights.
    cfg = pruned_config(cfg)
    os.makedirs(args.work_dir, exist_ok=True)
    atomic_write(
        osp.join(args.work_dir, 'pruned.pth'), lambda p: torch.save(ckpt, p))
    write_text_atomic(osp.join(args.work_dir, 'plan.json'), plan.to_json())
    write_json_atomic(report, osp.join(args.work_dir, 'report.json'), indent=1)
    write_text_atomic(osp.join(args.work_dir, 'config.py'), cfg.pretty_text)
    print(f'{"":8}{"FLOPs (G)":>12}{"params (M)":>12}')
    print(f'{"dense":8}{dense_flops / 1e9:12.3f}{dense_params / 1e6:12.3f}')
    print(f'{"pruned":8}{pruned_flops / 1e9:12.3f}'
          f'{pruned_params / 1e6:12.3f}')
    if args.budget == 'latency':
        lt = report['latency']
        print(f"latency (ms)  target {lt['target_ms']:.3f}  predicted "
              f"{lt['predicted_ms']:.3f}  measured {lt['measured_ms']} "
              f"(dense predicted {lt['dense_predicted_ms']:.3f}, measured "
              f"{lt['dense_measured_ms']}; {lt['backend']})")
    target = '' if args.flops_ratio is None else \
        f' (target {args.flops_ratio})'
    print(f'FLOPs ratio {report["flops_ratio"]:.3f}{target}, written to '
          f'{args.work_dir}')
    return report


if __name__ == '__main__':
    main()
