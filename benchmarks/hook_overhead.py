"""Cost of ChannelPruningHook itself (issue: prune-while-training overhead).

    .venv/bin/python benchmarks/hook_overhead.py \
        [--out benchmarks/results/hook_overhead.json]

Measures, on CPU, in one process (ratios are taken within this one run):

1. ``masked_iter_ratio``: a training iteration of YOLOX-tiny (batch 2,
   320 px) with the hook in a masked (soft) phase, over one without the
   hook (median of N iterations each, alternating blocks to share noise);
   ``masked_iter`` also holds the hook's own median time per iteration
   (``hook_ms``) and the plain iteration's (``step_ms``);
2. ``event_seconds``: one hard prune event (trace, score, allocate to 50 %
   FLOPs, cut, rebind optimizer) on YOLOX-s at 640 px;
3. ``prune_run_ratio``: wall time of a short YOLOX-tiny training run
   (32 synthetic images, 320 px, 4 epochs) that prunes to 50 % FLOPs after
   its first epoch, over the dense run with the same epochs; with the
   hook's default allocator, and as ``prune_run_ratio_latency_aware`` with
   the speed setting a user who wants the time back sets (latency-aware
   order, ``round_to=16``; ``benchmarks.graph_and_speed.SETTINGS``).
"""
import argparse
import json
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def build(cfg_name):
    import warnings

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import mmprune  # noqa: F401
    from mmprune.apis import load_config
    from mmprune.utils.offline import check_offline_weights
    register_all_modules()
    cfg = load_config(cfg_name)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        check_offline_weights(cfg)
    cfg.model.data_preprocessor.batch_augments = None
    return MODELS.build(cfg.model)


class FakeRunner:
    """What the hook touches of a Runner, for timing outside mmengine's
    loop (the optimizer wrapper is real)."""

    def __init__(self, model, optim_wrapper):
        import logging

        from mmengine.logging import MessageHub
        self.model, self.optim_wrapper = model, optim_wrapper
        self.hooks, self.epoch, self.iter = [], 0, 0
        self.logger = logging.getLogger('bench')
        self.message_hub = MessageHub.get_instance('bench')
        self.max_epochs = self.max_iters = 10**6


def train_step(model, wrapper, batch):
    with wrapper.optim_context(model):
        losses = model(*batch, mode='loss')
    loss = sum(v for k, v in losses.items()
               if 'loss' in k and not isinstance(v, list))
    wrapper.update_params(loss)


def fake_batch(n, size, num_classes=80):
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=gen)
    samples = []
    for _ in range(n):
        s = DetDataSample(
            metainfo=dict(
                img_shape=(size, size),
                batch_input_shape=(size, size),
                pad_shape=(size, size),
                scale_factor=(1., 1.)))
        inst = InstanceData()
        inst.bboxes = torch.tensor([[10., 20., 120., 160.],
                                    [150., 40., 300., 300.]])
        inst.labels = torch.tensor([1, 5])
        s.gt_instances = inst
        samples.append(s)
    return x, samples


def masked_iteration_ratio(iters, size=320):
    import torch
    from mmengine.optim import OptimWrapper

    from mmprune.hooks import ChannelPruningHook
    model = build('mmdet::yolox/yolox_tiny_8xb8-300e_coco.py').train()
    wrapper = OptimWrapper(
        torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9))
    batch = fake_batch(2, size)
    runner = FakeRunner(model, wrapper)
    hook = ChannelPruningHook(target=0.5, soft=True, input_size=(size, size))
    hook.before_run(runner)
    hook.state['dense_cost'] = hook._cost(model)
    hook._event(runner)  # select + mask; the masked phase starts
    assert hook._mask is not None and len(hook._mask) > 0
    for _ in range(2):
        train_step(model, wrapper, batch)
    plain, hooked, hook_only = [], [], []
    for _ in range(iters):
        for times, with_hook in ((plain, False), (hooked, True)):
            t = time.perf_counter()
            train_step(model, wrapper, batch)
            if with_hook:
                t_hook = time.perf_counter()
                hook.after_train_iter(runner, 0)
                hook_only.append(time.perf_counter() - t_hook)
            times.append(time.perf_counter() - t)
    # the ratio of two noisy medians swings by several % at 5-10
    # iterations on a shared machine; the hook's own time per iteration
    # (mask + optimizer-state zeroing) over a plain iteration is the same
    # overhead without the step-to-step noise, so both are reported
    return statistics.median(hooked) / statistics.median(plain), dict(
        hook_ms=statistics.median(hook_only) * 1e3,
        step_ms=statistics.median(plain) * 1e3)


