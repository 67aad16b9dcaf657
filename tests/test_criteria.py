"""Criteria: known rankings on hand-made weights, coupled-group sums, and
the runtime properties (AMP scale invariance, DDP all-reduce, LRP
conservation, de-duplication) that the training hooks rely on."""
import itertools
import math
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_graph_toy import ToyDetector, randomise_bn

from mmprune.criteria import (BlendedCriterion, BNScaleCriterion,
                              FeatureRelevanceCriterion, FPGMCriterion,
                              HRankCriterion, L1Criterion, L2Criterion,
                              TaylorCriterion, WeightSimilarityCriterion)
from mmprune.criteria.blended import (BlendLayout, average_ranks, blend_scores,
                                      cluster_criteria, cluster_pool,
                                      default_stage, medoid, normalize_scores,
                                      spearman_matrix)
from mmprune.criteria.gates import gate_sites
from mmprune.criteria.lrp import lrp_forward
from mmprune.criteria.relevance import class_weights_from_accuracy
from mmprune.graph import build_channel_graph
from mmprune.registry import CRITERIA, build_from


def conv_bn(cin, cout, k=1, bias=False):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias),
        nn.BatchNorm2d(cout))


class Plain(nn.Module):
    """conv-bn-relu x2 -> pool -> linear: one group per conv."""

    def __init__(self, c=(3, 6, 5), classes=4):
        super().__init__()
        self.a = conv_bn(c[0], c[1], 3)
        self.b = conv_bn(c[1], c[2], 3)
        self.fc = nn.Linear(c[2], classes)

    def forward(self, x):
        x = F.relu(self.b(F.relu(self.a(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Residual(nn.Module):
    """Two writers into one stream (coupled group with two producers)."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 4, 3)
        self.c1 = conv_bn(4, 4, 3)
        self.c2 = conv_bn(4, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        s = F.relu(self.stem(x))
        s = F.relu(s + self.c1(s))
        s = F.relu(s + self.c2(s))
        return self.fc(F.adaptive_avg_pool2d(s, 1).flatten(1))


def trace(model, x):
    was = model.training
    graph = build_channel_graph(model.eval(), model, [x])
    model.train(was)
    return graph


def set_rows(conv, rows):
    with torch.no_grad():
        rows = torch.as_tensor(rows, dtype=torch.float32)
        conv.weight.copy_(rows.view(conv.weight.shape))


@pytest.fixture
def toy():
    torch.manual_seed(0)
    model = randomise_bn(ToyDetector())
    x = torch.randn(2, 3, 32, 32)
    return model, trace(model, x), x


def toy_loss(out):
    return out[0].pow(2).mean() + out[1].sin().mean()


# ------------------------------------------------------ weight criteria
def test_norm_and_bn_scale_known_ranking():
    model = nn.Sequential(
        nn.Conv2d(2, 4, 1, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))
    set_rows(model[0], [[3, 4], [1, 0], [-2, 2], [0, 0.5]])
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.1, -2.0, 0.5, 1.0]))
    graph = trace(model, torch.randn(1, 2, 4, 4))
    assert torch.allclose(L1Criterion().score(model, graph)['0'],
                          torch.tensor([7., 1., 4., .5]))
    assert torch.allclose(L2Criterion().score(model, graph)['0'],
                          torch.tensor([5., 1., math.sqrt(8), .5]))
    assert torch.argsort(BNScaleCriterion().score(
        model, graph)['0']).tolist() == [0, 2, 3, 1]


def test_fpgm_known_ranking_and_manual_distance_sum():
    model = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False), nn.Conv2d(4, 1, 1))
    pts = [[0., 0.], [1., 0.], [0., 2.], [6., 5.]]
    set_rows(model[0], pts)
    graph = trace(model, torch.randn(1, 2, 4, 4))
    s = FPGMCriterion().score(model, graph)['0']
    manual = [sum(math.dist(p, q) for q in pts) for p in pts]
    assert torch.allclose(s, torch.tensor(manual), rtol=1e-5)
    # the outlier is the least replaceable, the central point the most
    assert int(s.argmax()) == 3 and int(s.argmin()) == 1


def test_coupled_groups_concatenate_or_sum_over_producers():
    torch.manual_seed(0)
    model = Residual()
    graph = trace(model, torch.randn(1, 3, 8, 8))
    grp = graph.group('stem.0')
    assert sorted(m.module for m in grp.producers()) == \
        ['c1.0', 'c2.0', 'stem.0']
    w = [
        model.get_submodule(n).weight.detach().flatten(1)
        for n in ('stem.0', 'c1.0', 'c2.0')
    ]
    l1 = L1Criterion().score(model, graph)['stem.0']
    assert torch.allclose(l1, sum(t.abs().sum(1) for t in w))
    v = torch.cat(w, 1)  # FPGM: distances in the joint (concatenated) space
    fpgm = FPGMCriterion().score(model, graph)['stem.0']
    assert torch.allclose(fpgm, torch.cdist(v, v).sum(1), rtol=1e-5)
    bn = BNScaleCriterion().score(model, graph)['stem.0']
    gammas = [
        model.get_submodule(n).weight.detach().abs()
        for n in ('stem.1', 'c1.1', 'c2.1')
    ]
    assert torch.allclose(bn, sum(gammas))


def test_every_criterion_scores_every_group_at_its_width(toy):
    model, graph, x = toy
    crits = [
        L1Criterion(),
        L2Criterion(),
        BNScaleCriterion(),
        FPGMCriterion(),
        WeightSimilarityCriterion(),
        WeightSimilarityCriterion(similarity='gram', greedy=False),
        TaylorCriterion(),
        FeatureRelevanceCriterion(),
        HRankCriterion(activation='silu'),
        BlendedCriterion(alphas={'*': dict(l1=0.5, taylor=1.0)})
    ]
    for c in crits:
        if hasattr(c, 'attach'):
            c.attach(model, graph)
    model.train()
    toy_loss(model(x)).backward()
    for c in crits:
        scores = c.score(model, graph)
        assert set(scores) == {g.name for g in graph.prunable_groups()}
        for g in graph.prunable_groups():
            s = scores[g.name]
            assert s.shape == (g.width, ), (type(c).__name__, g.name)
            assert torch.isfinite(s).all(), (type(c).__name__, g.name)
        if hasattr(c, 'detach'):
            c.detach()


# ------------------------------------------------------------ similarity
def test_similarity_known_ranking_and_deduplication():
    model = nn.Sequential(nn.Conv2d(4, 5, 1, bias=False), nn.Conv2d(5, 1, 1))
    a = [1., 2., 0., 0.]
    rows = [a, a, [0., 0., 2., 0.], [0., 0., 0., 3.], [0., 0., 0.1, 0.]]
    set_rows(model[0], rows)
    graph = trace(model, torch.randn(1, 4, 4, 4))
    grp = graph.group('0')
    plain = WeightSimilarityCriterion(greedy=False).score(model, graph)['0']
    # exact duplicates have rho = 1: both look useless to the plain score
    assert plain[0] == 0 and plain[1] == 0
    # channels 2 and 4 are parallel: rho = 1 for both as well
    assert plain[2] == 0 and plain[4] == 0
    assert plain[3] > 0
    crit = WeightSimilarityCriterion()
    for n in range(1, grp.width - 1):  # while both pairs can keep one
        pruned, partners = crit.deduplicate(model, grp, n)
        assert len(pruned) == n
        assert not {0, 1} <= set(pruned), n
        assert not {2, 4} <= set(pruned), n
        for c in pruned:  # a partner is a channel kept at that time
            assert partners[c] is not None and partners[c] != c
    pruned, partners = crit.deduplicate(model, grp, 2)
    # one member of each pair goes first (ties: lowest index), and its
    # twin is recorded as the partner that takes over
    assert pruned == [0, 2] and partners == {0: 1, 2: 4}
    # greedy scores order channels like the greedy: the 2 lowest scores
    # are exactly the first 2 greedy picks
    s = crit.score(model, graph)['0']
    assert set(torch.argsort(s)[:2].tolist()) == set(pruned)
    # without protection the greedy would still re-score the twins, but a
    # plain ranking drops both members of a pair at once
    assert set(torch.argsort(plain, stable=True)[:2].tolist()) == {0, 1}
    assert crit.partners(model, grp, [0, 4]) == {0: 1, 4: 2}


def test_similarity_plain_ranking_is_norm_ratio_when_orthogonal():
    model = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.Conv2d(3, 1, 1))
    set_rows(model[0], np.diag([1., 3., 2.]))
    graph = trace(model, torch.randn(1, 3, 4, 4))
    s = WeightSimilarityCriterion(greedy=False).score(model, graph)['0']
    assert torch.allclose(s, torch.tensor([0.5, 1.5, 1.0]))


# ---------------------------------------------------------------- Taylor
def manual_gate_terms(model, graph, x_batches, loss_fn):
    """sum over batches of (sum_{n,h,w} a * dL/da)^2 per site, from hooks
    on the site *outputs* (the definition), summed per group."""
    sites = gate_sites(graph)
    scores = {
        g.name: torch.zeros(g.width, dtype=torch.float64)
        for g in graph.prunable_groups()
    }
    for x in x_batches:
        outs = {}
        handles = [
            model.get_submodule(s.module).register_forward_hook(
                lambda m, i, o, k=k: outs.__setitem__(k, o))
            for k, s in enumerate(sites)
        ]
        out = model(x)
        for h in handles:
            h.remove()
        keys = sorted(outs)
        grads = torch.autograd.grad(loss_fn(out), [outs[k] for k in keys])
        for k, g in zip(keys, grads):
            s = sites[k]
            per = (outs[k].detach() * g).double()
            per = per.sum(dim=[0] + list(range(2, per.dim())))
            t = torch.zeros(s.width, dtype=torch.float64)
            t.index_add_(0, s.group_index, per[s.positions])
            scores[s.group] += t.square()
    return scores


class OutOfPlace(nn.Module):
    """The toy's Bottleneck without its in-place add (same function)."""

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        out = F.relu(self.conv2(F.relu(self.conv1(x))))
        return F.relu(self.conv3(out) + idt)


def out_of_place_twin(model):
    import copy
    twin = copy.deepcopy(model)
    for b in (twin.b1, twin.b2):
        b.forward = OutOfPlace.forward.__get__(b)
    return twin


def test_taylor_equals_gate_products_on_outputs(toy):
    model, graph, _ = toy
    model.eval()
    xs = [
        torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i))
        for i in range(3)
    ]
    # the definition, read on the outputs of a twin without in-place ops
    # (the toy's `out += idt` would overwrite a saved BN output)
    want = manual_gate_terms(out_of_place_twin(model), graph, xs, toy_loss)
    crit = TaylorCriterion()
    crit.attach(model, graph)
    for x in xs:
        model.zero_grad()
        toy_loss(model(x)).backward()
    got = crit.score(model, graph)
    assert crit.num_batches == 3
    for name, w in want.items():
        assert torch.allclose(
            got[name].double(), w, rtol=1e-4, atol=1e-12), name
    # the coupled stream sums the terms of its three BN sites
    assert len([s for s in gate_sites(graph) if s.group == 'b1.conv3.0']) \
        == 3


def test_taylor_known_ranking():
    # a = BN(conv(x)) with zero conv weights is beta_c everywhere (eval);
    # the consumer conv sums channel c with weight k_c, so for L = sum(y)
    # the gate of channel c is k_c * beta_c * N * H * W
    model = nn.Sequential(
        nn.Conv2d(1, 3, 1, bias=False), nn.BatchNorm2d(3),
        nn.Conv2d(3, 1, 1, bias=False)).eval()
    k = torch.tensor([1.0, 1.0, 3.0])
    beta = torch.tensor([1.0, -2.0, 0.5])
    with torch.no_grad():
        model[0].weight.zero_()
        model[1].bias.copy_(beta)
        model[2].weight.copy_(k.view(1, 3, 1, 1))
    graph = trace(model, torch.randn(1, 1, 4, 4))
    crit = TaylorCriterion()
    crit.attach(model, graph)
    model(torch.randn(2, 1, 4, 4)).sum().backward()
    s = crit.score(model, graph)['0']
    assert torch.allclose(s, (k * beta * 2 * 16).square())
    # |beta| alone (BN-scale-like) would rank [2, 0, 1]; k reorders it
    assert torch.argsort(s).tolist() == [0, 2, 1]


def test_taylor_is_invariant_to_the_amp_loss_scale(toy):
    model, graph, _ = toy
    model.eval()  # no BN statistic drift between the two runs
    xs = [
        torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i))
        for i in range(2)
    ]

    def run(scale, getter):
        crit = TaylorCriterion(loss_scale=getter)
        crit.attach(model, graph)
        for x in xs:
            model.zero_grad()
            (toy_loss(model(x)) * scale).backward()
        crit.detach()
        return crit, crit.score(model, graph)

    _, plain = run(1.0, None)
    scale = 2.0**14

    class Scaler:  # GradScaler-like getter

        def get_scale(self):
            return scale

    crit, scaled = run(scale, Scaler().get_scale)
    _, unscaled = run(scale, None)  # what forgetting the scale gives
    for name in plain:
        assert torch.allclose(
            plain[name], scaled[name], rtol=1e-5, atol=1e-20), name
        assert torch.allclose(
            unscaled[name], plain[name] * scale**2, rtol=1e-5,
            atol=1e-20), name
    _, const = run(scale, scale)  # a constant scale works the same
    assert torch.allclose(const['stem.0'], plain['stem.0'], rtol=1e-5)
    # an overflow step (inf gradients, skipped by GradScaler) is skipped
    crit.attach(model, graph)
    model.zero_grad()
    (toy_loss(model(xs[0])) * float('inf')).backward()
    assert crit.skipped > 0 and crit.num_batches == 0
    with pytest.raises(ValueError, match='loss_scale'):
        TaylorCriterion(loss_scale=-1.0)


