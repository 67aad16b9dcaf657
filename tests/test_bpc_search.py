"""BPC blend search: the EA (determinism, elitism, strict improvement on a
constructed fitness), adaptive BN, the masked evaluator, and the whole
search on a small trained net and on YOLOX-tiny with a detection-loss
fitness; the written blend works as a criterion."""
import importlib.util
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmprune.criteria import BlendedCriterion
from mmprune.graph import build_channel_graph
from mmprune.search import (EAConfig, MaskedEvaluator, adaptive_bn,
                            calibrate_pool, evolve)
from mmprune.utils.flops import CostModel
from mmprune.utils.io import write_text_atomic

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool():
    spec = importlib.util.spec_from_file_location(
        'search_blend', osp.join(ROOT, 'tools', 'search_blend.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -------------------------------------------------------------------- EA
TARGET = np.array([0.3, 0.7, 0.55, 0.2, 0.9])


def quadratic(g):
    return -float(np.sum((g - TARGET) ** 2))


def test_ea_is_deterministic_under_a_seed():
    cfg = EAConfig(pop_size=10, generations=6, elite=3, seed=7)
    a = evolve(quadratic, 5, cfg)
    b = evolve(quadratic, 5, cfg)
    assert np.array_equal(a.best, b.best)
    assert a.history == b.history and a.evaluations == b.evaluations
    c = evolve(quadratic, 5, EAConfig(pop_size=10, generations=6, elite=3,
                                      seed=8))
    assert not np.array_equal(a.best, c.best)


def test_ea_strictly_beats_its_one_hot_seeds_and_keeps_elites():
    seeds = [np.eye(5)[i] for i in range(5)] + [np.ones(5)]
    best_seed = max(quadratic(s) for s in seeds)
    res = evolve(quadratic, 5, EAConfig(pop_size=16, generations=15,
                                        elite=4, seed=0), seeds=seeds)
    assert res.first_best >= best_seed  # generation 0 holds the seeds
    assert res.best_fitness > res.first_best  # strictly better
    assert res.best_fitness > -0.05 and np.all((res.best >= 0) &
                                               (res.best <= 1))
    bests = [h['best'] for h in res.history]
    assert all(b >= a for a, b in zip(bests, bests[1:]))  # elitism
    assert len(res.history) == 16
    # identical genomes are evaluated once (elites are cached)
    assert res.evaluations <= 16 + 15 * 12


def test_ea_config_is_validated():
    for kwargs, arg in ((dict(pop_size=1), 'pop_size'),
                        (dict(elite=32), 'elite'),
                        (dict(crossover_p=1.5), 'crossover_p'),
                        (dict(mutation_sigma=-1), 'mutation_sigma'),
                        (dict(low=1, high=0), 'low')):
        with pytest.raises(ValueError, match=arg):
            EAConfig(**kwargs)
    with pytest.raises(ValueError, match='dim'):
        evolve(quadratic, 0)
    with pytest.raises(ValueError, match='seed genomes'):
        evolve(quadratic, 5, EAConfig(pop_size=4, elite=1,
                                      generations=0), seeds=[np.ones(3)])
    # a NaN fitness ranks last instead of poisoning the population
    res = evolve(lambda g: float('nan') if g[0] > 0.5 else -g[0], 2,
                 EAConfig(pop_size=6, elite=2, generations=3))
    assert res.best[0] <= 0.5 and np.isfinite(res.best_fitness)


# ---------------------------------------------------------- plumbing
def test_adaptive_bn_recomputes_statistics_from_batches():
    bn = nn.BatchNorm2d(3, momentum=0.03)
    model = nn.Sequential(nn.Conv2d(3, 3, 1), bn)
    bn.running_mean.fill_(5.0)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 5, 5, generator=g) * 2 + 1
               for _ in range(3)]
    used = adaptive_bn(model, batches + batches, lambda m, b: m(b), 3)
    assert used == 3 and not model.training and bn.momentum == 0.03
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    want_mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    want_var = torch.stack([f.transpose(0, 1).reshape(3, -1).var(1)
                            for f in feats]).mean(0)
    assert torch.allclose(bn.running_mean, want_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, want_var, atol=1e-5)
    with pytest.raises(ValueError, match='no batch'):
        adaptive_bn(model, [], lambda m, b: m(b))


