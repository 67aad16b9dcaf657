"""PNG plots of a pruning result.

    python tools/analysis/plot_pruning.py --out-dir DIR \
        [--config CONFIG --checkpoint PRUNED [--use-ema] | --report REPORT] \
        [--work-dir WORK_DIR | --scalars SCALARS_JSON]

* ``DIR/channels.png``: every layer's output channels before and after
  pruning, from a pruned checkpoint and its config (the dense model is the
  config's) or from ``tools/prune.py``'s ``report.json``;
* ``DIR/training.png``: the FLOPs ratio (and params) logged by
  ``ChannelPruningHook`` and the validation mAP over training, from an
  mmengine work dir (the newest ``<timestamp>/vis_data/scalars.json``) or a
  scalars file.

At least one source is needed; the plotting functions are in
:mod:`mmprune.utils.plots`.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0,
                osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out-dir', required=True, help='folder for the PNGs')
    p.add_argument('--config', help='config of --checkpoint')
    src = p.add_mutually_exclusive_group()
    src.add_argument('--checkpoint', help='pruned checkpoint (with --config)')
    src.add_argument('--report', help="tools/prune.py's report.json")
    p.add_argument(
        '--use-ema',
        action='store_true',
        help='load the EMA weights (the structure is the same)')
    runs = p.add_mutually_exclusive_group()
    runs.add_argument('--work-dir', help='mmengine work dir of a training')
    runs.add_argument('--scalars', help='a vis_data/scalars.json file')
    args = p.parse_args(argv)
    if args.checkpoint and not args.config:
        p.error('--checkpoint needs --config')
    if not (args.checkpoint or args.report or args.work_dir or args.scalars):
        p.error('nothing to plot: give --checkpoint/--report and/or '
                '--work-dir/--scalars')
    from mmprune.utils.cli import (check_checkpoint_arg, check_config_arg,
                                   check_file_arg)
    check_config_arg(p, args.config, '--config')
    check_checkpoint_arg(p, args.checkpoint, '--checkpoint')
    check_file_arg(p, args.report, '--report')
    return args


def main(argv=None):
    args = parse_args(argv)
    import json

    import mmprune  # noqa: F401
    from mmprune.utils import plots

    written = {}
    rows = None
    if args.checkpoint:
        from mmprune.apis import load_config
        from mmprune.export import (ExportError, build_detector,
                                    load_pruned_detector, read_checkpoint)
        cfg = load_config(args.config)
        try:
            pruned, _ = load_pruned_detector(cfg,
                                             read_checkpoint(args.checkpoint),
                                             args.use_ema, args.checkpoint)
        except ExportError as e:
            raise SystemExit(f'plot_pruning: {e}') from None
        rows = plots.layer_widths_from_models(build_detector(cfg), pruned)
        title = f'{osp.basename(args.checkpoint)}: channels per layer'
    elif args.report:
        with open(args.report) as f:
            rows = plots.layer_widths_from_report(json.load(f))
        title = f'{args.report}: channels per layer'
    if rows is not None:
        try:
            written['channels'] = plots.plot_channels(
                rows, osp.join(args.out_dir, 'channels.png'), title)
        except OSError as e:
            raise SystemExit(f'plot_pruning: {e}') from None
    source = args.work_dir or args.scalars
    if source:
        try:
            scalars = plots.find_scalars(source)
            curves = plots.training_curves(plots.read_scalars(scalars))
            # title: <work dir>/<timestamp> of the run
            parts = osp.abspath(scalars).split(osp.sep)
            run = osp.join(*parts[-4:-2]) if len(parts) > 4 else scalars
            written['training'] = plots.plot_training(
                curves, osp.join(args.out_dir, 'training.png'),
                f'pruning over training: {run}')
        except (OSError, ValueError) as e:
            raise SystemExit(f'plot_pruning: {e}') from None
    for k, v in written.items():
        print(f'{k}: {v}')
    return written


if __name__ == '__main__':
    main()
