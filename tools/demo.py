# Copyright (c) mmprune contributors. All rights reserved.
"""``make demo``: a dense YOLOX baseline and an ACP-TP run pruned to 50 %
FLOPs, on CPU, in about 15 minutes.

1. Generate the synthetic dataset (the 'easy' profile, 160 px) into
   ``data/synth_demo`` (skipped when present).
2. Train two YOLOX-tiny models from mmdet's own config
   (``mmdet::yolox/...``) with mmengine's Runner, from scratch, with the same
   recipe and epochs: ``dense``, and ``acp_tp`` with a ``ChannelPruningHook``
   (method ACP-TP, 50 % FLOPs). The two runs go in parallel, one torch
   thread each (2 cores: faster than one after the other with 2 threads).
3. Evaluate both with CocoMetric (EMA weights, as YOLOX validates) and
   export the compact pruned model to ONNX, checked against torch with
   onnxruntime (``tools/export.py``).
4. Measure CPU latency (torch eager, batch 1, one thread, interleaved) and
   FLOPs/params; write ``work_dirs/demo/summary.json``, the plots
   ``channels.png`` and ``training.png``, and print a table.

While the runs train, the console shows each run's progress: one line per
epoch (loss, the FLOPs fraction the pruned run trained at, elapsed time and
ETA) and one
per validation (COCO bbox mAP). The children write these lines to
``<work_dir>/<run>.progress`` and the parent relays them; mmengine's full
log of each run is in ``<work_dir>/<run>.log``.

The numbers are whatever this short schedule gives on this machine; they
are not comparable to YOLOX's published COCO results.

    python tools/demo.py [--epochs N] [--size 160] [--work-dir DIR]
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time
import warnings

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import mmcv  # noqa: E402
import mmdet  # noqa: E402
import mmengine  # noqa: E402
import torch  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import mmprune  # noqa: E402,F401  (first: torch.load safe globals, registries)
from mmprune.datasets.short_recipe import short_cpu_config  # noqa: E402
from mmprune.datasets.synthetic import make_synthetic_dataset  # noqa: E402
from mmprune.utils.io import write_json_atomic  # noqa: E402

# ---- demo settings: edit these ---------------------------------------------
BASE_CONFIG = 'mmdet::yolox/yolox_tiny_8xb8-300e_coco.py'
DATA_DIR = 'data/synth_demo'
WORK_DIR = 'work_dirs/demo'
IMG_SIZE = 160  # the dataset is drawn at this size; train and test use it
NUM_TRAIN, NUM_VAL, NUM_CLASSES = 400, 100, 10
EPOCHS = 30
BATCH_SIZE = 8
BASE_LR = 0.002  # AdamW (mmdet's YOLOX recipe: SGD 0.01 per batch of 64)
VAL_INTERVAL = 5  # validations give the mAP curve of training.png
# ACP-TP: select channels at epochs 3, 5, ..., 15 (TPP penalty on each
# selection), cut each one at the next event; the last cut is at epoch 17,
# leaving 13 epochs to recover on the compact model.
PRUNING = dict(
    type='ChannelPruningHook',
    method='acp_tp',
    target=0.5,  # keep 50 % of the dense FLOPs
    begin=3,
    end=15,
    interval=2)
RUNS = ('dense', 'acp_tp')
# -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-dir', default=DATA_DIR)
    parser.add_argument('--work-dir', default=WORK_DIR)
    parser.add_argument('--epochs', type=int, default=EPOCHS)
    parser.add_argument('--size', type=int, default=IMG_SIZE)
    parser.add_argument('--num-train', type=int, default=NUM_TRAIN)
    parser.add_argument('--num-val', type=int, default=NUM_VAL)
    parser.add_argument('--batch-size', type=int, default=BATCH_SIZE)
    parser.add_argument('--lr', type=float, default=BASE_LR)
    parser.add_argument(
        '--target',
        type=float,
        default=PRUNING['target'],
        help='FLOPs fraction the pruned run keeps')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--score-thr',
        type=float,
        default=0.001,
        help='test score threshold (CocoMetric reports '
        'nothing when no box passes it)')
    parser.add_argument(
        '--sequential',
        action='store_true',
        help='train the two runs one after the other')
    parser.add_argument(
        '--reuse',
        action='store_true',
        help='keep runs that already finished (their '
        'run.json exists) instead of training them again')
    parser.add_argument(
        '--only', choices=RUNS, help='(internal) train this one run and exit')
    args = parser.parse_args(argv)
    # the children get the same arguments (main(argv) from code, or the CLI)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.reused = []  # runs taken from an earlier call (--reuse)
    if args.epochs < 2:
        parser.error(f'--epochs must be >= 2, got {args.epochs}')
    if not 0 < args.target <= 1:
        parser.error(f'--target must be in (0, 1], got {args.target}')
    if args.size % 32:
        parser.error(f'--size must be a multiple of 32, got {args.size}')
    return args


def schedule(epochs: int) -> dict:
    """The PRUNING schedule, squeezed into shorter runs (``--epochs``):
    events stop at half of training, so the second half recovers."""
    s = dict(PRUNING)
    if epochs < EPOCHS:
        s['begin'] = max(1, round(PRUNING['begin'] * epochs / EPOCHS))
        s['interval'] = max(1, round(PRUNING['interval'] * epochs / EPOCHS))
        s['end'] = max(
            s['begin'],
            min(
                round(PRUNING['end'] * epochs / EPOCHS),
                epochs - 1 - s['interval']))
    return s


def prepare_data(args) -> dict:
    """Generate the dataset once; later runs reuse it."""
    meta_file = osp.join(args.data_dir, 'synthetic_meta.json')
    want = dict(
        size=args.size,
        num_train=args.num_train,
        num_val=args.num_val,
        num_classes=NUM_CLASSES,
        difficulty='easy',
        seed=0)
    if osp.isfile(meta_file):
        with open(meta_file) as f:
            meta = json.load(f)
        if all(meta.get(k) == v for k, v in want.items()):
            print(f'[demo] using the existing dataset in {args.data_dir}')
            return dict(
                coco_root=osp.join(osp.abspath(args.data_dir), 'coco', ''),
                classes=list(meta['classes']))
        print(f'[demo] {args.data_dir} holds another dataset; regenerating')
    print(f'[demo] generating the synthetic dataset into {args.data_dir}')
    return make_synthetic_dataset(
        args.data_dir, formats=('coco', ), overwrite=True, **want)


def build_config(args, data: dict, run: str):
    """mmdet's YOLOX-tiny config with the short CPU recipe of
    :mod:`mmprune.datasets.short_recipe` (shared with the benchmark);
    ``run`` 'acp_tp' adds the pruning hook."""
    hooks = []
    if run != 'dense':
        hook = schedule(args.epochs)
        hook.update(target=args.target, input_size=(args.size, args.size))
        hooks.append(hook)
    # validations every VAL_INTERVAL epochs give the mAP curve; the last
    # epoch's checkpoint is what the demo evaluates and exports
    cfg = short_cpu_config(
        BASE_CONFIG,
        data,
        args.size,
        args.epochs,
        args.batch_size,
        args.lr,
        args.seed,
        osp.join(args.work_dir, run),
        hooks,
        val_interval=VAL_INTERVAL,
        checkpoint_interval=args.epochs)
    cfg.model.test_cfg.score_thr = args.score_thr
    return cfg


class _ValMetrics(Hook):
    """Keeps the metrics of the last validation."""

    def __init__(self):
        self.metrics = None

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = dict(metrics or {})


def _duration(seconds: float) -> str:
    """``95`` -> ``'1m35s'``; ``4000`` -> ``'1h06m'``."""
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 3600:
        return f'{s // 60}m{s % 60:02d}s'
    return f'{s // 3600}h{s % 3600 // 60:02d}m'


class _Progress(Hook):
    """Writes one line per finished epoch and per validation to a progress
    file, which the parent process prints (the child's stdout goes to its
    log). Each line is flushed at once, so the parent never reads half of
    one."""

    def __init__(self, path: str):
        self.path = path
        self.t0 = None

    def _write(self, line: str) -> None:
        with open(self.path, 'a') as f:
            f.write(line + '\n')

    def before_train(self, runner) -> None:
        self.t0 = time.perf_counter()
        self._write(f'started: {runner.max_epochs} epochs of '
                    f'{len(runner.train_dataloader)} iterations')

    def after_train_epoch(self, runner) -> None:
        # runner.epoch is the finished epoch's 0-based index here
        done, total = runner.epoch + 1, runner.max_epochs
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (total - done)
        parts = [f'epoch {done}/{total}']
        scalars = runner.message_hub.log_scalars
        # prune_flops_ratio: the model this epoch trained (a cut at its end
        # shows from the next epoch on)
        fields = (('train/loss', 'loss {:.3f}'),
                  ('train/prune_flops_ratio', 'ran at {:.2f} of dense FLOPs'))
        for key, fmt in fields:
            buf = scalars.get(key)
            if buf is not None:
                parts.append(fmt.format(float(buf.current())))
        parts.append(f'{_duration(elapsed)} elapsed, ETA {_duration(eta)}')
        self._write(', '.join(parts))

    def after_val_epoch(self, runner, metrics=None) -> None:
        metrics = metrics or {}
        if 'coco/bbox_mAP' in metrics:
            self._write(f'epoch {runner.epoch}: bbox mAP '
                        f'{float(metrics["coco/bbox_mAP"]):.3f}, mAP@50 '
                        f'{float(metrics.get("coco/bbox_mAP_50", 0)):.3f}')


def train_one(args, run: str) -> dict:
    """Train one run in this process; write ``<work_dir>/<run>/run.json``."""
    torch.set_num_threads(1)
    register_all_modules(init_default_scope=False)
    data = prepare_data(args)
    cfg = build_config(args, data, run)
    runner = Runner.from_cfg(cfg)
    val = _ValMetrics()
    runner.register_hook(val, priority='LOWEST')
    runner.register_hook(
        _Progress(progress_file(args, run)), priority='LOWEST')
    t0 = time.perf_counter()
    runner.train()  # ends with the validation of the last epoch
    wall = time.perf_counter() - t0
    metrics = {
        k: float(v)
        for k, v in (val.metrics or {}).items() if isinstance(v, (int, float))
    }
    result = dict(
        run=run,
        train_wall_s=round(wall, 1),
        iterations=runner.iter,
        metrics=metrics,
        timestamp=runner.timestamp,
        work_dir=cfg.work_dir,
        checkpoint=osp.join(cfg.work_dir, f'epoch_{args.epochs}.pth'),
        config=osp.join(cfg.work_dir, 'config.py'),
        pruning=next(
            (h for h in cfg.custom_hooks if h['type'] == 'ChannelPruningHook'),
            None),
        num_train=len(runner.train_dataloader.dataset),
        num_val=len(runner.val_dataloader.dataset))
    cfg.dump(result['config'])
    write_json_atomic(result, osp.join(cfg.work_dir, 'run.json'))
    return result


def progress_file(args, run: str) -> str:
    return osp.join(args.work_dir, f'{run}.progress')


class _Relay:
    """Prints the new complete lines of the runs' progress files."""

    def __init__(self, files: dict):
        self.files = files  # run -> path
        self.offsets = {run: 0 for run in files}

    def __call__(self) -> None:
        for run, path in self.files.items():
            try:
                with open(path, 'rb') as f:
                    f.seek(self.offsets[run])
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b'\n') + 1  # complete lines only
            for line in data[:end].decode(errors='replace').splitlines():
                print(f'[demo] {run}: {line}', flush=True)
            self.offsets[run] += end


