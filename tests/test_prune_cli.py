"""tools/prune.py: the one-shot CLI contract, end to end on YOLOX-tiny."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from mmprune import apis

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLI = osp.join(ROOT, 'tools', 'prune.py')
CFG = 'mmdet::yolox/yolox_tiny_8xb8-300e_coco.py'


def run_cli(*args):
    return subprocess.run([sys.executable, CLI, *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def load_cli():
    import importlib.util
    spec = importlib.util.spec_from_file_location('prune_cli', CLI)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize('mode', ['coupled', 'fine'])
def test_prune_cli_meets_target_and_reloads(tmp_path, mode):
    work = str(tmp_path / mode)
    args = (CFG, '--flops-ratio', '0.5', '--criterion', 'l1',
            '--residual-mode', mode, '--round-to', '4', '--input-size',
            '320', '320', '--work-dir', work)
    if mode == 'coupled':  # the real command line once, in-process after
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr[-3000:]
    else:
        load_cli().main(list(args))
    report = json.load(open(osp.join(work, 'report.json')))
    assert 0.45 <= report['flops_ratio'] <= 0.5
    assert report['pruned']['params'] < report['dense']['params']
    assert sorted(os.listdir(work)) == ['config.py', 'plan.json',
                                        'pruned.pth',
                                        'report.json']  # no temp files
    # the contract's report fields
    assert report['flops_before'] == report['dense']['flops']
    assert report['flops_after'] <= 0.5 * report['flops_before']
    assert report['params_after'] == report['pruned']['params']
    assert report['input_shape'] == [1, 3, 320, 320]
    assert report['residual_mode'] == mode and report['num_groups'] > 10
    assert 0 <= report['max_abs_diff'] and report['max_rel_diff'] <= 1e-4
    layers = report['layers']
    assert all(after <= before for before, after in layers.values())
    assert sum(after < before for before, after in layers.values()) > 10
    assert layers['bbox_head.multi_level_conv_cls.0'] == [80, 80]
    assert layers['bbox_head.multi_level_conv_obj.2'] == [1, 1]
    # the pruned checkpoint rebuilds from the config and loads strictly
    model = apis.init_pruned_detector(CFG, osp.join(work, 'pruned.pth'))
    assert sum(p.numel() for p in model.parameters()) == \
        report['pruned']['params']
    assert apis.cost_model(model, (320, 320)).flops() == \
        report['pruned']['flops']
    with torch.no_grad():
        cls, _, _ = model(torch.rand(1, 3, 320, 320), None, mode='tensor')
    assert [c.shape[1] for c in cls] == [80, 80, 80]


def test_prune_cli_latency_order(tmp_path):
    """--order latency: the FLOPs budget still holds, the SPP group (whose
    max-pools the FLOPs order never sees) is thinned, and the report
    carries the table's prediction."""
    work = str(tmp_path / 'lat')
    report = load_cli().main([CFG, '--flops-ratio', '0.5', '--order',
                              'latency', '--round-to', '8', '--input-size',
                              '320', '320', '--work-dir', work])
    assert report['order'] == 'latency'
    assert 0.45 <= report['flops_ratio'] <= 0.5
    assert report['max_rel_diff'] <= 1e-4
    assert report['latency_ms_predicted'] < report['latency_ms_before']
    assert report['latency_table']['input_shape'] == [1, 3, 320, 320]
    spp = report['groups']['backbone.stage4.1.conv1.conv']
    assert spp['kept'] < spp['width']
    saved = json.load(open(osp.join(work, 'report.json')))
    assert saved['latency_ms_predicted'] == report['latency_ms_predicted']


def test_prune_cli_bad_arguments(tmp_path, capsys):
    cli = load_cli()
    for args, needle in ((('--flops-ratio', '0'), '--flops-ratio'),
                         (('--flops-ratio', '1.5'), '--flops-ratio'),
                         (('--flops-ratio', '0.5', '--criterion', 'nope'),
                          'unknown criterion'),
                         (('--flops-ratio', '0.5', '--residual-mode', 'x'),
                          '--residual-mode'),
                         (('--flops-ratio', '0.5', '--order', 'speed'),
                          '--order')):
        with pytest.raises(SystemExit) as exc:
            cli.main([CFG, *args, '--work-dir', str(tmp_path / 'w')])
        msg = str(exc.value.code) + capsys.readouterr().err
        assert exc.value.code != 0 and needle in msg
        assert not osp.exists(str(tmp_path / 'w' / 'pruned.pth'))


def test_prune_cli_output_evaluates_with_test_tools(mmdet_config, synth_data,
                                                    tmp_path):
    """``tools/test.py DIR/config.py DIR/pruned.pth`` and mmdet's own
    ``tools/test.py`` (from the mmdet wheel) evaluate the pruned model."""
    import runpy

    import mmdet
    from test_stack_e2e import yolox_coco_cfg
    base = str(tmp_path / 'yolox_synth.py')
    yolox_coco_cfg(mmdet_config, synth_data, tmp_path / 'w0').dump(base)
    work = tmp_path / 'pruned'
    report = load_cli().main([base, '--flops-ratio', '0.5', '--input-size',
                              '128', '128', '--work-dir', str(work)])
    assert report['flops_after'] <= 0.5 * report['flops_before']
    cfg_file, ckpt = str(work / 'config.py'), str(work / 'pruned.pth')

    ours = runpy.run_path(osp.join(ROOT, 'tools', 'test.py'))['main']
    metrics = ours([cfg_file, ckpt, '--work-dir', str(tmp_path / 't1')])
    assert 0 <= metrics['coco/bbox_mAP'] <= 1

    # mmdet's stock script loads with strict=False: without the structure
    # replay it would fail on shapes, or silently keep random weights
    stock = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'test.py')
    r = subprocess.run([sys.executable, stock, cfg_file, ckpt, '--work-dir',
                        str(tmp_path / 't2')], capture_output=True, text=True,
                       cwd=ROOT, timeout=600,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert 'coco/bbox_mAP' in out and 'size mismatch' not in out
    # the two runs evaluate the same weights: same mAP line
    import re
    got = re.findall(r'coco/bbox_mAP: ([0-9.]+)', out)
    assert got and abs(float(got[-1]) - metrics['coco/bbox_mAP']) < 1e-3
