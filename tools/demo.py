# Copyright (c) mmprune contributors. All rights reserved.
"""``make demo``: dense YOLOX baseline on the synthetic dataset, on CPU.

1. Generate the synthetic dataset into ``data/synth`` (skipped when present).
2. Train YOLOX-tiny from mmdet's own config (``mmdet::yolox/...``) with
   mmengine's Runner, from scratch, for a short CPU budget.
3. Evaluate COCO bbox mAP with CocoMetric (EMA weights, as YOLOX does).
4. Write ``work_dirs/demo/summary.json`` (mAP, parameters, FLOPs, training
   wall time) atomically and print a table.

This is the dense baseline only: pruning is not implemented yet. The numbers
are whatever this short schedule gives; they are not comparable to YOLOX's
published COCO results.

    python tools/demo.py [--epochs N] [--size 320] [--work-dir DIR]
"""
import argparse
import json
import os.path as osp
import sys
import time
import warnings

import mmprune  # noqa: F401  (first: torch.load safe globals, registries)
import mmcv
import mmdet
import mmengine
import torch
from mmengine.hooks import Hook
from mmengine.hub import get_config
from mmengine.runner import Runner

from mmdet.utils import register_all_modules
from mmprune.datasets.synthetic import make_synthetic_dataset
from mmprune.utils.io import write_json_atomic
from mmprune.utils.offline import check_offline_weights

# ---- demo settings: edit these ---------------------------------------------
BASE_CONFIG = 'mmdet::yolox/yolox_tiny_8xb8-300e_coco.py'
DATA_DIR = 'data/synth'
WORK_DIR = 'work_dirs/demo'
IMG_SIZE = 320  # train and test input side (the dataset is drawn at 320)
EPOCHS = 10
BATCH_SIZE = 8
BASE_LR = 0.002  # AdamW (mmdet's YOLOX recipe: SGD 0.01 per batch of 64)
NUM_WORKERS = 2
# -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-dir', default=DATA_DIR)
    parser.add_argument('--work-dir', default=WORK_DIR)
    parser.add_argument('--epochs', type=int, default=EPOCHS)
    parser.add_argument('--size', type=int, default=IMG_SIZE)
    parser.add_argument('--batch-size', type=int, default=BATCH_SIZE)
    parser.add_argument('--lr', type=float, default=BASE_LR)
    parser.add_argument('--num-workers', type=int, default=NUM_WORKERS)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def prepare_data(data_dir: str) -> dict:
    """Generate the dataset once; later runs reuse it."""
    meta_file = osp.join(data_dir, 'synthetic_meta.json')
    if osp.isfile(meta_file):
        with open(meta_file) as f:
            meta = json.load(f)
        print(f'[demo] using the existing dataset in {data_dir}')
        from mmprune.datasets.synthetic import SYNTH_CLASSES
        classes = meta.get('classes') or list(
            SYNTH_CLASSES[:meta['num_classes']])
        return dict(
            coco_root=osp.join(osp.abspath(data_dir), 'coco', ''),
            classes=list(classes),
            num_train=meta.get('num_train'),
            num_val=meta.get('num_val'))
    print(f'[demo] generating the synthetic dataset into {data_dir}')
    return make_synthetic_dataset(data_dir)


