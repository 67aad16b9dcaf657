"""BPC blend search: the EA (determinism, elitism, strict improvement on a
constructed fitness, budget), adaptive BN (also under mmdet's
``norm_eval``), the masked evaluator, HRank's activation taken from the
traced graph, and the whole search (``mmprune.search.search_blend``) on a
small trained net, on YOLOX-tiny with the detection-loss fitness (searched
factors beat the uniform blend without it being seeded), and through
``tools/search_blend.py`` on Faster R-CNN."""
import importlib.util
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_stack_e2e import coco_dataset

from mmprune.costs.flops import CostModel
from mmprune.criteria import BlendedCriterion
from mmprune.graph import build_channel_graph
from mmprune.search import (BlendSearchConfig, EAConfig, MaskedEvaluator,
                            adaptive_bn, calibrate_pool, evolve, search_blend)
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
    return -float(np.sum((g - TARGET)**2))


def test_ea_is_deterministic_under_a_seed():
    cfg = EAConfig(pop_size=10, generations=6, elite=3, seed=7)
    a = evolve(quadratic, 5, cfg)
    b = evolve(quadratic, 5, cfg)
    assert np.array_equal(a.best, b.best)
    assert a.history == b.history and a.evaluations == b.evaluations
    c = evolve(quadratic, 5,
               EAConfig(pop_size=10, generations=6, elite=3, seed=8))
    assert not np.array_equal(a.best, c.best)


def test_ea_strictly_beats_its_one_hot_seeds_and_keeps_elites():
    seeds = [np.eye(5)[i] for i in range(5)] + [np.ones(5)]
    best_seed = max(quadratic(s) for s in seeds)
    res = evolve(
        quadratic,
        5,
        EAConfig(pop_size=16, generations=15, elite=4, seed=0),
        seeds=seeds)
    assert res.first_best >= best_seed  # generation 0 holds the seeds
    assert res.best_fitness > res.first_best  # strictly better
    assert res.best_fitness > -0.05 and np.all((res.best >= 0)
                                               & (res.best <= 1))
    bests = [h['best'] for h in res.history]
    assert all(b >= a for a, b in zip(bests, bests[1:]))  # elitism
    assert len(res.history) == 16
    # identical genomes are evaluated once (elites are cached)
    assert res.evaluations <= 16 + 15 * 12


def test_ea_config_is_validated():
    for kwargs, arg in ((dict(pop_size=1), 'pop_size'),
                        (dict(elite=32), 'elite'), (dict(crossover_p=1.5),
                                                    'crossover_p'),
                        (dict(mutation_sigma=-1),
                         'mutation_sigma'), (dict(low=1, high=0), 'low')):
        with pytest.raises(ValueError, match=arg):
            EAConfig(**kwargs)
    with pytest.raises(ValueError, match='dim'):
        evolve(quadratic, 0)
    with pytest.raises(ValueError, match='seed genomes'):
        evolve(
            quadratic,
            5,
            EAConfig(pop_size=4, elite=1, generations=0),
            seeds=[np.ones(3)])
    # a NaN fitness ranks last instead of poisoning the population
    res = evolve(lambda g: float('nan') if g[0] > 0.5 else -g[0], 2,
                 EAConfig(pop_size=6, elite=2, generations=3))
    assert res.best[0] <= 0.5 and np.isfinite(res.best_fitness)


def test_ea_budget_stops_early_and_keeps_the_best():
    cfg = dict(pop_size=10, generations=20, elite=3, seed=3)
    full = evolve(quadratic, 5, EAConfig(**cfg))
    assert full.stopped == 'generations' and full.evaluations > 40
    capped = evolve(quadratic, 5, EAConfig(max_evals=14, **cfg))
    assert capped.stopped == 'max_evals' and capped.evaluations == 14
    # same seed: the capped run is a prefix of the full one, and its best
    # is the best of those 14 genomes
    assert capped.first_best == full.first_best
    assert len(capped.history) == 1  # generation 1 was cut short
    assert capped.best_fitness >= capped.history[0]['best']
    assert quadratic(capped.best) == capped.best_fitness

    import time

    def slow(g):
        time.sleep(0.02)
        return quadratic(g)

    timed = evolve(slow, 5, EAConfig(time_budget_s=0.1, **cfg))
    assert timed.stopped == 'time_budget'
    assert 1 <= timed.evaluations <= 10 and timed.seconds < 1.0
    for bad, arg in ((dict(max_evals=0), 'max_evals'), (dict(time_budget_s=-1),
                                                        'time_budget_s')):
        with pytest.raises(ValueError, match=arg):
            EAConfig(**bad)


