"""GroupNorm loses whole groups (docs/methods.md §0.3).

A GroupNorm with C channels in G groups can drop whole groups: the channels
of a group go together, ``num_groups`` shrinks, and the compact model equals
the masked one exactly. A plan that would split a group is refused; the
allocators keep whole groups and count ``min_keep``/``round_to`` in
channels; the cost model counts GroupNorm like mmengine's counter.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_graph_toy import assert_masked_equals_compact, random_keep

from mmprune import apis
from mmprune.allocators import (AdaptiveAllocator, BudgetAllocator,
                                GlobalThresholdAllocator, UniformAllocator)
from mmprune.costs.flops import CostModel
from mmprune.criteria import L1Criterion
from mmprune.graph import build_channel_graph
from mmprune.pruners import apply_compact, prune_module
from mmprune.pruners.surgery import check_groupnorms


def conv_gn(cin, cout, groups, k=3):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2), nn.GroupNorm(groups, cout),
        nn.ReLU())


class GNHead(nn.Module):
    """A head shared over two levels: conv-GN-ReLU x 2 (16 channels in 4
    groups, then 12 in 3), a non-affine GroupNorm, then a prediction conv
    per branch."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = conv_gn(8, 16, 4)
        self.c2 = conv_gn(16, 12, 3)
        self.c3 = nn.Sequential(
            nn.Conv2d(12, 8, 1), nn.GroupNorm(2, 8, affine=False))
        self.cls = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        feats = [self.stem(x), F.max_pool2d(self.stem(x), 2)]
        return [self.cls(self.c3(self.c2(self.c1(f)))) for f in feats]


def _randomise_gn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.GroupNorm) and m.affine:
            m.weight.data.copy_(torch.rand(m.num_channels, generator=g) + .5)
            m.bias.data.copy_(torch.rand(m.num_channels, generator=g) - .5)
    return model


@pytest.fixture
def head():
    torch.manual_seed(0)
    return _randomise_gn(GNHead()).eval(), torch.randn(2, 3, 16, 16)


@pytest.mark.parametrize('mode', ['coupled', 'fine'])
def test_groupnorm_groups_are_units_and_compact_equals_masked(head, mode):
    model, x = head
    graph = build_channel_graph(model, model, [x], residual_mode=mode)
    g1, g2, g3 = (graph.group(n) for n in ('c1.0', 'c2.0', 'c3.0'))
    # one index per GroupNorm group: 4 x 4, 3 x 4, 2 x 4 channels
    assert (g1.width, g1.unit) == (4, 4)
    assert (g2.width, g2.unit) == (3, 4)
    assert (g3.width, g3.unit) == (2, 4)
    assert g1.prunable == 4 and g2.prunable == 3
    # each index stands for a whole block of the producer's rows
    rows = [m for m in g1.members if m.module == 'c1.0' and m.axis == 'out']
    assert sorted(rows[0].group_index.tolist()) == \
        sorted(np.repeat(np.arange(4), 4).tolist())
    for seed in range(3):
        keep = random_keep(graph, 0.5, seed)
        compact = assert_masked_equals_compact(model, graph, keep, x, tol=1e-5)
        gn = compact.c1[1]
        assert gn.num_channels == 4 * len(keep['c1.0'])
        assert gn.num_groups == len(keep['c1.0'])
        assert gn.weight.shape == (gn.num_channels, )
        assert compact.c3[1].num_groups == len(keep['c3.0'])
        assert compact.cls.out_channels == 5


def test_groupnorm_split_mid_group_is_refused(head):
    model, x = head
    gn = copy.deepcopy(model.c1[1])
    with pytest.raises(
            ValueError,
            match=r'c1\.1.*keeps 2 of the 4 '
            r'channels of GroupNorm group 1'):
        prune_module(gn, 'gn', np.array([0, 1, 2, 3, 4, 5]), None, 'c1.1')
    assert gn.num_channels == 16  # untouched
    assert prune_module(gn, 'gn', np.arange(4, 12), None, 'c1.1')
    assert (gn.num_channels, gn.num_groups) == (8, 2)
    # masking and surgery check the whole index map first (ValueError
    # naming the module, nothing changed)
    modules = dict(model.named_modules())
    graph = build_channel_graph(model, model, [x])
    index_map = graph.module_indices({})
    index_map['c1.1'] = dict(out=np.arange(6), **{'in': np.arange(6)})
    with pytest.raises(ValueError, match=r'c1\.1'):
        check_groupnorms(modules, graph, index_map)


