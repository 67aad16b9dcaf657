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


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, CLI, *args],
                          capture_output=True,
                          text=True,
                          cwd=ROOT,
                          timeout=600,
                          env=env)


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
            '--residual-mode', mode, '--round-to', '4', '--input-size', '320',
            '320', '--work-dir', work)
    if mode == 'coupled':  # the real command line once, in-process after
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr[-3000:]
    else:
        load_cli().main(list(args))
    report = json.load(open(osp.join(work, 'report.json')))
    assert 0.45 <= report['flops_ratio'] <= 0.5
    assert report['pruned']['params'] < report['dense']['params']
    assert sorted(os.listdir(work)) == [
        'config.py', 'plan.json', 'pruned.pth', 'report.json'
    ]  # no temp files
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


def test_prune_cli_latency_order(tmp_path, monkeypatch):
    """--order latency: the FLOPs budget still holds, the SPP group (whose
    max-pools the FLOPs order never sees) is thinned, and the report
    carries the table's prediction.

    The table is measured for real (the timing path runs), then its times
    are replaced by a fixed function of each module's widths in which
    parameter-free modules (pools, activations) cost time but no FLOPs, as
    on a CPU: measured per-module times on a loaded 2-core machine made the
    SPP group's fate depend on the load (it stayed whole in some runs).
    """
    from mmprune.costs.latency_table import LatencyTable
    measure = LatencyTable.measure.__func__

    def fixed_times(cls, *args, **kwargs):
        table = measure(cls, *args, **kwargs)
        per_kind = dict(
            conv=lambda e: 1e-5 * e['out'] * e['in'],
            follow=lambda e: 1e-3 * e['out'],
            **{'pass': lambda e: 5e-3 * e['out']})
        for e in table.entries.values():
            e['ms'] = per_kind.get(e['kind'], lambda e: 0.0)(e)
        return table

    monkeypatch.setattr(LatencyTable, 'measure', classmethod(fixed_times))
    work = str(tmp_path / 'lat')
    report = load_cli().main([
        CFG, '--flops-ratio', '0.5', '--order', 'latency', '--round-to', '8',
        '--input-size', '320', '320', '--work-dir', work
    ])
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
                          '--residual-mode'), (('--flops-ratio', '0.5',
                                                '--order', 'speed'),
                                               '--order')):
        with pytest.raises(SystemExit) as exc:
            cli.main([CFG, *args, '--work-dir', str(tmp_path / 'w')])
        msg = str(exc.value.code) + capsys.readouterr().err
        assert exc.value.code != 0 and needle in msg
        assert not osp.exists(str(tmp_path / 'w' / 'pruned.pth'))


def one_line_exit(capsys, main, argv):
    """``main(argv)`` must stop with exit status 2 and exactly one line on
    stderr (no traceback, no usage text); returns that line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, (exc.value.code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


def not_checkpoints(folder):
    """Files a user may pass as a checkpoint by mistake: (path, what the
    one-line message must say)."""
    folder.mkdir(exist_ok=True)
    text = folder / 'notes.txt'
    text.write_text('these are not weights\n')
    model = folder / 'model.pth'  # torch.save(model): pickled objects
    torch.save(torch.nn.Conv2d(3, 4, 1), str(model))
    tensor = folder / 'tensor.pth'
    torch.save(torch.zeros(3), str(tensor))
    empty = folder / 'empty.pth'
    empty.write_bytes(b'')
    return [(str(text), 'not written by torch.save'), (str(model), 'Conv2d'),
            (str(tensor), 'Tensor'), (str(empty), 'empty'),
            (str(folder / 'missing.pth'), 'no such file'),
            (str(folder), 'folder')]


def test_prune_cli_missing_config_or_not_a_checkpoint(tmp_path, capsys):
    """A config path that does not exist, or a --checkpoint that is not a
    checkpoint: one line naming the argument and the file, exit status 2,
    nothing written."""
    work = tmp_path / 'w'
    missing = str(tmp_path / 'no_such_config.py')
    # the real command line once: no traceback on stderr (third-party
    # import warnings, e.g. setuptools' about pkg_resources, silenced)
    r = run_cli(
        missing,
        '--flops-ratio',
        '0.5',
        '--work-dir',
        str(work),
        env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr
    assert 'argument config' in lines[0] and missing in lines[0]

    cli = load_cli()
    for path in ('mmdet::yolox/no_such_config.py', str(tmp_path)):
        line = one_line_exit(
            capsys, cli.main,
            [path, '--flops-ratio', '0.5', '--work-dir',
             str(work)])
        assert 'argument config' in line and path in line, line
    for path, needle in not_checkpoints(tmp_path / 'files'):
        line = one_line_exit(capsys, cli.main, [
            CFG, '--checkpoint', path, '--flops-ratio', '0.5', '--work-dir',
            str(work)
        ])
        assert 'argument --checkpoint' in line and path in line, line
        assert needle in line and 'weights_only=False' not in line, line
    assert not work.exists()


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
    report = load_cli().main([
        base, '--flops-ratio', '0.5', '--input-size', '128', '128',
        '--work-dir',
        str(work)
    ])
    assert report['flops_after'] <= 0.5 * report['flops_before']
    cfg_file, ckpt = str(work / 'config.py'), str(work / 'pruned.pth')

    ours = runpy.run_path(osp.join(ROOT, 'tools', 'test.py'))['main']
    metrics = ours([cfg_file, ckpt, '--work-dir', str(tmp_path / 't1')])
    assert 0 <= metrics['coco/bbox_mAP'] <= 1

    # mmdet's stock script loads with strict=False: without the structure
    # replay it would fail on shapes, or silently keep random weights
    stock = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'test.py')
    r = subprocess.run([
        sys.executable, stock, cfg_file, ckpt, '--work-dir',
        str(tmp_path / 't2')
    ],
                       capture_output=True,
                       text=True,
                       cwd=ROOT,
                       timeout=600,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert 'coco/bbox_mAP' in out and 'size mismatch' not in out
    # the two runs evaluate the same weights: same mAP line
    import re
    got = re.findall(r'coco/bbox_mAP: ([0-9.]+)', out)
    assert got and abs(float(got[-1]) - metrics['coco/bbox_mAP']) < 1e-3
