"""Channel analysis and surgery on small torch nets with every op we support.

Each test builds a net, traces it, prunes a random half of every prunable
group and checks that the masked and the compact models compute the same
function (the core invariant), plus the specific coupling it is about.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmprune.allocators import BudgetAllocator
from mmprune.apis import make_plan
from mmprune.costs.flops import CostModel
from mmprune.criteria import BNScaleCriterion, L1Criterion
from mmprune.graph import build_channel_graph
from mmprune.pruners import apply_compact, build_mask, scatter_index
from mmprune.structures import PruningPlan


def conv_bn(cin, cout, k=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout))


class Bottleneck(nn.Module):

    def __init__(self, cin, c, mid):
        super().__init__()
        self.conv1 = conv_bn(cin, mid)
        self.conv2 = conv_bn(mid, mid, 3)
        self.conv3 = conv_bn(mid, c)
        self.down = conv_bn(cin, c) if cin != c else None

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        out = F.relu(self.conv2(F.relu(self.conv1(x))))
        out = self.conv3(out)
        out += idt
        return F.relu(out)


class ToyDetector(nn.Module):
    """Focus slicing, depthwise conv, residual stages, SPP (one tensor
    concatenated 4 times), an FPN-style upsample-add, a chunk, and a
    flatten -> Linear head."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(12, 16, 3)
        self.dw = conv_bn(16, 16, 3, groups=16)
        self.pw = conv_bn(16, 24)
        self.b1 = Bottleneck(24, 32, 8)
        self.b2 = Bottleneck(32, 32, 8)
        self.spp_in = conv_bn(32, 16)
        self.spp_out = conv_bn(64, 32)
        self.lat_hi = nn.Conv2d(32, 24, 1)
        self.lat_lo = nn.Conv2d(24, 24, 1)
        self.fuse = conv_bn(24, 20, 3)
        self.fc = nn.Linear(10 * 4, 12)
        self.cls = nn.Conv2d(10, 5, 1)

    def forward(self, x):
        # Focus: (N,3,H,W) -> (N,12,H/2,W/2)
        x = torch.cat([
            x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2],
            x[..., 1::2, 1::2]
        ], 1)
        x = F.silu(self.stem(x))
        x = F.silu(self.dw(x))
        lo = F.silu(self.pw(x))
        hi = self.b2(self.b1(F.max_pool2d(lo, 2)))
        s = F.silu(self.spp_in(hi))
        s = torch.cat([s] + [F.max_pool2d(s, k, 1, k // 2) for k in (3, 5, 7)],
                      1)
        hi = F.silu(self.spp_out(s))
        p = self.lat_lo(lo) + F.interpolate(self.lat_hi(hi), scale_factor=2)
        a, b = F.silu(self.fuse(p)).chunk(2, 1)
        z = F.adaptive_avg_pool2d(a, 2).flatten(1)
        return self.fc(z), self.cls(b)


def randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - .5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + .5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + .5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - .5)
    return model


def random_keep(graph, frac=0.5, seed=0):
    rng = np.random.default_rng(seed)
    keep = {}
    for g in graph.prunable_groups():
        free = np.nonzero(~g.pinned)[0]
        k = rng.choice(free, size=max(1, int(len(free) * frac)), replace=False)
        keep[g.name] = np.sort(np.concatenate([k, np.nonzero(g.pinned)[0]]))
    return keep


def assert_masked_equals_compact(model, graph, keep, x, tol=1e-4):
    masked = copy.deepcopy(model)
    build_mask(masked, graph, keep).apply(masked)
    compact = copy.deepcopy(model)
    apply_compact(compact, graph, keep)
    with torch.no_grad():
        for a, b in zip(masked(x), compact(x)):
            assert a.shape == b.shape
            scale = a.abs().max().clamp_min(1e-6)
            assert ((a - b).abs().max() / scale) <= tol
    return compact


def producers(graph):
    return {
        g.name: sorted(m.module for m in g.producers())
        for g in graph.groups
    }


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return randomise_bn(ToyDetector()).eval(), torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize('mode', ['coupled', 'fine'])
def test_masked_equals_compact_and_shrinks(toy, mode):
    model, x = toy
    graph = build_channel_graph(model, model, [x], residual_mode=mode)
    for seed in range(3):
        keep = random_keep(graph, 0.5, seed)
        compact = assert_masked_equals_compact(model, graph, keep, x)
        n_dense = sum(p.numel() for p in model.parameters())
        n_compact = sum(p.numel() for p in compact.parameters())
        assert n_compact < n_dense
        # the prediction convs and the model input never change
        assert compact.cls.out_channels == 5 and compact.fc.out_features == 12
        assert compact.stem[0].in_channels == 12


def test_coupled_groups(toy):
    model, x = toy
    graph = build_channel_graph(model, model, [x], residual_mode='coupled')
    prods = producers(graph)
    # residual stream: the downsample and both conv3 writers share indices
    assert prods['b1.conv3.0'] == ['b1.conv3.0', 'b1.down.0', 'b2.conv3.0']
    # FPN add couples the two laterals
    assert prods['lat_hi'] == ['lat_hi', 'lat_lo']
    # depthwise conv follows the stem, it is no producer of its own
    assert prods['stem.0'] == ['stem.0']
    assert 'dw.0' not in prods
    # model outputs are pinned
    assert graph.group('cls').prunable == 0
    assert graph.group('fc').prunable == 0
    # SPP: one channel of spp_in spans 4 input slices of spp_out
    spp = [
        m for m in graph.group('spp_in.0').members
        if m.module == 'spp_out.0' and m.axis == 'in'
    ]
    assert len(spp) == 1
    for c in range(16):
        assert sorted(spp[0].positions[spp[0].group_index == c]) == \
            [c, c + 16, c + 32, c + 48]
    # chunk(2) couples channel j of both halves, so the halves stay equal
    assert graph.group('fuse.0').width == 10
    # flatten -> Linear: class c of `fuse` owns fc columns [4c, 4c+4)
    fc_cols = [
        m for m in graph.group('fuse.0').members
        if m.module == 'fc' and m.axis == 'in'
    ][0]
    for c in range(10):
        assert sorted(fc_cols.positions[fc_cols.group_index == c]) == \
            list(range(4 * c, 4 * c + 4))
    cls_in = [
        m for m in graph.group('fuse.0').members
        if m.module == 'cls' and m.axis == 'in'
    ][0]
    assert list(cls_in.group_index) == list(range(10))


def test_fine_mode_writers_are_independent(toy):
    model, x = toy
    graph = build_channel_graph(model, model, [x], residual_mode='fine')
    prods = producers(graph)
    for w in ('b1.conv3.0', 'b1.down.0', 'b2.conv3.0', 'lat_hi', 'lat_lo'):
        assert prods[w] == [w]
    assert graph.scatter >= {
        'b1.conv3.1', 'b1.down.1', 'b2.conv3.1', 'lat_hi', 'lat_lo'
    }
    keep = random_keep(graph, 0.5, 1)
    compact = assert_masked_equals_compact(model, graph, keep, x)
    # the stream stays at full width, the writer is smaller
    assert compact.b2.conv3[0].out_channels < 32
    assert compact.b2.conv1[0].in_channels == 32
    assert len(scatter_index(compact.b2.conv3[1])) == \
        compact.b2.conv3[0].out_channels


def test_fine_mode_prunes_twice(toy):
    """Scatters compose: a compact fine-mode model can be traced and
    pruned again, and still equals its masked twin."""
    model, x = toy
    graph = build_channel_graph(model, model, [x], residual_mode='fine')
    apply_compact(model, graph, random_keep(graph, 0.75, 2))
    graph2 = build_channel_graph(model, model, [x], residual_mode='fine')
    assert_masked_equals_compact(model, graph2, random_keep(graph2, 0.5, 3), x)


def test_unsupported_ops_pin_channels():

    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.a = conv_bn(3, 8)
            self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)  # grouped
            self.b = conv_bn(8, 6)
            self.gn = nn.Sequential(nn.Conv2d(6, 6, 1), nn.GroupNorm(2, 6))
            self.c = conv_bn(6, 4)
            self.d = conv_bn(4, 4)
            self.e = conv_bn(4, 3)

        def forward(self, x):
            y = self.g(self.a(x))
            y = self.gn(self.b(y))
            y = self.c(y)
            y = torch.softmax(self.d(y), dim=1)  # mixes channels
            return self.e(y)

    model = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = build_channel_graph(model, model, [x])
    assert graph.group('a.0').prunable == 0  # read by a grouped conv
    # GroupNorm(2, 6): prunable by whole groups only, one index per group
    # of 3 channels (tests/test_groupnorm.py)
    assert graph.group('gn.0').width == 2 and graph.group('gn.0').unit == 3
    assert graph.group('d.0').prunable == 0  # softmax over channels
    assert graph.group('c.0').prunable == 4
    assert any('softmax' in k for k in graph.opaque)


