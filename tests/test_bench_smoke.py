"""The benchmark suite (``make bench``): one real quality run through the
mmengine Runner, the latency phase, the report and its target checks.

The full suites are far too slow for tests; ``benchmarks/run.py --preset
smoke`` exercises every path and its results (``benchmarks/results/smoke``)
feed the report test here.
"""
import json
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import methods as M  # noqa: E402
from benchmarks import report as R  # noqa: E402

SMOKE_RESULTS = osp.join(ROOT, 'benchmarks', 'results', 'smoke')


def _row(method, mAP, seeds=(0, )):
    return dict(method=method, mAP=mAP, seeds=list(seeds))


def test_quality_targets_compare_means_with_the_margins():
    rows = [_row('dense', 10.0), _row('l1_uniform', 7.5),
            _row('tp_taylor', 8.0), _row('fcp', 9.0), _row('acp_tp', 8.5)]
    t, = R.quality_targets({('yolox_tiny', 0.5): rows})
    assert (t['best'], t['peer']) == ('fcp', 'tp_taylor')
    assert t['near_dense'] is True  # 9.0 >= 10.0 - 1.0
    assert t['above_peer'] is True  # 9.0 >= 8.0 + 1.0
    rows[3]['mAP'] = 8.99
    t, = R.quality_targets({('yolox_tiny', 0.5): rows})
    assert t['best'] == 'fcp' and t['near_dense'] is False and \
        t['above_peer'] is False
    # other budgets are not judged; missing peers give no verdict
    assert R.quality_targets({('yolox_tiny', 0.3): rows}) == []
    t, = R.quality_targets({('m', 0.5): [_row('dense', 1.0),
                                         _row('bpc', 1.0)]})
    assert t['near_dense'] is True and t['above_peer'] is None


@pytest.mark.parametrize('epochs', [1, 2, 3, 5, 8, 12, 30, 100])
def test_schedules_fit_the_epochs(epochs):
    p = M.prune_epoch(epochs)
    assert 1 <= p <= max(1, epochs - 1)
    for soft in (False, True):
        g = M.gradual_positions(epochs, soft)
        last = g['end'] + (g['interval'] if soft else 0)
        assert 1 <= g['begin'] <= g['end'] <= p
        assert last <= epochs or epochs == 1
        assert len(range(g['begin'], g['end'] + 1, g['interval'])) <= \
            M.MAX_GRADUAL_EVENTS
    for method in M.ALL_METHODS:
        spec = M.method_spec(method, epochs, 0.5, (64, 64), 4)
        assert spec['kind'] in ('dense', 'mmprune', 'torch_pruning')


def test_quality_run_latency_and_report(tmp_path):
    """A real (tiny) L1-uniform run: pruned to the FLOPs target inside the
    Runner, evaluated by CocoMetric, its model saved whole and reloadable,
    timed by the latency phase, and tabled by the report."""
    from benchmarks.quality import prepare_data, quality_jobs, run_job
    from benchmarks.run import quality_latency, select
    preset = dict(name='test', quality=dict(
        data=dict(difficulty='easy', size=64, num_train=8, num_val=4,
                  num_classes=10, seed=0),
        epochs=1, batch_size=4, budgets=(0.5, ), seeds=(0, ),
        models=dict(yolox_tiny=dict(methods=('dense', 'l1_uniform'))),
        latency_runs=2))
    data = prepare_data(str(tmp_path / 'data'), preset['quality']['data'])
    out = tmp_path / 'results'
    jobs = quality_jobs(preset, str(out), str(tmp_path / 'work'), data,
                        'cpu', 1)
    assert [j['method'] for j in jobs] == ['dense', 'l1_uniform']
    res = run_job(jobs[1])
    assert res['status'] == 'ok', res.get('traceback')
    assert 0.45 <= res['flops_ratio'] <= 0.5 + 1e-6
    assert res['kind'] == 'mmprune' and res['iterations'] == 2
    assert res['mAP'] is not None and 0 <= res['mAP'] <= 1
    assert res['env']['git']['commit'] and res['env']['versions']['torch']
    with open(jobs[1]['out']) as f:
        assert json.load(f)['id'] == res['id']
    model = torch.load(res['model_file'], weights_only=False)
    assert sum(p.numel() for p in model.parameters()) == res['params']
    # --resume skips a run once its JSON says 'ok': here, all but dense
    args = type('A', (), dict(only=None, resume=True))
    assert [j['id'] for j in select(jobs, args)] == [jobs[0]['id']]
    assert run_job(jobs[0])['status'] == 'ok'
    assert [j['id'] for j in select(jobs, args)] == []

    quality_latency(str(out), 2, 'cpu', 1, resume=False)
    with open(out / 'quality' / 'latency__yolox_tiny__f50.json') as f:
        lat = json.load(f)
    assert sorted(lat['latency']) == sorted(j['id'] for j in jobs)
    md = open(R.write_report(str(out))).read()
    assert 'L1 uniform (one-shot)' in md and \
        '### yolox_tiny, 50 % FLOPs (1 epochs)' in md
    # no mmprune method ran: the quality targets have no verdict
    assert '| yolox_tiny | ' in md and 'n/a' in md
    assert osp.isfile(out / 'plots' / 'quality_yolox_tiny.png')


@pytest.mark.skipif(not osp.isdir(SMOKE_RESULTS),
                    reason='benchmarks/results/smoke not generated (python '
                    'benchmarks/run.py --preset smoke)')
def test_report_cli_on_smoke_results(tmp_path):
    """``python benchmarks/report.py DIR`` alone, on the smoke results:
    every suite is tabled and each speed verdict follows its numbers."""
    d = tmp_path / 'smoke'
    shutil.copytree(SMOKE_RESULTS, d, ignore=shutil.ignore_patterns(
        'results.md', 'plots'))
    out = subprocess.run([sys.executable, 'benchmarks/report.py', str(d)],
                         cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    md = (d / 'results.md').read_text()
    for section in ('## 1. Quality', '## 2. Speed', '## 3. Tool costs',
                    '## Targets'):
        assert section in md
    results = R.load_results(str(d))
    rows = R.speed_rows(results)
    assert rows
    for r in rows:
        want = r['realized_over_flops'] >= R.SPEED_TARGETS[r['mode']]
        line = next(l for l in md.splitlines()
                    if l.startswith(f"| {r['model']} |") and
                    f"| {r['mode']} | {r['setting']} | {r['backend']} | "
                    f"{r['batch']} |" in l)
        assert line.endswith('**PASS** |' if want else '**FAIL** |')
    for png in ('speed.png', 'graph_time.png'):
        assert (d / 'plots' / png).stat().st_size > 1000
