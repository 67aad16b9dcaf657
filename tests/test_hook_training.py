"""ChannelPruningHook inside mmengine's real Runner on YOLOX-tiny.

Hard cuts in the middle of training, the EMA copy and optimizer following,
checkpoints carrying the structure, resume after a cut, ``load_from`` /
test-time loading of a pruned checkpoint, and the state-dict-only path
(``DetInferencer``) through ``PrunableDetector``.
"""
import copy
import glob
import json
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from test_graph_toy import ToyDetector, random_keep, randomise_bn
from test_stack_e2e import yolox_coco_cfg

from mmprune import apis
from mmprune.pruners import apply_compact
from mmprune.runtime.rebind import param_slices, rebind_optimizer


class _Stop(Exception):
    pass


class KillAfterEpoch(Hook):
    """Simulates a killed process: raises after the checkpoint of `epoch`
    is written (priority below CheckpointHook)."""
    priority = 'LOWEST'

    def __init__(self, epoch):
        self.epoch = epoch

    def after_train_epoch(self, runner):
        if runner.epoch + 1 == self.epoch:
            raise _Stop


def shapes(model):
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def pruning_cfg(mmdet_config, synth, work_dir, max_epochs=3, **hook):
    cfg = yolox_coco_cfg(mmdet_config, synth, work_dir, max_epochs)
    # deterministic data: no random flip, so a resumed run sees what an
    # uninterrupted one sees
    pipe = cfg.train_dataloader.dataset.pipeline
    cfg.train_dataloader.dataset.pipeline = [
        t for t in pipe if t['type'] != 'RandomFlip'
    ]
    cfg.train_dataloader.sampler = dict(type='DefaultSampler', shuffle=False)
    args = dict(
        type='ChannelPruningHook',
        target=0.5,
        begin=1,
        end=2,
        interval=1,
        input_size=(128, 128),
        min_keep=4)
    args.update(hook)
    cfg.custom_hooks = list(cfg.custom_hooks) + [args]
    return cfg


@pytest.fixture(scope='module')
def trained(tmp_path_factory, mmdet_config, synth_data):
    """One uninterrupted 3-epoch run with cuts after epochs 1 and 2."""
    work = tmp_path_factory.mktemp('full')
    cfg = pruning_cfg(mmdet_config, synth_data, work)
    # the pruning curves go to every visualizer backend: check two of them
    cfg.default_hooks.logger.interval = 1
    cfg.visualizer.vis_backends = [
        dict(type='LocalVisBackend'),
        dict(type='TensorboardVisBackend')
    ]
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner, cfg, work


def test_cuts_reach_target_and_keep_runtime_consistent(trained):
    runner, cfg, work = trained
    model = runner.model
    hook = [
        h for h in runner.hooks if type(h).__name__ == 'ChannelPruningHook'
    ][0]
    assert hook.state['events_done'] == 2
    ratio = apis.cost_model(model, (128, 128)).flops() / \
        hook.state['dense_cost']
    assert 0.45 <= ratio <= 0.5
    ema = [h for h in runner.hooks if type(h).__name__ == 'EMAHook'][0]
    assert shapes(ema.ema_model.module) == shapes(model)
    # the optimizer holds exactly the model's (new) parameters
    opt_params = {
        id(p)
        for g in runner.optim_wrapper.optimizer.param_groups
        for p in g['params']
    }
    assert opt_params == {id(p) for p in model.parameters()}
    for p, st in runner.optim_wrapper.optimizer.state.items():
        if 'momentum_buffer' in st:
            assert st['momentum_buffer'].shape == p.shape
    # paramwise_cfg (norm_decay_mult=0, bias_decay_mult=0) groups survive
    decays = {
        g['weight_decay']
        for g in runner.optim_wrapper.optimizer.param_groups
    }
    assert decays == {0.0, 5e-4}
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert 'mmprune: cut at epoch 1' in log and 'backbone.stage2' in log
    ckpt = torch.load(
        osp.join(work, 'epoch_3.pth'), map_location='cpu', weights_only=True)
    meta = ckpt['meta']['mmprune']
    assert len(meta['plans']) == 2 and meta['state']['events_done'] == 2


