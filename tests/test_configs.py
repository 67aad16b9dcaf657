"""The shipped configs under ``configs/``: every method x detector x dataset.

* every config (globbed, so new ones are covered) loads with mmengine, holds
  exactly one ``ChannelPruningHook`` that mmdet's HOOKS registry builds, and
  its schedule fits the training loop (before the end, before YOLOX's
  no-augmentation epochs, by the first LR step of a 1x schedule); classes,
  datasets, data roots and evaluators are COCO's or VOC0712's;
* per detector family, the model builds from a config, its channel graph is
  analysed, and every method's target is reachable by that method's
  allocator and group filter (an unreachable target stops training with an
  error at the last event, after hours of training);
* one config trains end to end with mmengine's Runner on the VOC fixture,
  with only the data, image size, epochs and schedule shrunk.
"""
import functools
import glob
import os.path as osp
import warnings

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmprune import apis
from mmprune.methods import METHODS, filter_groups
from mmprune.registry import ALLOCATORS, CRITERIA, build_from
from mmprune.utils.offline import (OfflineWeightsWarning,
                                   check_offline_weights, find_remote_weights)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(REPO, 'configs')
# every final config; `_base_` holds shared pieces that are not run alone
CONFIGS = sorted(
    p for p in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True)
    if '_base_' not in osp.relpath(p, CONFIG_DIR).split(osp.sep))

MODELS = ('yolox_nano_8xb8-300e', 'yolox_tiny_8xb8-300e', 'yolox_s_8xb8-300e',
          'retinanet_r50_fpn_1x', 'faster-rcnn_r50_fpn_1x')
DATASETS = ('coco', 'voc0712')
# dataset wrappers: the leaves below them are the real datasets
WRAPPERS = ('ConcatDataset', 'RepeatDataset', 'MultiImageMixDataset',
            'ClassBalancedDataset')
EXPECTED = {
    'coco':
    dict(
        dataset='CocoDataset',
        metric='CocoMetric',
        classes=80,
        root='data/coco/'),
    'voc0712':
    dict(
        dataset='VOCDataset',
        metric='VOCMetric',
        classes=20,
        root='data/VOCdevkit/'),
}


def rel(path):
    return osp.relpath(path, REPO)


@pytest.fixture(scope='module', autouse=True)
def _fast_mmdet_paths():
    """mmengine resolves each ``mmdet::`` base by reading mmdet's ~100
    metafiles (0.3-0.5 s a time, most of a config load); they do not change
    during the tests, so each is read once (mmengine only reads them)."""
    from mmengine.config import utils
    real = utils.load
    utils.load = functools.lru_cache(maxsize=None)(real)
    yield
    utils.load = real


def load(path) -> Config:
    # format_python_code=False: skip mmengine's yapf pass over the text
    return Config.fromfile(path, format_python_code=False)


def dataset_of(path) -> str:
    name = osp.splitext(osp.basename(path))[0]
    return name.rsplit('_', 1)[1]


def pruning_hooks(cfg):
    return [
        h for h in cfg.get('custom_hooks', [])
        if h['type'] == 'ChannelPruningHook'
    ]


def build_hook(hook_cfg):
    # through mmdet's registry, as the Runner builds custom_hooks
    from mmdet.registry import HOOKS
    return HOOKS.build(dict(hook_cfg))


def detector_cfg(cfg):
    """The detector's config, also when wrapped in PrunableDetector."""
    model = cfg.model
    return model.architecture if model.type == 'PrunableDetector' else model


def num_classes(model_cfg) -> int:
    if 'roi_head' in model_cfg:
        return model_cfg.roi_head.bbox_head.num_classes
    return model_cfg.bbox_head.num_classes


def leaf_datasets(ds):
    if ds['type'] in WRAPPERS:
        inner = ds.get('datasets') or [ds['dataset']]
        return [leaf for d in inner for leaf in leaf_datasets(d)]
    return [ds]


def test_every_method_model_dataset_has_a_config():
    names = {rel(p) for p in CONFIGS}
    for method in METHODS:
        for model in MODELS:
            for data in DATASETS:
                prefix = method.replace('_', '-')
                path = f'configs/{method}/{prefix}_{model}_{data}.py'
                assert path in names, f'missing config {path}'
    assert len(CONFIGS) >= 40


