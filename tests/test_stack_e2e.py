# Copyright (c) mmprune contributors. All rights reserved.
"""End-to-end checks of the stack mmprune plugs into, on CPU and offline.

Real mmdet models (YOLOX-tiny, RetinaNet R18-FPN) are built from mmdet's own
configs, trained for a few iterations by mmengine's Runner, evaluated with
CocoMetric (synthetic COCO set) and VOCMetric (the real VOC fixture), saved,
and resumed. Also: ``torch.load(..., weights_only=True)`` of real mmengine
checkpoints (mmprune.compat) and the offline weight check.
"""
import copy
import math
import os.path as osp
import pickle

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

import mmprune
from mmprune import compat
from mmprune.utils.offline import (OfflineWeightsError, OfflineWeightsWarning,
                                   check_offline_weights)

YOLOX_CFG = 'yolox/yolox_tiny_8xb8-300e_coco.py'
RETINANET_CFG = 'retinanet/retinanet_r18_fpn_1x_coco.py'


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
class RecordHook(Hook):
    """Records what the assertions need: the iteration and optimizer state
    seen when training starts (that is, right after a resume), every training
    loss and the last validation metrics."""

    def __init__(self):
        self.start_iter = None
        self.start_epoch = None
        self.start_optim_state = None
        self.start_sched_steps = None
        self.losses = []
        self.val_metrics = None

    def before_train(self, runner):
        self.start_iter = runner.iter
        self.start_epoch = runner.epoch
        # deepcopy: SGD updates the momentum buffers in place afterwards
        self.start_optim_state = copy.deepcopy(
            runner.optim_wrapper.state_dict())
        self.start_sched_steps = [s.last_step for s in runner.param_schedulers]

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        self.losses.append(float(outputs['loss'].detach()))

    def after_val_epoch(self, runner, metrics=None):
        self.val_metrics = dict(metrics)


def _common_runtime(cfg, work_dir, max_epochs):
    cfg.work_dir = str(work_dir)
    cfg.train_cfg = dict(
        type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=1, by_epoch=True)
    cfg.log_processor = dict(type='LogProcessor', window_size=1, by_epoch=True)
    cfg.randomness = dict(seed=0)
    # A per-runner visualizer name: the default 'visualizer' instance would
    # be shared (with its save_dir) by every Runner built in this process.
    cfg.visualizer.pop('name', None)
    cfg.env_cfg.dist_cfg = dict(backend='gloo')
    return cfg


def _loader(dataset, batch_size, shuffle):
    return dict(
        batch_size=batch_size,
        num_workers=0,
        persistent_workers=False,
        drop_last=False,
        sampler=dict(type='DefaultSampler', shuffle=shuffle),
        dataset=dataset)


def coco_dataset(coco_root, classes, split, pipeline, test_mode):
    """mmdet's CocoDataset over the synthetic set's ``split`` (images
    without boxes kept, so a tiny set stays whole)."""
    return dict(
        type='CocoDataset',
        data_root=coco_root,
        ann_file=f'annotations/instances_{split}2017.json',
        data_prefix=dict(img=f'{split}2017/'),
        metainfo=dict(classes=classes),
        filter_cfg=dict(filter_empty_gt=False),
        test_mode=test_mode,
        pipeline=pipeline)