def _wait(procs: dict, relay: '_Relay', poll_s: float = 1.0) -> None:
    """Wait for the child processes, relaying their progress; stop at the
    first one that fails."""
    running = dict(procs)
    while running:
        time.sleep(poll_s)
        relay()
        for run, (proc, log) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[run]
            log.close()
            if code != 0:
                for p, _ in running.values():
                    p.terminate()
                raise SystemExit(f'[demo] the {run} run failed (exit {code}); '
                                 f'see {log.name}')
    relay()


def train_all(args) -> dict:
    """Both runs, as child processes (in parallel unless --sequential),
    each logging to ``<work_dir>/<run>.log``; their progress lines are
    printed here as they come."""
    os.makedirs(args.work_dir, exist_ok=True)
    prepare_data(args)  # once, before the children read it
    argv = [a for a in args.argv if a not in ('--sequential', '--reuse')]
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    procs = {}
    for run in RUNS:
        if args.reuse and osp.isfile(osp.join(args.work_dir, run, 'run.json')):
            print(f'[demo] reusing the finished {run} run')
            args.reused.append(run)
            continue
        log = open(osp.join(args.work_dir, f'{run}.log'), 'w')
        open(progress_file(args, run), 'w').close()  # a fresh one per run
        print(f'[demo] training {run} (log: {log.name})', flush=True)
        procs[run] = (subprocess.Popen(
            [sys.executable,
             osp.abspath(__file__), *argv, '--only', run],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=os.getcwd()), log)
        if args.sequential:
            _wait({run: procs.pop(run)},
                  _Relay({run: progress_file(args, run)}))
    _wait(procs, _Relay({run: progress_file(args, run) for run in procs}))
    results = {}
    for run in RUNS:
        with open(osp.join(args.work_dir, run, 'run.json')) as f:
            results[run] = json.load(f)
    return results