def test_taylor_momentum_and_mean_accumulation(toy):
    model, graph, _ = toy
    model.eval()
    xs = [
        torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i))
        for i in range(3)
    ]
    per_batch = []
    for x in xs:
        crit = TaylorCriterion()
        crit.attach(model, graph)
        toy_loss(model(x)).backward()
        crit.detach()
        per_batch.append(crit.score(model, graph)['spp_in.0'].double())
    mom = TaylorCriterion(accumulate='momentum', momentum=0.5)
    mean = TaylorCriterion(accumulate='mean')
    for c in (mom, mean):
        c.attach(model, graph)
    for x in xs:
        toy_loss(model(x)).backward()
    want = per_batch[0]
    for t in per_batch[1:]:
        want = 0.5 * want + 0.5 * t
    assert torch.allclose(
        mom.score(model, graph)['spp_in.0'].double(), want, rtol=1e-4)
    assert torch.allclose(
        mean.score(model, graph)['spp_in.0'].double(),
        sum(per_batch) / 3,
        rtol=1e-4)
    with pytest.raises(ValueError, match='accumulate'):
        TaylorCriterion(accumulate='ema')
    with pytest.raises(RuntimeError, match='attach'):
        TaylorCriterion().score(model, graph)


def _ddp_batches(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(3, 3, 8, 8,
                         generator=g), torch.randint(0, 4, (3, ), generator=g))
            for _ in range(2)]