def yolox_coco_cfg(load_cfg, synth, work_dir, max_epochs=1):
    """YOLOX-tiny from mmdet's config, on the synthetic COCO set at 128 px."""
    cfg = load_cfg(YOLOX_CFG)
    size = (128, 128)
    classes = tuple(synth['classes'])
    coco_root = synth['coco_root']
    cfg.model.bbox_head.num_classes = len(classes)
    cfg.model.data_preprocessor.batch_augments = None  # 320-640 px resizes
    # score_thr 0: even a barely trained model returns boxes, so CocoMetric
    # has something to evaluate (it returns no keys for zero predictions).
    cfg.model.test_cfg.score_thr = 0.0
    pad = dict(type='Pad', size=size, pad_val=dict(img=(114.0, 114.0, 114.0)))
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='Resize', scale=size, keep_ratio=True),
        dict(type='RandomFlip', prob=0.5), pad,
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

    def coco(split, pipeline, test_mode):
        return coco_dataset(coco_root, classes, split, pipeline, test_mode)

    cfg.train_dataloader = _loader(
        coco('train', train_pipeline, False), batch_size=4, shuffle=True)
    cfg.val_dataloader = _loader(
        coco('val', test_pipeline, True), batch_size=4, shuffle=False)
    cfg.test_dataloader = cfg.val_dataloader
    cfg.val_evaluator = dict(
        type='CocoMetric',
        ann_file=osp.join(coco_root, 'annotations', 'instances_val2017.json'),
        metric='bbox')
    cfg.test_evaluator = cfg.val_evaluator
    # mmdet's YOLOX schedule (quadratic warm-up, cosine, constant), shrunk.
    cfg.param_scheduler = [
        dict(
            type='mmdet.QuadraticWarmupLR',
            by_epoch=True,
            begin=0,
            end=1,
            convert_to_iter_based=True),
        dict(
            type='CosineAnnealingLR',
            eta_min=0.0005,
            begin=1,
            T_max=3,
            end=3,
            by_epoch=True,
            convert_to_iter_based=True),
        dict(type='ConstantLR', by_epoch=True, factor=1, begin=3, end=4),
    ]
    # YOLOXModeSwitchHook needs the Mosaic/MixUp dataset wrapper, which this
    # small pipeline does not use; keep SyncNormHook and EMAHook (the EMA
    # state goes into the checkpoint).
    cfg.custom_hooks = [
        h for h in cfg.custom_hooks if h['type'] != 'YOLOXModeSwitchHook'
    ]
    return _common_runtime(cfg, work_dir, max_epochs)


def retinanet_voc_cfg(load_cfg, voc_root, work_dir, max_epochs=4):
    """RetinaNet R18-FPN (from scratch) on the real VOC fixture at 160 px,
    with mmdet's 20 VOC classes."""
    cfg = load_cfg(RETINANET_CFG)
    size = (160, 160)
    cfg.model.bbox_head.num_classes = 20
    cfg.model.test_cfg.score_thr = 0.0
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='Resize', scale=size, keep_ratio=True),
        dict(type='PackDetInputs')
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=size, keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(
            type='PackDetInputs',
            meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                       'scale_factor'))
    ]

    def voc(year, split, pipeline, test_mode):
        return dict(
            type='VOCDataset',
            data_root=voc_root,
            ann_file=f'VOC{year}/ImageSets/Main/{split}.txt',
            data_prefix=dict(sub_data_root=f'VOC{year}/'),
            test_mode=test_mode,
            pipeline=pipeline)

    # Both years, as mmdet's voc0712 config does.
    cfg.train_dataloader = _loader(
        dict(
            type='ConcatDataset',
            ignore_keys=['dataset_type'],
            datasets=[
                voc(2007, 'trainval', train_pipeline, False),
                voc(2012, 'trainval', train_pipeline, False)
            ]),
        batch_size=2,
        shuffle=False)
    cfg.val_dataloader = _loader(
        voc(2007, 'test', test_pipeline, True), batch_size=1, shuffle=False)
    cfg.test_dataloader = cfg.val_dataloader
    cfg.val_evaluator = dict(
        type='VOCMetric', metric='mAP', eval_mode='11points')
    cfg.test_evaluator = cfg.val_evaluator
    cfg.param_scheduler = []
    cfg = _common_runtime(cfg, work_dir, max_epochs)
    cfg.train_cfg.val_interval = max_epochs
    return cfg


def _train(cfg, record=None):
    runner = Runner.from_cfg(cfg)
    if record is not None:
        runner.register_hook(record, priority='LOWEST')
    runner.train()
    return runner


def _assert_unit_interval(metrics, keys):
    for key in keys:
        assert key in metrics, f'{key} missing from {sorted(metrics)}'
        value = float(metrics[key])
        assert math.isfinite(value) and 0.0 <= value <= 1.0, (key, value)


