"""budget='latency' in ChannelPruningHook (issue 13): the hook reads a
latency grid (tools/analysis/latency_table.py) once before training,
checks it against the model, keeps it in the checkpointed state and prunes
to a fraction of the dense predicted latency, in the real Runner on tiny
YOLOX. The table is timed with the fake clock of test_latency_grid, so the
test is deterministic."""
import json
import os
import os.path as osp

import pytest
from mmengine.runner import Runner
from test_hook_methods import pruning_hook, quiet
from test_hook_training import KillAfterEpoch, _Stop, pruning_cfg
from test_latency_grid import FakeClock

from mmprune import apis
from mmprune.costs.latency_backends import TorchBackend
from mmprune.costs.latency_grid import (LatencyGrid, LatencyTableMismatch,
                                        measure_grid)
from mmprune.runtime.rebind import unwrap


def latency_cfg(mmdet_config, synth_data, work, table, **hook):
    args = dict(
        max_epochs=2,
        budget='latency',
        latency_table=table,
        target=0.7,
        begin=1,
        end=2,
        interval=1)
    args.update(hook)
    return quiet(pruning_cfg(mmdet_config, synth_data, work, **args))


def write_table(runner, path) -> LatencyGrid:
    """A fake-timed grid of the runner's (dense) detector at 128 px."""
    model = unwrap(runner.model)
    graph = apis.analyze(model, 'coupled', pruning_hook(runner).trace_size)
    clock = FakeClock()
    with clock.ticking():
        grid = measure_grid(
            model, (128, 128),
            1,
            TorchBackend(runs=1, warmup=0, clock=clock),
            graph,
            points=2,
            progress=False)
    grid.save(path)
    return grid


def test_hook_prunes_to_a_latency_budget_and_resumes_without_the_file(
        tmp_path, mmdet_config, synth_data):
    table = str(tmp_path / 'table.json')
    work = tmp_path / 'run'
    first = Runner.from_cfg(latency_cfg(mmdet_config, synth_data, work, table))
    grid = write_table(first, table)
    first.register_hook(KillAfterEpoch(1))
    with pytest.raises(_Stop):
        first.train()
    ph = pruning_hook(first)
    # no allocator given: the default allocation, solved in milliseconds
    assert ph.allocator_cfg['type'] == 'BudgetAllocator'
    assert ph.allocator_cfg['budget'] == 'latency'
    dense = grid.total_ms
    assert ph.state['dense_cost'] == pytest.approx(dense)
    assert ph.state['latency_grid'] == json.load(open(table))
    assert ph.state['latency'] is None  # no linear table measured
    after_first = grid.predict(
        apis.analyze(unwrap(first.model), 'coupled', ph.trace_size))
    assert 0.7 * dense < after_first < dense  # the cubic ramp's first step
    os.remove(table)  # the resumed run needs no file

    cfg = latency_cfg(mmdet_config, synth_data, work, table)
    cfg.resume = True
    cfg.load_from = str(work / 'epoch_1.pth')
    cfg.default_hooks.logger.interval = 1
    resumed = Runner.from_cfg(cfg)
    resumed.train()
    rh = pruning_hook(resumed)
    assert rh.state['events_done'] == 2
    model = unwrap(resumed.model)
    assert len(apis.model_plans(model)) == 2
    predicted = grid.predict(apis.analyze(model, 'coupled', rh.trace_size))
    assert 0.6 * dense <= predicted <= 0.7 * dense * (1 + 1e-9)
    rows = [
        json.loads(line) for line in open(
            osp.join(resumed.log_dir, 'vis_data', 'scalars.json'))
    ]
    # epoch 2's iterations run between the two events
    curve = [
        r['prune_latency_ratio'] for r in rows if 'prune_latency_ratio' in r
    ]
    assert curve == pytest.approx([after_first / dense] * 2)


def test_latency_budget_refuses_a_missing_or_mismatched_table(
        tmp_path, mmdet_config, synth_data):
    with pytest.raises(ValueError, match='latency_table'):
        Runner.from_cfg(
            latency_cfg(mmdet_config, synth_data, tmp_path / 'a', None))
    table = str(tmp_path / 'table.json')
    runner = Runner.from_cfg(
        latency_cfg(mmdet_config, synth_data, tmp_path / 'b', table))
    grid = write_table(runner, table)
    grid.data['key']['input_size'] = [96, 96]  # measured for another size
    grid.save(table)
    with pytest.raises(
            LatencyTableMismatch,
            match=r'input size \[96, 96\], but \[128, 128\]'):
        runner.train()
    assert runner.iter == 0


def test_latency_budget_keeps_a_methods_allocation():
    """budget='latency' without an explicit allocator: every preset keeps
    its allocator (BPC's uniform one, FCP's global threshold, ACP-TP's and
    GCP-FRS's adaptive ramps) with its ramp and limits, and solves the
    budget in ms (the global latency-aware order lost 3.9 mAP in the
    accuracy benchmark); a cost-aware adaptive allocator prices its
    channels in time; an allocator given explicitly is kept, and FLOPs
    budgets are untouched."""
    from mmprune.hooks.settings import resolve
    for method in ('bpc', 'fcp', 'acp_tp', 'gcp_frs'):
        flops = resolve(method=method, begin=1, by_epoch=False)
        lat = resolve(
            method=method,
            budget='latency',
            latency_table='t.json',
            begin=1,
            by_epoch=False)
        a, f = lat['allocator_cfg'], flops['allocator_cfg']
        assert a['type'] == f['type'], method
        assert a['budget'] == 'latency' and f['budget'] == 'flops'
        assert a.get('cost_weight', 0) == f.get('cost_weight', 0) == 0
        assert a.get('cost_measure') == f.get('cost_measure'), method
        assert a.get('ramp') == f.get('ramp'), method
        for k in ('min_keep', 'max_prune_ratio', 'round_to'):
            assert a[k] == f[k], (method, k)
        assert type(lat['criterion']) is type(flops['criterion'])
    assert resolve(
        method='bpc',
        budget='latency',
        latency_table='t.json',
        begin=1,
        by_epoch=False)['allocator_cfg']['type'] == 'UniformAllocator'
    from mmprune.hooks.settings import latency_order
    aware = latency_order(
        dict(type='AdaptiveAllocator', cost_weight=0.5, budget='latency'))
    assert aware['cost_measure'] == 'latency' and aware['cost_weight'] == 0.5
    plain = latency_order(dict(type='AdaptiveAllocator', budget='latency'))
    assert 'cost_measure' not in plain
    own = resolve(
        budget='latency',
        latency_table='t.json',
        allocator=dict(type='BudgetAllocator'))
    assert own['allocator_cfg']['type'] == 'BudgetAllocator'
    assert own['allocator_cfg']['budget'] == 'latency'