@pytest.mark.parametrize('path', CONFIGS, ids=rel)
def test_config_loads_and_is_consistent(path, mmdet_registry):
    cfg = load(path)
    data = dataset_of(path)
    want = EXPECTED[data]
    assert cfg.custom_imports == dict(
        imports=['mmprune'], allow_failed_imports=False)
    hooks = pruning_hooks(cfg)
    assert len(hooks) == 1, f'{rel(path)}: {len(hooks)} ChannelPruningHooks'
    hook = build_hook(hooks[0])
    # the folder and file prefix name the method the hook runs
    method = osp.basename(osp.dirname(path))
    assert hook.method == method == hooks[0]['method']
    assert osp.basename(path).startswith(method.replace('_', '-') + '_')
    assert 0 < hook.target < 1

    # the schedule fits the training loop; mirrors the hook's own check in
    # before_train (soft selections are removed one interval later)
    assert cfg.train_cfg.get('type', 'EpochBasedTrainLoop') == \
        'EpochBasedTrainLoop' and hook.by_epoch
    max_epochs = cfg.train_cfg.max_epochs
    last = hook.schedule.last
    assert 1 <= hook.schedule.positions[0] and last < max_epochs, \
        (last, max_epochs)
    types = [h['type'] for h in cfg.custom_hooks]
    if 'yolox' in path:
        # mmdet's YOLOX hooks are kept, and pruning ends before the
        # no-augmentation epochs
        assert types[:3] == ['YOLOXModeSwitchHook', 'SyncNormHook', 'EMAHook']
        # mmdet's YOLOXModeSwitchHook turns Mosaic/MixUp off before
        # (1-based) epoch max_epochs - num_last_epochs, so the last epoch
        # trained with them is one earlier
        switch = cfg.custom_hooks[0]['num_last_epochs']
        assert last <= max_epochs - switch - 1
    else:
        # 1x: done by the first LR step, so the model recovers at both LRs
        steps = [s for s in cfg.param_scheduler if s['type'] == 'MultiStepLR']
        assert last <= steps[0]['milestones'][0]

    # FLOPs are counted at the test image size, (H, W): the test Resize's
    # (w, h) for YOLOX's square images, (short, long) for keep-ratio R-CNN
    resize = [
        t for t in cfg.test_dataloader.dataset.pipeline
        if t['type'] == 'Resize'
    ][0]
    assert hook.input_size == tuple(sorted(resize['scale'])), \
        (hook.input_size, resize['scale'])

    # dataset, classes, data roots and metrics
    assert num_classes(detector_cfg(cfg)) == want['classes']
    for split in ('train', 'val', 'test'):
        leaves = leaf_datasets(cfg[f'{split}_dataloader'].dataset)
        assert {d['type'] for d in leaves} == {want['dataset']}, split
        assert {d['data_root'] for d in leaves} == {want['root']}, split
        metric = cfg.get(f'{split}_evaluator') if split != 'train' else None
        if metric is not None:
            assert metric['type'] == want['metric']
            if data == 'coco':
                assert metric['ann_file'] == \
                    'data/coco/annotations/instances_val2017.json'
    if data == 'voc0712':
        train = leaf_datasets(cfg.train_dataloader.dataset)
        assert sorted(d['ann_file'] for d in train) == [
            'VOC2007/ImageSets/Main/trainval.txt',
            'VOC2012/ImageSets/Main/trainval.txt'
        ]
        assert cfg.test_dataloader.dataset.ann_file == \
            'VOC2007/ImageSets/Main/test.txt'
        assert cfg.val_evaluator.eval_mode == '11points'
    if 'yolox' in path:
        # YOLOX's Mosaic (and MixUp for -s) wrapper, also on VOC
        train = cfg.train_dataloader.dataset
        assert train.type == 'MultiImageMixDataset'
        steps = [t['type'] for t in train.pipeline]
        assert 'Mosaic' in steps
        assert ('MixUp' in steps) == ('yolox_s_' in path)


