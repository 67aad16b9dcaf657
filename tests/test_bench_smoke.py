"""The benchmark suite (``make bench``): a real smoke run of both protocols
(a trained reference and runs fine-tuned from it; runs from scratch)
through the mmengine Runner, the latency phase, the report with its
statistics and targets, the schedules of each protocol, and the plan of the
session preset.

The full suites are far too slow for tests; ``benchmarks/run.py --preset
smoke`` exercises every path and its results (``benchmarks/results/smoke``)
feed the report test here.
"""
import copy
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
from benchmarks.presets import PRESETS  # noqa: E402

SMOKE_RESULTS = osp.join(ROOT, 'benchmarks', 'results', 'smoke')


def _row(method, by_seed, std=None):
    vals = list(by_seed.values())
    return dict(
        method=method,
        mAP=sum(vals) / len(vals),
        mAP_std=std,
        seeds=sorted(by_seed),
        by_seed=dict(by_seed))


def _targets(rows, budget=0.5):
    return R.quality_targets({('yolox_tiny', 'trained', budget): rows})


def test_quality_targets_use_paired_intervals_and_the_floor():
    rows = [
        _row('dense', {
            0: 10.0,
            1: 10.2,
            2: 9.8
        }, 0.2),
        _row('l1_uniform', {
            0: 7.5,
            1: 7.4,
            2: 7.6
        }, 0.1),
        _row('tp_taylor', {
            0: 8.0,
            1: 7.9,
            2: 8.1
        }, 0.1),
        _row('fcp', {
            0: 9.1,
            1: 9.0,
            2: 9.2
        }, 0.1),
        _row('acp_tp', {
            0: 8.5,
            1: 8.5,
            2: 8.5
        }, 0.0),
        _row('random', {
            0: 8.6,
            1: 8.2,
            2: 8.4
        }, 0.2)
    ]
    t, = _targets(rows)
    assert (t['best'], t['peer'], t['top']) == ('fcp', 'tp_taylor', 'fcp')
    assert t['protocol'] == 'trained' and t['seeds'] == 3
    assert t['near_dense'] is True  # 9.1 >= 10.0 - 1.0
    # per-seed differences 1.1, 1.1, 1.1: mean 1.1 >= 1.0, interval > 0
    assert t['vs_peer']['mean'] == pytest.approx(1.1)
    assert t['vs_peer']['low'] == pytest.approx(1.1)
    assert t['above_peer'] is True
    # floor: 9.1 - 8.4 = 0.7 > the larger std 0.2
    assert t['floor_margin'] == pytest.approx(0.7)
    assert t['discriminative'] is True
    # a noisy gap: mean above the margin, paired interval not above 0
    rows[3] = _row('fcp', {0: 12.0, 1: 7.5, 2: 8.2}, 2.4)
    t, = _targets(rows)
    assert t['best'] == 'fcp' and t['vs_peer']['low'] < 0 < \
        t['vs_peer']['mean'] and t['above_peer'] is False
    # ... and the floor is within the spread: not discriminative
    assert t['discriminative'] is False
    md = '\n'.join(R._stats_md([t]))
    assert 'Not discriminative at this size' in md and 'random floor' in md
    # other budgets are not judged; missing rows give no verdict
    assert _targets(rows, 0.3) == []
    t, = _targets([_row('dense', {0: 1.0}), _row('bpc', {0: 1.0})])
    assert t['near_dense'] is True and t['above_peer'] is None
    assert t['discriminative'] is None and t['fine_ge_coupled'] is None
    # the residual comparison, one seed: a verdict from the mean, no CI
    t, = _targets([_row('l1_coupled', {0: 5.0}), _row('l1_fine', {0: 5.5})])
    assert t['fine_ge_coupled'] is True and \
        t['fine_vs_coupled']['low'] is None