# ---------------------------------------------------------- plumbing
def test_adaptive_bn_recomputes_statistics_from_batches():
    bn = nn.BatchNorm2d(3, momentum=0.03)
    model = nn.Sequential(nn.Conv2d(3, 3, 1), bn)
    bn.running_mean.fill_(5.0)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 5, 5, generator=g) * 2 + 1 for _ in range(3)]
    model.eval()
    used = adaptive_bn(model, batches + batches, lambda m, b: m(b), 3)
    # modes and momentum are restored
    assert used == 3 and not model.training and not bn.training
    assert bn.momentum == 0.03
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    want_mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    want_var = torch.stack(
        [f.transpose(0, 1).reshape(3, -1).var(1) for f in feats]).mean(0)
    assert torch.allclose(bn.running_mean, want_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, want_var, atol=1e-5)
    with pytest.raises(ValueError, match='no batch'):
        adaptive_bn(model, [], lambda m, b: m(b))


class Net(nn.Module):

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.c2 = nn.Sequential(
            nn.Conv2d(16, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24))
        self.c3 = nn.Sequential(
            nn.Conv2d(24, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24))
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
    scores = {
        g.name: torch.arange(g.width, dtype=torch.float32)
        for g in graph.prunable_groups()
    }
    keep = ev.keep_from_scores(scores)
    assert keep['c1.0'].tolist() == list(range(8, 16))
    f = ev(scores)
    assert np.isfinite(f) and f < neg_loss(model)  # pruning costs something
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match='outside'):
        MaskedEvaluator(model, graph, {'c1.0': 0}, neg_loss, train, forward)


TOY_POOL = {
    k: dict(type=t)
    for k, t in (('l1', 'L1Criterion'), ('fpgm', 'FPGMCriterion'),
                 ('bn_scale', 'BNScaleCriterion'),
                 ('taylor', 'TaylorCriterion'), ('hrank', 'HRankCriterion'))
}


def toy_search(model, graph, cost, train, val, **options):
    opts = dict(
        pool=TOY_POOL,
        pop_size=8,
        generations=4,
        elite=2,
        calib_batches=4,
        bn_batches=3,
        fitness_images=128)
    opts.update(options)
    return search_blend(
        model,
        graph, [g.name for g in graph.prunable_groups()],
        train,
        val,
        cost=cost,
        allocator=dict(type='UniformAllocator', ratio=0.5, min_keep=2),
        options=opts,
        loss_fn=ce_loss,
        forward_fn=forward)


def test_search_improves_fitness_and_writes_a_usable_blend(trained, tmp_path):
    from mmengine.config import Config
    tool = load_tool()
    model, graph, cost, train, val = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = toy_search(model, graph, cost, train, val)
    rep = out.report
    # generation 0 holds every one-hot blend and the uniform one; the EA
    # never does worse than the best of them (elitism) ...
    bests = [h['best'] for h in rep['history']]
    assert rep['best_fitness'] >= rep['first_best'] >= \
        rep['uniform_fitness']
    assert all(b >= a for a, b in zip(bests, bests[1:]))
    # ... and the blend is a real ranking: different genomes, different
    # fitness (so the search has something to find)
    assert rep['history'][0]['mean'] < rep['history'][0]['best']
    assert rep['stopped'] == 'generations' and rep['generations_run'] == 4
    assert rep['evaluations'] <= 8 + 4 * 6 and rep['seconds'] > 0
    assert rep['heldout_images'] == 128 and rep['bn_batches'] == 3
    again = toy_search(model, graph, cost, train, val)
    assert again.report['best_fitness'] == rep['best_fitness']  # seeded
    assert again.blend == out.blend
    # the dense model is untouched by the search
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training  # as it went in
    capped = toy_search(model, graph, cost, train, val, max_evals=5)
    assert capped.report['stopped'] == 'max_evals'
    assert capped.report['evaluations'] == 5

    # the snippet is a config file whose blend builds a criterion that
    # reproduces the searched scores
    path = str(tmp_path / 'blend.py')
    write_text_atomic(path, tool.blend_source(out.blend, ['test run']))
    cfg = Config.fromfile(path)
    crit = BlendedCriterion(**cfg.blend)
    assert set(crit.members) <= set(TOY_POOL)
    got = calibrate_pool(model, graph, {'blend': crit}, train, ce_loss,
                         4)['blend']
    for name in got:
        assert torch.allclose(got[name], out.scores[name]), name
    assert set(cfg.blend['alphas']) >= {'c1', 'c2', '*'}


