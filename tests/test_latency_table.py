"""Latency table: parameter-free leaf modules (pools, activations) are
traced to their channels, the prediction follows the stated model exactly,
the table round-trips through JSON and rejects bad records, and the
latency-aware allocator spends its FLOPs budget where the time is.

Timing itself is noisy, so the exact-algebra tests use hand-set
milliseconds on a real traced graph; one test checks a real measurement
only for structure (every leaf timed, widths right, total consistent).
"""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from mmprune.allocators import AdaptiveAllocator
from mmprune.costs.flops import CostModel
from mmprune.costs.latency_table import LatencyTable
from mmprune.graph import build_channel_graph


class SPPNet(nn.Module):
    """conv a -> SiLU -> three MaxPool2d (an SPP) -> concat -> conv b, and a
    branch conv c -> 5x5 conv d, more FLOPs per channel than a; the pools
    read a's channels only."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.act = nn.SiLU()
        self.pools = nn.ModuleList(
            nn.MaxPool2d(k, 1, k // 2) for k in (3, 5, 7))
        self.b = nn.Conv2d(64, 8, 1)
        self.c = nn.Conv2d(3, 16, 1)
        self.d = nn.Conv2d(16, 8, 5, padding=2)

    def forward(self, x):
        s = self.act(self.bn(self.a(x)))
        s = torch.cat([s] + [p(s) for p in self.pools], 1)
        return self.b(s) + self.d(self.c(x))


@pytest.fixture(scope='module')
def spp():
    torch.manual_seed(0)
    model = SPPNet().eval()
    x = torch.randn(1, 3, 24, 24)
    graph = build_channel_graph(model, model, [x])
    return model, x, graph


def hand_table(graph, ms):
    """A table over SPPNet with the given ms per module (dense widths)."""
    kinds = dict(
        a=('conv', 16, 3),
        bn=('follow', 16, 16),
        act=('pass', 16, 16),
        b=('conv', 8, 64),
        c=('conv', 16, 3),
        d=('conv', 8, 16),
        **{f'pools.{i}': ('pass', 16, 16)
           for i in range(3)})
    entries = {
        n: {
            'kind': k,
            'ms': ms.get(n, 1.0),
            'out': o,
            'in': i
        }
        for n, (k, o, i) in kinds.items()
    }
    return LatencyTable(entries, other_ms=2.0)


def test_pools_and_activations_are_traced_to_their_channels(spp):
    model, x, graph = spp
    assert set(graph.passthrough) == {'act', 'pools.0', 'pools.1', 'pools.2'}
    g = graph.group('a')
    keep = {g.name: np.arange(0, 16, 2)}  # half of a's channels
    widths = graph.passthrough_widths(keep)
    assert widths == {'act': 8, 'pools.0': 8, 'pools.1': 8, 'pools.2': 8}
    # another group's cut does not touch them
    assert set(graph.passthrough_widths({'c': np.arange(4)}).values()) == {16}


def test_prediction_follows_the_model_exactly(spp):
    _, _, graph = spp
    ms = {'a': 10.0, 'b': 4.0, 'pools.2': 6.0, 'd': 3.0}
    table = hand_table(graph, ms)
    assert table.predict(graph) == pytest.approx(table.total_ms)
    ka = np.arange(4)  # a keeps 4 of 16; c keeps 8 of 16
    kc = np.arange(8)
    got = table.predict(graph, {'a': ka, 'c': kc})
    q, h = 4 / 16, 8 / 16
    want = (
        2.0 + 10.0 * q + 1.0 * q + 1.0 * q  # other, a, bn, act
        + 1.0 * q + 1.0 * q + 6.0 * q  # three pools
        + 4.0 * q  # b reads 4 * 16 of 64
        + 1.0 * h + 3.0 * h)  # c out, d in
    assert got == pytest.approx(want)


def test_measured_table_is_complete_and_round_trips(spp, tmp_path):
    model, x, graph = spp
    table = LatencyTable.measure(model, model, [x], runs=2, warmup=1)
    assert set(table.entries) == {
        'a', 'bn', 'act', 'pools.0', 'pools.1', 'pools.2', 'b', 'c', 'd'
    }
    assert table.entries['pools.1'] == dict(
        kind='pass', ms=table.entries['pools.1']['ms'], out=16, **{'in': 16})
    assert table.entries['b']['in'] == 64 and table.entries['bn'][
        'kind'] == 'follow'
    assert all(e['ms'] >= 0 for e in table.entries.values())
    # the hooks really timed the work: the 3x3 conv and the widest pool
    assert table.entries['a']['ms'] > 0 and table.entries['pools.2']['ms'] > 0
    path = tmp_path / 't.json'
    path.write_text(json.dumps(table.to_dict()))
    back = LatencyTable.from_dict(json.loads(path.read_text()))
    keep = {'a': np.arange(8)}
    assert back.predict(graph,
                        keep) == pytest.approx(table.predict(graph, keep))


@pytest.mark.parametrize('bad, match', [
    ({
        'version': 99
    }, 'version 1'),
    ('not a dict', 'expected a dict'),
    ({
        'version': 1,
        'other_ms': 0.0,
        'entries': {
            'backbone.x': {
                'kind': 'conv',
                'ms': 1.0,
                'out': 0,
                'in': 3
            }
        }
    }, "'backbone.x'"),
    ({
        'version': 1,
        'other_ms': 0.0,
        'entries': {
            'neck.y': {
                'kind': 'warp',
                'ms': 1.0,
                'out': 2,
                'in': 3
            }
        }
    }, "'neck.y'"),
])
def test_bad_tables_are_refused_by_name(bad, match):
    with pytest.raises(ValueError, match=match):
        LatencyTable.from_dict(bad)


def test_latency_order_spends_the_budget_where_the_time_is(spp):
    """Equal scores: ordered by FLOPs saved, c's channels (feeding a 5x5
    conv) go first; ordered by time saved with slow pools, a's go first,
    and the plan still meets the FLOPs budget."""
    model, x, graph = spp
    cost = CostModel(model, model, [x])
    flat = {g.name: torch.ones(g.width) for g in graph.prunable_groups()}
    kw = dict(ratio=0.7, min_keep=1, max_prune_ratio=0.9, cost_weight=1.0)
    by_flops = AdaptiveAllocator(**kw).allocate(model, graph, flat, cost)
    timed = AdaptiveAllocator(cost_measure='latency', **kw)
    with pytest.raises(ValueError, match='cost.latency'):
        timed.allocate(model, graph, flat, cost)
    cost.latency = hand_table(graph, {f'pools.{i}': 50.0 for i in range(3)})
    by_time = timed.allocate(model, graph, flat, cost)
    assert cost.flops(graph, by_time) <= 0.7 * cost.flops() + 1e-6
    assert len(by_flops['c']) < len(by_flops.get('a', range(16)))
    assert len(by_time['a']) < len(by_flops.get('a', range(16)))
    assert len(by_time['a']) < len(by_time.get('c', range(16)))
    assert cost.latency.predict(graph, by_time) < \
        cost.latency.predict(graph, by_flops)


def test_cost_measure_is_validated():
    with pytest.raises(ValueError, match='cost_measure'):
        AdaptiveAllocator(cost_measure='wallclock')


def test_yolox_spp_pools_are_charged_to_their_group():
    """On a real YOLOX-tiny, the SPP max-pools read exactly the channels
    of the SPP input conv's group, so the latency model can see them."""
    from test_graph_mmdet import build

    from mmprune import apis
    model = build('yolox_tiny')
    graph = apis.analyze(model)
    pools = [n for n in graph.passthrough if '.poolings.' in n]
    assert len(pools) == 3
    g = graph.group('backbone.stage4.1.conv1.conv')
    widths = graph.passthrough_widths({g.name: np.arange(g.width // 2)})
    assert all(widths[p] == g.width // 2 for p in pools)


def test_hook_state_with_a_bad_table_is_refused():
    from mmprune.hooks.state import check_state
    from mmprune.structures import StructureError
    bad = dict(
        version=1,
        other_ms=0.0,
        entries={
            'backbone.stem.conv.conv':
            dict(kind='conv', ms=1.0, out=-3, **{'in': 3})
        })
    with pytest.raises(StructureError, match='backbone.stem.conv.conv'):
        check_state(dict(latency=bad))


def test_configs_readme_latency_setting_builds():
    """The setting configs/README.md shows: it overrides the preset's
    allocator, keeps the hook's round_to, and asks for a table."""
    from mmprune.hooks.channel_pruning_hook import ChannelPruningHook
    hook = ChannelPruningHook(
        method='acp_tp',
        target=0.5,
        begin=30,
        end=200,
        interval=10,
        input_size=(640, 640),
        round_to=16,
        allocator=dict(
            type='AdaptiveAllocator',
            ramp='cubic',
            cost_weight=1.0,
            cost_measure='latency',
            max_prune_ratio=0.7))
    assert hook._wants_latency()
    assert hook.allocator_cfg['round_to'] == 16
    assert hook.allocator_cfg['max_prune_ratio'] == 0.7
    assert not ChannelPruningHook(method='acp_tp')._wants_latency()