def test_latency_budget_row_is_bpc_at_its_matched_latency():
    """``bpc_latency``: BPC's criterion with a latency budget at the
    latency the FLOPs-budget BPC rows measured, a table to measure first,
    and a report comparison that needs both mAP and measured latency."""
    spec = M.method_spec(M.LATENCY_BUDGET, 6, 0.5, (128, 128), 40, 'trained',
                         1)
    h = spec['hook']
    assert h['method'] == 'bpc' and h['budget'] == 'latency'
    assert h['target'] == M.LATENCY_MATCH[0.5] != 0.5
    assert spec['latency_table'] == dict(
        backend='torch', batch=1, points=3, level_runs=10)
    assert h['begin'] == h['end'] == 1 and h['by_epoch'] is False
    with pytest.raises(ValueError, match='no matched latency'):
        M.method_spec(M.LATENCY_BUDGET, 6, 0.7, (128, 128), 40, 'trained')
    flops = dict(_row('bpc', {0: 29.0, 1: 30.0}), latency_ms=15.0)
    lat = dict(_row('bpc_latency', {0: 29.5, 1: 30.5}), latency_ms=14.8)
    dense = dict(_row('dense', {0: 33.0, 1: 33.0}), latency_ms=21.0)
    t, = _targets([dense, flops, lat])
    assert t['latency_vs_flops']['mean'] == pytest.approx(0.5)
    assert t['latency_ge_flops'] is True
    # not the best mmprune method at equal FLOPs, nor the floor's top
    assert t['best'] == 'bpc' and t['top'] == 'bpc'
    assert 'BPC latency budget − BPC FLOPs budget' in '\n'.join(
        R._stats_md([t]))
    # equal within the timing noise (3 %): the mAP decides
    t, = _targets([dense, flops, dict(lat, latency_ms=15.3)])
    assert t['latency_ge_flops'] is True
    t, = _targets([
        dense, flops,
        dict(_row('bpc_latency', {
            0: 28.0,
            1: 30.0
        }), latency_ms=15.0)
    ])
    assert t['latency_ge_flops'] is False
    # slower than the band: not a comparison at equal latency
    t, = _targets([dense, flops, dict(lat, latency_ms=15.6)])
    assert t['latency_ge_flops'] is None
    t, = _targets([dense, flops, dict(lat, latency_ms=None)])
    assert t['latency_ge_flops'] is None  # not timed: no verdict


def test_latency_global_row_differs_only_by_its_order():
    """``bpc_latency_global``: the ``bpc_latency`` run with the global
    latency-aware allocator given explicitly (the hook keeps BPC's uniform
    one otherwise), reported as its own comparison and never the best."""
    base = M.method_spec(M.LATENCY_BUDGET, 6, 0.5, (128, 128), 40, 'trained',
                         1)
    spec = M.method_spec(M.LATENCY_GLOBAL, 6, 0.5, (128, 128), 40, 'trained',
                         1)
    h = spec['hook']
    a = h.pop('allocator')
    assert 'allocator' not in base['hook'] and h == base['hook']
    assert a['type'] == 'AdaptiveAllocator' and \
        a['cost_measure'] == 'latency' and a['cost_weight'] == 1.0
    flops = dict(_row('bpc', {0: 29.0, 1: 30.0}), latency_ms=15.0)
    glob = dict(
        _row('bpc_latency_global', {
            0: 25.0,
            1: 27.0
        }), latency_ms=15.2)
    t, = _targets([flops, glob])
    assert t['global_latency_vs_flops']['mean'] == pytest.approx(-3.5)
    assert t['global_latency_ge_flops'] is False
    assert t['latency_vs_flops'] is None and t['top'] == 'bpc'
    assert 'BPC latency budget, global order − BPC FLOPs budget' in \
        '\n'.join(R._stats_md([t]))


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
    for protocol in M.PROTOCOLS:
        for method in M.ALL_METHODS:
            spec = M.method_spec(
                method, max(epochs, 2), 0.5, (64, 64), 4, protocol, seed=3)
            assert spec['kind'] in ('dense', 'mmprune', 'torch_pruning')


