"""``make demo`` end to end at a toy size: both runs train (in parallel
child processes), the pruned one reaches its FLOPs target, both are
evaluated, the compact model exports to ONNX and the summary and plots are
written."""
import json
import os.path as osp
import runpy

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_demo_runs_end_to_end(tmp_path):
    main = runpy.run_path(osp.join(ROOT, 'tools', 'demo.py'),
                          run_name='demo')['main']
    work = tmp_path / 'work'
    summary = main(['--epochs', '2', '--num-train', '16', '--num-val', '8',
                    '--size', '128', '--batch-size', '8',
                    # two epochs leave scores tiny: keep every box so that
                    # CocoMetric has detections to evaluate
                    '--score-thr', '0',
                    '--data-dir', str(tmp_path / 'data'),
                    '--work-dir', str(work)])
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
    assert {'dense.log', 'acp_tp.log', 'summary.json'} <= set(
        p.name for p in work.iterdir())
    assert not [p for p in work.rglob('.tmp_*')]