# --------------------------------------------------------------------------
# model build + forward
# --------------------------------------------------------------------------
@pytest.mark.parametrize('name, size, strides, num_outputs', [
    (YOLOX_CFG, 128, (8, 16, 32), 3),
    (RETINANET_CFG, 160, (8, 16, 32, 64, 128), 2),
])
def test_build_and_forward(mmdet_config, mmdet_registry, name, size, strides,
                           num_outputs):
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample

    cfg = mmdet_config(name)
    num_classes = 5
    cfg.model.bbox_head.num_classes = num_classes
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    model.init_weights()  # offline: no Pretrained init_cfg is left
    model.eval()

    x = torch.rand(2, 3, size, size) * 255
    with torch.no_grad():
        outs = model(x, mode='tensor')
    # YOLOX: (cls_scores, bbox_preds, objectnesses); RetinaNet: (cls, bbox),
    # each a list with one (N, C, H/s, W/s) map per stride.
    assert isinstance(outs, tuple) and len(outs) == num_outputs
    cls_scores = outs[0]
    assert len(cls_scores) == len(strides)
    num_anchors = 1 if name == YOLOX_CFG else 9
    for level, stride in zip(cls_scores, strides):
        assert level.shape == (2, num_anchors * num_classes,
                               math.ceil(size / stride),
                               math.ceil(size / stride))
        assert torch.isfinite(level).all()

    samples = [
        DetDataSample(
            metainfo=dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                scale_factor=(1.0, 1.0))) for _ in range(2)
    ]
    with torch.no_grad():
        preds = model(x, samples, mode='predict')
    assert len(preds) == 2
    for pred in preds:
        inst = pred.pred_instances
        assert inst.bboxes.ndim == 2 and inst.bboxes.shape[-1] == 4
        assert inst.scores.shape == inst.labels.shape == inst.bboxes.shape[:1]


# --------------------------------------------------------------------------
# Runner: train, evaluate, checkpoint, resume
# --------------------------------------------------------------------------
@pytest.fixture(scope='module')
def yolox_run(mmdet_config, mmdet_registry, synth_data, tmp_path_factory):
    """One epoch of YOLOX-tiny on the synthetic COCO set, then CocoMetric."""
    work_dir = tmp_path_factory.mktemp('yolox_coco')
    cfg = yolox_coco_cfg(mmdet_config, synth_data, work_dir, max_epochs=1)
    record = RecordHook()
    runner = _train(cfg, record)
    return dict(
        cfg=cfg,
        work_dir=work_dir,
        record=record,
        runner=runner,
        ckpt=osp.join(str(work_dir), 'epoch_1.pth'),
        final_optim_state=runner.optim_wrapper.state_dict(),
        final_iter=runner.iter)