def test_pruning_curves_reach_scalars_and_tensorboard(trained):
    """FLOPs ratio, params and sparsity are logged every iteration (2 per
    epoch here) to scalars.json and TensorBoard, and step at the cuts."""
    from tensorboard.backend.event_processing.event_accumulator import \
        EventAccumulator
    runner, _, work = trained
    vis = osp.join(work, runner.timestamp, 'vis_data')
    rows = [json.loads(line) for line in open(osp.join(vis, 'scalars.json'))]
    rows = [r for r in rows if 'prune_flops_ratio' in r]
    ratio = [r['prune_flops_ratio'] for r in rows]
    assert [r['step'] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert ratio[0] == ratio[1] == 1.0  # dense until the cut after epoch 1
    assert ratio[2] == ratio[3] and 0.5 < ratio[2] < 1.0
    assert ratio[4] == ratio[5] and 0.45 <= ratio[4] <= 0.5
    params = [r['prune_params_M'] for r in rows]
    assert params[0] > params[2] > params[4]
    assert abs(params[4] -
               sum(p.numel() for p in runner.model.parameters()) / 1e6) < 1e-6
    sparsity = [r['prune_sparsity'] for r in rows]
    assert sparsity[0] == 0 and 0 < sparsity[2] < sparsity[4] < 1

    events = glob.glob(osp.join(vis, 'events.out.tfevents.*'))
    assert len(events) == 1
    acc = EventAccumulator(events[0])
    acc.Reload()
    for key in ('prune_flops_ratio', 'prune_params_M', 'prune_sparsity'):
        got = [(e.step, e.value) for e in acc.Scalars(key)]
        want = [(r['step'], r[key]) for r in rows]
        assert [s for s, _ in got] == [s for s, _ in want]
        assert all(
            abs(a - b) < 1e-5 * max(1, abs(b))
            for (_, a), (_, b) in zip(got, want))


def test_resume_after_cut_matches_uninterrupted(trained, tmp_path,
                                                mmdet_config, synth_data):
    full_runner, _, _ = trained
    cfg = pruning_cfg(mmdet_config, synth_data, tmp_path)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(KillAfterEpoch(1))
    with pytest.raises(_Stop):
        runner.train()
    assert len(apis.model_plans(runner.model)) == 1
    cfg2 = pruning_cfg(mmdet_config, synth_data, tmp_path)
    cfg2.resume = True
    cfg2.load_from = osp.join(str(tmp_path), 'epoch_1.pth')
    resumed = Runner.from_cfg(cfg2)
    resumed.train()
    assert resumed.epoch == 3
    assert shapes(resumed.model) == shapes(full_runner.model)
    assert [p.to_dict() for p in apis.model_plans(resumed.model)] == \
        [p.to_dict() for p in apis.model_plans(full_runner.model)]


def test_pruned_checkpoint_loads_for_test_and_inference(
        trained, tmp_path, mmdet_config, synth_data):
    runner, _, work = trained
    ckpt = osp.join(work, 'epoch_3.pth')
    # tools/test.py path: a fresh runner from the training config
    cfg = pruning_cfg(mmdet_config, synth_data, tmp_path)
    cfg.load_from = ckpt
    tester = Runner.from_cfg(cfg)
    metrics = tester.test()
    assert 'coco/bbox_mAP' in metrics
    assert shapes(tester.model) == shapes(runner.model)
    # DetInferencer path: only the state dict, into PrunableDetector
    from mmdet.registry import MODELS
    from mmengine.runner import load_checkpoint
    model = MODELS.build(dict(type='PrunableDetector', architecture=cfg.model))
    load_checkpoint(model, ckpt, map_location='cpu', strict=True)
    assert shapes(model) == shapes(runner.model)
    x = torch.rand(1, 3, 128, 128)
    runner.model.eval()
    model.eval()
    with torch.no_grad():
        a = runner.model(x, None, mode='tensor')
        b = model(x, None, mode='tensor')
    # the checkpoint holds the EMA weights swapped in by EMAHook, so compare
    # against the EMA copy
    ema = [h for h in runner.hooks if type(h).__name__ == 'EMAHook'][0]
    ema.ema_model.module.eval()
    with torch.no_grad():
        c = ema.ema_model.module(x, None, mode='tensor')
    for u, v in zip(b[0], c[0]):
        assert torch.allclose(u, v, atol=1e-5)
    assert [t.shape for t in a[0]] == [t.shape for t in b[0]]


def test_one_step_after_cut_equals_small_model_step():
    """SGD(momentum, nesterov, per-group options) one step after a cut ==
    the same step on a model built at the small size with sliced state."""
    torch.manual_seed(0)
    model = randomise_bn(ToyDetector()).train()
    x = torch.randn(4, 3, 32, 32)
    groups = [
        dict(
            params=[
                p for n, p in model.named_parameters()
                if 'bn' not in n and p.dim() > 1
            ],
            lr=0.1,
            weight_decay=5e-4),
        dict(
            params=[
                p for n, p in model.named_parameters()
                if not ('bn' not in n and p.dim() > 1)
            ],
            lr=0.05,
            weight_decay=0.0)
    ]
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)

    def step(m, o):
        o.zero_grad()
        out = m(x)
        (out[0].square().mean() + out[1].square().mean()).backward()
        o.step()

    for _ in range(3):
        step(model, opt)
    from mmprune.graph import build_channel_graph
    graph = build_channel_graph(model, model, [x])
    keep = random_keep(graph, 0.5, seed=5)
    old = dict(model.named_parameters())
    old_state = {
        n: opt.state[p]['momentum_buffer'].clone()
        for n, p in old.items()
    }
    index_map = apply_compact(model, graph, keep)
    new = dict(model.named_parameters())
    slices = param_slices(graph, index_map)
    rebind_optimizer(opt, old, new, slices)
    # reference: a fresh small model with the same weights and sliced state
    small = copy.deepcopy(model)
    ref_groups = [
        dict(
            params=[
                dict(small.named_parameters())[n] for n, p in new.items()
                if any(p is q for q in g['params'])
            ],
            lr=g['lr'],
            weight_decay=g['weight_decay']) for g in opt.param_groups
    ]
    ref = torch.optim.SGD(ref_groups, lr=0.1, momentum=0.9, nesterov=True)
    for n, p in small.named_parameters():
        buf = old_state[n]
        for dim, idx in slices.get(n, ()):
            buf = buf.index_select(dim, idx)
        ref.state[p]['momentum_buffer'] = buf.clone()
    step(model, opt)
    step(small, ref)
    for (n, p), (_, q) in zip(model.named_parameters(),
                              small.named_parameters()):
        assert torch.equal(p, q), n
    assert [g['lr'] for g in opt.param_groups] == [0.1, 0.05]


