"""The full YOLOX recipe around the pruning hook: Mosaic/MixUp through
MultiImageMixDataset, BatchSyncRandomResize, SyncNormHook, EMAHook and
YOLOXModeSwitchHook switching off the strong augmentation after the cut."""
import pytest
from mmengine.runner import Runner
from test_hook_training import shapes
from test_stack_e2e import yolox_coco_cfg

from mmprune import apis


def recipe_cfg(mmdet_config, synth, work, max_epochs=3, **hook):
    cfg = yolox_coco_cfg(mmdet_config, synth, work, max_epochs=max_epochs)
    base = mmdet_config('yolox/yolox_tiny_8xb8-300e_coco.py')
    size = (128, 128)
    train = base.train_dataset
    train.dataset.data_root = synth['coco_root']
    train.dataset.metainfo = dict(classes=tuple(synth['classes']))
    for t in train.pipeline:
        if t['type'] in ('Mosaic', 'MixUp'):
            t['img_scale'] = size
        if t['type'] == 'RandomAffine':
            t['border'] = (-size[0] // 2, -size[1] // 2)
        if t['type'] == 'Resize':
            t['scale'] = size
    cfg.train_dataloader.dataset = train
    cfg.train_dataloader.batch_size = 4
    cfg.model.data_preprocessor.batch_augments = [
        dict(
            type='BatchSyncRandomResize',
            random_size_range=(96, 160),
            size_divisor=32,
            interval=1)
    ]
    cfg.train_cfg.val_interval = 100
    cfg.custom_hooks = [
        dict(type='YOLOXModeSwitchHook', num_last_epochs=1, priority=48),
        dict(type='SyncNormHook', priority=48),
        dict(
            type='EMAHook',
            ema_type='ExpMomentumEMA',
            momentum=0.0001,
            update_buffers=True,
            priority=49),
        dict(type='ChannelPruningHook', input_size=size, min_keep=4, **hook)
    ]
    return cfg


def test_yolox_recipe_with_mosaic_resize_and_mode_switch(
        tmp_path, mmdet_config, synth_data):
    # 4 epochs, the last 1 + 1 without Mosaic: mmdet switches at the start of
    # epoch 3 (4 - num_last_epochs), so cuts after epochs 1 and 2 are allowed
    cfg = recipe_cfg(
        mmdet_config,
        synth_data,
        tmp_path,
        max_epochs=4,
        target=0.5,
        begin=1,
        end=2)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.epoch == 4
    # the mode switch ran on the pruned model (L1 loss on, mosaic off)
    assert runner.model.bbox_head.use_l1
    assert len(apis.model_plans(runner.model)) == 2
    ema = [h for h in runner.hooks if type(h).__name__ == 'EMAHook'][0]
    assert shapes(ema.ema_model.module) == shapes(runner.model)


def test_schedule_into_no_augmentation_epochs_is_refused(
        tmp_path, mmdet_config, synth_data):
    # 3 epochs: epochs 2 and 3 are trained without Mosaic, so a cut after
    # epoch 2 is already inside them (the boundary), as is one after 3
    for end in (2, 3):
        cfg = recipe_cfg(
            mmdet_config,
            synth_data,
            tmp_path / str(end),
            target=0.5,
            begin=1,
            end=end)
        runner = Runner.from_cfg(cfg)
        with pytest.raises(ValueError, match='no-augmentation'):
            runner.train()
        assert not apis.model_plans(runner.model)  # nothing was cut
