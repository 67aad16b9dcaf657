"""Two-point level of a measured latency grid
(:func:`mmprune.costs.latency_grid.level_grid`).

A real YOLOX-tiny timed with the fake clock of test_latency_grid (each conv
costs a function of its widths) plus a fixed time per whole forward, the
per-op dispatch no width changes. The layer grid cannot see that fixed
part: given to the layers in proportion, it makes a compact model look
faster than it is; the level, fitted on a half-width copy, must predict a
*different* plan (30 % of the FLOPs) to within 1 %.
"""
import contextlib
import copy

import pytest
import torch
from test_latency_grid import FakeClock

from mmprune import apis
from mmprune.allocators import UniformAllocator
from mmprune.costs.latency_backends import TorchBackend
from mmprune.costs.latency_grid import level_grid, measure_grid, measure_models
from mmprune.criteria import L1Criterion
from mmprune.export import build_detector

SIZE = (64, 64)
#: fake seconds per whole forward that no width changes: about 30 % of
#: the fake dense forward (1.02 s of convs), the share seen on YOLOX-tiny
#: at 128 px
DISPATCH = 0.45


class DispatchClock(FakeClock):
    """The convs' fake time, plus :data:`DISPATCH` per backbone call of
    ``models`` (one per whole forward; the grid's isolated layers never
    call a backbone)."""

    @contextlib.contextmanager
    def ticking_with(self, *models):

        def pre(mod, args):
            self.now += DISPATCH

        hs = [m.backbone.register_forward_pre_hook(pre) for m in models]
        try:
            with self.ticking():
                yield
        finally:
            for h in hs:
                h.remove()


@pytest.fixture(scope='module')
def tiny(mmdet_config):
    cfg = mmdet_config('yolox/yolox_tiny_8xb8-300e_coco.py')
    model = build_detector(cfg).eval()
    return model, apis.analyze(model)


def _grid(model, graph, clock, level_runs):
    backend = TorchBackend(runs=1, warmup=0, clock=clock)
    with clock.ticking_with(model):
        return measure_grid(
            model,
            SIZE,
            1,
            backend,
            graph,
            level_runs=level_runs,
            points=2,
            progress=False), backend


def test_level_splits_dispatch_from_the_layers_and_predicts_another_plan(tiny):
    model, graph = tiny
    clock = DispatchClock()
    flat, _ = _grid(model, graph, clock, 0)
    leveled, backend = _grid(model, graph, clock, 6)
    lv = leveled.data['meta']['level']
    assert lv['applied'] and lv['runs'] == 6
    assert lv['measured_ratio'] > lv['proportional_ratio']
    assert flat.data['other_ms'] == 0 and 'level' not in flat.data['meta']
    # both predict the dense forward exactly (it includes the dispatch)
    assert leveled.total_ms == pytest.approx(flat.total_ms, rel=1e-9)
    # the fixed time found is the dispatch (the fake convs are not exactly
    # bilinear in the grid, so allow a little)
    assert leveled.data['other_ms'] == pytest.approx(DISPATCH * 1e3, rel=0.15)

    # another plan than the one fitted on: 30 % of the FLOPs
    keep = UniformAllocator(
        0.3, round_to=8).allocate(model, graph,
                                  L1Criterion().score(model, graph),
                                  apis.cost_model(model, SIZE))
    compact = copy.deepcopy(model)
    apis.prune(compact, apis.make_plan(graph, keep), graph)
    with clock.ticking_with(model, compact):
        t = measure_models(
            dict(dense=model, compact=compact),
            SIZE,
            1,
            backend,
            runs=1,
            warmup=0)
    measured = t['compact']['median_ms'] / t['dense']['median_ms']
    pred_level = leveled.predict(graph, keep) / leveled.total_ms
    pred_flat = flat.predict(graph, keep) / flat.total_ms
    assert abs(pred_level - measured) < 0.01 * measured
    # all-proportional is wrong by more: the compact model looks faster
    assert measured - pred_flat > 0.03


def test_level_stays_proportional_without_a_fixed_part(tiny):
    """No dispatch: the half-width copy is no slower than proportional
    (within the grid's fit), so nothing fixed may be invented; and the
    settings are checked."""
    model, graph = tiny
    clock = FakeClock()
    backend = TorchBackend(runs=1, warmup=0, clock=clock)
    with clock.ticking():
        grid = measure_grid(
            model, SIZE, 1, backend, graph, points=2, progress=False)
        rec = level_grid(grid, model, graph, SIZE, 1, backend, runs=3)
    assert rec['other_share'] < 0.05
    assert grid.data['meta']['level'] is rec
    with pytest.raises(ValueError, match='runs must be an int >= 1'):
        level_grid(grid, model, graph, SIZE, 1, backend, runs=0)
    with pytest.raises(ValueError, match='level_runs needs'):
        measure_grid(
            model,
            SIZE,
            1,
            backend,
            None,
            level_runs=2,
            points=1,
            progress=False)
    assert torch.is_grad_enabled()