@pytest.mark.parametrize('total', [2, 3, 8, 40, 240, 1000])
def test_trained_schedules_are_compressed_into_the_window(total):
    for method in M.ALL_METHODS[1:]:
        spec = M.method_spec(method, 1, 0.5, (64, 64), total, 'trained', 2)
        h = spec['hook']
        if spec['kind'] == 'torch_pruning':
            assert h['iteration'] == 1 and 'epoch' not in h
            continue
        assert h['by_epoch'] is False
        soft = method == 'acp_tp'
        last = h['end'] + (h['interval'] if soft else 0)
        assert 1 <= h['begin'] <= h['end'] and last <= total
        assert len(range(h['begin'], h['end'] + 1, h['interval'])) <= \
            M.MAX_GRADUAL_EVENTS
        if method not in M.TRAINED_WINDOWS:
            assert h['begin'] == h['end'] == 1  # one-shot: at the start
        elif total >= 40:  # the window's shape survives the rounding
            first, end = M.TRAINED_WINDOWS[method]
            assert abs(h['begin'] - first * total) <= 1
            assert round(end * total) - h['interval'] <= h['end'] <= \
                round(end * total)
    floor = M.method_spec('random', 1, 0.5, (64, 64), total, 'trained', 7)
    assert floor['hook']['criterion'] == dict(type='RandomCriterion', seed=7)
    with pytest.raises(ValueError, match='protocol'):
        M.method_spec('fcp', 2, 0.5, (64, 64), 4, 'pretrained')


