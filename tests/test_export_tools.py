"""tools/export.py and tools/analysis/*: export a pruned detector to a
compact checkpoint and a verified ONNX file, print its channel groups,
measure its complexity and plot the pruning.

Models: YOLOX-nano (3 classes) pruned by ``tools/prune.py`` at 0.5 in both
residual modes, at 128 px; and YOLOX-tiny trained 2 epochs with
``ChannelPruningHook`` and mmdet's EMAHook on the synthetic COCO set (real
Runner, real CocoMetric), for the EMA weights and the training curves.
"""
import errno
import json
import os
import os.path as osp
import runpy

import numpy as np
import pytest
import torch

from mmprune import apis

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')
SIZE = ['128', '128']
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def tool(*path):
    """The ``main`` of a tool script, loaded fresh."""
    return runpy.run_path(osp.join(TOOLS, *path))['main']


def files(folder):
    return sorted(os.listdir(folder))


@pytest.fixture(scope='module')
def nano_cfg(tmp_path_factory):
    path = tmp_path_factory.mktemp('cfg') / 'yolox_nano_3cls.py'
    path.write_text("_base_ = 'mmdet::yolox/yolox_nano_8xb8-300e_coco.py'\n"
                    'model = dict(bbox_head=dict(num_classes=3))\n')
    return str(path)


@pytest.fixture(scope='module')
def pruned(tmp_path_factory, nano_cfg):
    """``tools/prune.py`` at 0.5 in both residual modes:
    ``{mode: (work dir, report)}``."""
    out = {}
    for mode in ('coupled', 'fine'):
        work = str(tmp_path_factory.mktemp(f'pruned_{mode}'))
        report = tool('prune.py')([
            nano_cfg, '--flops-ratio', '0.5', '--residual-mode', mode,
            '--input-size', *SIZE, '--work-dir', work
        ])
        out[mode] = (work, report)
    return out


@pytest.fixture(scope='module')
def trained(tmp_path_factory, mmdet_config, synth_data):
    """YOLOX-tiny, 2 epochs, one cut after epoch 1, EMAHook on."""
    from mmengine.runner import Runner
    from test_hook_training import pruning_cfg
    work = tmp_path_factory.mktemp('trained')
    cfg = pruning_cfg(mmdet_config, synth_data, work, max_epochs=2, end=1)
    runner = Runner.from_cfg(cfg)
    runner.train()
    cfg_file = str(work / 'train_cfg.py')
    cfg.dump(cfg_file)
    return runner, cfg_file, str(work / 'epoch_2.pth'), str(work)


def tensor_out(model, x):
    from mmprune.export import TensorForward
    with torch.no_grad():
        return [t.numpy() for t in TensorForward(model.eval())(x)]