def load_ema_model(result: dict):
    """The run's final EMA weights (what YOLOX validates) in the run's
    (pruned or dense) structure."""
    from mmprune.apis import load_config
    from mmprune.export.checkpoint import load_pruned_detector, read_checkpoint
    cfg = load_config(result['config'])
    model, _ = load_pruned_detector(
        cfg,
        read_checkpoint(result['checkpoint']),
        use_ema=True,
        path=result['checkpoint'])
    return model.eval()


def measure(args, results: dict) -> dict:
    """FLOPs/params (mmprune's cost model, MACs at the input size) and CPU
    latency (batch 1, one thread, interleaved rounds) of both runs."""
    from mmprune.adapters import tensor_forward
    from mmprune.apis import cost_model
    from mmprune.costs import measure_latency
    torch.set_num_threads(1)
    size = (args.size, args.size)
    models = {run: load_ema_model(r) for run, r in results.items()}
    out = {}
    fns = {}
    for run, model in models.items():
        cost = cost_model(model, size)
        out[run] = dict(flops=cost.flops(), params=cost.params(model))
        fn, x = tensor_forward(model, size)
        fns[run] = (lambda fn=fn, x=x: fn(*x))
    lat = measure_latency(fns, runs=30, warmup=5)
    for run in models:
        out[run]['latency_ms'] = round(lat[run]['median_ms'], 2)
    return out, models


