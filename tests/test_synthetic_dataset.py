# Copyright (c) mmprune contributors. All rights reserved.
"""Tests for :mod:`mmprune.datasets.synthetic`.

The dataset is only useful if (1) it is reproducible to the byte, (2) its
annotations are sane and varied, and (3) mmdet reads both layouts exactly as
written. (3) is checked end to end: feeding the ground truth back as
predictions must give a perfect COCO and VOC mAP, and shifted boxes must not.
"""
import hashlib
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmprune.datasets import SYNTH_CLASSES, make_synthetic_dataset, synthetic

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI = REPO_ROOT / 'tools' / 'make_dataset.py'

NUM_TRAIN, NUM_VAL, SIZE, NUM_CLASSES = 30, 8, 128, 12


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp('synthetic') / 'data'
    return make_synthetic_dataset(
        str(out),
        num_train=NUM_TRAIN,
        num_val=NUM_VAL,
        size=SIZE,
        seed=3,
        num_classes=NUM_CLASSES)


def _tree_hashes(root) -> dict:
    """{relative path: sha256} of every file under ``root``."""
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob('*')) if p.is_file()
    }


def _coco(data, split='train') -> dict:
    path = Path(data['coco_root']) / data['coco_ann_files'][split]
    return json.loads(path.read_text())


# --------------------------------------------------------------------------
# Determinism and atomicity
# --------------------------------------------------------------------------
def test_same_arguments_give_identical_bytes(tmp_path):
    kw = dict(num_train=4, num_val=2, size=96, seed=11)
    a = make_synthetic_dataset(str(tmp_path / 'a'), **kw)
    b = make_synthetic_dataset(str(tmp_path / 'b'), **kw)
    ha, hb = _tree_hashes(a['out_dir']), _tree_hashes(b['out_dir'])
    # 6 images x (COCO jpg, VOC jpg, VOC xml) + 2 json + 2 txt + meta
    assert len(ha) == 3 * 6 + 2 + 2 + 1
    assert ha == hb

    c = make_synthetic_dataset(str(tmp_path / 'c'), **{**kw, 'seed': 12})
    hc = _tree_hashes(c['out_dir'])
    assert ha.keys() == hc.keys()
    images = [k for k in ha if k.endswith('.jpg')]
    assert all(ha[k] != hc[k] for k in images)


def test_easy_profile(tmp_path):
    """'easy' is deterministic too, differs from 'hard', and keeps its
    promise: 1-6 objects per image, none smaller than 1/8 of the side
    (before occlusion), recorded in the meta file."""
    kw = dict(num_train=12, num_val=2, size=128, seed=5, formats=('coco', ))
    a = make_synthetic_dataset(str(tmp_path / 'a'), difficulty='easy', **kw)
    b = make_synthetic_dataset(str(tmp_path / 'b'), difficulty='easy', **kw)
    h = make_synthetic_dataset(str(tmp_path / 'h'), **kw)
    assert _tree_hashes(a['out_dir']) == _tree_hashes(b['out_dir'])
    ha, hh = _tree_hashes(a['out_dir']), _tree_hashes(h['out_dir'])
    assert all(ha[k] != hh[k] for k in ha if k.endswith('.jpg'))
    meta = json.load(open(osp.join(a['out_dir'], 'synthetic_meta.json')))
    assert meta['difficulty'] == 'easy' and a['difficulty'] == 'easy'
    coco = json.load(
        open(osp.join(a['coco_root'], a['coco_ann_files']['train'])))
    per_image = Counter(ann['image_id'] for ann in coco['annotations'])
    assert max(per_image.values()) <= 6
    # visible boxes may be clipped by occlusion, but most keep their size
    sides = sorted(max(ann['bbox'][2:]) for ann in coco['annotations'])
    assert sides[len(sides) // 2] >= 128 / 8


def test_images_do_not_depend_on_generation_order(tmp_path):
    # An image is a function of (seed, split, index) only: fewer train
    # images or more val images leave the common ones untouched.
    a = make_synthetic_dataset(
        str(tmp_path / 'a'),
        num_train=3,
        num_val=1,
        size=64,
        formats=('coco', ))
    b = make_synthetic_dataset(
        str(tmp_path / 'b'),
        num_train=2,
        num_val=2,
        size=64,
        formats=('coco', ))
    ha, hb = _tree_hashes(a['coco_root']), _tree_hashes(b['coco_root'])
    for name in ('train2017/train_000001.jpg', 'train2017/train_000002.jpg',
                 'val2017/val_000001.jpg'):
        assert ha[name] == hb[name]
    assert not (Path(b['out_dir']) / 'VOCdevkit').exists()
    assert b['voc_root'] is None


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    real = synthetic._render_image
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, '_render_image', flaky)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_dataset(
            str(tmp_path / 'out'), num_train=4, num_val=1, size=64)
    assert list(tmp_path.iterdir()) == []  # no out_dir, no temp dir