# ------------------------------------------------------------------ export
@pytest.mark.parametrize('mode', ['coupled', 'fine'])
def test_export_onnx_matches_torch_and_compact_reloads(pruned, mode, tmp_path):
    import onnx
    import onnxruntime as ort
    work, prune_report = pruned[mode]
    cfg, ckpt = osp.join(work, 'config.py'), osp.join(work, 'pruned.pth')
    out = str(tmp_path / 'export')
    batch = 2 if mode == 'fine' else 1
    report = tool('export.py')([
        cfg, ckpt, '--work-dir', out, '--input-size', *SIZE, '--batch-size',
        str(batch), '--opset', '13'
    ])
    assert files(out) == ['compact.pth', 'export_report.json',
                          'model.onnx']  # no temporary files left
    assert json.load(open(osp.join(out, 'export_report.json'))) == report
    assert report['input_shape'] == [batch, 3, 128, 128]
    assert report['opset'] == 13 and report['weights'] == 'model'
    assert report['passed']
    assert report['versions']['onnxruntime'] == ort.__version__
    # YOLOX: cls, box, obj maps at 3 levels, 3 classes
    assert [o['name'] for o in report['outputs']
            ] == [f'out{i}_{j}' for i in range(3) for j in range(3)]
    assert [o['shape'][1] for o in report['outputs']] == [3] * 3 + [4] * 3 \
        + [1] * 3
    assert all(o['shape'][0] == batch for o in report['outputs'])
    assert all(o['rel_diff'] <= 1e-4 and o['scale'] > 0
               for o in report['outputs'])
    # FLOPs/params: the compact model's, as prune.py counted them
    assert report['flops'] == prune_report['flops_after']
    assert report['dense_flops'] == prune_report['flops_before']
    assert report['params'] == prune_report['params_after']
    assert 0.45 <= report['flops_ratio'] <= 0.5
    assert report['residual_modes'] == [mode]

    # compact.pth: weights + structure only, reloads strictly, same outputs
    compact = torch.load(
        osp.join(out, 'compact.pth'), map_location='cpu', weights_only=True)
    assert set(compact) == {'state_dict', 'meta'}
    src = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert compact['meta']['mmprune']['plans'] == \
        src['meta']['mmprune']['plans']
    a = apis.init_pruned_detector(cfg, osp.join(out, 'compact.pth'))
    b = apis.init_pruned_detector(cfg, ckpt)
    assert apis.cost_model(a, (128, 128)).flops() == report['flops']
    x = torch.rand(batch, 3, 128, 128) * 255
    want = tensor_out(b, x)
    for p, q in zip(tensor_out(a, x), want):
        assert np.array_equal(p, q)

    # the ONNX file on an input of its own (batch axis is dynamic)
    sess = ort.InferenceSession(
        osp.join(out, 'model.onnx'), providers=['CPUExecutionProvider'])
    for xb in (x, x[:1]):
        got = sess.run(None, {'input': xb.numpy()})
        for g, w in zip(got, tensor_out(b, xb)):
            assert g.shape == w.shape
            assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max()
    ops = {
        n.op_type
        for n in onnx.load(osp.join(out, 'model.onnx')).graph.node
    }
    assert 'Conv' in ops and not ops & {
        'ScatterND', 'ScatterElements', 'NonMaxSuppression'
    }
    if mode == 'fine':
        assert {'Concat', 'Gather'} <= ops


def test_export_ema_weights_of_a_hook_checkpoint(trained, tmp_path):
    """EMAHook swaps the EMA weights into ``state_dict``: ``--use-ema``
    exports the EMA copy, the default the weights the optimizer trained."""
    runner, cfg, ckpt, _ = trained
    ema_hook = [h for h in runner.hooks if type(h).__name__ == 'EMAHook'][0]
    live = {
        'ema': ema_hook.ema_model.module.state_dict(),
        'trained': runner.model.state_dict()
    }
    for flag, which in ((['--use-ema'], 'ema'), ([], 'trained')):
        out = str(tmp_path / which)
        report = tool('export.py')(
            [cfg, ckpt, '--work-dir', out, '--input-size', *SIZE, *flag])
        assert report['weights'] == which and report['passed']
        assert report['num_plans'] == 1
        compact = torch.load(
            osp.join(out, 'compact.pth'),
            map_location='cpu',
            weights_only=True)
        assert 'optimizer' not in compact and 'ema_state_dict' not in compact
        assert 'state' not in compact['meta']['mmprune']  # training only
        state = compact['state_dict']
        assert set(state) == set(live[which])
        for k, v in live[which].items():
            assert torch.equal(state[k], v), k
    # the two really differ (EMA momentum 2e-4 after a few iterations)
    assert any(not torch.equal(live['ema'][k], live['trained'][k])
               for k in live['ema'] if k.endswith('weight'))