def _ddp_model():
    torch.manual_seed(0)
    return Plain()


def _ddp_worker(rank, world, out_dir):
    from datetime import timedelta

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    # a file store: no port to race for on a shared machine; a timeout
    # turns a stuck collective into an error instead of a hang
    dist.init_process_group(
        'gloo',
        init_method='file://' + os.path.join(out_dir, 'store'),
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120))
    try:
        torch.set_num_threads(1)
        scores = _ddp_scores(rank, DDP)
        if rank == 0:
            torch.save(scores, os.path.join(out_dir, 'scores.pth'))
        # the DDP wrapper is gone (freed with _ddp_scores' frame) before the
        # group is destroyed; tearing it down afterwards can hang a rank
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _ddp_scores(rank, ddp_cls):
    model = _ddp_model().eval()
    graph = trace(model, torch.randn(1, 3, 8, 8))
    crits = dict(
        taylor=TaylorCriterion(),
        relevance=FeatureRelevanceCriterion(normalize=False))
    for c in crits.values():
        c.attach(model, graph)
    ddp = ddp_cls(model)
    for x, y in _ddp_batches(rank):
        ddp.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
    for c in crits.values():
        c.sync()
        c.sync()  # idempotent
        c.detach()
    del ddp
    return {k: c.score(model, graph) for k, c in crits.items()}


