"""The training config of one quality run: mmdet's own model config adapted
to the synthetic data, CPU and a short from-scratch schedule.

Both models train with the same recipe so that only the pruning differs
between the runs of a table (the recipe follows ``tools/demo.py``):

* data: the synthetic COCO set at one square size: HSV jitter, resize,
  flip, pad for training; resize, pad for testing (no Mosaic/MixUp: for a
  few epochs plain augmentation converges faster);
* AdamW (lr 0.002 YOLOX, 0.001 RetinaNet; weight decay 0.05, none on norm
  and bias), quadratic warm-up then cosine to 5 % of the lr;
* YOLOX keeps mmdet's EMAHook (momentum 0.002: mmdet's 1e-4 is tuned for
  300 COCO epochs) and validates with the EMA weights, as YOLOX does;
* RetinaNet R18 trains from scratch: BN statistics are updated
  (``norm_eval=False``) and no stage is frozen (``frozen_stages=-1``), the
  gradient norm is clipped at 10;
* one validation, after the last epoch (CocoMetric), score threshold 0.001;
  no checkpoints (the run keeps its final model itself).
"""
import math
import os.path as osp
from typing import Sequence

#: model name -> (mmdet config, learning rate)
MODELS = {
    'yolox_tiny': ('mmdet::yolox/yolox_tiny_8xb8-300e_coco.py', 0.002),
    'retinanet_r18': ('mmdet::retinanet/retinanet_r18_fpn_1x_coco.py',
                      0.001),
}


def _loader(data: dict, split: str, pipeline, test_mode: bool,
            batch_size: int) -> dict:
    return dict(
        batch_size=batch_size,
        # two runs share the 2 cores: loading small JPEGs in the main
        # process keeps workers from fighting for a core
        num_workers=0, persistent_workers=False, drop_last=False,
        sampler=dict(type='DefaultSampler', shuffle=not test_mode),
        dataset=dict(
            type='CocoDataset', data_root=data['coco_root'],
            ann_file=f'annotations/instances_{split}2017.json',
            data_prefix=dict(img=f'{split}2017/'),
            metainfo=dict(classes=tuple(data['classes'])),
            filter_cfg=dict(filter_empty_gt=False), test_mode=test_mode,
            pipeline=pipeline))


def build_train_config(model: str, data: dict, size: int, epochs: int,
                       batch_size: int, seed: int, work_dir: str,
                       hooks: Sequence[dict] = ()):
    """mmengine Config of one quality run.

    Args:
        model (str): a key of :data:`MODELS`.
        data (dict): ``coco_root`` and ``classes`` of the synthetic set.
        size (int): the square train/test size (a multiple of 32).
        epochs, batch_size, seed: the schedule.
        work_dir (str): the run's folder.
        hooks (Sequence[dict]): extra custom hooks (the pruning hook).
    """
    from mmengine.hub import get_config
    from mmprune.utils.offline import check_offline_weights
    if model not in MODELS:
        raise ValueError(f'unknown benchmark model {model!r}; valid: '
                         f'{sorted(MODELS)}')
    if size % 32:
        raise ValueError(f'size must be a multiple of 32, got {size}')
    base, lr = MODELS[model]
    cfg = get_config(base)  # reads files only, loads no weights
    cfg = check_offline_weights(cfg)  # from scratch: nothing to download
    classes = tuple(data['classes'])
    cfg.model.bbox_head.num_classes = len(classes)
    cfg.model.test_cfg.score_thr = 0.001
    if model.startswith('yolox'):
        # mmdet trains YOLOX at 480-800 px with random resizes; one size
        cfg.model.data_preprocessor.batch_augments = None
    else:
        cfg.model.backbone.norm_eval = False
        cfg.model.backbone.frozen_stages = -1
    hw = (size, size)
    pad = dict(type='Pad', size=hw, pad_val=dict(img=(114.0, 114.0, 114.0)))
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='YOLOXHSVRandomAug'),
        dict(type='Resize', scale=hw, keep_ratio=True),
        dict(type='RandomFlip', prob=0.5), pad,
        dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1),
             keep_empty=False),
        dict(type='PackDetInputs')
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=hw, keep_ratio=True), pad,
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='PackDetInputs',
             meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                        'scale_factor'))
    ]
    cfg.train_dataloader = _loader(data, 'train', train_pipeline, False,
                                   batch_size)
    cfg.val_dataloader = _loader(data, 'val', test_pipeline, True,
                                 batch_size)
    cfg.test_dataloader = cfg.val_dataloader
    cfg.val_evaluator = dict(
        type='CocoMetric', metric='bbox',
        ann_file=osp.join(data['coco_root'], 'annotations',
                          'instances_val2017.json'))
    cfg.test_evaluator = cfg.val_evaluator
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=epochs,
                         val_interval=epochs)
    cfg.val_cfg = dict(type='ValLoop')
    cfg.test_cfg = dict(type='TestLoop')
    cfg.optim_wrapper = dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=lr, weight_decay=0.05),
        paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.))
    if not model.startswith('yolox'):
        cfg.optim_wrapper['clip_grad'] = dict(max_norm=10, norm_type=2)
    warmup = max(1, math.ceil(epochs / 8))
    cfg.param_scheduler = [
        dict(type='mmdet.QuadraticWarmupLR', by_epoch=True, begin=0,
             end=min(warmup, epochs), convert_to_iter_based=True)
    ]
    if epochs > warmup:
        cfg.param_scheduler.append(
            dict(type='CosineAnnealingLR', eta_min=lr * 0.05, begin=warmup,
                 T_max=epochs - warmup, end=epochs, by_epoch=True,
                 convert_to_iter_based=True))
    custom = [h for h in cfg.get('custom_hooks', [])
              if h['type'] != 'YOLOXModeSwitchHook']
    for h in custom:
        if h['type'] == 'EMAHook':
            h['momentum'] = 0.002
    cfg.custom_hooks = custom + [dict(h) for h in hooks]
    cfg.default_hooks.logger.interval = 10
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook',
                                        interval=10**6, save_last=False)
    cfg.visualizer.pop('name', None)
    cfg.randomness = dict(seed=seed)
    cfg.env_cfg.dist_cfg = dict(backend='gloo')
    cfg.work_dir = work_dir
    return cfg