def test_overwrite_replaces_non_empty_dir(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'stale.txt').write_text('old')
    with pytest.raises(ValueError, match='out_dir'):
        make_synthetic_dataset(str(out), num_train=1, num_val=1, size=64)
    assert (out / 'stale.txt').exists()  # refused: nothing touched

    make_synthetic_dataset(
        str(out), num_train=1, num_val=1, size=64, overwrite=True)
    assert not (out / 'stale.txt').exists()
    assert (out / 'coco' / 'train2017' / 'train_000001.jpg').is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']

    empty = tmp_path / 'empty'  # an existing empty directory is fine
    empty.mkdir()
    make_synthetic_dataset(str(empty), num_train=1, num_val=1, size=64)


# --------------------------------------------------------------------------
# Annotation content
# --------------------------------------------------------------------------
def test_return_value(data):
    assert data['classes'] == list(SYNTH_CLASSES[:NUM_CLASSES])
    assert (data['num_train'], data['num_val']) == (NUM_TRAIN, NUM_VAL)
    assert data['coco_root'].endswith(os.sep)
    assert data['voc_root'].endswith(os.sep)
    assert data['num_train_instances'] == len(_coco(data)['annotations'])
    assert data['num_val_instances'] == len(_coco(data, 'val')['annotations'])


@pytest.mark.parametrize('split', ['train', 'val'])
def test_coco_json_is_valid(data, split):
    coco = _coco(data, split)
    n = NUM_TRAIN if split == 'train' else NUM_VAL
    assert [c['id']
            for c in coco['categories']] == list(range(1, NUM_CLASSES + 1))
    assert [c['name'] for c in coco['categories']] == data['classes']
    assert len(coco['images']) == n
    assert len({im['id'] for im in coco['images']}) == n
    img_dir = Path(data['coco_root']) / f'{split}2017'
    for im in coco['images']:
        assert (im['width'], im['height']) == (SIZE, SIZE)
        assert (img_dir / im['file_name']).is_file()

    anns = coco['annotations']
    assert len({a['id'] for a in anns}) == len(anns)
    for a in anns:
        x, y, w, h = a['bbox']
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
        assert 1 <= a['category_id'] <= NUM_CLASSES
        assert a['iscrowd'] == 0
        assert 0 < a['area'] <= w * h
        assert a['segmentation'], 'every object has an outline polygon'
        for poly in a['segmentation']:
            xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
            assert len(poly) >= 6 and len(poly) % 2 == 0
            assert xs.min() >= x and xs.max() <= x + w
            assert ys.min() >= y and ys.max() <= y + h
    per_image = np.bincount([a['image_id'] for a in anns], minlength=n + 1)
    assert per_image[1:].min() >= 1, 'every image has an object'


def test_content_is_varied(data):
    anns = _coco(data)['annotations']
    sides = np.array([max(a['bbox'][2:]) for a in anns])
    assert sides.min() < 16, 'small objects present'
    assert sides.max() > SIZE / 4, 'large objects present'
    assert len({a['category_id'] for a in anns}) >= 10
    assert len(anns) / NUM_TRAIN >= 3, 'several objects per image'


def test_voc_xml_matches_coco(data):
    voc = Path(data['voc_root']) / 'VOC2007'
    for split, image_set in (('train', 'trainval'), ('val', 'test')):
        coco = _coco(data, split)
        stems = (voc / 'ImageSets' / 'Main' /
                 f'{image_set}.txt').read_text().split()
        assert stems == [Path(im['file_name']).stem for im in coco['images']]
        by_image = {}
        for a in coco['annotations']:
            x, y, w, h = a['bbox']
            # same pixels: COCO covers x .. x+w-1 (0-based), VOC is 1-based
            by_image.setdefault(a['image_id'], []).append(
                (data['classes'][a['category_id'] - 1], x + 1, y + 1, x + w,
                 y + h))
        for im in coco['images']:
            stem = Path(im['file_name']).stem
            assert (voc / 'JPEGImages' / im['file_name']).read_bytes() == (
                Path(data['coco_root']) / f'{split}2017' /
                im['file_name']).read_bytes()
            root = ET.parse(voc / 'Annotations' / f'{stem}.xml').getroot()
            assert root.findtext('folder') == 'VOC2007'
            assert root.findtext('filename') == im['file_name']
            assert root.findtext('size/depth') == '3'
            objs = []
            for obj in root.findall('object'):
                assert obj.findtext('difficult') == '0'
                assert obj.findtext('pose') == 'Unspecified'
                assert obj.findtext('truncated') in ('0', '1')
                objs.append((obj.findtext('name'),
                             *(int(obj.findtext(f'bndbox/{k}'))
                               for k in ('xmin', 'ymin', 'xmax', 'ymax'))))
            assert objs == by_image[im['id']]