def test_det_inferencer_loads_pruned_checkpoint(trained, tmp_path):
    """mmdet's own DetInferencer, given the training config with the model
    wrapped in PrunableDetector, rebuilds the pruned model from the state
    dict alone and predicts."""
    import numpy as np
    from mmdet.apis import DetInferencer
    runner, cfg, work = trained
    cfg = copy.deepcopy(cfg)
    cfg.model = dict(type='PrunableDetector', architecture=cfg.model)
    path = str(tmp_path / 'infer_cfg.py')
    cfg.dump(path)
    inferencer = DetInferencer(
        model=path,
        weights=osp.join(work, 'epoch_3.pth'),
        device='cpu',
        show_progress=False)
    assert shapes(inferencer.model) == shapes(runner.model)
    img = (np.random.default_rng(0).random(
        (128, 128, 3)) * 255).astype(np.uint8)
    out = inferencer(img, return_datasamples=True)
    pred = out['predictions'][0].pred_instances
    assert pred.bboxes.shape[-1] == 4 and len(pred.scores) > 0


def test_latency_table_is_measured_once_and_kept_on_resume(
        tmp_path, mmdet_config, synth_data, monkeypatch):
    """A latency-aware allocator gets a table measured before training; it
    goes into the checkpointed state, and a resumed run reuses it instead
    of timing again (a new timing could reorder channels)."""
    from mmprune.costs.latency_table import LatencyTable
    alloc = dict(
        type='AdaptiveAllocator', cost_weight=1.0, cost_measure='latency')
    cfg = pruning_cfg(mmdet_config, synth_data, tmp_path, allocator=alloc)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(KillAfterEpoch(1))
    with pytest.raises(_Stop):
        runner.train()
    hook = [
        h for h in runner.hooks if type(h).__name__ == 'ChannelPruningHook'
    ][0]
    table = hook.state['latency']
    assert table is not None
    pools = [n for n in table['entries'] if '.poolings.' in n]
    assert len(pools) == 3 and all(table['entries'][n]['kind'] == 'pass'
                                   for n in pools)
    ckpt = torch.load(
        osp.join(str(tmp_path), 'epoch_1.pth'),
        map_location='cpu',
        weights_only=True)
    assert ckpt['meta']['mmprune']['state']['latency'] == table
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert 'mmprune: latency table of' in log

    def no_timing(*a, **k):
        raise AssertionError('the resumed run timed the model again')

    monkeypatch.setattr(LatencyTable, 'measure', no_timing)
    cfg2 = pruning_cfg(mmdet_config, synth_data, tmp_path, allocator=alloc)
    cfg2.resume = True
    cfg2.load_from = osp.join(str(tmp_path), 'epoch_1.pth')
    resumed = Runner.from_cfg(cfg2)
    resumed.train()
    hook2 = [
        h for h in resumed.hooks if type(h).__name__ == 'ChannelPruningHook'
    ][0]
    assert hook2.state['latency'] == table
    assert hook2.state['events_done'] == 2
    ratio = apis.cost_model(resumed.model, (128, 128)).flops() / \
        hook2.state['dense_cost']
    assert ratio <= 0.5 + 1e-9
