"""FLOPs, params and CPU latency: dense (from the config) vs pruned.

    python tools/analysis/complexity.py CONFIG [--checkpoint PRUNED] \
        [--input-size H W] [--runs N] [--warmup N] [--threads N] \
        [--use-ema] [--stages] [--json OUT]

FLOPs are MACs of conv/linear layers plus BN ops at the input size, batch 1
(``mmprune.apis.cost_model``, mmengine's convention). Latency is the torch
eager tensor forward (no NMS), batch 1, on the CPU with ``--threads``
intra-op threads (1 by default), median over ``--runs`` interleaved rounds
after ``--warmup``. With ``--checkpoint`` (``pruned.pth``, ``compact.pth``
or a ChannelPruningHook checkpoint) it adds the pruned model and the
ratios: FLOPs and params ratio, realized speedup (dense / pruned latency)
and that speedup divided by the FLOPs speedup (1.0 = latency fell as much
as FLOPs). ``--stages`` prints per-stage tables; ``--json OUT`` writes the
result (atomically).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0,
                osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def parse_args(argv=None):
    from mmprune.utils.cli import add_input_size_arg
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='config file (or mmdet::path)')
    p.add_argument('--checkpoint', help='pruned checkpoint')
    add_input_size_arg(p, None)
    p.add_argument('--runs', type=int, default=20, help='timed rounds')
    p.add_argument('--warmup', type=int, default=3, help='untimed rounds')
    p.add_argument(
        '--threads', type=int, default=1, help='torch intra-op threads')
    p.add_argument(
        '--use-ema',
        action='store_true',
        help='EMA weights of the checkpoint (same structure)')
    p.add_argument(
        '--stages',
        action='store_true',
        help='print per-stage channels/FLOPs/params')
    p.add_argument('--json', help='write the result here')
    args = p.parse_args(argv)
    if min(args.input_size) < 32:
        p.error(f'--input-size must be at least 32x32, got {args.input_size}')
    for name in ('runs', 'threads'):
        if getattr(args, name) < 1:
            p.error(f'--{name} must be >= 1, got {getattr(args, name)}')
    if args.warmup < 0:
        p.error(f'--warmup must be >= 0, got {args.warmup}')
    from mmprune.utils.cli import check_checkpoint_arg, check_config_arg
    check_config_arg(p, args.config)
    check_checkpoint_arg(p, args.checkpoint, '--checkpoint')
    return args


def _measures(model, cost):
    from mmprune.utils.report import stage_rows
    return dict(
        flops=cost.flops(),
        params=cost.params(model),
        stages=[
            dict(stage=s, channels=c, flops=f, params=p)
            for s, c, f, p in stage_rows(model, cost)
        ])


def main(argv=None):
    args = parse_args(argv)

    import torch

    import mmprune  # noqa: F401
    from mmprune import apis
    from mmprune.adapters import tensor_forward
    from mmprune.costs import measure_latency
    from mmprune.export import (ExportError, build_detector,
                                load_pruned_detector, read_checkpoint)
    from mmprune.utils.io import write_json_atomic
    from mmprune.utils.report import stage_table

    size = tuple(args.input_size)
    cfg = apis.load_config(args.config)
    models = {'dense': build_detector(cfg)}
    if args.checkpoint:
        try:
            models['pruned'], _ = load_pruned_detector(
                cfg, read_checkpoint(args.checkpoint), args.use_ema,
                args.checkpoint)
        except ExportError as e:
            raise SystemExit(f'complexity: {e}') from None
    result = dict(
        config=args.config,
        checkpoint=args.checkpoint,
        input_shape=[1, 3, *size],
        threads=args.threads,
        runs=args.runs,
        warmup=args.warmup)
    fns, costs = {}, {}
    for name, model in models.items():
        costs[name] = apis.cost_model(model, size)
        result[name] = _measures(model, costs[name])
        fn, x = tensor_forward(model, size)
        fns[name] = (lambda fn=fn, x=x: fn(*x))
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        lat = measure_latency(fns, args.runs, args.warmup)
    finally:
        torch.set_num_threads(threads)
    for name in models:
        result[name]['latency_ms'] = lat[name]['median_ms']
        result[name]['latency_min_ms'] = lat[name]['min_ms']
    if 'pruned' in result:
        d, p = result['dense'], result['pruned']
        flops_speedup = d['flops'] / max(p['flops'], 1)
        speedup = d['latency_ms'] / p['latency_ms']
        result.update(
            flops_ratio=p['flops'] / d['flops'],
            params_ratio=p['params'] / d['params'],
            speedup=speedup,
            flops_speedup=flops_speedup,
            speedup_over_flops_speedup=speedup / flops_speedup)

    print(f'input 1x3x{size[0]}x{size[1]}, {args.threads} thread(s), median '
          f'of {args.runs} runs')
    print(f'{"":8}{"GFLOPs":>10}{"params(M)":>11}{"latency(ms)":>13}')
    for name in models:
        r = result[name]
        print(f'{name:8}{r["flops"] / 1e9:>10.3f}{r["params"] / 1e6:>11.3f}'
              f'{r["latency_ms"]:>13.2f}')
    if 'pruned' in result:
        print(f'FLOPs ratio {result["flops_ratio"]:.3f}, params ratio '
              f'{result["params_ratio"]:.3f}, speedup '
              f'{result["speedup"]:.2f}x vs FLOPs speedup '
              f'{result["flops_speedup"]:.2f}x (realized '
              f'{result["speedup_over_flops_speedup"]:.2f})')
    if args.stages:
        for name, model in models.items():
            print(f'\n{name}:\n' + stage_table(model, costs[name]))
    if args.json:
        try:
            write_json_atomic(result, args.json, indent=1)
        except OSError as e:
            raise SystemExit(f'complexity: {e}') from None
        print(f'written: {args.json}')
    return result


if __name__ == '__main__':
    main()