def test_export_errors_name_the_path_and_leave_no_partial_file(
        pruned, tmp_path, monkeypatch, capsys):
    work, _ = pruned['coupled']
    cfg, ckpt = osp.join(work, 'config.py'), osp.join(work, 'pruned.pth')
    export = tool('export.py')

    def fails(args, needle):
        with pytest.raises(SystemExit) as exc:
            export([cfg, ckpt, '--input-size', *SIZE, *args])
        msg = str(exc.value.code) + capsys.readouterr().err
        assert exc.value.code != 0 and needle in msg, msg
        return msg

    # a work dir that cannot be created: nothing is built or written
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    fails(['--work-dir', str(blocker / 'out')], str(blocker / 'out'))
    # bad arguments
    fails(['--work-dir', str(tmp_path / 'w'), '--opset', '11'], '--opset')
    fails(['--work-dir',
           str(tmp_path / 'w'), '--input-size', '100', '100'],
          'pad_size_divisor')
    fails(['--work-dir', str(tmp_path / 'w'), '--use-ema'],
          'no ema_state_dict')
    fails(['--work-dir', str(tmp_path / 'w')] + ['--atol', '0'], '--atol')
    # a checkpoint pruned from another config
    with pytest.raises(SystemExit, match='does not fit the config'):
        export([
            'mmdet::yolox/yolox_tiny_8xb8-300e_coco.py', ckpt, '--work-dir',
            str(tmp_path / 'w'), '--input-size', *SIZE
        ])
    assert files(tmp_path / 'w') == []

    # the disk fills while the ONNX file is written: no partial file
    out = tmp_path / 'onnx_fails'

    def full_disk(model, args, f, **kwargs):
        with open(f, 'wb') as fh:
            fh.write(b'half an onnx file')
        raise OSError(errno.ENOSPC, 'No space left on device')

    with monkeypatch.context() as m:
        m.setattr(torch.onnx, 'export', full_disk)
        fails(['--work-dir', str(out)], str(out / 'model.onnx'))
    assert files(out) == ['compact.pth']

    # ... or while the compact checkpoint is written
    out = tmp_path / 'save_fails'
    real_save = torch.save

    def half_save(obj, f, *a, **k):
        real_save({'state_dict': {}}, f)
        raise OSError(errno.ENOSPC, 'No space left on device')

    with monkeypatch.context() as m:
        m.setattr(torch, 'save', half_save)
        fails(['--work-dir', str(out)], str(out / 'compact.pth'))
    assert files(out) == []

    # onnxruntime vs torch above the tolerance: non-zero exit, the report
    # records it, no ONNX file lands
    out = tmp_path / 'too_strict'
    msg = fails(['--work-dir', str(out), '--atol', '1e-12'],
                'onnxruntime disagrees with torch')
    assert 'model.onnx' in msg
    assert files(out) == ['compact.pth', 'export_report.json']
    report = json.load(open(out / 'export_report.json'))
    assert not report['passed'] and report['onnx'] is None
    assert report['max_rel_diff'] > 1e-12