def test_prunable_detector_line_works_when_uncommented(tmp_path,
                                                       mmdet_registry):
    """The block's commented ``model = dict(... 'PrunableDetector' ...)``
    (for DetInferencer) gives a config whose detector is the same one,
    made prunable."""
    from mmdet.models import YOLOX
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    path = _config_path('acp_tp', 'yolox_nano_8xb8-300e', 'coco')
    text = open(path).read()
    lines = [
        '# model = dict(', "#     _delete_=True, type='PrunableDetector', "
        'architecture=_base_.model)'
    ]
    assert '\n'.join(lines) in text
    wrapped = text.replace('\n'.join(lines), '\n'.join(ln[2:] for ln in lines))
    (tmp_path / 'wrapped.py').write_text(wrapped)
    cfg = load(str(tmp_path / 'wrapped.py'))
    assert cfg.model.type == 'PrunableDetector'
    assert detector_cfg(cfg) == load(path).model
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    assert isinstance(model, YOLOX)
    assert type(model).__name__ == 'PrunableYOLOX'


# --------------------------------------------------------------------------
# model build, graph analysis and reachable targets, one model per family
# --------------------------------------------------------------------------
# (model, dataset, cost scale). The cost model runs a forward at the hook's
# input size times `scale`: YOLOX at full size; the ResNet detectors at half
# size to stay fast. For RetinaNet the FLOPs shares barely depend on the
# size; Faster R-CNN's RoI head (never pruned) costs the same at any size, so
# at half size it is a larger share and the reachable ratio only rises: the
# check is stricter than at full size.
FAMILIES = [
    ('yolox_s_8xb8-300e', 'coco', 1.0),
    ('retinanet_r50_fpn_1x', 'voc0712', 0.5),
    ('faster-rcnn_r50_fpn_1x', 'coco', 0.5),
]


def _config_path(method, model, data):
    return osp.join(CONFIG_DIR, method,
                    f"{method.replace('_', '-')}_{model}_{data}.py")


@pytest.mark.parametrize(
    'model_name,data,scale', FAMILIES, ids=[f[0] for f in FAMILIES])
def test_model_builds_analyses_and_targets_are_reachable(
        model_name, data, scale, mmdet_registry):
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    cfgs = {m: load(_config_path(m, model_name, data)) for m in METHODS}
    cfg = cfgs['acp_tp']
    for method, c in cfgs.items():
        # every method's config prunes the same detector
        assert detector_cfg(c) == detector_cfg(cfg), method
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', OfflineWeightsWarning)
        cfg = check_offline_weights(cfg)
    # no pretrained URL is left for init_weights to fetch
    assert all(r.local_path is not None for r in find_remote_weights(cfg))
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model).eval()
    hooks = {m: build_hook(pruning_hooks(c)[0]) for m, c in cfgs.items()}
    size = hooks['acp_tp'].input_size
    size = tuple(int(round(s * scale / 32)) * 32 for s in size)
    cost = apis.cost_model(model, size)
    dense = cost.flops()
    graphs = {}
    l1 = build_from(CRITERIA, 'L1Criterion', 'criterion')
    for method, hook in hooks.items():
        mode = hook.residual_mode
        if mode not in graphs:
            graphs[mode] = apis.analyze(model, mode, (64, 64))
        graph = graphs[mode]
        names = set(filter_groups(graph, **hook.exclude_groups))
        assert names, f'{method}: no prunable group on {model_name}'
        if 'resnet' in repr(cfg.model.backbone.type).lower():
            # the frozen stem is pinned (mmdet's frozen_stages=1)
            stem = [
                g for g in graph.groups
                if any(m.module == 'backbone.conv1' for m in g.producers())
            ]
            assert stem and not any(g.prunable for g in stem)
        # the final target, in one allocation from the dense model, with
        # the method's allocator limits and group filter (scores do not
        # change which channels may go, only which do)
        scores = {
            k: v
            for k, v in l1.score(model, graph).items() if k in names
        }
        alloc = build_from(ALLOCATORS,
                           dict(hook.allocator_cfg, ratio=hook.target),
                           'allocator')
        keep = alloc.allocate(model, graph, scores, cost)
        ratio = cost.flops(graph, keep) / dense
        assert hook.target - 0.05 <= ratio <= hook.target + 1e-9, \
            (method, ratio, hook.target)
        # the ResNet detectors target 0.5 too (issue 17): necks and heads
        # prune, and the reachability check (caps relative to the dense
        # width) agrees with the allocation
        assert hook.target == 0.5, (method, hook.target)
        assert alloc.reachable_cost(model, graph, cost, sorted(names)) <= \
            hook.target * dense, method