def test_yolox_trains_and_evaluates_coco(yolox_run):
    record = yolox_run['record']
    assert yolox_run['final_iter'] == 2  # 8 images / batch 4
    assert len(record.losses) == 2
    assert all(math.isfinite(v) and v > 0 for v in record.losses)
    metrics = record.val_metrics
    _assert_unit_interval(
        metrics, ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75'])
    # -1 is COCOeval's "no ground truth of this size"
    for key in ('coco/bbox_mAP_s', 'coco/bbox_mAP_m', 'coco/bbox_mAP_l'):
        assert key in metrics
        assert metrics[key] == -1 or 0 <= metrics[key] <= 1
    assert osp.isfile(yolox_run['ckpt'])


def _optim_states_equal(saved, live):
    """Compare momentum buffers parameter by parameter."""
    assert len(saved['param_groups']) == len(live['param_groups'])
    compared = 0
    for g_saved, g_live in zip(saved['param_groups'], live['param_groups']):
        assert len(g_saved['params']) == len(g_live['params'])
        for i_saved, i_live in zip(g_saved['params'], g_live['params']):
            if i_saved not in saved['state']:
                assert i_live not in live['state']
                continue
            buf_saved = saved['state'][i_saved]['momentum_buffer']
            buf_live = live['state'][i_live]['momentum_buffer']
            assert torch.equal(buf_saved, buf_live)
            compared += 1
    return compared


def test_resume_continues_from_saved_iteration(yolox_run, mmdet_config,
                                               synth_data):
    ckpt = torch.load(yolox_run['ckpt'], map_location='cpu', weights_only=True)
    saved_iter = ckpt['meta']['iter']
    assert saved_iter == yolox_run['final_iter'] == 2
    assert ckpt['meta']['epoch'] == 1

    # A new Runner in the same work_dir, two more epochs, resume=True: it
    # finds epoch_1.pth through the work dir's `last_checkpoint` file.
    cfg = yolox_coco_cfg(
        mmdet_config, synth_data, yolox_run['work_dir'], max_epochs=3)
    cfg.resume = True
    record = RecordHook()
    runner = _train(cfg, record)

    assert record.start_iter == saved_iter
    assert record.start_epoch == 1
    assert runner.iter == 6 and runner.epoch == 3
    assert len(record.losses) == 4
    assert all(math.isfinite(v) for v in record.losses)

    # SGD momentum buffers came back from the checkpoint, bit for bit.
    n = _optim_states_equal(ckpt['optimizer'], record.start_optim_state)
    assert n > 100, n  # every trained parameter of YOLOX-tiny has one
    # ... and training moved them on afterwards.
    final = runner.optim_wrapper.state_dict()
    first = next(iter(ckpt['optimizer']['state']))
    assert not torch.equal(
        ckpt['optimizer']['state'][first]['momentum_buffer'],
        final['state'][first]['momentum_buffer'])
    # The LR schedulers resumed too.
    assert record.start_sched_steps == [
        s['last_step'] for s in ckpt['param_schedulers']
    ]
    assert record.start_sched_steps[0] > 0  # a fresh scheduler is at 0


def test_retinanet_trains_and_evaluates_voc(mmdet_config, mmdet_registry,
                                            voc_root, tmp_path):
    cfg = retinanet_voc_cfg(mmdet_config, voc_root, tmp_path, max_epochs=6)
    record = RecordHook()
    runner = _train(cfg, record)
    assert runner.iter == 6  # 2 images (VOC2007 + VOC2012), batch 2
    losses = record.losses
    assert all(math.isfinite(v) for v in losses)
    # Six steps on the same two images: the loss must come down.
    assert losses[-1] < losses[0], losses
    metrics = record.val_metrics
    _assert_unit_interval(metrics, ['pascal_voc/mAP', 'pascal_voc/AP50'])
    # the dataset really is VOC with mmdet's 20 classes
    meta = runner.val_dataloader.dataset.metainfo
    assert len(meta['classes']) == 20 and 'dog' in meta['classes']


# --------------------------------------------------------------------------
# torch.load(weights_only=True) of real checkpoints (mmprune.compat)
# --------------------------------------------------------------------------
class NotAllowed:
    """An arbitrary class; pickling it into a checkpoint must not make that
    checkpoint loadable with weights_only=True."""

    def __init__(self):
        self.payload = 'arbitrary code could run here'


def test_weights_only_load_of_real_checkpoint(yolox_run):
    ckpt = torch.load(yolox_run['ckpt'], map_location='cpu', weights_only=True)
    for key in ('meta', 'state_dict', 'optimizer', 'param_schedulers',
                'message_hub', 'ema_state_dict'):
        assert key in ckpt, sorted(ckpt)
    buffers = ckpt['message_hub']['log_scalars']
    assert any(k.startswith('train/') for k in buffers)


def test_weights_only_is_still_enforced(yolox_run, tmp_path):
    """The allow-list is narrow: an object of a class that is not on it still
    fails to load, both through torch.load and through mmengine's loader (so
    nothing falls back to weights_only=False)."""
    from mmengine.runner.checkpoint import _load_checkpoint

    ckpt = torch.load(yolox_run['ckpt'], map_location='cpu', weights_only=True)
    ckpt['meta']['intruder'] = NotAllowed()
    bad = str(tmp_path / 'bad.pth')
    torch.save(ckpt, bad)
    with pytest.raises(pickle.UnpicklingError, match='NotAllowed'):
        torch.load(bad, map_location='cpu', weights_only=True)
    with pytest.raises(pickle.UnpicklingError, match='NotAllowed'):
        _load_checkpoint(bad, map_location='cpu')  # what --resume calls
    # and the default of torch.load is not overridden by the environment
    import os
    assert os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '0') in ('', '0')


