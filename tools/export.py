"""Export a pruned detector: compact checkpoint, verified ONNX, report.

    python tools/export.py CONFIG CHECKPOINT --work-dir DIR \
        [--input-size H W] [--batch-size N] [--opset N] [--use-ema] \
        [--atol X]

CHECKPOINT is ``pruned.pth`` from ``tools/prune.py`` or a checkpoint of a
training run with ``ChannelPruningHook`` (structure in ``meta['mmprune']``).
Writes into DIR, each file atomically:

* ``compact.pth``: the pruned model's state dict and its structure meta
  (no optimizer state); ``mmprune.apis.init_pruned_detector(CONFIG,
  'DIR/compact.pth')`` loads it;
* ``model.onnx``: the tensor forward (backbone, neck, head raw outputs; no
  box decoding, no NMS), input ``input`` = the preprocessed batch
  (N, 3, H, W) with a dynamic batch axis; written only when onnxruntime
  agrees with torch: every output's max abs difference, relative to the
  output's max magnitude, is at most ``--atol``;
* ``export_report.json``: paths, input shape, per-output differences,
  FLOPs and params of the compact model, versions.

``--use-ema`` exports the EMA weights of a run with mmengine's EMAHook (the
weights ``tools/test.py`` evaluates); without it the weights the optimizer
trained. A missing CONFIG or a CHECKPOINT that is not a checkpoint ends
with one line naming it, exit status 2; a later failure (the ONNX check
included) with a message naming the file or argument, exit status 1.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    from mmprune.utils.cli import add_input_size_arg
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='config file (or mmdet::path)')
    p.add_argument('checkpoint', help='pruned checkpoint')
    p.add_argument('--work-dir', required=True, help='output folder')
    add_input_size_arg(p, 'ONNX input size')
    p.add_argument(
        '--batch-size',
        type=int,
        default=1,
        help='batch of the example input (the axis is dynamic)')
    p.add_argument('--opset', type=int, default=17, help='ONNX opset (>=13)')
    p.add_argument(
        '--use-ema',
        action='store_true',
        help='export the EMA weights (EMAHook checkpoints)')
    p.add_argument(
        '--atol',
        type=float,
        default=1e-4,
        help='max ONNX-vs-torch difference per output, relative '
        'to its max magnitude')
    args = p.parse_args(argv)
    if min(args.input_size) < 32:
        p.error(f'--input-size must be at least 32x32, got {args.input_size}')
    if args.batch_size < 1:
        p.error(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.opset < 13:
        p.error(f'--opset must be >= 13, got {args.opset}')
    if not args.atol > 0:
        p.error(f'--atol must be > 0, got {args.atol}')
    from mmprune.utils.cli import check_checkpoint_arg, check_config_arg
    check_config_arg(p, args.config)
    check_checkpoint_arg(p, args.checkpoint)
    return args


def main(argv=None):
    args = parse_args(argv)
    import mmprune  # noqa: F401  (registers; torch.load safe globals)
    from mmprune.export import ExportError, export_detector
    try:
        report = export_detector(
            args.config,
            args.checkpoint,
            args.work_dir,
            input_size=args.input_size,
            batch_size=args.batch_size,
            opset=args.opset,
            use_ema=args.use_ema,
            atol=args.atol)
    except ExportError as e:
        raise SystemExit(f'export: {e}') from None
    print(f'weights: {report["weights"]}; FLOPs {report["flops"] / 1e9:.3f} '
          f'G ({report["flops_ratio"]:.3f} of dense), params '
          f'{report["params"] / 1e6:.3f} M')
    print(f'ONNX vs torch: max relative difference '
          f'{report["max_rel_diff"]:.2e} (atol {args.atol:g}) over '
          f'{len(report["outputs"])} outputs')
    print(f'written: {report["compact_checkpoint"]}, {report["onnx"]}, '
          f'{osp.join(args.work_dir, "export_report.json")}')
    return report


if __name__ == '__main__':
    main()