def test_taylor_and_relevance_all_reduce_over_gloo_ranks():
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_ddp_worker, args=(2, d), nprocs=2, join=True)
        got = torch.load(os.path.join(d, 'scores.pth'))
    # one process over the union of both ranks' batches
    model = _ddp_model().eval()
    graph = trace(model, torch.randn(1, 3, 8, 8))
    taylor = TaylorCriterion()
    rel = FeatureRelevanceCriterion(normalize=False)
    taylor.attach(model, graph)
    rel.attach(model, graph)
    for rank in range(2):
        for x, y in _ddp_batches(rank):
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
    for name, want in taylor.score(model, graph).items():
        assert torch.allclose(got['taylor'][name], want, rtol=1e-4), name
    for name, want in rel.score(model, graph).items():
        assert torch.allclose(
            got['relevance'][name], want, rtol=1e-4, atol=1e-9), name


# -------------------------------------------------------------- relevance
def test_grad_x_input_relevance_equals_manual_computation(toy):
    model, graph, _ = toy
    model.eval()
    xs = [
        torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        for n in (2, 3)
    ]
    sites = gate_sites(graph)
    sums = {
        g.name: torch.zeros(g.width, dtype=torch.float64)
        for g in graph.prunable_groups()
    }
    total_n = 0
    twin = out_of_place_twin(model)  # see test_taylor_equals_gate_products
    for x in xs:
        outs = {}
        handles = [
            twin.get_submodule(s.module).register_forward_hook(
                lambda m, i, o, k=k: outs.__setitem__(k, o))
            for k, s in enumerate(sites)
        ]
        out = twin(x)
        for h in handles:
            h.remove()
        keys = sorted(outs)
        grads = torch.autograd.grad(toy_loss(out), [outs[k] for k in keys])
        for k, g in zip(keys, grads):
            s = sites[k]
            a = (outs[k].detach() * g).double()  # (N, C, H, W)
            per = a.mean(dim=(2, 3)).sum(0)  # sum_n mean_hw
            t = torch.zeros(s.width, dtype=torch.float64)
            t.index_add_(0, s.group_index, per[s.positions])
            sums[s.group] += t
        total_n += x.shape[0]
    crit = FeatureRelevanceCriterion()
    raw = FeatureRelevanceCriterion(normalize=False)
    for c in (crit, raw):
        c.attach(model, graph)
    for x in xs:
        toy_loss(model(x)).backward()
    got, got_raw = crit.score(model, graph), raw.score(model, graph)
    for name, s in sums.items():
        f = (s / total_n).abs()
        assert torch.allclose(
            got_raw[name].double(), f, rtol=1e-4, atol=1e-12), name
        assert torch.allclose(
            got[name].double(), f / (f.norm() + 1e-9), rtol=1e-4,
            atol=1e-9), name


