"""FCP fine mode with reader pruning (issue 14 item 12, docs/methods.md §3(d)).

Readers of a residual stream keep their own subset of it (a reader group
``'<module>:in'``, gathered in the compact model). Checked here on a CIFAR
ResNet and on real mmdet detectors (RetinaNet R18, YOLOX-tiny):

* masked == compact with reader gathers, also after a second cut on the
  compact model (gathers compose);
* every coupled plan is a fine plan: readers and writers keeping the
  coupled subset give the coupled compact model's outputs, at no more FLOPs;
* ONNX export of a compact model with gathers matches torch in onnxruntime;
* the structure record replays the gathers onto a fresh dense model and a
  strict state-dict load then gives the same outputs.

Run as a script (``python tests/test_read_pruning.py``) it prints the
ResNet-20 measurement quoted in docs/methods.md §3(d).
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmprune import apis
from mmprune.allocators import BudgetAllocator
from mmprune.costs.flops import CostModel
from mmprune.criteria import BNScaleCriterion, L1Criterion
from mmprune.graph import build_channel_graph
from mmprune.graph.channel_graph import READ_SUFFIX
from mmprune.pruners import apply_compact, build_mask, read_gather
from mmprune.structures import PruningPlan


# --------------------------------------------------------------- a ResNet
class BasicBlock(nn.Module):

    def __init__(self, cin, c, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.down = None
        if stride != 1 or cin != c:  # option B shortcut (1x1 conv + BN)
            self.down = nn.Sequential(
                nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + idt)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): 16/32/64 channels, n blocks per
    stage, global pool and a linear classifier (n=3: ResNet-20)."""

    def __init__(self, n=3, widths=(16, 32, 64), classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for si, c in enumerate(widths):
            for bi in range(n):
                blocks.append(BasicBlock(cin, c, 2 if si and not bi else 1))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def randomise(model, seed=0):
    """Random BN statistics and affine terms: a pruned channel whose beta
    leaked would show."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=g) + 0.5
            m.bias.data = torch.randn(c, generator=g) * 0.2
            m.running_mean = torch.randn(c, generator=g) * 0.1
            m.running_var = torch.rand(c, generator=g) + 0.5
    return model.eval()


def resnet(n=1, seed=0):
    torch.manual_seed(seed)
    return randomise(CifarResNet(n))


def trace(model, mode, read=False, size=32):
    return build_channel_graph(
        model,
        lambda t: model(t), [torch.randn(1, 3, size, size)],
        mode,
        read_pruning=read)


def random_keep(graph, frac=0.5, seed=0):
    rng = np.random.default_rng(seed)
    keep = {}
    for g in graph.prunable_groups():
        free = np.nonzero(~g.pinned)[0]
        n = max(1, int(round(len(free) * frac)))
        keep[g.name] = np.sort(
            np.concatenate(
                [np.nonzero(g.pinned)[0],
                 rng.choice(free, n, replace=False)]))
    return keep


def close(a, b, tol=1e-4):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.shape == b.shape
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6)) <= tol


def masked_and_compact(model, graph, keep):
    masked = copy.deepcopy(model)
    build_mask(masked, graph, keep).apply(masked)
    compact = copy.deepcopy(model)
    apply_compact(compact, graph, keep)
    return masked, compact


def as_fine(coupled_graph, coupled_keep, fine_graph):
    """The fine (+ readers) plan in which every module keeps exactly the
    rows and columns the coupled plan keeps (``{group: kept indices}``)."""
    idx = coupled_graph.module_indices(coupled_keep)
    keep = {}
    for g in fine_graph.prunable_groups():
        kept = np.ones(g.width, dtype=bool)
        for m in g.members:
            if m.kind not in ('conv', 'linear') or idx[m.module][m.axis] is \
                    None:
                continue
            if g.reader is not None and m.module != g.reader:
                continue
            on = np.isin(m.positions, idx[m.module][m.axis])
            kept[m.group_index] = on
            break
        keep[g.name] = np.nonzero(kept | g.pinned)[0]
    return keep


# ------------------------------------------------------------ toy tests
def test_reader_groups_only_with_read_pruning():
    model = resnet()
    fine = trace(model, 'fine')
    read = trace(model, 'fine', read=True)
    assert not any(g.reader for g in fine.groups)
    readers = {g.reader for g in read.groups if g.reader}
    # each stream's readers: the next block's conv1 (and its shortcut
    # conv at a stage change) and the classifier
    assert {
        'blocks.1.conv1', 'blocks.1.down.0', 'blocks.2.conv1',
        'blocks.2.down.0', 'fc'
    } <= readers, readers
    assert all(g.name == g.reader + READ_SUFFIX for g in read.groups
               if g.reader)
    # the ordinary groups keep their names and widths
    assert [(g.name, g.width) for g in fine.groups] == \
        [(g.name, g.width) for g in read.groups if not g.reader]
    with pytest.raises(ValueError, match='read_pruning=True needs'):
        trace(model, 'coupled', read=True)


@pytest.mark.parametrize('seed', [0, 1])
def test_masked_equals_compact_with_reader_gathers(seed):
    model = resnet(n=2, seed=seed)
    graph = trace(model, 'fine', read=True)
    keep = random_keep(graph, 0.5, seed)
    masked, compact = masked_and_compact(model, graph, keep)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert close(compact(x), masked(x))
    gathers = [
        n for n, m in compact.named_modules() if read_gather(m) is not None
    ]
    assert 'fc' in gathers and 'blocks.2.conv1' in gathers
    # the cost model counts the readers' reduced in-channels
    cost = CostModel(model, lambda t: model(t), [torch.randn(1, 3, 32, 32)])
    recount = CostModel(compact, lambda t: compact(t),
                        [torch.randn(1, 3, 32, 32)])
    assert cost.flops(graph, keep) == recount.flops()
    assert cost.params_after(model, graph, keep) == \
        CostModel.params(compact)


def test_a_second_cut_composes_the_gathers():
    model = resnet(n=2)
    graph = trace(model, 'fine', read=True)
    once = copy.deepcopy(model)
    apply_compact(once, graph, random_keep(graph, 0.7, 0))
    graph2 = trace(once, 'fine', read=True)
    assert any(g.reader for g in graph2.prunable_groups())
    keep2 = random_keep(graph2, 0.6, 1)
    masked, compact = masked_and_compact(once, graph2, keep2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert close(compact(x), masked(x))
    recount = CostModel(compact, lambda t: compact(t),
                        [torch.randn(1, 3, 32, 32)])
    cost = CostModel(once, lambda t: once(t), [torch.randn(1, 3, 32, 32)])
    assert cost.flops(graph2, keep2) == recount.flops()


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_every_coupled_plan_is_a_fine_plan(seed):
    model = resnet(n=2, seed=seed)
    coupled = trace(model, 'coupled')
    keep_c = random_keep(coupled, 0.5, seed)
    fine = trace(model, 'fine', read=True)
    keep_f = as_fine(coupled, keep_c, fine)
    _, compact_c = masked_and_compact(model, coupled, keep_c)
    masked_f, compact_f = masked_and_compact(model, fine, keep_f)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert close(compact_f(x), compact_c(x))
        assert close(masked_f(x), compact_c(x))
    cost = CostModel(model, lambda t: model(t), [torch.randn(1, 3, 32, 32)])
    assert cost.flops(fine, keep_f) <= cost.flops(coupled, keep_c)
    # without reader pruning the same writers cost more: readers read the
    # whole stream
    plain = trace(model, 'fine')
    keep_p = {
        k: v
        for k, v in keep_f.items() if k in {g.name
                                            for g in plain.groups}
    }
    assert cost.flops(plain, keep_p) > cost.flops(fine, keep_f)


def test_plain_fine_mode_is_unchanged():
    """``'fine'`` without read_pruning: no reader gathers, readers keep
    their full input width (the behaviour the existing tests pin)."""
    model = resnet(n=2)
    graph = trace(model, 'fine')
    _, compact = masked_and_compact(model, graph, random_keep(graph, 0.5))
    assert not any(read_gather(m) is not None for m in compact.modules())
    assert compact.blocks[1].conv1.in_channels == 16
    assert compact.fc.in_features == 64


def test_l1_and_bn_scale_score_reader_columns_others_leave_them_whole():
    model = resnet(n=2)
    graph = trace(model, 'fine', read=True)
    g = graph.group('blocks.1.conv1' + READ_SUFFIX)
    s = L1Criterion().score(model, graph)[g.name]
    w = model.blocks[1].conv1.weight.detach()
    cols = w.abs().sum(dim=(0, 2, 3))  # (C_in,) column L1 norms
    m = [m for m in g.members if m.module == g.reader][0]
    assert torch.allclose(s[torch.as_tensor(m.group_index)],
                          cols[torch.as_tensor(m.positions)])
    assert g.name in BNScaleCriterion().score(model, graph)
    from mmprune.criteria import FPGMCriterion
    assert g.name not in FPGMCriterion().score(model, graph)


def test_budget_allocator_uses_the_readers():
    model = resnet(n=2)
    cost = CostModel(model, lambda t: model(t), [torch.randn(1, 3, 32, 32)])
    graph = trace(model, 'fine', read=True)
    keep = BudgetAllocator(
        0.5, min_keep=2).allocate(model, graph,
                                  L1Criterion().score(model, graph), cost)
    assert cost.flops(graph, keep) <= 0.5 * cost.flops()
    cut = [
        n for n in keep
        if n.endswith(READ_SUFFIX) and len(keep[n]) < graph.group(n).width
    ]
    assert cut, 'no reader group was cut'


def test_toy_onnx_matches_torch(tmp_path):
    pytest.importorskip('onnxruntime')
    from mmprune.export.onnx import export_onnx, verify_onnx
    model = resnet(n=2)
    graph = trace(model, 'fine', read=True)
    _, compact = masked_and_compact(model, graph, random_keep(graph, 0.5))
    x = torch.randn(1, 3, 32, 32)
    path = str(tmp_path / 'read.onnx')
    export_onnx(compact, path, x)
    import onnx
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert 'Gather' in ops
    res = verify_onnx(path, compact, [x, torch.randn(2, 3, 32, 32)])
    assert res['passed'], res


def test_plan_round_trip_rebuilds_the_gathers():
    model = resnet(n=2)
    graph = apis.analyze(model, 'fine', (32, 32), read_pruning=True)
    plan = apis.make_plan(graph, random_keep(graph, 0.5))
    assert plan.read_pruning and plan.to_dict()['read_pruning'] is True
    pruned = copy.deepcopy(model)
    apis.prune(pruned, plan, graph, input_size=(32, 32))
    # a second event on the compact model, as the hook does
    graph2 = apis.analyze(pruned, 'fine', (32, 32), read_pruning=True)
    plan2 = apis.make_plan(graph2, random_keep(graph2, 0.8, 3))
    apis.prune(pruned, plan2, graph2, input_size=(32, 32))
    state = pruned.state_dict()
    assert not any('mmprune_read' in k for k in state)  # non-persistent
    fresh = copy.deepcopy(model)
    plans = apis.model_plans(pruned)
    plans = [PruningPlan.from_dict(p.to_dict()) for p in plans]
    assert apis.replay(fresh, plans, (32, 32)) == 2
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))
    # a plan traced with readers does not replay onto plain fine groups
    bad = PruningPlan.from_dict(dict(plan.to_dict(), read_pruning=False))
    with pytest.raises(ValueError, match='read_pruning|not found'):
        apis.prune(copy.deepcopy(model), bad, input_size=(32, 32))
    with pytest.raises(ValueError, match='read_pruning'):
        PruningPlan.from_dict(dict(plan.to_dict(), residual_mode='coupled'))


# ------------------------------------------------------- mmdet detectors
DETECTORS = {
    'retinanet_r18': 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py',
    'yolox_tiny': 'mmdet::yolox/yolox_tiny_8xb8-300e_coco.py',
}


def build_detector(name):
    from test_graph_mmdet import build
    kw = {} if name.startswith('yolox') else dict(frozen_stages=-1)
    return build(name, **kw)


def det_outputs(model, size=(128, 128)):
    from mmprune.adapters import tensor_outputs
    return tensor_outputs(model, size, seed=1)


def all_close(a, b, tol=1e-4):
    assert len(a) == len(b) and len(a) > 0
    return all(close(x, y, tol) for x, y in zip(a, b))


@pytest.mark.parametrize('name', list(DETECTORS))
def test_detector_masked_equals_compact_and_coupled_is_fine(name):
    model = build_detector(name)
    fine = apis.analyze(model, 'fine', read_pruning=True)
    readers = [g for g in fine.prunable_groups() if g.reader]
    assert readers, 'no reader group on ' + name
    keep = random_keep(fine, 0.5, 0)
    masked, compact = masked_and_compact(model, fine, keep)
    assert all_close(det_outputs(compact), det_outputs(masked))
    assert any(read_gather(m) is not None for m in compact.modules())

    coupled = apis.analyze(model, 'coupled')
    keep_c = random_keep(coupled, 0.5, 1)
    keep_f = as_fine(coupled, keep_c, fine)
    _, compact_c = masked_and_compact(model, coupled, keep_c)
    _, compact_f = masked_and_compact(model, fine, keep_f)
    assert all_close(det_outputs(compact_f), det_outputs(compact_c))
    cost = apis.cost_model(model, (128, 128))
    assert cost.flops(fine, keep_f) <= cost.flops(coupled, keep_c)


def test_retinanet_reader_onnx_and_round_trip(tmp_path):
    pytest.importorskip('onnxruntime')
    from mmprune.export.onnx import export_onnx, random_batch, verify_onnx
    model = build_detector('retinanet_r18')
    graph = apis.analyze(model, 'fine', read_pruning=True)
    plan = apis.make_plan(graph, random_keep(graph, 0.5, 2))
    pruned = copy.deepcopy(model)
    apis.prune(pruned, plan, graph)
    readers = [
        n for n, m in pruned.named_modules() if read_gather(m) is not None
    ]
    assert any(n.startswith('backbone.layer') for n in readers)
    assert any(n.startswith('neck.lateral_convs') for n in readers)
    x = random_batch(pruned, 1, (128, 128))
    path = str(tmp_path / 'r18_read.onnx')
    export_onnx(pruned, path, x)
    res = verify_onnx(path, pruned, [x])
    assert res['passed'], res
    # save/load: the structure record rebuilds the gathers on a dense model
    fresh = build_detector('retinanet_r18')
    apis.replay(fresh, apis.model_plans(pruned))
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    assert all_close(det_outputs(fresh), det_outputs(pruned), 1e-6)


# ------------------------------------------------------ property test
def _random_nets_read_pruning(net, how, ratio, seed):
    """tests/test_property_graph.py's random nets, fine mode with reader
    pruning, cut twice (the second cut on the compact model, so gathers
    compose): masked == compact and the cost model is exact each time."""
    from test_graph_toy import randomise_bn
    from test_property_graph import SIZE, RandomNet, draw_keep
    spec, stem, head = net
    torch.manual_seed(seed)
    model = randomise_bn(RandomNet(spec, stem, head), seed).eval()
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    for cut in range(2):
        try:
            graph = apis.analyze(model, 'fine', SIZE, read_pruning=True)
        except RuntimeError as e:
            assert 'no prunable channel group found' in str(e)
            return
        cost = apis.cost_model(model, SIZE)
        keep = draw_keep(graph, model, cost, how, ratio, seed + cut)
        apis.make_plan(graph, keep)  # checks: no module emptied
        masked, compact = masked_and_compact(model, graph, keep)
        with torch.no_grad():
            assert close(compact(x), masked(x)), (spec, cut)
        assert apis.cost_model(compact, SIZE).flops() == \
            cost.flops(graph, keep)
        assert cost.flops(graph, keep) <= cost.flops()
        model = compact


def test_random_nets_with_reader_pruning():
    hypothesis = pytest.importorskip('hypothesis')
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from test_property_graph import FOUND, nets

    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow])
    @given(
        net=nets(),
        how=st.sampled_from(['budget', 'random']),
        ratio=st.floats(0.2, 0.95),
        seed=st.integers(0, 2**16))
    def run(net, how, ratio, seed):
        _random_nets_read_pruning(net, how, ratio, seed)

    for net, _ in FOUND:  # the shapes that once broke fine mode
        _random_nets_read_pruning(net, 'budget', 0.5, 0)
    assert hypothesis
    run()


# ------------------------------------------------- measurement (script)
def measure_resnet20(ratio=0.5):
    """FLOPs reached and per-block widths of one-shot L1 + global budget
    allocation on a CIFAR ResNet-20 (32 px), coupled vs fine vs fine +
    readers. Random weights: L1 is the only signal, so this measures what
    each mode lets the allocator reach, not accuracy."""
    model = resnet(n=3)
    x = [torch.randn(1, 3, 32, 32)]
    cost = CostModel(model, lambda t: model(t), x)
    dense = cost.flops()
    rows = []
    for label, mode, read in (('coupled', 'coupled', False),
                              ('fine', 'fine', False), ('fine+readers', 'fine',
                                                        True)):
        graph = trace(model, mode, read)
        alloc = BudgetAllocator(ratio, min_keep=2, max_prune_ratio=0.9)
        keep = alloc.allocate(model, graph,
                              L1Criterion().score(model, graph), cost)
        compact = copy.deepcopy(model)
        apply_compact(compact, graph, keep)
        widths = []
        for b in compact.blocks:
            widths.append(f'{b.conv1.in_channels}>{b.conv1.out_channels}>'
                          f'{b.conv2.out_channels}')
        rows.append(
            (label, cost.flops(graph, keep) / dense,
             CostModel.params(compact) / CostModel.params(model), widths))
    return dense, rows


if __name__ == '__main__':
    for target in (0.5, 0.3):
        dense, rows = measure_resnet20(target)
        print(f'ResNet-20 dense MACs {dense / 1e6:.2f}M; target {target}')
        for label, f, p, widths in rows:
            print(f'{label:<13} FLOPs {f:.3f} params {p:.3f}')
            print('   per block (in > mid > out):', ' '.join(widths))


def test_hook_prunes_readers_in_training_and_resumes(tmp_path, mmdet_config,
                                                     synth_data):
    """``ChannelPruningHook(residual_mode='fine', read_pruning=True)`` in
    the real Runner on YOLOX-tiny (its CSP blocks add into streams): the
    cut gives readers their own stream subsets (gather buffers), reaches
    the target, records ``read_pruning`` in the plan, and a run resumed
    after the cut rebuilds the same structure and gathers."""
    import os.path as osp

    from mmengine.runner import Runner
    from test_hook_training import KillAfterEpoch, _Stop, pruning_cfg, shapes

    from mmprune.graph.read_map import read_sources

    def cfg(work):
        return pruning_cfg(
            mmdet_config,
            synth_data,
            work,
            max_epochs=2,
            end=1,
            residual_mode='fine',
            read_pruning=True)

    def gathers(model):
        return {
            n: read_sources(m).tolist()
            for n, m in model.named_modules() if read_sources(m) is not None
        }

    from mmprune.hooks import ChannelPruningHook
    with pytest.raises(ValueError, match='read_pruning=True needs'):
        ChannelPruningHook(read_pruning=True, residual_mode='coupled')
    runner = Runner.from_cfg(cfg(tmp_path / 'a'))
    runner.register_hook(KillAfterEpoch(2))
    with pytest.raises(_Stop):
        runner.train()
    plans = apis.model_plans(runner.model)
    assert len(plans) == 1 and plans[0].read_pruning
    got = gathers(runner.model)
    assert got, 'no reader gathers its own stream subset'
    assert any(READ_SUFFIX in name for name in plans[0].keep)
    hook = next(h for h in runner.hooks if isinstance(h, ChannelPruningHook))
    ratio = hook._cost(runner.model) / hook.state['dense_cost']
    assert ratio <= 0.5 + 0.01, ratio
    resumed_cfg = cfg(tmp_path / 'b')
    resumed_cfg.resume = True
    resumed_cfg.load_from = osp.join(str(tmp_path / 'a'), 'epoch_1.pth')
    resumed = Runner.from_cfg(resumed_cfg)
    resumed.train()
    assert shapes(resumed.model) == shapes(runner.model)
    assert gathers(resumed.model) == got