def export(args, result: dict) -> dict:
    """Compact checkpoint + ONNX of the pruned run, checked with
    onnxruntime (``tools/export.py``)."""
    from mmprune.export.exporter import export_detector
    return export_detector(
        result['config'],
        result['checkpoint'],
        osp.join(args.work_dir, 'export'),
        input_size=(args.size, args.size),
        use_ema=True)


def plots(args, results: dict, models: dict) -> dict:
    """channels.png (per-layer channels, dense vs pruned) and training.png
    (the pruned run's FLOPs ratio, params and validation mAP by epoch)."""
    from mmprune.utils import plots as P
    files = dict(
        channels=osp.join(args.work_dir, 'channels.png'),
        training=osp.join(args.work_dir, 'training.png'))
    P.plot_channels(
        P.layer_widths_from_models(models['dense'], models['acp_tp']),
        files['channels'],
        title=f'YOLOX-tiny output channels per layer: dense (grey) vs ACP-TP '
        f'at {args.target:.0%} FLOPs (blue)')
    run = results['acp_tp']
    curves = P.training_curves(
        P.read_scalars(
            osp.join(run['work_dir'], run['timestamp'], 'vis_data',
                     'scalars.json')))
    P.plot_training(
        curves,
        files['training'],
        title='ACP-TP run: FLOPs of dense and COCO mAP by epoch')
    return files