def test_search_options_are_validated(trained):
    tool = load_tool()
    base = ['cfg.py', 'ckpt.pth', '--out', 'b.py']
    with pytest.raises(SystemExit):
        tool.parse_args(base + ['--flops-ratio', '1.5'])
    with pytest.raises(SystemExit):
        tool.parse_args(base + ['--flops-ratio', '0.5', '--bn-batches', '0'])
    with pytest.raises(SystemExit):
        tool.parse_args(base + ['--flops-ratio', '0.5', '--max-evals', '0'])
    args = tool.parse_args(base + ['--flops-ratio', '0.5'])
    assert args.pop_size == 32 and args.generations == 20 and \
        args.elite == 8 and args.mutation_sigma == 0.2
    # the preset's options are all understood
    from mmprune.methods import get_method
    cfg = BlendSearchConfig.from_options(get_method('bpc').options['search'])
    assert cfg.pop_size == 32 and cfg.calib_batches == 32
    for bad, arg in ((dict(popsize=3),
                      'popsize'), (dict(fitness='map'),
                                   'fitness'), (dict(pool=['l3']), 'l3'),
                     (dict(bn_batches=0), 'bn_batches'), (dict(max_evals=0),
                                                          'max_evals')):
        with pytest.raises(ValueError, match=arg):
            BlendSearchConfig.from_options(bad)
    model, graph, cost, train, val = trained
    with pytest.raises(ValueError, match='not prunable'):
        search_blend(
            model,
            graph, ['nope'],
            train,
            val,
            cost=cost,
            allocator=dict(type='UniformAllocator'))
    with pytest.raises(ValueError, match='groups is empty'):
        search_blend(
            model,
            graph, [],
            train,
            val,
            cost=cost,
            allocator=dict(type='UniformAllocator'))
    with pytest.raises(ValueError, match='heldout_data'):
        search_blend(
            model,
            graph, ['c1.0'],
            train, [],
            cost=cost,
            allocator=dict(type='UniformAllocator'),
            options=dict(pool=['l1']),
            loss_fn=ce_loss)