def build_config(args, data: dict):
    """mmdet's YOLOX-tiny config, adapted to the synthetic set and CPU."""
    cfg = get_config(BASE_CONFIG)  # reads files only; loads no weights
    cfg = check_offline_weights(cfg)  # YOLOX has no pretrained init_cfg
    size = (args.size, args.size)
    classes = tuple(data['classes'])
    coco_root = data['coco_root']

    cfg.model.bbox_head.num_classes = len(classes)
    # mmdet trains YOLOX at 480-800 px with random resizes; keep one size.
    cfg.model.data_preprocessor.batch_augments = None
    # YOLOX's test-phase threshold (mmdet uses 0.01 for validation).
    cfg.model.test_cfg.score_thr = 0.001

    pad = dict(type='Pad', size=size, pad_val=dict(img=(114.0, 114.0, 114.0)))
    # Mosaic/MixUp help long schedules; for a few epochs plain flips and
    # colour jitter converge faster.
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='YOLOXHSVRandomAug'),
        dict(type='Resize', scale=size, keep_ratio=True),
        dict(type='RandomFlip', prob=0.5), pad,
        dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1),
             keep_empty=False),
        dict(type='PackDetInputs')
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=size, keep_ratio=True), pad,
        dict(type='LoadAnnotations', with_bbox=True),
        dict(
            type='PackDetInputs',
            meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                       'scale_factor'))
    ]

    def loader(split, pipeline, test_mode, batch_size):
        return dict(
            batch_size=batch_size,
            num_workers=args.num_workers,
            persistent_workers=args.num_workers > 0,
            drop_last=False,
            sampler=dict(type='DefaultSampler', shuffle=not test_mode),
            dataset=dict(
                type='CocoDataset',
                data_root=coco_root,
                ann_file=f'annotations/instances_{split}2017.json',
                data_prefix=dict(img=f'{split}2017/'),
                metainfo=dict(classes=classes),
                filter_cfg=dict(filter_empty_gt=False),
                test_mode=test_mode,
                pipeline=pipeline))

    cfg.train_dataloader = loader('train', train_pipeline, False,
                                  args.batch_size)
    cfg.val_dataloader = loader('val', test_pipeline, True, args.batch_size)
    cfg.test_dataloader = cfg.val_dataloader
    cfg.val_evaluator = dict(
        type='CocoMetric',
        ann_file=osp.join(coco_root, 'annotations', 'instances_val2017.json'),
        metric='bbox')
    cfg.test_evaluator = cfg.val_evaluator

    cfg.train_cfg = dict(
        type='EpochBasedTrainLoop',
        max_epochs=args.epochs,
        val_interval=args.epochs)
    # From scratch and only a few hundred iterations: AdamW got further than
    # mmdet's SGD recipe in our short CPU runs (SGD lr 0.01, 10 epochs:
    # mAP@50 0.001; AdamW lr 0.002, 8 epochs: 0.013). Norm and bias weights
    # are not decayed, as in mmdet's config.
    cfg.optim_wrapper = dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=args.lr, weight_decay=0.05),
        paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.))
    # mmdet's YOLOX schedule, shrunk: quadratic warm-up, then cosine.
    warmup = max(1, args.epochs // 8)
    cfg.param_scheduler = [
        dict(
            type='mmdet.QuadraticWarmupLR',
            by_epoch=True,
            begin=0,
            end=warmup,
            convert_to_iter_based=True)
    ]
    if args.epochs > warmup:
        cfg.param_scheduler.append(
            dict(
                type='CosineAnnealingLR',
                eta_min=args.lr * 0.05,
                begin=warmup,
                T_max=args.epochs - warmup,
                end=args.epochs,
                by_epoch=True,
                convert_to_iter_based=True))
    # No Mosaic/MixUp dataset wrapper, so no YOLOXModeSwitchHook; keep
    # SyncNormHook and EMAHook (validation uses the EMA weights).
    cfg.custom_hooks = [
        h for h in cfg.custom_hooks if h['type'] != 'YOLOXModeSwitchHook'
    ]
    # The EMA momentum of mmdet (1e-4 per iteration) is tuned for 300 epochs
    # of COCO; over a few hundred iterations it would barely move.
    for h in cfg.custom_hooks:
        if h['type'] == 'EMAHook':
            h['momentum'] = 0.002
    cfg.default_hooks.logger.interval = 10
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=args.epochs, max_keep_ckpts=1)
    cfg.visualizer.pop('name', None)
    cfg.randomness = dict(seed=args.seed)
    cfg.env_cfg.dist_cfg = dict(backend='gloo')
    cfg.work_dir = args.work_dir
    return cfg


class _ValMetrics(Hook):
    """Keeps the metrics of the last validation."""

    def __init__(self):
        self.metrics = None

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = dict(metrics or {})