class ReLUNet(nn.Module):

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 6, 3)
        self.c1 = conv_bn(6, 6, 3)
        self.c2 = conv_bn(6, 6, 3)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        s = F.relu(self.stem(x))
        y = self.c2(F.relu(self.c1(s)))
        s = F.relu(y + s)  # residual add
        s = F.max_pool2d(self.pool(s), 1)
        return self.fc(s.flatten(1))


def test_lrp_conserves_relevance_layer_by_layer():
    torch.manual_seed(0)
    model = randomise_bn(ReLUNet()).eval()
    x = torch.rand(4, 3, 8, 8).requires_grad_(True)  # non-negative input
    labels = torch.tensor([0, 1, 2, 1])
    seen = {}

    def keep_relevance(name):

        def hook(mod, inputs, out):
            out.register_hook(lambda r: seen.__setitem__(name, r.detach()))

        return hook

    hooks = [
        model.get_submodule(n).register_forward_hook(keep_relevance(n))
        for n in ('stem.1', 'c1.1', 'c2.1')
    ]
    with lrp_forward(model):
        out = model(x)
    for h in hooks:
        h.remove()
    out.backward(F.one_hot(labels, 3).float())
    # one unit of relevance per image enters; alpha - beta = 1 conserves it
    # through conv/linear (non-negative inputs), pooling and the add split
    per_image_in = x.grad.sum(dim=(1, 2, 3))
    assert torch.allclose(per_image_in, torch.ones(4), atol=1e-4)
    # the residual add splits: the branch (c2) and the shortcut (stem)
    # share the unit; the stem map also collects c1's relevance
    assert torch.allclose(
        seen['c1.1'].sum(dim=(1, 2, 3)),
        seen['c2.1'].sum(dim=(1, 2, 3)),
        atol=1e-4)
    # parameter gradients are not touched by the relevance pass
    assert all(p.grad is None for p in model.parameters())