# ------------------------------------------------------------- mmdet
def det_batch(g, size=96, n=2, num_classes=80):
    """One mmdet data batch of random images with 3 random boxes each."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    samples = []
    for _ in range(n):
        s = DetDataSample(
            metainfo=dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size),
                batch_input_shape=(size, size),
                scale_factor=(1.0, 1.0)))
        xy = torch.rand(3, 2, generator=g) * (size * 0.6)
        s.gt_instances = InstanceData(
            bboxes=torch.cat(
                [xy, xy + size / 8 + size / 4 * torch.rand(3, 2, generator=g)],
                1),
            labels=torch.randint(0, num_classes, (3, ), generator=g))
        samples.append(s)
    imgs = [(torch.rand(3, size, size, generator=g) * 255).to(torch.uint8)
            for _ in range(n)]
    return dict(inputs=imgs, data_samples=samples)


def test_adaptive_bn_reestimates_norm_eval_resnet():
    """mmdet's ResNet with norm_eval=True keeps its BNs in eval mode under
    model.train(); adaptive BN must still re-estimate their statistics."""
    from test_graph_mmdet import build

    from mmprune.search import mmdet_forward
    model = build('retinanet_r18')
    assert model.backbone.norm_eval  # mmdet's default for RetinaNet
    model.train()
    bn = model.backbone.layer2[0].bn1
    assert not bn.training  # what norm_eval does
    seen = []
    handle = bn.register_forward_pre_hook(
        lambda m, inputs: seen.append(inputs[0].detach().clone()))
    try:
        batch = det_batch(torch.Generator().manual_seed(0), size=64)
        adaptive_bn(model, [batch], mmdet_forward)
    finally:
        handle.remove()
    x = seen[0].transpose(0, 1).reshape(bn.num_features, -1)
    assert torch.allclose(bn.running_mean, x.mean(1), atol=1e-5)
    assert torch.allclose(bn.running_var, x.var(1), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(bn.running_var, torch.ones_like(
        bn.running_var))  # not the reset value
    # modes and momenta are as before
    assert model.training and not bn.training
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 1


def test_hrank_takes_the_activation_from_the_graph_yolox():
    """YOLOX's activation is Swish (SiLU): HRank ranks silu(BN output),
    not relu(BN output), without being told."""
    from test_graph_mmdet import build

    from mmprune import apis
    from mmprune.criteria import HRankCriterion
    from mmprune.search import mmdet_forward
    model = build('yolox_tiny')
    graph = apis.analyze(model)
    crit = HRankCriterion()
    crit.attach(model, graph)
    unit = 'backbone.stage4.0'  # a ConvModule; stride 32: 2x2 maps at 64 px
    group = graph.group(f'{unit}.conv')
    bn = f'{unit}.bn'
    assert crit.site_activation[bn] == f'{unit}.activate'
    # a CSP block's inner conv gets its own activation, not the stream's
    assert crit.site_activation['backbone.stage2.1.blocks.0.conv2.bn'] == \
        'backbone.stage2.1.blocks.0.conv2.activate'
    act = dict(model.named_modules())[f'{unit}.activate']
    assert type(act).__name__ in ('Swish', 'SiLU')
    seen = []
    handle = dict(model.named_modules())[bn].register_forward_hook(
        lambda m, i, out: seen.append(out.detach().clone()))
    try:
        with torch.no_grad():
            mmdet_forward(
                model,
                det_batch(torch.Generator().manual_seed(1), size=64, n=4))
    finally:
        handle.remove()
        crit.detach()
    got = crit.score_group(model, group)
    (site, ) = [m for m in group.members if m.module == bn]
    pos = torch.as_tensor(site.positions)

    def ranks(fn):
        r = torch.linalg.matrix_rank(fn(seen[0])[:, pos]).double().mean(0)
        out = torch.zeros(group.width, dtype=torch.float64)
        out[torch.as_tensor(site.group_index)] = r
        return out.float()

    assert torch.allclose(got, ranks(F.silu))
    assert not torch.allclose(got, ranks(F.relu))  # the old hard-coding
    # an explicit choice still wins
    forced = HRankCriterion(activation='relu')
    forced.attach(model, graph)
    assert forced.site_activation[bn] == 'relu'
    forced.detach()


YOLOX_GROUPS = r'^backbone\.stage[34]'


def test_bpc_search_beats_the_uniform_blend_on_yolox_tiny():
    """The whole method on YOLOX-tiny with the real fitness (-detection
    loss after adaptive BN on the masked model). The uniform blend is NOT
    in the initial population, so elitism cannot carry it: the searched
    factors must score strictly better than uniform and differ from it.
    The correlated norm criteria (L1, L2) fall into one cluster, so no
    stage searches both."""
    import re

    from test_graph_mmdet import build

    from mmprune import apis
    from mmprune.criteria.blended import DEFAULT_POOL
    from mmprune.methods import filter_groups, get_method
    model = build('yolox_tiny')
    model.init_weights()  # head bias priors: a finite, moderate loss
    model.train()  # as at a training event
    graph = apis.analyze(model)
    cost = apis.cost_model(model, (96, 96))
    names = [
        n for n in filter_groups(graph,
                                 **get_method('bpc').groups)
        if re.match(YOLOX_GROUPS, n)
    ]
    g = torch.Generator().manual_seed(0)
    calib, heldout = [det_batch(g) for _ in range(2)], [det_batch(g)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = search_blend(
        model,
        graph,
        names,
        calib,
        heldout,
        cost=cost,
        allocator=dict(type='UniformAllocator', ratio=0.9, min_keep=4),
        options=dict(
            get_method('bpc').options['search'],
            pop_size=6,
            generations=2,
            elite=2,
            calib_batches=2,
            bn_batches=1,
            fitness_images=2,
            seed_uniform=False,
            max_evals=14),
        seed=0)
    rep = out.report
    assert set(out.scores) == set(names)
    assert all(rep['counts'][n] < graph.group(n).width for n in names)
    # clustering: L1 and L2 rank alike here, so they share a cluster in
    # most groups and only their medoid can be a candidate
    assert set(out.blend['criteria']) < set(DEFAULT_POOL)
    together = [
        g for g in rep['clusters']['groups'].values()
        if any({'l1', 'l2'} <= set(c) for c in g['clusters'])
    ]
    assert len(together) >= len(names) // 2
    for stage, cands in rep['clusters']['stages'].items():
        assert not {'l1', 'l2'} <= set(cands), stage
    # the search beats the uniform blend, which it never saw
    assert np.isfinite(rep['uniform_fitness'])
    assert rep['best_fitness'] > rep['uniform_fitness']
    assert not np.allclose(rep['best_genome'], 1.0)
    stage_alphas = {s: w for s, w in out.blend['alphas'].items() if s != '*'}
    assert any(len(set(w.values())) > 1 for w in stage_alphas.values())
    assert rep['evaluations'] <= 14 and rep['seconds_per_eval'] > 0
    # the model is as it was: weights, statistics and train/eval flags
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and model.backbone.stem.conv.bn.training
    assert all(p.grad is None for p in model.parameters())


def test_search_tool_on_faster_rcnn(tmp_path, mmdet_config, synth_data):
    """tools/search_blend.py on Faster R-CNN R50 (frozen stage 1,
    norm_eval) at 128 px: groups are filtered before the pool is scored, so
    HRank never meets the RoI head's fully connected groups (scoring them
    raised 'HRankCriterion saw no spatial output')."""
    import json

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = mmdet_config('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')
    size = (128, 128)
    classes = tuple(synth_data['classes'])
    cfg.model.roi_head.bbox_head.num_classes = len(classes)

    def coco(split, test_mode):
        pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='Resize', scale=size, keep_ratio=True),
            dict(type='PackDetInputs')
        ]
        return coco_dataset(synth_data['coco_root'], classes, split, pipeline,
                            test_mode)

    def loader(dataset, batch_size):
        return dict(
            batch_size=batch_size,
            num_workers=0,
            persistent_workers=False,
            sampler=dict(type='DefaultSampler', shuffle=False),
            dataset=dataset)

    cfg.train_dataloader = loader(coco('train', False), 2)
    cfg.val_dataloader = loader(coco('val', True), 1)
    cfg_path, ckpt = str(tmp_path / 'frcnn.py'), str(tmp_path / 'w.pth')
    cfg.dump(cfg_path)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    torch.save(dict(state_dict=model.state_dict()), ckpt)
    out_py = str(tmp_path / 'blend.py')
    tool = load_tool()
    res = tool.main([
        cfg_path, ckpt, '--flops-ratio', '0.95', '--out', out_py,
        '--input-size', '128', '128', '--pop-size', '2', '--generations', '0',
        '--elite', '1', '--calib-batches', '1', '--bn-batches', '1',
        '--fitness-images', '1', '--min-keep', '2'
    ])
    report = json.load(open(str(tmp_path / 'blend.json')))
    # the preset's filter leaves the RoI head out (HRank has no score for
    # its fully connected layers); nothing else needs to be left out
    assert len(report['groups']) > 20 and not any(
        n.startswith('roi_head') for n in report['groups'])
    assert set(res.scores) == set(report['groups'])
    assert report['search']['evaluator_calls'] >= 1
    assert np.isfinite(report['search']['best_fitness'])
    blend = Config.fromfile(out_py).blend
    assert set(blend['criteria']) <= {
        'l1', 'l2', 'fpgm', 'bn_scale', 'taylor', 'hrank'
    }
    BlendedCriterion(**blend)  # a usable criterion config