def test_groupnorm_fed_from_two_groups_by_a_straddling_block_stays_whole():
    """A GroupNorm block that spans a concat of two convs ties their
    channels: both convs keep or drop that block together (never a
    mid-group split); a block holding a pinned channel stays whole."""

    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 6, 1)
            self.b = nn.Conv2d(3, 6, 1)
            self.gn = nn.GroupNorm(3, 12)  # blocks of 4 straddle a|b
            self.out = nn.Conv2d(12, 2, 1)

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(x)], 1)
            return self.out(F.relu(self.gn(y)))

    model = _randomise_gn(Net()).eval()
    x = torch.randn(1, 3, 8, 8)
    graph = build_channel_graph(model, model, [x])
    (g, ) = graph.prunable_groups()  # a and b coupled by block 1
    assert g.width == 3 and g.unit == 4
    for kept in ([0, 2], [1], [0, 1], [1, 2]):  # each conv keeps >= 1
        keep = {g.name: np.array(kept)}
        apis.make_plan(graph, keep)
        compact = assert_masked_equals_compact(model, graph, keep, x)
        assert compact.gn.num_channels % 4 == 0
        assert compact.gn.num_channels == \
            compact.a.out_channels + compact.b.out_channels


@pytest.mark.parametrize('make', [
    lambda **kw: BudgetAllocator(fill=True, **kw), UniformAllocator,
    GlobalThresholdAllocator, AdaptiveAllocator
])
def test_allocators_keep_whole_groups_and_count_caps_in_channels(head, make):
    model, x = head
    graph = build_channel_graph(model, model, [x])
    cost = CostModel(model, model, [x])
    scores = L1Criterion().score(model, graph)
    # min_keep=5 channels -> 2 GroupNorm groups of 4; round_to=8 channels
    # -> multiples of 2 groups of 4
    keep = make(
        ratio=0.6, min_keep=5, max_prune_ratio=0.9,
        round_to=8).allocate(model, graph, scores, cost)
    g1 = graph.group('c1.0')
    assert len(keep['c1.0']) >= 2 and (4 * len(keep['c1.0'])) % 8 == 0 or \
        len(keep['c1.0']) == g1.width
    compact = copy.deepcopy(model)
    apply_compact(compact, graph, keep)
    assert compact.c1[1].num_channels % 4 == 0
    assert CostModel(compact, compact, [x]).flops() == \
        cost.flops(graph, keep) <= 0.6 * cost.flops()


def test_cost_model_counts_groupnorm_like_mmengine(head):
    from mmengine.analysis import get_model_complexity_info
    model, x = head
    graph = build_channel_graph(model, model, [x])
    keep = random_keep(graph, 0.5, 3)
    cost = CostModel(model, model, [x[:1]])
    compact = copy.deepcopy(model)
    apply_compact(compact, graph, keep)
    ours = CostModel(compact, compact, [x[:1]]).flops()
    assert ours == cost.flops(graph, keep)
    theirs = get_model_complexity_info(
        compact, inputs=(x[:1], ), show_table=False, show_arch=False)['flops']
    assert ours == theirs, (ours, theirs)


# ------------------------------------------------------------ real head
def _atss(**backbone):
    """mmdet's ATSS R50 (GroupNorm head, 32 groups of 8), no weights."""
    from test_graph_mmdet import build
    return build('atss_r50', **backbone)


def test_atss_groupnorm_head_prunes_whole_groups():
    # both modes: test_graph_mmdet::test_masked_equals_compact
    mode = 'coupled'
    from test_graph_mmdet import check_equivalence
    model = _atss(frozen_stages=-1)
    for m in model.modules():  # GN gamma/beta away from 1/0
        if isinstance(m, nn.GroupNorm):
            _randomise_gn(m)
    graph = apis.analyze(model, mode)
    head = [
        g for g in graph.prunable_groups()
        if g.name.startswith('bbox_head.cls_convs.')
    ]
    assert head and all(g.unit == 8 and g.width == 32 for g in head)
    keep = random_keep(graph, 0.5, seed=0)
    compact = check_equivalence(model, graph, keep)
    gn = compact.bbox_head.cls_convs[0].gn
    assert gn.num_groups == len(keep['bbox_head.cls_convs.0.conv'])
    assert gn.num_channels == 8 * gn.num_groups < 256
