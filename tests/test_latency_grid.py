"""Latency grid (mmprune/costs/latency_grid.py): interpolation against
direct measurements, the misalignment cliff, a latency budget met, tables
that do not fit refused by name, the CUDA and onnxruntime timing paths,
and the two command lines.

Timing on a shared CPU is noisy, so the exact tests use a deterministic
fake clock: a global forward hook advances it by a known, non-linear
function of a conv's widths (with a 1.3x cliff at widths that are not
multiples of 8), through the real TorchBackend/CudaBackend code.
"""
import contextlib
import dataclasses
import json
import math
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn as nn

from mmprune import apis
from mmprune.allocators import BudgetAllocator
from mmprune.costs.flops import CostModel
from mmprune.costs.latency_backends import (CudaBackend, OnnxRuntimeBackend,
                                            TorchBackend)
from mmprune.costs.latency_grid import (LatencyGrid, LatencyTableMismatch,
                                        curve_ms)
from mmprune.graph import build_channel_graph

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
YOLOX = 'mmdet::yolox/yolox_tiny_8xb8-300e_coco.py'


def conv_seconds(c_in: int, c_out: int) -> float:
    """Fake time of a 3x3 conv: overhead + a padded product + a sqrt
    term (not bilinear), x1.3 when a width is not a multiple of 8."""
    c8 = lambda c: -(-c // 8) * 8  # noqa: E731
    t = 1e-5 * (20 + 0.05 * c8(c_in) * c8(c_out) + 3 * math.sqrt(c8(c_out)))
    return t * (1.3 if c_in % 8 or c_out % 8 else 1.0)


class FakeClock:
    """``now`` advances by :func:`conv_seconds` per conv forward, either at
    once (``queued=False``) or only when ``sync`` drains a fake stream."""

    def __init__(self, queued: bool = False):
        self.now, self.pending, self.syncs = 0.0, 0.0, 0
        self.queued = queued

    def __call__(self) -> float:
        return self.now

    def sync(self) -> None:
        self.syncs += 1
        self.now, self.pending = self.now + self.pending, 0.0

    @contextlib.contextmanager
    def ticking(self):

        def hook(mod, args, out):
            if isinstance(mod, nn.Conv2d):
                t = conv_seconds(mod.in_channels, mod.out_channels)
                if self.queued:
                    self.pending += t
                else:
                    self.now += t

        h = torch.nn.modules.module.register_module_forward_hook(hook)
        try:
            yield self
        finally:
            h.remove()


class Net(nn.Module):
    """a (3->64) -> BN -> ReLU -> b (64->48) -> BN -> ReLU -> c (48->40)."""

    def __init__(self, widths=(64, 48), k=3):
        super().__init__()
        w1, w2 = widths
        self.a = nn.Conv2d(3, w1, 3, padding=1)
        self.bn1, self.act1 = nn.BatchNorm2d(w1), nn.ReLU()
        self.b = nn.Conv2d(w1, w2, k, padding=k // 2)
        self.bn2, self.act2 = nn.BatchNorm2d(w2), nn.ReLU()
        self.c = nn.Conv2d(w2, 40, 3, padding=1)

    def forward(self, x):
        return self.c(
            self.act2(self.bn2(self.b(self.act1(self.bn1(self.a(x)))))))


def fake_grid(model, graph=None, points=5):
    clock = FakeClock()
    backend = TorchBackend(runs=1, warmup=0, clock=clock)
    x = torch.randn(1, 3, 8, 8)
    with clock.ticking():
        grid = LatencyGrid.measure(
            model.eval(),
            model, [x],
            backend,
            graph,
            points=points,
            progress=False)
    return grid, backend, clock


def call_ms(grid, name, widths):
    curve = grid.data['curves'][grid.data['modules'][name]['calls'][0]
                                ['curve']]
    return grid.data['leaf_scale'] * curve_ms(curve, widths)


def direct_ms(backend, clock, c_in, c_out):
    with clock.ticking():
        return backend.time(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            (torch.randn(1, c_in, 8, 8), ))


def test_grid_reproduces_direct_measurements_and_the_cliff():
    torch.manual_seed(0)
    grid, backend, clock = fake_grid(Net())
    assert grid.data['leaf_scale'] == pytest.approx(1.0)
    axes = grid.data['curves'][grid.data['modules']['b']['calls'][0]
                               ['curve']]['axes']
    xs_out, xs_in = axes[0]['xs'], axes[1]['xs']
    # bounded grid: <= 5 points per axis, dense width and multiples of 8
    assert xs_out[-1] == 48 and xs_in[-1] == 64
    assert len(xs_out) <= 5 and all(x % 8 == 0 for x in xs_out + xs_in)
    assert axes[1]['penalty'] == pytest.approx(1.3)  # the probe saw it
    # exact at grid points
    for co in xs_out:
        for ci in xs_in:
            assert call_ms(grid, 'b', (co, ci)) == pytest.approx(
                direct_ms(backend, clock, ci, co), rel=1e-9)
    # between grid points, aligned and misaligned (the cliff), within 2 %
    # of a direct measurement; the linear model misses the cliff by > 20 %
    dense = direct_ms(backend, clock, 64, 48)
    for co, ci in ((20, 36), (45, 57), (27, 64), (48, 13), (33, 50)):
        got, want = call_ms(grid, 'b',
                            (co, ci)), direct_ms(backend, clock, ci, co)
        assert got == pytest.approx(want, rel=0.02), (co, ci)
        if ci % 8 or co % 8:
            linear = dense * (co / 48) * (ci / 64)
            assert abs(linear - want) / want > 0.2
    # the dense prediction is the measured whole forward
    assert grid.total_ms == pytest.approx(
        grid.data['meta']['dense_ms'], rel=1e-4)


def test_duplicate_layers_are_timed_once():

    class Twice(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3, padding=1)
            self.b1 = nn.Conv2d(16, 16, 3, padding=1)
            self.b2 = nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x):
            return self.b2(self.b1(self.a(x)))

    model = Twice()
    timed = []
    backend = TorchBackend(runs=1, warmup=0)
    orig = backend.time
    backend.time = lambda m, a: timed.append(m) or orig(m, a)
    grid = LatencyGrid.measure(
        model.eval(),
        model, [torch.randn(1, 3, 8, 8)],
        backend,
        points=3,
        progress=False)
    mods = grid.data['modules']
    assert mods['b1']['calls'][0]['curve'] == mods['b2']['calls'][0]['curve']
    # a: (C_out 8, 16) x (C_in 1, 2, 3) + 1 probe; b1 = b2: (8, 16) x
    # (8, 16) + 2 probes, timed once; + the whole forward
    assert len(timed) == grid.data['meta']['points_timed'] + 1 == 7 + 6 + 1


def test_latency_budget_met_on_a_toy_net():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = build_channel_graph(model, model, [x])
    grid, backend, clock = fake_grid(model, graph)
    cost = CostModel(model, model, [x])
    scores = {g.name: torch.rand(g.width) for g in graph.prunable_groups()}
    limits = dict(min_keep=1, max_prune_ratio=0.95)
    with pytest.raises(
            ValueError, match=r"budget='latency'\) needs a "
            r'latency table'):
        BudgetAllocator(
            0.5, budget='latency', **limits).allocate(model, graph, scores,
                                                      cost)
    cost.latency = grid
    dense = grid.predict(graph)
    keep = BudgetAllocator(
        0.5, budget='latency', **limits).allocate(model, graph, scores, cost)
    assert grid.predict(graph, keep) <= 0.5 * dense
    # odd widths: the cliff is in the prediction, not ignored
    assert any(len(k) % 8 for k in keep.values())
    apis.prune(model, apis.make_plan(graph, keep), graph)
    with clock.ticking():
        measured = backend.time(model, (x, ))
    assert measured == pytest.approx(0.5 * dense, rel=0.05)
    # FLOPs budgets keep working beside it
    model2 = Net().eval()
    g2 = build_channel_graph(model2, model2, [x])
    cost2 = CostModel(model2, model2, [x])
    keep2 = BudgetAllocator(0.5, **limits).allocate(model2, g2, scores, cost2)
    assert cost2.flops(g2, keep2) <= 0.5 * cost2.flops()


def test_tables_that_do_not_fit_are_refused_by_name(tmp_path):
    model = Net().eval()
    grid, _, _ = fake_grid(model, points=2)
    path = str(tmp_path / 'table.json')
    grid.save(path)
    grid = LatencyGrid.load(path)
    grid.check(
        model, input_size=(8, 8), batch=1, backend='torch',
        device='cpu')  # fits
    for kwargs, needle in (
        (dict(backend='onnxruntime'),
         "backend 'torch', but backend 'onnxruntime'"),
        (dict(device='cuda'),
         "device 'cpu'.*'cuda' was asked"), (dict(device='H200'),
                                             "but device 'H200' was asked"),
        (dict(input_size=(640, 640)),
         r'input size \[8, 8\], but \[640, 640\]'), (dict(batch=8),
                                                     'batch 1, but batch 8'),
        (dict(model=Net(k=1)), r"module 'b' is .*kernel.*\[1, 1\]"),
        (dict(model=Net(widths=(32, 48))),
         r"module 'a' has widths \[32, 3\] but the table's dense "
         r'model has \[64, 3\]')):
        with pytest.raises(LatencyTableMismatch, match=needle):
            grid.check(**kwargs)
    other = Net()
    del other.c
    with pytest.raises(
            LatencyTableMismatch, match="module 'c' of the table is missing"):
        grid.check(other)
    extra = Net()
    extra.d = nn.Conv2d(40, 8, 1)
    with pytest.raises(
            LatencyTableMismatch,
            match="module 'd' .* is missing from the table"):
        grid.check(extra)
    # a model pruned from the table's dense model fits
    x = torch.randn(1, 3, 8, 8)
    graph = build_channel_graph(model, model, [x])
    apis.prune(model, apis.make_plan(graph, {'a': np.arange(20)}), graph)
    grid.check(model)
    # broken files
    data = json.load(open(path))
    for change, needle in ((dict(version=99), 'version 99'),
                           (dict(format='x'), 'not an mmprune latency grid')):
        bad = tmp_path / 'bad.json'
        bad.write_text(json.dumps(dict(data, **change)))
        with pytest.raises(ValueError, match=needle):
            LatencyGrid.load(str(bad))


def test_cuda_timing_path_synchronises():
    """The CUDA backend's clock must wait for queued kernels: on a fake
    stream (time passes only at sync) it measures the work exactly, and
    an unsynchronised timer would measure nothing."""
    clock = FakeClock(queued=True)
    cuda = CudaBackend('cpu', runs=3, warmup=1, clock=clock, sync=clock.sync)
    conv, x = nn.Conv2d(24, 40, 3, padding=1), torch.randn(1, 24, 8, 8)
    with clock.ticking():
        ms = cuda.time(conv, (x, ))
        assert clock.syncs >= 2 * 3
        assert ms == pytest.approx(conv_seconds(24, 40) * 1e3, rel=1e-9)
        unsynced = TorchBackend(runs=3, warmup=1, clock=clock)
        assert unsynced.time(conv, (x, )) == 0.0
    assert cuda.name == 'cuda' and cuda.device_kind == 'cuda'
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='no CUDA device'):
            CudaBackend()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_backend_on_a_gpu():
    model = Net().eval()
    backend = CudaBackend(runs=3, warmup=2)
    grid = LatencyGrid.measure(
        model,
        model, [torch.randn(1, 3, 32, 32)],
        backend,
        points=2,
        progress=False)
    assert grid.key['device'] == 'cuda' and grid.total_ms > 0
    assert next(model.parameters()).device.type == 'cpu'  # put back