# --------------------------------------------------------------------------
# end to end: a shipped config, trained by mmengine's Runner
# --------------------------------------------------------------------------
class _Recorder(Hook):
    """Which transforms each epoch skipped (after the mode switch hook has
    run) and the last validation metrics."""
    priority = 'LOWEST'

    def __init__(self):
        self.skipped = {}
        self.metrics = None

    def before_train_epoch(self, runner):
        dataset = runner.train_dataloader.dataset
        self.skipped[runner.epoch] = dataset._skip_type_keys

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = dict(metrics or {})


def _smoke_cfg(path, voc_root, work_dir, size=128):
    """``path`` with only the data (the VOC fixture), image size, epochs and
    schedule shrunk: 2 epochs, one cut after epoch 1, the second epoch
    without Mosaic (mmdet switches before epoch max_epochs -
    num_last_epochs, 1-based: num_last_epochs=0 switches before epoch 2),
    validation at the end."""
    cfg = load(path)
    for split in ('train', 'val', 'test'):
        loader = cfg[f'{split}_dataloader']
        for d in leaf_datasets(loader.dataset):
            d.data_root = voc_root
        loader.update(batch_size=2, num_workers=0, persistent_workers=False)
    for t in cfg.train_dataloader.dataset.pipeline:
        if 'img_scale' in t:  # Mosaic, MixUp
            t.img_scale = (size, size)
        if t['type'] == 'RandomAffine':
            t.border = (-size // 2, -size // 2)
        if t['type'] == 'Resize':
            t.scale = (size, size)
    for t in cfg.test_dataloader.dataset.pipeline:
        if t['type'] == 'Resize':
            t.scale = (size, size)
    cfg.val_dataloader = cfg.test_dataloader
    cfg.model.data_preprocessor.batch_augments = None  # 320-640 px resizes
    cfg.train_cfg.max_epochs = 2
    cfg.train_cfg.val_interval = 2
    hooks = []
    for h in cfg.custom_hooks:
        if h['type'] == 'YOLOXModeSwitchHook':
            h.num_last_epochs = 0
        if h['type'] == 'ChannelPruningHook':
            h.update(
                begin=1,
                end=1,
                interval=1,
                input_size=(size, size),
                scoring_batches=1)
        hooks.append(h)
    cfg.custom_hooks = hooks
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=0)
    cfg.visualizer.pop('name', None)  # a per-runner visualizer
    cfg.default_hooks.logger.interval = 1
    return cfg


def test_shipped_config_trains_prunes_and_evaluates(voc_root, tmp_path,
                                                    mmdet_registry):
    path = _config_path('gcp_frs', 'yolox_nano_8xb8-300e', 'voc0712')
    cfg = _smoke_cfg(path, voc_root, tmp_path)
    runner = Runner.from_cfg(cfg)
    record = _Recorder()
    runner.register_hook(record)
    dense_params = sum(p.numel() for p in runner.model.parameters())
    runner.train()
    model = runner.model
    hook = [
        h for h in runner.hooks if type(h).__name__ == 'ChannelPruningHook'
    ][0]
    assert hook.method == 'gcp_frs' and hook.state['events_done'] == 1
    ratio = apis.cost_model(model, (128, 128)).flops() / \
        hook.state['dense_cost']
    assert 0.4 <= ratio <= 0.5 + 1e-9, ratio  # the config's target 0.5
    assert sum(p.numel() for p in model.parameters()) < dense_params
    ema = [h for h in runner.hooks if type(h).__name__ == 'EMAHook'][0]
    assert {n: p.shape for n, p in ema.ema_model.module.named_parameters()} \
        == {n: p.shape for n, p in model.named_parameters()}
    # epoch 1 trained with Mosaic; the no-augmentation switch came after
    # the cut, and the pruned model trained on with YOLOX's L1 loss
    assert record.skipped[0] is None
    assert 'Mosaic' in record.skipped[1]
    assert model.bbox_head.use_l1
    # VOCMetric evaluated the pruned model on the fixture's VOC2007 test
    assert record.metrics is not None
    m = record.metrics['pascal_voc/mAP']
    assert 0.0 <= m <= 1.0 and m == m
    ckpt = torch.load(
        osp.join(str(tmp_path), 'epoch_2.pth'),
        map_location='cpu',
        weights_only=True)
    assert len(ckpt['meta']['mmprune']['plans']) == 1
