"""Print a config's channel groups: what mmprune can prune, and why not.

    python tools/analysis/print_groups.py CONFIG \
        [--residual-mode coupled|fine] [--trace-size H W] \
        [--checkpoint PRUNED] [--no-members] [--json OUT]

For each group: name (its first producer), width, prunable or pinned (with
the reasons), and every member module with its role (producer, consumer,
norm, depthwise, ...). ``--checkpoint`` analyses the pruned structure of a
checkpoint instead of the dense model. ``--json OUT`` also writes the
description as JSON (atomically).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0,
                osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def parse_args(argv=None):
    from mmprune.utils.cli import add_residual_mode_arg
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='config file (or mmdet::path)')
    add_residual_mode_arg(p)
    p.add_argument(
        '--trace-size',
        type=int,
        nargs=2,
        default=[128, 128],
        metavar=('H', 'W'),
        help='dummy image size for the trace')
    p.add_argument(
        '--checkpoint', help='pruned checkpoint: analyse its '
        'structure')
    p.add_argument(
        '--no-members', action='store_true', help='one line per group')
    p.add_argument('--json', help='also write the description here')
    args = p.parse_args(argv)
    if min(args.trace_size) < 32:
        p.error(f'--trace-size must be at least 32x32, got {args.trace_size}')
    from mmprune.utils.cli import check_checkpoint_arg, check_config_arg
    check_config_arg(p, args.config)
    check_checkpoint_arg(p, args.checkpoint, '--checkpoint')
    return args


def main(argv=None):
    args = parse_args(argv)

    import mmprune  # noqa: F401
    from mmprune import apis
    from mmprune.export import (ExportError, build_detector,
                                load_pruned_detector, read_checkpoint)
    from mmprune.graph.describe import describe_groups, format_groups
    from mmprune.utils.io import write_json_atomic

    cfg = apis.load_config(args.config)
    try:
        if args.checkpoint:
            model, _ = load_pruned_detector(
                cfg, read_checkpoint(args.checkpoint), path=args.checkpoint)
        else:
            model = build_detector(cfg)
    except ExportError as e:
        raise SystemExit(f'print_groups: {e}') from None
    graph = apis.analyze(model, args.residual_mode, tuple(args.trace_size))
    desc = describe_groups(graph)
    desc.update(
        config=args.config,
        checkpoint=args.checkpoint,
        trace_size=list(args.trace_size))
    print(format_groups(desc, members=not args.no_members))
    if args.json:
        try:
            write_json_atomic(desc, args.json, indent=1)
        except OSError as e:
            raise SystemExit(f'print_groups: {e}') from None
        print(f'written: {args.json}')
    return desc


if __name__ == '__main__':
    main()