def event_seconds(config='mmdet::yolox/yolox_s_8xb8-300e_coco.py', size=640):
    import torch
    from mmengine.optim import OptimWrapper

    from mmprune.hooks import ChannelPruningHook
    model = build(config).train()
    wrapper = OptimWrapper(
        torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9))
    runner = FakeRunner(model, wrapper)
    hook = ChannelPruningHook(target=0.5, input_size=(size, size))
    hook.before_run(runner)
    hook.state['dense_cost'] = hook._cost(model)  # done once, before_train
    t = time.perf_counter()
    hook._event(runner)
    return time.perf_counter() - t


def _run_cfg(data, work, epochs, size, prune, allocator=None):
    """YOLOX-tiny from mmdet's config on the synthetic COCO set."""
    import warnings

    from mmprune.apis import load_config
    from mmprune.utils.offline import check_offline_weights
    cfg = load_config('mmdet::yolox/yolox_tiny_8xb8-300e_coco.py')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        check_offline_weights(cfg)
    cfg.model.bbox_head.num_classes = len(data['classes'])
    cfg.model.data_preprocessor.batch_augments = None
    pipe = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='Resize', scale=(size, size), keep_ratio=True),
        dict(
            type='Pad',
            size=(size, size),
            pad_val=dict(img=(114., 114., 114.))),
        dict(type='PackDetInputs')
    ]
    cfg.train_dataloader = dict(
        batch_size=4,
        num_workers=0,
        persistent_workers=False,
        sampler=dict(type='DefaultSampler', shuffle=True),
        dataset=dict(
            type='CocoDataset',
            data_root=data['coco_root'],
            ann_file='annotations/instances_train2017.json',
            data_prefix=dict(img='train2017/'),
            metainfo=dict(classes=tuple(data['classes'])),
            pipeline=pipe))
    cfg.train_cfg = dict(
        type='EpochBasedTrainLoop', max_epochs=epochs, val_interval=10**6)
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.param_scheduler = []
    cfg.custom_hooks = [
        h for h in cfg.custom_hooks if h['type'] != 'YOLOXModeSwitchHook'
    ]
    if prune:
        hook = dict(
            type='ChannelPruningHook',
            target=0.5,
            begin=1,
            end=1,
            input_size=(size, size))
        if allocator is not None:
            hook['allocator'] = allocator
        cfg.custom_hooks.append(hook)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10**6)
    cfg.work_dir = work
    cfg.visualizer.pop('name', None)
    return cfg


def prune_run_ratio(epochs=4,
                    size=320,
                    num_train=32,
                    settings=('latency_aware', ),
                    repeats=2):
    """Wall time of training that cuts to 50 % FLOPs after epoch 1, over
    the dense run with the same epochs (all built the same way): returns
    (ratio with the default allocator, {run: mean seconds}); ``settings``
    adds runs with those allocator settings of ``graph_and_speed.SETTINGS``.
    Each run is repeated ``repeats`` times, in reversed order every other
    time, since one 30 s run on a shared machine varies by about 10 %."""
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner

    from benchmarks.graph_and_speed import SETTINGS
    from mmprune.datasets import make_synthetic_dataset
    register_all_modules(init_default_scope=False)
    tmp = tempfile.mkdtemp()
    data = make_synthetic_dataset(
        osp.join(tmp, 'synth'),
        num_train=num_train,
        num_val=4,
        size=size,
        seed=0)
    runs = dict(dense=(False, None), pruned=(True, None))
    runs.update({s: (True, dict(SETTINGS[s])) for s in settings})
    times = {name: [] for name in runs}
    for rep in range(repeats):
        order = list(runs) if rep % 2 == 0 else list(runs)[::-1]
        for name in order:
            prune, alloc = runs[name]
            cfg = _run_cfg(data, osp.join(tmp, f'{name}{rep}'), epochs, size,
                           prune, alloc)
            runner = Runner.from_cfg(cfg)
            t = time.perf_counter()
            runner.train()
            times[name].append(time.perf_counter() - t)
    mean = {name: statistics.mean(v) for name, v in times.items()}
    return mean['pruned'] / mean['dense'], mean


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--out', default='benchmarks/results/hook_overhead.json')
    a = p.parse_args()
    import torch
    res = dict(
        machine=dict(platform=platform.platform(), cpus=os.cpu_count()),
        torch=torch.__version__,
        commit=subprocess.run(['git', 'rev-parse', 'HEAD'],
                              capture_output=True,
                              text=True).stdout.strip())
    res['masked_iter_ratio'], res['masked_iter'] = masked_iteration_ratio(
        a.iters)
    res['event_seconds'] = event_seconds()
    ratio, times = prune_run_ratio()
    res['prune_run_ratio'] = ratio
    res['prune_run_ratio_latency_aware'] = times['latency_aware'] / \
        times['dense']
    res['prune_run_seconds'] = times
    print(json.dumps(res, indent=1))
    from mmprune.utils.io import write_json_atomic
    write_json_atomic(res, a.out, indent=1)


if __name__ == '__main__':
    main()