def print_table(summary: dict) -> None:
    runs = summary['runs']

    def fmt(v, spec):
        return 'n/a' if v is None else format(v, spec)

    rows = [('', *RUNS)]
    for label, key, spec, scale in (('bbox mAP', 'coco/bbox_mAP', '.3f', 1),
                                    ('bbox mAP@50', 'coco/bbox_mAP_50', '.3f',
                                     1)):
        rows.append(
            (label, *(fmt(runs[r]['metrics'].get(key), spec) for r in RUNS)))
    for label, key, spec, scale in (('FLOPs (G)', 'flops', '.3f', 1e9),
                                    ('params (M)', 'params', '.3f', 1e6),
                                    ('CPU latency (ms)', 'latency_ms', '.1f',
                                     1), ('train wall time (s)',
                                          'train_wall_s', '.0f', 1)):
        rows.append((label, *(fmt(runs[r][key] / scale, spec) for r in RUNS)))
    widths = [max(len(str(row[i])) for row in rows) for i in range(3)]
    line = '-' * (sum(widths) + 6)
    print(line)
    for row in rows:
        print(f'{row[0]:<{widths[0]}} | {row[1]:>{widths[1]}} | '
              f'{row[2]:>{widths[2]}}')
    print(line)
    e = summary['export']
    print(f"ONNX: {e['onnx']} (onnxruntime max rel diff "
          f"{e['max_rel_diff']:.1e})")


def main(argv=None):
    t_start = time.perf_counter()
    args = parse_args(argv)
    if args.only:
        return train_one(args, args.only)
    results = train_all(args)
    print('[demo] evaluating, exporting and timing')
    cost, models = measure(args, results)
    exported = export(args, results['acp_tp'])
    files = plots(args, results, models)
    runs = {}
    for run, r in results.items():
        runs[run] = dict(
            metrics=r['metrics'],
            train_wall_s=r['train_wall_s'],
            iterations=r['iterations'],
            checkpoint=r['checkpoint'],
            config=r['config'],
            pruning=r['pruning'],
            **cost[run])
    dense, pruned = runs['dense'], runs['acp_tp']
    summary = dict(
        model=BASE_CONFIG.split('/')[-1],
        dataset=dict(
            dir=args.data_dir,
            difficulty='easy',
            size=args.size,
            num_train=results['dense']['num_train'],
            num_val=results['dense']['num_val'],
            num_classes=NUM_CLASSES),
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer='AdamW',
        lr=args.lr,
        input_size=args.size,
        flops_note=(f'mmprune cost model: conv/linear multiply-adds + BN, '
                    f'1x3x{args.size}x{args.size}, tensor forward (no NMS); '
                    'matches mmengine get_model_complexity_info within 1 %'),
        latency_note=('torch eager, batch 1, 1 thread, median of 30 '
                      'interleaved rounds, EMA weights'),
        runs=runs,
        flops_ratio=pruned['flops'] / dense['flops'],
        params_ratio=pruned['params'] / dense['params'],
        speedup=dense['latency_ms'] / pruned['latency_ms'],
        map_delta=(pruned['metrics'].get('coco/bbox_mAP', 0) -
                   dense['metrics'].get('coco/bbox_mAP', 0)),
        export=dict(
            onnx=exported['onnx'],
            compact_checkpoint=exported['compact_checkpoint'],
            max_rel_diff=exported['max_rel_diff'],
            report=osp.join(args.work_dir, 'export', 'export_report.json')),
        plots=files,
        total_wall_s=round(time.perf_counter() - t_start, 1),
        # with --reuse, total_wall_s leaves out the training of these runs
        reused_runs=args.reused,
        machine=dict(
            cpus=os.cpu_count(),
            threads_per_run=1,
            parallel_runs=not args.sequential),
        versions=dict(
            torch=torch.__version__,
            mmengine=mmengine.__version__,
            mmcv=mmcv.__version__,
            mmdet=mmdet.__version__,
            mmprune=mmprune.__version__,
            python=sys.version.split()[0]))
    out = osp.join(args.work_dir, 'summary.json')
    write_json_atomic(summary, out)
    print_table(summary)
    print(f'[demo] FLOPs ratio {summary["flops_ratio"]:.3f}, realized speedup '
          f'{summary["speedup"]:.2f}x, mAP change {summary["map_delta"]:+.3f}')
    print(f'[demo] wrote {out} and the plots {files["channels"]}, '
          f'{files["training"]} ({summary["total_wall_s"]:.0f} s in total)')
    return summary


if __name__ == '__main__':
    with warnings.catch_warnings():
        main()