# --------------------------------------------------------------------------
# mmdet reads both layouts as written
# --------------------------------------------------------------------------
@pytest.fixture(scope='module')
def mmdet_scope():
    pytest.importorskip('mmdet')
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope

    register_all_modules(init_default_scope=False)
    # Dataset pipelines resolve transforms through the default scope.
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


def _coco_dataset(data, split):
    from mmdet.registry import DATASETS
    return DATASETS.build(
        dict(
            type='CocoDataset',
            data_root=data['coco_root'],
            ann_file=data['coco_ann_files'][split],
            data_prefix=dict(img=f'{split}2017/'),
            metainfo=dict(classes=SYNTH_CLASSES[:NUM_CLASSES]),
            test_mode=True,
            pipeline=[]))


def _voc_dataset(data, split):
    from mmdet.registry import DATASETS
    return DATASETS.build(
        dict(
            type='VOCDataset',
            data_root=data['voc_root'],
            ann_file=data['voc_set_files'][split],
            data_prefix=dict(sub_data_root='VOC2007/'),
            metainfo=dict(classes=SYNTH_CLASSES[:NUM_CLASSES]),
            test_mode=True,
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', with_bbox=True),
                dict(
                    type='PackDetInputs',
                    meta_keys=('img_id', 'img_path', 'ori_shape',
                               'img_shape')),
            ]))


def _shifted(boxes):
    """Move every box by half its size: IoU with the original is 1/7."""
    import torch
    wh = boxes[:, 2:] - boxes[:, :2]
    return boxes + torch.cat([wh, wh], dim=1) * 0.5


@pytest.mark.parametrize('split', ['train', 'val'])
def test_mmdet_loads_both_layouts(data, mmdet_scope, split):
    coco, voc = _coco_dataset(data, split), _voc_dataset(data, split)
    n = data[f'num_{split}']
    assert len(coco) == len(voc) == n
    coco_inst = [coco.get_data_info(i)['instances'] for i in range(n)]
    voc_inst = [voc.get_data_info(i)['instances'] for i in range(n)]
    assert sum(map(len, coco_inst)) == data[f'num_{split}_instances']
    assert sum(map(len, voc_inst)) == data[f'num_{split}_instances']
    for i in range(n):
        assert os.path.isfile(coco.get_data_info(i)['img_path'])
        assert os.path.isfile(voc.get_data_info(i)['img_path'])
        # mmdet turns VOC's 1-based inclusive corners into x1 = xmin - 1,
        # x2 = xmax - 1, i.e. one pixel less wide than COCO's x + w.
        c = np.array([d['bbox'] for d in coco_inst[i]])
        v = np.array([d['bbox'] for d in voc_inst[i]])
        np.testing.assert_array_equal(v[:, :2], c[:, :2])
        np.testing.assert_array_equal(v[:, 2:], c[:, 2:] - 1)
        assert [d['bbox_label'] for d in coco_inst[i]
                ] == [d['bbox_label'] for d in voc_inst[i]]
        assert all(d['ignore_flag'] == 0 for d in voc_inst[i])


