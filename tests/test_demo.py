"""``make demo`` end to end at a toy size: both runs train (in parallel
child processes), the pruned one reaches its FLOPs target, both are
evaluated, the compact model exports to ONNX and the summary and plots are
written; the console shows each run's progress and the result table."""
import json
import os.path as osp
import runpy

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_demo_runs_end_to_end(tmp_path, capsys):
    main = runpy.run_path(
        osp.join(ROOT, 'tools', 'demo.py'), run_name='demo')['main']
    work = tmp_path / 'work'
    summary = main([
        '--epochs',
        '2',
        '--num-train',
        '16',
        '--num-val',
        '8',
        '--size',
        '128',
        '--batch-size',
        '8',
        # two epochs leave scores tiny: keep every box so that
        # CocoMetric has detections to evaluate
        '--score-thr',
        '0',
        '--data-dir',
        str(tmp_path / 'data'),
        '--work-dir',
        str(work)
    ])
    on_disk = json.load(open(work / 'summary.json'))
    assert on_disk['runs'].keys() == {'dense', 'acp_tp'}
    dense, pruned = on_disk['runs']['dense'], on_disk['runs']['acp_tp']
    # the ACP-TP hook cut the model to the target (half the FLOPs)
    assert 0.4 <= pruned['flops'] / dense['flops'] <= 0.5
    assert abs(on_disk['flops_ratio'] - summary['flops_ratio']) < 1e-12
    assert pruned['params'] < dense['params']
    assert pruned['pruning']['method'] == 'acp_tp'
    for run in (dense, pruned):
        assert 0 <= run['metrics']['coco/bbox_mAP'] <= 1
        assert run['latency_ms'] > 0 and run['iterations'] == 4
    assert on_disk['export']['max_rel_diff'] <= 1e-4
    assert osp.getsize(on_disk['export']['onnx']) > 10000
    for png in on_disk['plots'].values():
        with open(png, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    # the children wrote their own logs; nothing is left half-written
    assert {'dense.log', 'acp_tp.log',
            'summary.json'} <= set(p.name for p in work.iterdir())
    assert not [p for p in work.rglob('.tmp_*')]

    # progress on the console while the children train: every epoch of both
    # runs with an ETA, the validation mAP, then the result table
    out = capsys.readouterr().out
    for run in ('dense', 'acp_tp'):
        for epoch in (1, 2):
            line = next((ln for ln in out.splitlines()
                         if ln.startswith(f'[demo] {run}: epoch {epoch}/2, ')),
                        None)
            assert line and 'loss ' in line and 'ETA ' in line, out
        assert f'[demo] {run}: epoch 2: bbox mAP ' in out, out
    last = next(ln for ln in out.splitlines()
                if ln.startswith('[demo] acp_tp: epoch 2/2'))
    assert 'of dense FLOPs' in last, last
    assert out.index('[demo] dense: epoch 1/2') < out.index('bbox mAP@50')
    assert 'FLOPs (G)' in out and 'ONNX:' in out