def test_both_protocols_latency_and_report(tmp_path):
    """A real (tiny) run of both protocols: a trained reference, runs that
    fine-tune from it (dense, L1 uniform cut at the start, the random
    floor) and dense and L1 uniform from scratch, their models saved and
    timed, and the report's headline table, statistics and plots."""
    from benchmarks.quality import prepare_data, quality_jobs, run_job
    from benchmarks.reference import reference_jobs
    from benchmarks.reference import run_job as run_reference
    from benchmarks.run import quality_latency, select
    from mmprune.utils.io import write_json_atomic

    # the smoke preset, smaller still: 64 px, 8 + 4 images, one model
    preset = copy.deepcopy(PRESETS['smoke'])
    preset['name'] = 'test'
    q = preset['quality']
    q['data'].update(size=64, num_train=8, num_val=4)
    q['reference'] = dict(epochs=1, seed=0)
    q['models'] = dict(
        yolox_tiny=dict(methods=('dense', 'l1_uniform', 'random')))
    q['latency_runs'] = 2
    data = prepare_data(str(tmp_path / 'data'), preset['quality']['data'])
    out = tmp_path / 'results'
    refs = reference_jobs(preset, str(out), str(tmp_path / 'work'), data,
                          'cpu', 1, str(tmp_path / 'cache'))
    jobs = quality_jobs(preset, str(out), str(tmp_path / 'work'), data, 'cpu',
                        1, {r['model']: r
                            for r in refs})
    assert [(j['protocol'], j['method'])
            for j in jobs] == [('trained', 'dense'), ('trained', 'l1_uniform'),
                               ('trained', 'random'), ('scratch', 'dense'),
                               ('scratch', 'l1_uniform'),
                               ('scratch', 'random')]
    assert jobs[0]['needs'] == [refs[0]['id']] and not jobs[3]['needs']
    # a trained run refuses to start before its reference exists
    res = run_job(jobs[0])
    assert res['status'] == 'failed' and 'reference record' in res['error']
    ref = run_reference(refs[0])
    assert ref['status'] == 'ok', ref.get('traceback')

    results = {}
    for job in jobs[:5]:  # scratch's random run adds nothing new: time
        res = run_job(job)
        assert res['status'] == 'ok', (job['id'], res.get('traceback'))
        results[(job['protocol'], job['method'])] = res
    dense = results[('trained', 'dense')]
    # it started from the reference: every tensor checked and loaded
    assert dense['loaded_tensors'] > 100 and dense['iterations'] == 4
    assert dense['reference_key'] == refs[0]['key'] and \
        dense['lr_mult'] == 0.5
    assert results[('scratch', 'dense')]['loaded_tensors'] is None
    cut = results[('trained', 'l1_uniform')]
    assert cut['pruning']['by_epoch'] is False and \
        cut['pruning']['begin'] == 1
    for key in [('trained', 'l1_uniform'), ('trained', 'random'),
                ('scratch', 'l1_uniform')]:
        assert 0.45 <= results[key]['flops_ratio'] <= 0.5 + 1e-6, key
    assert results[('trained', 'random')]['pruning']['criterion'] == \
        dict(type='RandomCriterion', seed=0)
    assert results[('scratch', 'dense')]['reference_key'] is None
    model = torch.load(cut['model_file'], weights_only=False)
    assert sum(p.numel() for p in model.parameters()) == cut['params']

    # --resume keeps finished runs only while their reference is the same
    args = type('A', (), dict(only=None, resume=True))
    assert select(refs + jobs, args) == [jobs[5]]
    stale = dict(jobs[1], reference=dict(jobs[1]['reference'], key='0' * 16))
    assert [j['id'] for j in select(refs + [stale], args)] == \
        [refs[0]['id'], stale['id']]
    # --only keeps the reference the selected runs need
    only = type('A', (), dict(only=['*__tr__*random*'], resume=False))
    assert [j['id'] for j in select(refs + jobs, only)] == \
        [refs[0]['id'], jobs[2]['id']]
    only.only = ['reference__*']
    assert select(refs + jobs, only) == refs

    quality_latency(str(out), 2, 'cpu', 1, resume=False)
    for tag, n in (('tr', 3), ('sc', 2)):
        with open(out / 'quality' /
                  f'latency__yolox_tiny__{tag}__f50.json') as f:
            assert len(json.load(f)['latency']) == n
    write_json_atomic(
        dict(preset='test', argv=['--preset', 'test']), str(out / 'env.json'))
    md = open(R.write_report(str(out))).read()
    assert '## Headline' in md and '## Trained references' in md
    assert '### yolox_tiny, trained, 50 % FLOPs (2 epochs)' in md
    assert '### yolox_tiny, scratch, 50 % FLOPs (2 epochs)' in md
    assert 'random channels (floor)' in md and \
        '| yolox_tiny | trained | L1 uniform (one-shot) |' in md
    assert f"`{refs[0]['key']}`" in md
    assert 'Command: `python benchmarks/run.py --preset test`' in md
    for stem in ('quality_yolox_tiny_trained', 'latency_yolox_tiny_trained',
                 'quality_yolox_tiny_scratch'):
        assert (out / 'plots' / f'{stem}.png').stat().st_size > 1000


def test_session_plan_fits_and_has_the_protocol(capsys, tmp_path):
    """``--list`` of the committed preset: the seeds, the floor, both
    references, and a printed plan within the session budget."""
    from benchmarks.plan import schedule
    from benchmarks.run import main
    assert main([
        '--preset', 'session', '--list', '--out',
        str(tmp_path), '--work-dir',
        str(tmp_path), '--ref-cache',
        str(tmp_path / 'cache')
    ]) == 0
    text = capsys.readouterr().out
    assert '[bench] plan:' in text
    ids = [
        line.split('\t')[1] for line in text.splitlines()
        if line.startswith('quality\t')
    ]
    assert 'reference__yolox_tiny' in ids and \
        'reference__retinanet_r18' in ids
    for model in ('yolox_tiny', 'retinanet_r18'):
        for method in ('dense', 'random'):
            assert {f'{model}__tr__f50__{method}__s{s}'
                    for s in (0, 1, 2)} <= set(ids)
        assert f'{model}__tr__f30__random__s0' in ids
        assert f'{model}__tr__f30__random__s1' not in ids
    for method in M.PEER_METHODS + M.MMPRUNE_METHODS + (M.LATENCY_BUDGET, ):
        assert f'yolox_tiny__tr__f50__{method}__s2' in ids
    for method in M.RESIDUAL_METHODS:
        assert f'retinanet_r18__tr__f50__{method}__s2' in ids
    # the backbone-only row runs once per seed, not once per budget
    assert 'retinanet_r18__tr__f50__l1_backbone__s2' in ids
    assert not any('f30__l1_backbone' in i for i in ids)
    # --seeds replaces every budget's seeds (extra seeds beside a bench)
    assert main([
        '--preset', 'session', '--list', '--seeds', '3', '--only',
        'yolox_tiny__tr__*__bpc__*', '--out',
        str(tmp_path), '--work-dir',
        str(tmp_path), '--ref-cache',
        str(tmp_path / 'cache')
    ]) == 0
    extra = [
        line.split('\t')[1] for line in capsys.readouterr().out.splitlines()
        if line.startswith('quality\t')
    ]
    assert sorted(extra) == [
        'reference__yolox_tiny', 'yolox_tiny__tr__f30__bpc__s3',
        'yolox_tiny__tr__f50__bpc__s3'
    ]
    wall = float(text.split('estimated ')[1].split(' min')[0])
    assert wall <= 150, text
    assert schedule([], 2)['wall_seconds'] == 0