class _GetattrGadget:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``: the kind of
    attribute walk a crafted checkpoint would use."""

    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer
        return getattr, (HistoryBuffer, '__init__')


def test_getattr_is_restricted(tmp_path):
    """Checkpoints pickle ``getattr(HistoryBuffer, 'min')``; the allow-list
    maps ``builtins.getattr`` to a stand-in that resolves only those names."""
    from mmengine.logging.history_buffer import HistoryBuffer
    ok, bad = str(tmp_path / 'ok.pth'), str(tmp_path / 'bad.pth')
    buf = HistoryBuffer([1.0, 3.0], [1, 1])
    torch.save({'buf': buf}, ok)
    loaded = torch.load(ok, weights_only=True)['buf']
    assert loaded.mean() == 2.0 and loaded.statistics('max') == 3.0
    torch.save({'x': _GetattrGadget()}, bad)
    with pytest.raises(pickle.UnpicklingError, match="'__init__'"):
        torch.load(bad, weights_only=True)


def test_each_safe_global_is_needed(yolox_run, mmdet_config, voc_root,
                                    tmp_path):
    """Every entry of compat.SAFE_GLOBALS is required by a real checkpoint
    (YOLOX with EMA + schedulers, or RetinaNet), and without the list the
    checkpoints do not load."""
    from torch.serialization import (add_safe_globals, clear_safe_globals,
                                     get_safe_globals)
    paths = [yolox_run['ckpt']]
    cfg = retinanet_voc_cfg(mmdet_config, voc_root, tmp_path, max_epochs=1)
    _train(cfg)
    paths.append(osp.join(str(tmp_path), 'epoch_1.pth'))

    def loads(allowed):
        clear_safe_globals()
        add_safe_globals(list(allowed))
        ok = True
        for path in paths:
            try:
                torch.load(path, map_location='cpu', weights_only=True)
            except pickle.UnpicklingError:
                ok = False
        return ok

    before = get_safe_globals()
    try:
        assert loads(compat.SAFE_GLOBALS)
        assert not loads([])
        for entry in compat.SAFE_GLOBALS:
            rest = [e for e in compat.SAFE_GLOBALS if e is not entry]
            assert not loads(rest), f'{entry} is not needed'
    finally:
        clear_safe_globals()
        add_safe_globals(before)


def test_register_safe_globals_is_idempotent():
    from torch.serialization import get_safe_globals
    n = len(get_safe_globals())
    compat.register_safe_globals()
    compat.register_safe_globals()
    assert len(get_safe_globals()) == n
    assert set(compat.SAFE_GLOBALS) <= set(get_safe_globals())


# --------------------------------------------------------------------------
# tools/train.py and tools/test.py
# --------------------------------------------------------------------------
def test_train_resume_test_tools(mmdet_config, synth_data, tmp_path):
    """The command-line tools: train one epoch, ``--resume`` (auto) to two,
    then ``test.py --out`` on the last checkpoint."""
    import runpy
    tools = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools')
    train = runpy.run_path(osp.join(tools, 'train.py'))['main']
    test = runpy.run_path(osp.join(tools, 'test.py'))['main']

    work_dir = tmp_path / 'work'
    cfg_file = str(tmp_path / 'yolox_synth.py')
    yolox_coco_cfg(
        mmdet_config, synth_data, work_dir, max_epochs=1).dump(cfg_file)

    runner = train([cfg_file, '--work-dir', str(work_dir)])
    assert runner.iter == 2 and osp.isfile(work_dir / 'epoch_1.pth')

    runner = train([
        cfg_file, '--work-dir',
        str(work_dir), '--resume', '--cfg-options', 'train_cfg.max_epochs=2'
    ])
    assert runner.iter == 4 and osp.isfile(work_dir / 'epoch_2.pth')

    out = str(tmp_path / 'preds.pkl')
    metrics = test([
        cfg_file,
        str(work_dir / 'epoch_2.pth'), '--work-dir',
        str(tmp_path / 'test'), '--out', out
    ])
    _assert_unit_interval(metrics, ['coco/bbox_mAP', 'coco/bbox_mAP_50'])
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 4 and 'pred_instances' in preds[0]


# --------------------------------------------------------------------------
# offline weights
# --------------------------------------------------------------------------
@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Point every weight cache at an empty folder."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('MMENGINE_HOME', str(tmp_path / 'mmengine'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)
    return tmp_path


def _resnet_cfg(checkpoint):
    return Config(
        dict(
            model=dict(
                type='RetinaNet',
                backbone=dict(
                    type='ResNet',
                    depth=18,
                    init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
                neck=dict(
                    type='FPN',
                    init_cfg=[
                        dict(type='Xavier', layer='Conv2d'),
                        dict(type='Pretrained', checkpoint=checkpoint)
                    ])),
            load_from='open-mmlab://resnet50_caffe'))


def test_check_offline_weights_strips_with_warning(empty_caches):
    cfg = _resnet_cfg('torchvision://resnet18')
    with pytest.warns(OfflineWeightsWarning, match='torchvision://resnet18'):
        out = check_offline_weights(cfg)
    assert 'init_cfg' not in out.model.backbone
    assert out.model.neck.init_cfg == [dict(type='Xavier', layer='Conv2d')]
    assert out.load_from is None
    # the caller's config is untouched
    assert cfg.model.backbone.init_cfg.checkpoint == 'torchvision://resnet18'
    assert cfg.load_from == 'open-mmlab://resnet50_caffe'


def test_check_offline_weights_strict_names_the_url(empty_caches):
    url = 'https://download.openmmlab.com/x/some_weights_20200101.pth'
    cfg = _resnet_cfg(url)
    with pytest.raises(OfflineWeightsError) as err:
        check_offline_weights(cfg, strict=True)
    assert url in str(err.value)
    assert 'model.backbone.init_cfg.checkpoint' in str(err.value)
    assert 'open-mmlab://resnet50_caffe' in str(err.value)


def test_check_offline_weights_uses_local_cache(empty_caches):
    cached = empty_caches / 'torch' / 'hub' / 'checkpoints'
    cached.mkdir(parents=True)
    (cached / 'resnet18-f37072fd.pth').write_bytes(b'')
    cfg = Config(
        dict(
            model=dict(
                backbone=dict(
                    init_cfg=dict(
                        type='Pretrained',
                        checkpoint='torchvision://resnet18')))))
    out = check_offline_weights(cfg, strict=True)
    assert out.model.backbone.init_cfg.checkpoint == str(
        cached / 'resnet18-f37072fd.pth')


def test_mmdet_config_builds_offline(mmdet_config):
    """The RetinaNet R18 config asks for torchvision://resnet18; the helper
    leaves no remote reference behind."""
    from mmprune.utils.offline import find_remote_weights
    cfg = mmdet_config(RETINANET_CFG)
    assert all(r.local_path is not None for r in find_remote_weights(cfg))


# --------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------
def test_custom_imports_mmprune(tmp_path):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text(
        "_base_ = ['mmdet::yolox/yolox_tiny_8xb8-300e_coco.py']\n"
        "custom_imports = dict(imports=['mmprune'], "
        'allow_failed_imports=False)\n')
    cfg = Config.fromfile(str(cfg_file))
    assert cfg.custom_imports.imports == ['mmprune']
    assert cfg.model.type == 'YOLOX'
    from torch.serialization import get_safe_globals
    assert set(compat.SAFE_GLOBALS) <= set(get_safe_globals())
    assert mmprune.__version__


def test_network_is_blocked_in_tests():
    """conftest turns any non-local connection into an immediate error, so a
    download attempt can neither hang nor pass unnoticed."""
    import socket
    with pytest.raises(OSError, match='must not use the network'):
        socket.create_connection(('198.51.100.1', 443), timeout=1)