def test_onnxruntime_backend_times_a_tiny_conv():
    pytest.importorskip('onnxruntime')
    backend = OnnxRuntimeBackend(runs=3, warmup=1, threads=1)
    conv, x = nn.Conv2d(8, 16, 3, padding=1).eval(), torch.randn(1, 8, 16, 16)
    out = backend.runner(conv, (x, ))()
    np.testing.assert_allclose(out[0], conv(x).detach().numpy(), atol=1e-5)
    ms = backend.time(conv, (x, ))
    assert 0 < ms < 1000 and backend.threads() == 1


def load_tool(path, name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_latency_table_tool_end_to_end(tmp_path, capsys):
    tool = load_tool(
        osp.join(ROOT, 'tools', 'analysis', 'latency_table.py'),
        'latency_table_tool')
    out = str(tmp_path / 'table.json')
    tool.main([
        YOLOX, '--input-size', '64', '64', '--points', '2', '--runs', '1',
        '--warmup', '0', '--out', out, '--no-progress'
    ])
    grid = LatencyGrid.load(out)
    assert grid.key['input_size'] == [64, 64] and grid.key['batch'] == 1
    assert grid.key['backend'] == 'torch' and grid.key['threads'] == 1
    from mmprune.export import build_detector
    grid.check(
        build_detector(apis.load_config(YOLOX)),
        input_size=(64, 64),
        batch=1,
        backend='torch',
        device='cpu')
    assert grid.data['meta']['points_timed'] < 4 * grid.data['meta']['calls']
    assert 'timed in' in capsys.readouterr().out
    # cached: the same call reads the table back without timing (the
    # backend is never asked), another grid setting or --no-cache times
    args = [
        YOLOX, '--input-size', '64', '64', '--points', '2', '--runs', '1',
        '--warmup', '0', '--no-progress'
    ]
    from mmprune.costs import latency_backends as LB
    real_time = LB.TorchBackend.time
    LB.TorchBackend.time = lambda *a, **k: (_ for _ in ()).throw(
        AssertionError('timed a cached table'))
    try:
        again = tool.main(args + ['--out', str(tmp_path / 'again.json')])
    finally:
        LB.TorchBackend.time = real_time
    assert again.cached and again.data == grid.data
    assert 'read from the cache' in capsys.readouterr().out
    # a corrupt cache file is measured again and replaced
    with open(again.cached, 'w') as f:
        f.write('{not json')
    fresh = tool.main(args + ['--out', str(tmp_path / 'fresh.json')])
    assert fresh.cached is None
    assert LatencyGrid.load(again.cached).key == grid.key
    other = tool.main(args[:5] + ['3'] + args[6:] +
                      ['--out', str(tmp_path / 'other.json')])
    assert other.cached is None and other.data['meta']['grid']['points'] == 3
    nocache = tool.main(args +
                        ['--no-cache', '--out',
                         str(tmp_path / 'n.json')])
    assert nocache.cached is None
    # a missing config: one line, exit 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        tool.main([str(tmp_path / 'nope.py'), '--out', out])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and 'nope.py' in err[0]


def test_prune_cli_latency_ratio(tmp_path):
    table = str(tmp_path / 'table.json')
    load_tool(
        osp.join(ROOT, 'tools', 'analysis', 'latency_table.py'),
        'latency_table_tool').main([
            YOLOX, '--input-size', '96', '96', '--points', '2', '--runs', '1',
            '--warmup', '1', '--out', table, '--no-progress'
        ])
    cli = load_tool(osp.join(ROOT, 'tools', 'prune.py'), 'prune_cli_lat')
    work = str(tmp_path / 'w')
    args = [
        YOLOX, '--latency-ratio', '0.8', '--latency-table', table,
        '--input-size', '96', '96', '--round-to', '8', '--latency-runs', '2',
        '--work-dir', work
    ]
    report = cli.main(args + ['--calibrate-rounds', '0'])
    lat = report['latency']
    assert report['budget'] == 'latency' and lat['ratio_target'] == 0.8
    assert lat['predicted_ms'] <= lat['target_ms'] + 1e-9
    assert 'calibration' not in lat
    # calibrated: every round measured the compact model beside the dense
    # one, and the first round allocated at the target itself
    rounds = cli.main(args +
                      ['--calibrate-rounds', '2'])['latency']['calibration']
    assert 1 <= len(rounds) <= 2 and rounds[0]['predicted_target'] == 0.8
    assert all(r['measured_ratio'] > 0 for r in rounds)
    assert lat['measured_ms'] > 0 and lat['dense_measured_ms'] > 0
    assert lat['table']['input_size'] == [96, 96]
    assert report['flops_after'] < report['flops_before']
    assert report['max_rel_diff'] <= 1e-4
    # a table of another input size is refused by name
    with pytest.raises(
            SystemExit, match=r'input size \[96, 96\], but '
            r'\[128, 128\]'):
        cli.main([
            YOLOX, '--latency-ratio', '0.8', '--latency-table', table,
            '--input-size', '128', '128', '--work-dir', work
        ])
    with pytest.raises(
            SystemExit, match="backend 'torch', but backend "
            "'onnxruntime'"):
        cli.main([
            YOLOX, '--latency-ratio', '0.8', '--latency-table', table,
            '--backend', 'onnxruntime', '--input-size', '96', '96',
            '--work-dir', work
        ])


def test_grid_kinds_come_from_the_layer_table():
    """The grid reads what a module is from ``graph.layers.LAYER_KINDS``:
    a grouped conv and a LayerNorm (pinned by the tracer) are timed once
    ('fixed'), a depthwise conv and GroupNorm along their one channel axis,
    and a new table entry changes the grid's kind with no other edit."""
    from mmprune.costs import latency_grid as LG
    from mmprune.graph import layers as L
    x = torch.randn(1, 8, 4, 4)
    cases = [
        (nn.Conv2d(8, 16, 3), 'conv', [16, 8]),
        (nn.Conv2d(8, 8, 3, groups=8), 'dw', [8, 8]),
        (nn.Conv2d(8, 16, 3, groups=2), 'fixed', [16, 8]),
        (nn.BatchNorm2d(8), 'norm', [8]),
        (nn.GroupNorm(2, 8), 'gn', [8]),
        (nn.LayerNorm(4), 'fixed', []),
        (nn.MaxPool2d(2), 'pass', []),
        (nn.Linear(8, 3), 'conv', [3, 8]),
    ]
    for mod, kind, widths in cases:
        assert LG.layer_kind(mod, (x, )) == kind, mod
        assert LG.module_widths(mod) == widths, mod
    assert LG._channel_dim(nn.Linear(8, 3)) == -1
    # one table entry decides: relabel GroupNorm's grid kind and the grid
    # follows (restored afterwards)
    i = next(i for i, k in enumerate(L.LAYER_KINDS) if k.name == 'gn')
    old = L.LAYER_KINDS
    patched = list(old)
    patched[i] = dataclasses.replace(old[i], grid='fixed')
    try:
        L.LAYER_KINDS = tuple(patched)
        assert LG.layer_kind(nn.GroupNorm(2, 8), (x, )) == 'fixed'
    finally:
        L.LAYER_KINDS = old
    assert LG.layer_kind(nn.GroupNorm(2, 8), (x, )) == 'gn'


def test_calibration_closes_the_loop_on_the_measured_ratio():
    """``calibrate_latency`` corrects the predicted target by what the
    device measures: a device 0.1 slower than the table everywhere (plan
    r measures r + 0.1) is met within tolerance in two rounds, and the
    plan kept is the one that meets the budget, not the last or the
    first."""
    from mmprune.costs.latency import calibrate_latency
    plan, rounds = calibrate_latency(0.5, lambda r: r, lambda p: p + 0.1)
    assert [round(r['predicted_target'], 4) for r in rounds] == [0.5, 0.4167]
    assert abs(plan + 0.1 - 0.5) <= 0.05 * 0.5 and plan < 0.5
    # a device the table overestimates: the target goes up, never above 1
    plan, rounds = calibrate_latency(
        0.9, lambda r: r, lambda p: 0.5 * p, rounds=3)
    assert max(r['predicted_target'] for r in rounds) == 1.0
    assert plan == 1.0  # the closest measured ratio (0.5) that fits
    # nothing within tolerance: keep the closest plan that is not above it
    seen = iter([0.7, 0.45, 0.56])
    plan, rounds = calibrate_latency(0.5, lambda r: r, lambda p: next(seen))
    assert len(rounds) == 3 and plan == rounds[1]['predicted_target']
    with pytest.raises(ValueError, match='target'):
        calibrate_latency(0, lambda r: r, lambda p: p)


def test_paired_ratio_gives_an_interval_and_within_decides_only_by_it():
    """The median of per-round ratios under a load that rises through the
    measurement (every round slower than the last), the distribution-free
    interval from the sorted ratios (none below six rounds), and
    ``within`` deciding only when the interval does."""
    from mmprune.costs.latency import paired_ratio, within
    drift = [10.0 * (1 + i / 10) for i in range(10)]
    per_round = [0.60, 0.40, 0.55, 0.48, 0.50, 0.49, 0.51, 0.52, 0.45, 0.50]
    st = paired_ratio(drift, [d * r for d, r in zip(drift, per_round)])
    assert st['ratio'] == pytest.approx(0.50) and st['n'] == 10
    # n = 10: the 2nd and 9th order statistics cover the median at >= 95 %
    # (the 3rd and 8th only at 89 %)
    assert st['low'] == pytest.approx(0.45)
    assert st['high'] == pytest.approx(0.55)
    assert within(st, 0.5, 0.05) is None  # 0.45 < 0.475: cannot tell
    assert within(st, 0.5, 0.2) is True
    assert within(st, 0.9, 0.05) is False
    few = paired_ratio([1.0] * 5, [0.5] * 5)
    assert few['ratio'] == 0.5 and few['low'] is None
    assert within(few, 0.5, 0.05) is None
    assert paired_ratio([1.0] * 6, [0.5] * 6)['low'] == 0.5
    with pytest.raises(ValueError, match='same non-zero number of rounds'):
        paired_ratio([1.0, 2.0], [1.0])


def test_latency_order_sees_time_through_a_stepped_table():
    """A measured grid is stepped: kernels pad widths to multiples of 8, so
    one channel less often saves nothing. The latency-aware order must
    still rank groups by the time their channels save (here b's cost 10x
    a's per padded channel), not see zero savings everywhere."""
    from mmprune.allocators import AdaptiveAllocator
    model = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = build_channel_graph(model, model, [x])
    per = {'a': 1.0, 'b': 10.0}

    class SteppedTable:

        def predict(self, graph, keep=None):
            keep = keep or {}
            ms = 0.0
            for g in graph.prunable_groups():
                w = len(keep.get(g.name, range(g.width)))
                ms += per.get(g.name, 0.0) * (-(-w // 8) * 8)
            return ms

    cost = CostModel(model, model, [x])
    cost.latency = SteppedTable()
    flat = {g.name: torch.ones(g.width) for g in graph.prunable_groups()}
    assert set(flat) == {'a', 'b'}
    keep = AdaptiveAllocator(
        0.8,
        budget='latency',
        cost_weight=1.0,
        cost_measure='latency',
        min_keep=1,
        max_prune_ratio=0.9).allocate(model, graph, flat, cost)
    assert len(keep.get('b', range(48))) < 48
    assert len(keep.get('a', range(64))) == 64
    assert cost.latency.predict(graph, keep) <= \
        0.8 * cost.latency.predict(graph) + 1e-9