def test_frozen_and_opaque_modules_are_pinned():

    class Hidden(torch.autograd.Function):
        """A custom op the tracer cannot see inside (like DCN)."""

        @staticmethod
        def forward(ctx, x, w):
            with torch._C.DisableTorchFunction():  # like a C++ kernel
                return F.conv2d(x, w)

        @staticmethod
        def backward(ctx, g):
            return None, None

    class Opaque(nn.Module):

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, 6, 1, 1))

        def forward(self, x):
            return Hidden.apply(x, self.w)

    model = nn.Sequential(
        conv_bn(3, 6), conv_bn(6, 6), Opaque(), conv_bn(5, 4)).eval()
    for p in model[0].parameters():
        p.requires_grad = False
    graph = build_channel_graph(model, model, [torch.randn(1, 3, 8, 8)])
    assert graph.group('0.0').prunable == 0
    assert 'frozen' in graph.group('0.0').pin_reasons[0]
    assert graph.group('1.0').prunable == 0  # read by the opaque module
    assert '2' in graph.opaque
    assert graph.group('3.0').prunable == 0  # model output


@pytest.mark.parametrize('ratio', [0.3, 0.5, 0.7])
@pytest.mark.parametrize('crit', [L1Criterion, BNScaleCriterion])
def test_budget_allocator_meets_target(toy, ratio, crit):
    model, x = toy
    graph = build_channel_graph(model, model, [x])
    cost = CostModel(model, model, [x])
    keep = BudgetAllocator(
        ratio, min_keep=2,
        max_prune_ratio=0.9).allocate(model, graph,
                                      crit().score(model, graph), cost)
    for g in graph.prunable_groups():
        assert len(keep[g.name]) >= min(g.width, 2)  # never empties a group
    predicted = cost.flops(graph, keep)
    compact = copy.deepcopy(model)
    apply_compact(compact, graph, keep)
    actual = CostModel(compact, compact, [x]).flops()
    assert predicted == actual  # the cost model is exact on the result
    dense = cost.flops()
    assert actual <= ratio * dense
    assert actual >= (ratio - 0.1) * dense  # and does not overshoot much