def test_tools_missing_config_or_not_a_checkpoint(nano_cfg, tmp_path, capsys):
    """export.py, test.py, train.py --resume and the analysis tools: a config
    path that does not exist or a checkpoint that is not one ends in one line
    naming the argument and the file, exit status 2, no traceback."""
    import subprocess
    import sys

    from test_prune_cli import not_checkpoints, one_line_exit
    missing_cfg = str(tmp_path / 'no_such_config.py')
    bad = not_checkpoints(tmp_path / 'files')
    text = bad[0][0]
    work = str(tmp_path / 'w')

    # the real command line once (third-party import warnings silenced)
    r = subprocess.run([
        sys.executable,
        osp.join(TOOLS, 'export.py'), nano_cfg, text, '--work-dir', work
    ],
                       capture_output=True,
                       text=True,
                       cwd=ROOT,
                       timeout=600,
                       env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr
    assert 'argument checkpoint' in lines[0] and text in lines[0]

    # (tool, argv with {cfg} and {ckpt}, argument names in the message)
    cases = [
        (('export.py', ), ['{cfg}', '{ckpt}', '--work-dir',
                           work], 'config', 'checkpoint'),
        (('test.py', ), ['{cfg}', '{ckpt}', '--work-dir',
                         work], 'config', 'checkpoint'),
        (('train.py', ), ['{cfg}', '--resume', '{ckpt}', '--work-dir',
                          work], 'config', '--resume'),
        (('analysis', 'complexity.py'), ['{cfg}', '--checkpoint',
                                         '{ckpt}'], 'config', '--checkpoint'),
        (('analysis', 'print_groups.py'), ['{cfg}', '--checkpoint', '{ckpt}'],
         'config', '--checkpoint'),
        (('analysis', 'plot_pruning.py'),
         ['--out-dir', work, '--config', '{cfg}', '--checkpoint',
          '{ckpt}'], '--config', '--checkpoint'),
    ]
    for path, argv, cfg_arg, ckpt_arg in cases:
        main = tool(*path)
        fill = dict(cfg=missing_cfg, ckpt=bad[1][0])
        line = one_line_exit(capsys, main, [a.format(**fill) for a in argv])
        assert f'argument {cfg_arg}:' in line and missing_cfg in line, line
        for ckpt, needle in bad:
            fill = dict(cfg=nano_cfg, ckpt=ckpt)
            line = one_line_exit(capsys, main,
                                 [a.format(**fill) for a in argv])
            assert f'argument {ckpt_arg}:' in line and ckpt in line, line
            assert needle in line, line
    assert not osp.exists(work)


# ---------------------------------------------------------------- analysis
@pytest.mark.parametrize('mode', ['coupled', 'fine'])
def test_print_groups_lists_the_analysis(nano_cfg, tmp_path, mode, capsys):
    from mmprune.export import build_detector
    out = str(tmp_path / 'groups.json')
    desc = tool('analysis', 'print_groups.py')(
        [nano_cfg, '--residual-mode', mode, '--json', out])
    text = capsys.readouterr().out
    graph = apis.analyze(build_detector(apis.load_config(nano_cfg)), mode)
    assert desc['num_groups'] == len(graph.groups)
    assert desc['num_prunable'] == len(graph.prunable_groups())
    assert [g['name']
            for g in desc['groups']] == [g.name for g in graph.groups]
    assert json.load(open(out)) == desc
    assert text.startswith(f'{len(graph.groups)} channel groups')
    by_name = {g['name']: g for g in desc['groups']}
    cls = by_name['bbox_head.multi_level_conv_cls.0']
    assert cls['width'] == 3 and cls['prunable'] == 0
    assert 'prediction output' in cls['status']
    stem = by_name['backbone.stem.conv.conv']
    roles = {(m['module'], m['role']) for m in stem['members']}
    assert ('backbone.stem.conv.conv', 'producer') in roles
    assert ('backbone.stem.conv.bn', 'norm') in roles
    assert any(r == 'consumer' for _, r in roles)
    scattered = [
        m for g in desc['groups'] for m in g['members']
        if 'scattered' in m['role']
    ]
    assert bool(scattered) == (mode == 'fine')


def test_complexity_dense_vs_pruned(nano_cfg, pruned, tmp_path):
    work, prune_report = pruned['coupled']
    ckpt = osp.join(work, 'pruned.pth')
    out = str(tmp_path / 'cx.json')
    res = tool('analysis', 'complexity.py')([
        nano_cfg, '--checkpoint', ckpt, '--input-size', *SIZE, '--runs', '3',
        '--warmup', '1', '--json', out
    ])
    assert json.load(open(out)) == res
    model = apis.init_pruned_detector(nano_cfg, ckpt)
    assert res['pruned']['flops'] == apis.cost_model(model, (128, 128)).flops()
    assert res['pruned']['params'] == sum(p.numel()
                                          for p in model.parameters())
    assert res['dense']['flops'] == prune_report['flops_before']
    assert res['flops_ratio'] == pytest.approx(prune_report['flops_ratio'])
    for k in ('dense', 'pruned'):
        assert res[k]['latency_ms'] > 0
        # the per-stage table adds up to the model's FLOPs
        assert sum(s['flops'] for s in res[k]['stages']) == res[k]['flops']
    assert res['speedup'] == pytest.approx(res['dense']['latency_ms'] /
                                           res['pruned']['latency_ms'])
    assert res['speedup_over_flops_speedup'] == pytest.approx(
        res['speedup'] * res['flops_ratio'])
    assert res['threads'] == 1 and res['input_shape'] == [1, 3, 128, 128]


def check_png(path, min_bytes=10_000):
    import matplotlib.image as mpimg
    data = open(path, 'rb').read()
    assert data[:8] == PNG_MAGIC and len(data) >= min_bytes
    img = mpimg.imread(path)
    assert img.shape[0] >= 300 and img.shape[1] >= 400
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_plot_pruning_channels_and_training(nano_cfg, pruned, trained,
                                            tmp_path):
    from mmprune.utils import plots
    work, prune_report = pruned['fine']
    plot = tool('analysis', 'plot_pruning.py')
    # (a) from the checkpoint, and from prune.py's report: the same rows
    out = tmp_path / 'ckpt'
    written = plot([
        '--out-dir',
        str(out), '--config', nano_cfg, '--checkpoint',
        osp.join(work, 'pruned.pth')
    ])
    assert files(out) == ['channels.png']
    check_png(written['channels'])
    out2 = tmp_path / 'report'
    plot(['--out-dir', str(out2), '--report', osp.join(work, 'report.json')])
    check_png(out2 / 'channels.png')
    from mmprune.export import build_detector
    cfg = apis.load_config(nano_cfg)
    rows = plots.layer_widths_from_models(
        build_detector(cfg),
        apis.init_pruned_detector(cfg, osp.join(work, 'pruned.pth')))
    assert rows == plots.layer_widths_from_report(prune_report)
    assert sum(a < b for _, b, a in rows) > 10

    # (b) from the training work dir: the hook's FLOPs ratio and the mAP
    runner, _, _, work_dir = trained
    curves = plots.training_curves(plots.read_scalars(work_dir))
    budget, metric = curves['budget'], curves['metric']
    assert curves['xlabel'] == 'epoch'
    assert budget['key'] == 'prune_flops_ratio' and budget['y'][0] == 1.0
    assert 0.45 <= budget['y'][-1] <= 0.5
    # dense through epoch 1, smaller after the first cut (end of epoch 1)
    assert all(
        (y == 1.0) == (x <= 1.0) for x, y in zip(budget['x'], budget['y']))
    assert curves['params']['y'][-1] == pytest.approx(
        sum(p.numel() for p in runner.model.parameters()) / 1e6)
    assert metric['key'] == 'coco/bbox_mAP' and metric['x'] == [1, 2]
    assert all(0 <= v <= 1 for v in metric['y'])
    out3 = tmp_path / 'train'
    written = plot(['--out-dir', str(out3), '--work-dir', work_dir])
    assert files(out3) == ['training.png']
    check_png(written['training'])
    with pytest.raises(SystemExit, match='scalars.json'):
        plot(['--out-dir', str(out3), '--work-dir', str(tmp_path / 'none')])


def test_training_curves_iteration_based_and_voc(tmp_path):
    """An iteration-based run (no ``epoch`` in the records) with VOC
    validation: x is the iteration, the metric ``pascal_voc/mAP``; the
    newest run folder of a work dir is the one read."""
    from mmprune.utils import plots
    old = tmp_path / '20240101_000000' / 'vis_data'
    new = tmp_path / '20240102_000000' / 'vis_data'
    for folder, ratio in ((old, 0.9), (new, 0.7)):
        folder.mkdir(parents=True)
        lines = [
            dict(
                iter=i,
                step=i,
                loss=1.0,
                prune_flops_ratio=1.0 if i <= 20 else ratio)
            for i in (10, 20, 30, 40)
        ]
        lines.insert(2, {'pascal_voc/mAP': 0.25, 'step': 20})
        lines.append({'pascal_voc/mAP': 0.5, 'step': 40})
        (folder /
         'scalars.json').write_text('\n'.join(json.dumps(r)
                                              for r in lines) + '\n')
    curves = plots.training_curves(plots.read_scalars(str(tmp_path)))
    assert curves['xlabel'] == 'iteration'
    assert curves['budget']['x'] == [10, 20, 30, 40]
    assert curves['budget']['y'] == [1.0, 1.0, 0.7, 0.7]
    assert curves['metric'] == dict(
        key='pascal_voc/mAP', x=[20, 40], y=[0.25, 0.5])
    assert curves['params'] is None
    check_png(plots.plot_training(curves, str(tmp_path / 't.png')))
    with pytest.raises(ValueError, match='no pruning budget'):
        plots.plot_training(
            plots.training_curves([{
                'iter': 1,
                'loss': 1
            }]), str(tmp_path / 'empty.png'))
    assert not (tmp_path / 'empty.png').exists()
