"""A short from-scratch CPU training recipe on the synthetic COCO set.

``make demo`` and the benchmark's quality runs train mmdet detectors for a
few epochs, from scratch (no pretrained weights can be fetched), on one
square image size. Both use this one recipe, so that a demo number and a
benchmark number mean the same thing:

* data: the synthetic COCO set (:func:`make_synthetic_dataset`) at one
  square size: HSV jitter, resize, flip and pad for training; resize and
  pad for testing. No Mosaic/MixUp: for a few epochs plain augmentation
  converges faster (and so no ``YOLOXModeSwitchHook``);
* AdamW (weight decay 0.05, none on norm and bias), quadratic warm-up for
  an eighth of the epochs, then cosine to 5 % of the lr;
* mmdet's EMAHook, when the config has one (YOLOX), with momentum 0.002:
  mmdet's 1e-4 is tuned for 300 COCO epochs and would barely move here;
* ResNet backbones train from scratch: BN statistics are updated
  (``norm_eval=False``), no stage is frozen, the gradient norm is clipped;
* CocoMetric, score threshold 0.001; data loaded in the main process (two
  runs share two cores; workers would fight for them).
"""
import os.path as osp
from typing import Optional, Sequence


def _loader(data: dict, split: str, pipeline, test_mode: bool,
            batch_size: int) -> dict:
    return dict(
        batch_size=batch_size,
        num_workers=0,
        persistent_workers=False,
        drop_last=False,
        sampler=dict(type='DefaultSampler', shuffle=not test_mode),
        dataset=dict(
            type='CocoDataset',
            data_root=data['coco_root'],
            ann_file=f'annotations/instances_{split}2017.json',
            data_prefix=dict(img=f'{split}2017/'),
            metainfo=dict(classes=tuple(data['classes'])),
            filter_cfg=dict(filter_empty_gt=False),
            test_mode=test_mode,
            pipeline=pipeline))


def short_cpu_config(base: str,
                     data: dict,
                     size: int,
                     epochs: int,
                     batch_size: int,
                     lr: float,
                     seed: int,
                     work_dir: str,
                     hooks: Sequence[dict] = (),
                     val_interval: Optional[int] = None,
                     checkpoint_interval: Optional[int] = None):
    """mmengine Config: mmdet's ``base`` config on the synthetic set.

    Args:
        base (str): an mmdet config (``mmdet::...`` or a file).
        data (dict): ``coco_root`` and ``classes`` of the synthetic set.
        size (int): the square train/test size, a multiple of 32.
        epochs, batch_size, lr, seed: the schedule.
        work_dir (str): the run's folder.
        hooks (Sequence[dict]): extra custom hooks (a pruning hook).
        val_interval (int, optional): epochs between validations.
            Defaults to one validation after the last epoch.
        checkpoint_interval (int, optional): epochs between checkpoints
            (the last one kept). Defaults to none saved.
    """
    from ..utils.config import load_config
    from ..utils.offline import check_offline_weights
    if size % 32:
        raise ValueError(f'size must be a multiple of 32, got {size}')
    cfg = check_offline_weights(load_config(base))  # loads no weights
    resnet = cfg.model.backbone.get('type') == 'ResNet'
    cfg.model.bbox_head.num_classes = len(data['classes'])
    cfg.model.test_cfg.score_thr = 0.001
    if resnet:
        cfg.model.backbone.norm_eval = False
        cfg.model.backbone.frozen_stages = -1
    else:
        # mmdet trains YOLOX at 480-800 px with random resizes; one size
        cfg.model.data_preprocessor.batch_augments = None
    hw = (size, size)
    pad = dict(type='Pad', size=hw, pad_val=dict(img=(114.0, 114.0, 114.0)))
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='YOLOXHSVRandomAug'),
        dict(type='Resize', scale=hw, keep_ratio=True),
        dict(type='RandomFlip', prob=0.5), pad,
        dict(
            type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
        dict(type='PackDetInputs')
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=hw, keep_ratio=True), pad,
        dict(type='LoadAnnotations', with_bbox=True),
        dict(
            type='PackDetInputs',
            meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                       'scale_factor'))
    ]
    cfg.train_dataloader = _loader(data, 'train', train_pipeline, False,
                                   batch_size)
    cfg.val_dataloader = _loader(data, 'val', test_pipeline, True, batch_size)
    cfg.test_dataloader = cfg.val_dataloader
    cfg.val_evaluator = dict(
        type='CocoMetric',
        metric='bbox',
        ann_file=osp.join(data['coco_root'], 'annotations',
                          'instances_val2017.json'))
    cfg.test_evaluator = cfg.val_evaluator
    cfg.train_cfg = dict(
        type='EpochBasedTrainLoop',
        max_epochs=epochs,
        val_interval=min(val_interval or epochs, epochs))
    cfg.val_cfg = dict(type='ValLoop')
    cfg.test_cfg = dict(type='TestLoop')
    cfg.optim_wrapper = dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=lr, weight_decay=0.05),
        paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.))
    if resnet:
        cfg.optim_wrapper['clip_grad'] = dict(max_norm=10, norm_type=2)
    warmup = max(1, epochs // 8)
    cfg.param_scheduler = [
        dict(
            type='mmdet.QuadraticWarmupLR',
            by_epoch=True,
            begin=0,
            end=min(warmup, epochs),
            convert_to_iter_based=True)
    ]
    if epochs > warmup:
        cfg.param_scheduler.append(
            dict(
                type='CosineAnnealingLR',
                eta_min=lr * 0.05,
                begin=warmup,
                T_max=epochs - warmup,
                end=epochs,
                by_epoch=True,
                convert_to_iter_based=True))
    custom = [
        h for h in cfg.get('custom_hooks', [])
        if h['type'] != 'YOLOXModeSwitchHook'
    ]
    for h in custom:
        if h['type'] == 'EMAHook':
            h['momentum'] = 0.002
    cfg.custom_hooks = custom + [dict(h) for h in hooks]
    cfg.default_hooks.logger.interval = 10
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook',
        interval=checkpoint_interval or 10**6,
        max_keep_ckpts=1,
        save_last=checkpoint_interval is not None)
    cfg.visualizer.pop('name', None)
    cfg.randomness = dict(seed=seed)
    cfg.env_cfg.dist_cfg = dict(backend='gloo')
    cfg.work_dir = work_dir
    return cfg