class Net(nn.Module):

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                nn.BatchNorm2d(16))
        self.c2 = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1, bias=False),
                                nn.BatchNorm2d(24))
        self.c3 = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, bias=False),
                                nn.BatchNorm2d(24))
        self.fc = nn.Linear(24, 4)

    def forward(self, x):
        x = F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x))))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def synthetic(n, seed):
    """4 classes: a bright 4x4 blob in one quadrant of a noisy 12x12."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n, ), generator=g)
    x = torch.randn(n, 3, 12, 12, generator=g) * 0.5
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, :, 6 * r + 1:6 * r + 5, 6 * q + 1:6 * q + 5] += 2.0
    return x, y


@pytest.fixture(scope='module')
def trained():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(60):
        x, y = synthetic(32, step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    graph = build_channel_graph(model, model, [torch.randn(1, 3, 12, 12)])
    cost = CostModel(model, model, [torch.randn(1, 3, 12, 12)])
    train = [synthetic(32, 1000 + i) for i in range(6)]
    val = [synthetic(64, 2000 + i) for i in range(2)]
    return model, graph, cost, train, val


def ce_loss(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def forward(model, batch):
    model(batch[0])


def test_masked_evaluator_restores_the_dense_model(trained):
    model, graph, cost, train, val = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counts = {g.name: g.width // 2 for g in graph.prunable_groups()}

    def neg_loss(m):
        return -float(sum(ce_loss(m, b) for b in val))

    ev = MaskedEvaluator(model, graph, counts, neg_loss, train, forward, 2)
    scores = {g.name: torch.arange(g.width, dtype=torch.float32)
              for g in graph.prunable_groups()}
    keep = ev.keep_from_scores(scores)
    assert keep['c1.0'].tolist() == list(range(8, 16))
    f = ev(scores)
    assert np.isfinite(f) and f < neg_loss(model)  # pruning costs something
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match='outside'):
        MaskedEvaluator(model, graph, {'c1.0': 0}, neg_loss, train, forward)


def test_search_improves_fitness_and_writes_a_usable_blend(trained,
                                                          tmp_path):
    from mmengine.config import Config
    tool = load_tool()
    model, graph, cost, train, val = trained
    ea = EAConfig(pop_size=8, generations=4, elite=2, seed=0)
    pool = {k: dict(type=t) for k, t in (
        ('l1', 'L1Criterion'), ('fpgm', 'FPGMCriterion'),
        ('bn_scale', 'BNScaleCriterion'), ('taylor', 'TaylorCriterion'),
        ('hrank', 'HRankCriterion'))}
    out = tool.search_blend(model, graph, cost=cost, ratio=0.5,
                            train_batches=train, val_batches=val,
                            loss_fn=ce_loss, forward_fn=forward, pool=pool,
                            ea=ea, calib_batches=4, bn_batches=3,
                            min_keep=2)
    res = out['result']
    # generation 0 holds every one-hot blend and the uniform one; the EA
    # never does worse than the best of them (elitism) ...
    bests = [h['best'] for h in res.history]
    assert res.best_fitness >= res.first_best
    assert all(b >= a for a, b in zip(bests, bests[1:]))
    # ... and the blend is a real ranking: different genomes, different
    # fitness (so the search has something to find)
    assert res.history[0]['mean'] < res.history[0]['best']
    again = tool.search_blend(model, graph, cost=cost, ratio=0.5,
                              train_batches=train, val_batches=val,
                              loss_fn=ce_loss, forward_fn=forward, pool=pool,
                              ea=ea, calib_batches=4, bn_batches=3,
                              min_keep=2)
    assert again['result'].best_fitness == res.best_fitness  # seeded
    # the dense model is untouched by the search
    assert graph.group('c1.0').width == model.c1[0].out_channels == 16

    # the snippet is a config file whose blend builds a criterion that
    # reproduces the searched scores
    path = str(tmp_path / 'blend.py')
    write_text_atomic(path, tool.blend_source(out['blend'], ['test run']))
    cfg = Config.fromfile(path)
    crit = BlendedCriterion(**cfg.blend)
    assert set(crit.members) <= set(pool)
    got = calibrate_pool(model, graph, {'blend': crit}, train, ce_loss,
                         4)['blend']
    from mmprune.criteria.blended import blend_scores, make_stage_fn
    pool_scores = calibrate_pool(
        model, graph, {k: crit.members[k] for k in crit.members}, train,
        ce_loss, 4)
    want = blend_scores(pool_scores, cfg.blend['alphas'], make_stage_fn(),
                        'rank')
    for name in got:
        assert torch.allclose(got[name], want[name]), name
    assert set(cfg.blend['alphas']) >= {'c1', 'c2', '*'}


def test_search_tool_arguments():
    tool = load_tool()
    base = ['cfg.py', 'ckpt.pth', '--out', 'b.py']
    with pytest.raises(SystemExit):
        tool.parse_args(base + ['--flops-ratio', '1.5'])
    with pytest.raises(SystemExit):
        tool.parse_args(base + ['--flops-ratio', '0.5', '--bn-batches', '0'])
    args = tool.parse_args(base + ['--flops-ratio', '0.5'])
    assert args.pop_size == 32 and args.generations == 20 and \
        args.elite == 8 and args.mutation_sigma == 0.2
    with pytest.raises(ValueError, match='allocation'):
        tool.search_blend(None, None, cost=None, ratio=0.5, train_batches=[],
                          loss_fn=None, forward_fn=None,
                          allocation='best')


def test_search_on_yolox_tiny_with_a_detection_loss_fitness():
    """The mmdet glue: loss-mode calibration (Taylor), adaptive BN through
    the data preprocessor, and -detection loss on held-out random data."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from mmprune import apis
    from mmprune.methods import filter_groups
    from mmprune.search import mmdet_forward, mmdet_loss
    from test_graph_mmdet import build
    tool = load_tool()
    model = build('yolox_tiny')
    model.init_weights()  # head bias priors: a finite, moderate loss
    graph = apis.analyze(model)
    cost = apis.cost_model(model, (128, 128))
    g = torch.Generator().manual_seed(0)

    def batch():
        samples = []
        for _ in range(2):
            s = DetDataSample(metainfo=dict(
                img_shape=(128, 128), ori_shape=(128, 128),
                pad_shape=(128, 128), batch_input_shape=(128, 128),
                scale_factor=(1.0, 1.0)))
            xy = torch.rand(3, 2, generator=g) * 80
            s.gt_instances = InstanceData(
                bboxes=torch.cat([xy, xy + 16 + 30 * torch.rand(
                    3, 2, generator=g)], 1),
                labels=torch.randint(0, 80, (3, ), generator=g))
            samples.append(s)
        imgs = [(torch.rand(3, 128, 128, generator=g) * 255).to(torch.uint8)
                for _ in range(2)]
        return dict(inputs=imgs, data_samples=samples)

    train, val = [batch() for _ in range(2)], [batch()]
    # a handful of backbone groups keeps the test fast
    groups = [n for n in filter_groups(graph, exclude_coupled=True)
              if n.startswith('backbone.stage4')]
    ea = EAConfig(pop_size=4, generations=1, elite=2, seed=0)
    out = tool.search_blend(
        model, graph, cost=cost, ratio=0.95, train_batches=train,
        val_batches=val, loss_fn=mmdet_loss, forward_fn=mmdet_forward,
        pool={k: dict(type=t) for k, t in (('l1', 'L1Criterion'),
                                           ('bn_scale', 'BNScaleCriterion'),
                                           ('taylor', 'TaylorCriterion'))},
        groups=groups, ea=ea, calib_batches=1, bn_batches=1)
    res = out['result']
    assert np.isfinite(res.best_fitness) and res.best_fitness < 0
    assert res.best_fitness >= res.first_best
    assert set(out['counts']) == set(groups)
    assert all(k < graph.group(n).width for n, k in out['counts'].items())