@pytest.mark.parametrize('shift', [False, True])
def test_coco_metric_on_ground_truth(data, mmdet_scope, shift):
    import torch
    from mmdet.evaluation import CocoMetric
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    ds = _coco_dataset(data, 'val')
    ann_file = os.path.join(data['coco_root'], data['coco_ann_files']['val'])
    metric = CocoMetric(ann_file=ann_file, metric='bbox')
    metric.dataset_meta = ds.metainfo
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        boxes = torch.tensor([d['bbox'] for d in info['instances']],
                             dtype=torch.float32)
        sample = DetDataSample(
            metainfo=dict(
                img_id=info['img_id'],
                ori_shape=(info['height'], info['width'])))
        sample.pred_instances = InstanceData(
            bboxes=_shifted(boxes) if shift else boxes,
            scores=torch.ones(len(boxes)),
            labels=torch.tensor([d['bbox_label'] for d in info['instances']]))
        metric.process({}, [sample.to_dict()])
    result = metric.evaluate(len(ds))
    if shift:
        assert result['coco/bbox_mAP'] < 0.1
    else:
        assert result['coco/bbox_mAP'] == pytest.approx(1.0)


@pytest.mark.parametrize('shift', [False, True])
def test_voc_metric_on_ground_truth(data, mmdet_scope, shift):
    from mmdet.evaluation import VOCMetric
    from mmengine.structures import InstanceData

    ds = _voc_dataset(data, 'val')
    metric = VOCMetric(metric='mAP')
    metric.dataset_meta = ds.metainfo
    for i in range(len(ds)):
        sample = ds[i]['data_samples']
        gt = sample.gt_instances
        boxes = gt.bboxes.tensor.clone()
        sample.pred_instances = InstanceData(
            bboxes=_shifted(boxes) if shift else boxes,
            scores=boxes.new_ones(len(boxes)),
            labels=gt.labels.clone())
        metric.process({}, [sample.to_dict()])
    result = metric.evaluate(len(ds))
    if shift:
        assert result['pascal_voc/mAP'] < 0.1
    else:
        assert result['pascal_voc/mAP'] == pytest.approx(1.0)


# --------------------------------------------------------------------------
# Argument checking: the library and the CLI name the bad argument
# --------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs, name', [
    (dict(num_train=0), 'num_train'),
    (dict(num_val=0), 'num_val'),
    (dict(num_train=2.5), 'num_train'),
    (dict(size=63), 'size'),
    (dict(num_classes=9), 'num_classes'),
    (dict(num_classes=len(SYNTH_CLASSES) + 1), 'num_classes'),
    (dict(seed=-1), 'seed'),
    (dict(formats=('coco', 'yolo')), 'formats'),
    (dict(formats=()), 'formats'),
    (dict(difficulty='medium'), 'difficulty'),
])
def test_bad_arguments_raise(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_synthetic_dataset(str(tmp_path / 'out'), **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / 'file'
    path.write_text('x')
    with pytest.raises(ValueError, match='out_dir'):
        make_synthetic_dataset(str(path), overwrite=True)


def _load_cli():
    spec = importlib.util.spec_from_file_location('make_dataset_cli', CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('argv, flag', [
    (['--num-train', '0'], '--num-train'),
    (['--num-val', 'x'], '--num-val'),
    (['--size', '32'], '--size'),
    (['--num-classes', '30'], '--num-classes'),
    (['--seed', '-3'], '--seed'),
    (['--formats', 'yolo'], '--formats'),
    (['--difficulty', 'medium'], '--difficulty'),
])
def test_cli_rejects_bad_arguments(tmp_path, capsys, argv, flag):
    cli = _load_cli()
    with pytest.raises(SystemExit) as exc:
        cli.main(['--out', str(tmp_path / 'out')] + argv)
    assert exc.value.code != 0
    assert flag in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_non_empty_out_dir_as_out(tmp_path, capsys):
    (tmp_path / 'junk').write_text('x')
    with pytest.raises(SystemExit) as exc:
        _load_cli().main(['--out', str(tmp_path), '--num-train', '1'])
    assert exc.value.code != 0
    assert '--out' in capsys.readouterr().err


def test_cli_end_to_end(tmp_path):
    """One real process: success prints a summary; failure exits non-zero."""
    cmd = [
        sys.executable,
        str(CLI), '--out',
        str(tmp_path / 'out'), '--num-train', '2', '--num-val', '1', '--size',
        '64', '--seed', '5', '--num-classes', '10', '--formats', 'voc'
    ]
    ok = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert len(lines) == 1 and 'wrote 2 train + 1 val' in lines[0]
    assert (tmp_path / 'out' / 'VOCdevkit' / 'VOC2007' / 'JPEGImages' /
            'train_000001.jpg').is_file()
    assert not (tmp_path / 'out' / 'coco').exists()

    bad = subprocess.run(
        cmd[:-2] + ['--size', '10'],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT)
    assert bad.returncode != 0
    assert '--size' in bad.stderr