@pytest.mark.skipif(
    not osp.isdir(SMOKE_RESULTS),
    reason='benchmarks/results/smoke not generated (python '
    'benchmarks/run.py --preset smoke)')
def test_report_cli_on_smoke_results(tmp_path):
    """``python benchmarks/report.py DIR`` alone, on the smoke results:
    every suite is tabled and each speed verdict follows its numbers."""
    d = tmp_path / 'smoke'
    shutil.copytree(
        SMOKE_RESULTS, d, ignore=shutil.ignore_patterns('results.md', 'plots'))
    out = subprocess.run([sys.executable, 'benchmarks/report.py',
                          str(d)],
                         cwd=ROOT,
                         capture_output=True,
                         text=True,
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
        line = next(ln for ln in md.splitlines()
                    if ln.startswith(f"| {r['model']} |")
                    and f"| {r['mode']} | {r['setting']} | {r['backend']} | "
                    f"{r['batch']} |" in ln)
        assert line.endswith('**PASS** |' if want else '**FAIL** |')
    for png in ('speed.png', 'graph_time.png'):
        assert (d / 'plots' / png).stat().st_size > 1000


def test_backbone_only_row_is_at_its_lowest_reachable_flops():
    """``l1_backbone``'s fixed target is reachable with the neck and head
    left whole (else its run would be refused) and no more than 1 point
    above the lowest such cut (else it would not be "the lowest FLOPs
    backbone-only reaches"), while the whole model reaches 0.5."""
    import numpy as np
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from benchmarks.train_config import MODELS as BENCH_MODELS
    from mmprune import apis
    from mmprune.allocators import BudgetAllocator
    from mmprune.methods import filter_groups
    register_all_modules()
    cfg = apis.load_config(BENCH_MODELS['retinanet_r18'][0])
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    graph = apis.analyze(model, 'coupled', (128, 128), ())
    cost = apis.cost_model(model)
    dense = cost.flops(
        graph, {g.name: np.arange(g.width)
                for g in graph.prunable_groups()})
    alloc = BudgetAllocator(ratio=0.5)
    names = filter_groups(graph, exclude=list(M.NECK_AND_HEAD))
    assert names and all(n.startswith('backbone.') for n in names)
    low = alloc.reachable_cost(model, graph, cost, names) / dense
    assert low <= M.BACKBONE_ONLY_TARGET <= low + 0.01, low
    assert alloc.reachable_cost(model, graph, cost) / dense < 0.5
    spec = M.method_spec(M.BACKBONE_ONLY, 6, 0.5, (128, 128), 40,
                         'trained')['hook']
    assert spec['target'] == M.BACKBONE_ONLY_TARGET
    assert spec['exclude_groups'] == dict(exclude=list(M.NECK_AND_HEAD))