def test_round_to_and_plan_roundtrip(toy):
    model, x = toy
    graph = build_channel_graph(model, model, [x])
    cost = CostModel(model, model, [x])
    keep = BudgetAllocator(
        0.6, min_keep=4,
        round_to=4).allocate(model, graph,
                             L1Criterion().score(model, graph), cost)
    for g in graph.prunable_groups():
        assert len(keep[g.name]) % 4 == 0 or len(keep[g.name]) == g.width
    plan = make_plan(graph, keep)
    again = PruningPlan.from_dict(__import__('json').loads(plan.to_json()))
    assert again.keep == plan.keep
    again.check_against(graph)
    with pytest.raises(ValueError, match='width'):
        bad = PruningPlan.from_dict(plan.to_dict())
        bad.widths[next(iter(bad.widths))] += 1
        bad.check_against(graph)


def test_l1_criterion_known_ranking():
    model = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False), nn.Conv2d(4, 1, 1))
    with torch.no_grad():
        model[0].weight.copy_(
            torch.tensor([1., 3., 0.5, 2.]).view(4, 1, 1, 1) *
            torch.tensor([1., -1.]).view(1, 2, 1, 1))
    graph = build_channel_graph(model, model, [torch.randn(1, 2, 4, 4)])
    s = L1Criterion().score(model, graph)['0']
    assert torch.allclose(s, torch.tensor([2., 6., 1., 4.]))
    assert list(torch.argsort(s)) == [2, 0, 3, 1]


def test_fine_mode_compact_exports_to_onnx(toy, tmp_path):
    """The scatter is Concat + Gather: onnxruntime runs it and agrees."""
    import warnings

    import onnxruntime as ort
    model, x = toy
    graph = build_channel_graph(model, model, [x], residual_mode='fine')
    apply_compact(model, graph, random_keep(graph, 0.5, 4))
    path = str(tmp_path / 'fine.onnx')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (x, ), path, dynamo=False, opset_version=17)
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x)
    for a, b in zip(got, want):
        assert np.abs(a - b.numpy()).max() <= 1e-4 * np.abs(b.numpy()).max()
    ops = {n.op_type for n in __import__('onnx').load(path).graph.node}
    assert 'Gather' in ops and 'ScatterND' not in ops
