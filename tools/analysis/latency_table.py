"""Measure a latency table (per-layer times on a grid of widths) on this
machine, for pruning to a latency budget elsewhere.

    python tools/analysis/latency_table.py CONFIG --out table.json \
        [--backend torch|cuda|onnxruntime] [--input-size H W] [--batch N] \
        [--points P] [--align A] [--runs R] [--warmup W] [--threads T] \
        [--residual-mode coupled|fine] [--no-progress]

Run it on the deployment machine with the deployment's backend, input size
and batch; the table (versioned JSON, written atomically) is then given to
``tools/prune.py --latency-table`` or to ``ChannelPruningHook(budget=
'latency', latency_table=...)`` on the training machine, which refuses it
if it does not fit the model, input size, batch or backend
(:mod:`mmprune.costs.latency_grid` says how the table is measured and
interpolated). Prints the number of layers, distinct curves, timed grid
points, the dense latency and the seconds spent.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0,
                osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def parse_args(argv=None):
    from mmprune.costs.latency_backends import BACKENDS
    from mmprune.utils.cli import add_input_size_arg, add_residual_mode_arg
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='config file (or mmdet::path)')
    p.add_argument('--out', required=True, help='table.json to write')
    p.add_argument('--backend', default='torch', choices=BACKENDS)
    add_input_size_arg(p, None)
    p.add_argument('--batch', type=int, default=1)
    p.add_argument(
        '--points',
        type=int,
        default=5,
        help='widths per axis of each layer grid (1..16)')
    p.add_argument(
        '--align',
        type=int,
        default=8,
        help='grid widths are multiples of this (and dense)')
    p.add_argument('--runs', type=int, default=5, help='timed calls/point')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument(
        '--level-runs',
        type=int,
        default=10,
        help='interleaved rounds timing a uniformly half-width copy beside '
        'the dense model, to split the time no width changes from the '
        "layers' (0: give all of it to the layers in proportion)")
    p.add_argument(
        '--threads',
        type=int,
        default=1,
        help='torch (and onnxruntime) intra-op threads')
    add_residual_mode_arg(p, 'channel graph deciding which axes can change')
    p.add_argument('--no-progress', action='store_true')
    p.add_argument(
        '--cache-dir',
        default=None,
        help='reuse a table measured before for the same model, input, '
        'backend, machine and settings (default: $MMPRUNE_CACHE/latency, '
        'else ~/.cache/mmprune/latency)')
    p.add_argument(
        '--no-cache',
        action='store_true',
        help='always measure (and do not write the cache)')
    args = p.parse_args(argv)
    if min(args.input_size) < 32:
        p.error(f'--input-size must be at least 32x32, got {args.input_size}')
    for name, least in (('batch', 1), ('runs', 1), ('warmup', 0),
                        ('threads', 1), ('align', 1), ('level_runs', 0)):
        if getattr(args, name) < least:
            p.error(f'--{name} must be >= {least}, got '
                    f'{getattr(args, name)}')
    if not 1 <= args.points <= 16:
        p.error(f'--points must be in [1, 16], got {args.points}')
    from mmprune.utils.cli import check_config_arg
    check_config_arg(p, args.config)
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch

    import mmprune  # noqa: F401
    from mmprune import apis
    from mmprune.costs.latency_backends import make_backend
    from mmprune.costs.latency_grid import default_cache_dir, measure_grid
    from mmprune.export import build_detector

    torch.set_num_threads(args.threads)
    kw = dict(threads=args.threads) if args.backend == 'onnxruntime' else {}
    try:
        backend = make_backend(args.backend, args.runs, args.warmup, **kw)
    except RuntimeError as e:  # no CUDA here, onnxruntime missing
        raise SystemExit(f'--backend: {e}')
    model = build_detector(apis.load_config(args.config)).eval()
    graph = apis.analyze(model, args.residual_mode)
    grid = measure_grid(
        model,
        args.input_size,
        args.batch,
        backend,
        graph,
        cache_dir=None if args.no_cache else
        (args.cache_dir or default_cache_dir()),
        level_runs=args.level_runs,
        points=args.points,
        align=args.align,
        progress=not args.no_progress)
    grid.save(args.out)
    m, k = grid.data['meta'], grid.key
    how = (f'read from the cache ({grid.cached}; measured in '
           f"{m['seconds']:.1f} s, --no-cache to time again)"
           if grid.cached else f"timed in {m['seconds']:.1f} s")
    print(f"{len(grid.data['modules'])} layers, {m['curves']} curves, "
          f"{m['points_timed']} grid points {how}; "
          f"dense {m['dense_ms']:.3f} ms ({k['backend']} on "
          f"{k['device_name']}, batch {k['batch']}, {k['input_size']}, "
          f"{k['threads']} threads), written to {args.out}")
    lv = m.get('level')
    if lv:
        print(f"level: half-width copy measured {lv['measured_ratio']:.3f} "
              f"of the dense time ({lv['runs']} rounds, interval "
              f"{lv['interval']}), {lv['proportional_ratio']:.3f} if all "
              f"time scaled with the layers; time no width changes: "
              f"{lv['other_share']:.1%} of the dense forward")
    return grid


if __name__ == '__main__':
    main()