def model_cost(model, size: int) -> dict:
    """Parameters, and FLOPs when mmengine's analyser can trace the model."""
    from mmengine.analysis import get_model_complexity_info
    params = sum(p.numel() for p in model.parameters())
    out = dict(params=params, flops=None, flops_note=None)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            info = get_model_complexity_info(
                model,
                inputs=(torch.zeros(1, 3, size, size), ),
                show_table=False,
                show_arch=False)
        out['flops'] = int(info['flops'])
        out['flops_note'] = (f'mmengine get_model_complexity_info, 1x3x{size}'
                             f'x{size}, tensor forward (no NMS), one '
                             'multiply-add counted as one FLOP')
    except Exception as e:  # noqa: B902  reported, not hidden
        out['flops_note'] = f'not measured: {type(e).__name__}: {e}'
        print(f'[demo] FLOPs not measured: {type(e).__name__}: {e}')
    finally:
        model.train(was_training)
    return out


def print_table(summary: dict) -> None:
    m = summary['metrics']

    def fmt(v, spec):
        return 'n/a' if v is None else format(v, spec)

    rows = [
        ('model', summary['model']),
        ('input', f"{summary['input_size']}x{summary['input_size']}"),
        ('train images / val images',
         f"{summary['num_train']} / {summary['num_val']}"),
        ('epochs (iterations)',
         f"{summary['epochs']} ({summary['iterations']})"),
        ('bbox mAP', fmt(m.get('coco/bbox_mAP'), '.3f')),
        ('bbox mAP@50', fmt(m.get('coco/bbox_mAP_50'), '.3f')),
        ('bbox mAP@75', fmt(m.get('coco/bbox_mAP_75'), '.3f')),
        ('params (M)', fmt(summary['params'] / 1e6, '.3f')),
        ('FLOPs (G)', fmt(summary['flops'] and summary['flops'] / 1e9,
                          '.3f')),
        ('train wall time (s)', fmt(summary['train_wall_s'], '.1f')),
        ('total wall time (s)', fmt(summary['total_wall_s'], '.1f')),
    ]
    width = max(len(k) for k, _ in rows)
    line = '-' * (width + 3 + max(len(str(v)) for _, v in rows))
    print(line)
    for k, v in rows:
        print(f'{k:<{width}} | {v}')
    print(line)


def main(argv=None):
    t_start = time.perf_counter()
    args = parse_args(argv)
    register_all_modules(init_default_scope=False)

    data = prepare_data(args.data_dir)
    cfg = build_config(args, data)
    runner = Runner.from_cfg(cfg)
    val = _ValMetrics()
    runner.register_hook(val, priority='LOWEST')

    t0 = time.perf_counter()
    runner.train()  # ends with the validation of the last epoch
    train_wall = time.perf_counter() - t0

    cost = model_cost(runner.model, args.size)
    metrics = {
        k: float(v)
        for k, v in (val.metrics or {}).items()
        if isinstance(v, (int, float))
    }
    if not metrics:
        # mmdet's CocoMetric returns nothing (and logs "The testing results
        # of the whole dataset is empty") when no box passes score_thr.
        print('[demo] CocoMetric returned no metrics: no detection scored '
              f'above {cfg.model.test_cfg.score_thr}; train longer '
              '(--epochs)')
    summary = dict(
        model=BASE_CONFIG.split('/')[-1],
        dense=True,
        pruning=None,
        input_size=args.size,
        num_train=len(runner.train_dataloader.dataset),
        num_val=len(runner.val_dataloader.dataset),
        num_classes=len(data['classes']),
        epochs=args.epochs,
        iterations=runner.iter,
        batch_size=args.batch_size,
        optimizer='AdamW',
        lr=args.lr,
        metrics=metrics,
        params=cost['params'],
        flops=cost['flops'],
        flops_note=cost['flops_note'],
        train_wall_s=round(train_wall, 1),
        total_wall_s=round(time.perf_counter() - t_start, 1),
        torch_threads=torch.get_num_threads(),
        versions=dict(
            torch=torch.__version__,
            mmengine=mmengine.__version__,
            mmcv=mmcv.__version__,
            mmdet=mmdet.__version__,
            mmprune=mmprune.__version__,
            python=sys.version.split()[0]),
        checkpoint=osp.join(args.work_dir, f'epoch_{args.epochs}.pth'))
    out = osp.join(args.work_dir, 'summary.json')
    write_json_atomic(summary, out)
    print_table(summary)
    print(f'[demo] wrote {out}')
    return summary


if __name__ == '__main__':
    main()