def test_lrp_relevance_criterion_known_ranking_and_class_weights():
    torch.manual_seed(0)
    model = ReLUNet().eval()
    # channel 2 of c2 feeds nothing relevant: zero its columns in fc
    with torch.no_grad():
        model.fc.weight.view(3, 6, 16)[:, 2] = 0
    graph = trace(model, torch.randn(1, 3, 8, 8))
    crit = FeatureRelevanceCriterion(relevance='lrp')
    crit.attach(model, graph)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        crit.accumulate_lrp(model, torch.rand(4, 3, 8, 8, generator=g),
                            torch.randint(0, 3, (4, ), generator=g))
    s = crit.score(model, graph)
    assert abs(float(s['c1.0'].norm()) - 1) < 1e-5
    assert all(p.grad is None for p in model.parameters())
    w = class_weights_from_accuracy([0.9, 0.45, 0.9])
    assert w[1] > w[0] == w[2] and 0.73 < w.min() and w.max() <= 1
    weighted = FeatureRelevanceCriterion(relevance='lrp', class_weights=w)
    weighted.attach(model, graph)
    weighted.accumulate_lrp(model, torch.rand(4, 3, 8, 8, generator=g),
                            torch.tensor([0, 1, 2, 1]))
    assert weighted.score(model, graph)['c1.0'].shape == (6, )
    # a dead channel (ReLU output 0 everywhere) gets no relevance at all
    plain = Plain(c=(3, 4, 3), classes=2).eval()
    with torch.no_grad():
        plain.b[1].weight[1] = 0
        plain.b[1].bias[1] = -1
    pg = trace(plain, torch.randn(1, 3, 8, 8))
    pc = FeatureRelevanceCriterion(relevance='lrp')
    pc.attach(plain, pg)
    pc.accumulate_lrp(plain, torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 0]))
    score = pc.score(plain, pg)['b.0']
    assert float(score[1]) == 0 and float(score.min()) == 0
    assert (score[[0, 2]] > 0).all()


def test_lrp_rejects_unsupported_ops_with_their_module():

    class SiluNet(Plain):

        def forward(self, x):
            x = self.b(F.silu(self.a(x)))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    model = SiluNet()
    graph = trace(model, torch.randn(1, 3, 8, 8))
    crit = FeatureRelevanceCriterion(relevance='lrp')
    crit.attach(model, graph)
    with pytest.raises(
            NotImplementedError, match="op 'silu' in module '<root>'"):
        crit.accumulate_lrp(model, torch.rand(1, 3, 8, 8), [0])
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.SiLU(), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(NotImplementedError, match="module '1'"):
        with lrp_forward(model):
            pass
    with pytest.raises(ValueError, match='class_weights'):
        FeatureRelevanceCriterion(class_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match='alpha - beta'):
        FeatureRelevanceCriterion(relevance='lrp', alpha=2.0, beta=2.0)


# ------------------------------------------------------------------ HRank
def test_hrank_known_ranking():
    # identity 1x1 conv: output channel c is input channel c, whose map has
    # rank 1, 2 and 6 by construction
    model = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.Conv2d(3, 1, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    graph = trace(model, torch.randn(1, 3, 6, 6))
    crit = HRankCriterion(activation=None)
    crit.attach(model, graph)
    g = torch.Generator().manual_seed(0)

    def image():
        return torch.stack([
            torch.rand(6, 1, generator=g) @ torch.rand(1, 6, generator=g),
            torch.rand(6, 2, generator=g) @ torch.rand(2, 6, generator=g),
            torch.rand(6, 6, generator=g)
        ])

    with torch.no_grad():
        model(torch.stack([image(), image()]))
        model(image()[None])
    assert crit.score(model, graph)['0'].tolist() == [1.0, 2.0, 6.0]
    # max_images bounds the work: the third image is not ranked
    capped = HRankCriterion(activation=None, max_images=2)
    capped.attach(model, graph)
    with torch.no_grad():
        model(torch.stack([image(), image()]))
        model(torch.zeros(1, 3, 6, 6))  # rank 0: would lower the mean
    assert capped.score(model, graph)['0'].tolist() == [1.0, 2.0, 6.0]
    crit.detach()
    capped.detach()
    with pytest.raises(ValueError, match='activation'):
        HRankCriterion(activation='gelu')


# ---------------------------------------------------------------- blended
def test_rank_normalisation_and_spearman_with_ties():
    from scipy.stats import spearmanr
    assert average_ranks([3., 1., 3., 2.]).tolist() == [2.5, 0., 2.5, 1.]
    assert normalize_scores([3., 1., 3., 2.]).tolist() == \
        [2.5 / 3, 0., 2.5 / 3, 1 / 3]
    rng = np.random.default_rng(0)
    vecs = [rng.integers(0, 4, 12).astype(float) for _ in range(3)]
    rho = spearman_matrix(vecs)
    for i, j in itertools.combinations(range(3), 2):
        assert abs(rho[i, j] - spearmanr(vecs[i], vecs[j])[0]) < 1e-12
    # constant vectors correlate 0 (undefined), never NaN
    assert spearman_matrix([np.ones(4), np.arange(4.)])[0, 1] == 0


def test_clustering_medoids_and_stage_vote():
    base = np.arange(10.)
    swap = base.copy()
    swap[[3, 4]] = swap[[4, 3]]
    rev = base[::-1].copy()
    rho = spearman_matrix([base, swap, rev, base + 0.5])
    clusters = cluster_criteria(rho, 0.9)
    assert clusters == [[0, 1, 3], [2]]
    # base and base+0.5 correlate 1 with each other, slightly less with
    # swap: the medoid is base (first in pool order among the best)
    assert medoid([0, 1, 3], rho) == 0
    pool = {
        k: {
            'backbone.stage1.a': torch.tensor(v),
            'neck.x': torch.tensor(v),
            'tiny': torch.tensor(v[:2])
        }
        for k, v in dict(l1=base, l2=swap, bn=rev, fpgm=base + 0.5).items()
    }
    out = cluster_pool(pool, default_stage, 0.9)
    assert out['groups']['neck.x']['representatives'] == ['l1', 'bn']
    assert out['stages']['neck'] == ['l1', 'bn']
    assert 'tiny' not in out['groups']  # < 3 channels: skipped
    assert out['stages']['tiny'] == ['l1', 'l2', 'bn', 'fpgm']
    layout = BlendLayout(out['stages'])
    assert len(layout.seeds()) == len(layout.keys) + 1
    alphas = layout.alphas(np.linspace(0, 1, len(layout)))
    assert set(alphas) == {'backbone.stage1', 'neck', 'tiny', '*'}
    assert default_stage('bbox_head.multi_level_cls_convs.0.0.conv') == \
        'head'
    assert default_stage('backbone.stage3.1.main_conv.conv') == \
        'backbone.stage3'


def test_blended_criterion_known_ranking_and_config_roundtrip():
    model = nn.Sequential(
        nn.Conv2d(2, 4, 1, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))
    set_rows(model[0], [[1, 0], [2, 0], [3, 0], [4, 0]])  # L1: 0<1<2<3
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([4., 3., 2., 1.]))  # reversed
    graph = trace(model, torch.randn(1, 2, 4, 4))
    crits = dict(l1=dict(type='L1Criterion'), bn=dict(type='BNScaleCriterion'))
    only_l1 = BlendedCriterion(criteria=crits, alphas={'*': dict(l1=1.0)})
    assert torch.argsort(only_l1.score(model, graph)['0']).tolist() == \
        [0, 1, 2, 3]
    mostly_bn = BlendedCriterion(
        criteria=crits, alphas={'0': dict(l1=0.2, bn=0.9)})
    assert torch.argsort(mostly_bn.score(model, graph)['0']).tolist() == \
        [3, 2, 1, 0]
    s = mostly_bn.score(model, graph)['0']
    assert torch.allclose(
        s, 0.2 * torch.tensor([0, 1, 2, 3.]) / 3 +
        0.9 * torch.tensor([3, 2, 1, 0.]) / 3)
    again = build_from(CRITERIA,
                       dict(type='BlendedCriterion', **mostly_bn.config()),
                       'criterion')
    assert torch.equal(again.score(model, graph)['0'], s)
    # all-zero alphas fall back to equal weights, never to no ranking
    flat = blend_scores(
        {
            'a': {
                'g': torch.tensor([1., 2., 3.])
            },
            'b': {
                'g': torch.tensor([3., 2., 1.])
            }
        }, {'*': dict(a=0.0, b=0.0)})
    assert torch.allclose(flat['g'], torch.ones(3))
    with pytest.raises(ValueError, match=r"alphas\['\*'\]\['l1'\]"):
        BlendedCriterion(criteria=crits, alphas={'*': dict(l1=1.5)})
    with pytest.raises(ValueError, match='not in criteria'):
        BlendedCriterion(criteria=crits, alphas={'*': dict(taylor=1.0)})
    with pytest.raises(KeyError, match='no alphas for stage'):
        BlendedCriterion(
            criteria=crits, alphas={
                'x': dict(l1=1.0)
            }).score(model, graph)
    with pytest.raises(ValueError, match='unknown criterion'):
        BlendedCriterion(
            criteria=dict(a=dict(type='Nope')), alphas={'*': dict(a=1.0)})
