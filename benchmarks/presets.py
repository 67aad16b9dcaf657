"""How big each benchmark suite is: the ``--preset`` table.

* ``smoke``: every code path once, in a few minutes (tests, development);
* ``quick``: the ``make bench`` default, sized for roughly 30-40 min on a
  2-core CPU machine: YOLOX-tiny at 160 px on a few hundred synthetic
  images, 50 % FLOPs only, one seed; the ResNet model only for coupled vs
  fine residual mode;
* ``full``: everything the benchmark issue asks for (both models, every
  method, budgets 30/50/70 %, two seeds, the harder data). Hours on a CPU.

A quality run trains from scratch (no pretrained weights can be fetched
offline) for ``epochs`` in total (a model may override it), whatever the
method: pruning methods cut while training and fine-tune in the remaining
epochs (:mod:`benchmarks.methods`).

Why ``quick`` uses the 'easy' data profile: on the 'hard' profile a
handful of CPU epochs leaves every method near 0 mAP (the first demo,
hard data, 10 epochs x 200 images at 320 px: mAP 0.004), so methods could
not be told apart at all. ``full`` uses 'hard' and a larger split, as the
issue asks; ``--difficulty`` overrides either.
"""
import copy

#: the methods of the quality suite, in table order (see benchmarks.methods)
YOLOX_METHODS = ('dense', 'l1_uniform', 'tp_magnitude', 'tp_taylor',
                 'acp_tp', 'bpc', 'fcp', 'gcp_frs')
RESNET_MODES = ('l1_coupled', 'l1_fine')

#: the graph-analysis comparison of the issue (tools suite)
TOOLS_GRAPH_MODELS = ('yolox_s', 'yolox_l', 'retinanet_r50',
                      'faster_rcnn_r50')

PRESETS = {
    'smoke': dict(
        quality=dict(
            data=dict(difficulty='easy', size=128, num_train=16, num_val=8,
                      num_classes=10, seed=0),
            epochs=2, batch_size=4, budgets=(0.5, ), seeds=(0, ),
            models=dict(
                yolox_tiny=dict(methods=('dense', 'l1_uniform', 'tp_taylor',
                                         'fcp')),
                retinanet_r18=dict(methods=('dense', 'l1_fine'))),
            latency_runs=5),
        speed=dict(models=dict(yolox_tiny=(128, 128)), batches=(1, 2),
                   modes=('coupled', 'fine'), settings=('default', ),
                   budget=0.5, runs=3),
        tools=dict(graph_models=('yolox_tiny', ),
                   hook=dict(iters=2, event_config='yolox_tiny',
                             event_size=128, run_epochs=2, run_size=128,
                             run_images=8, run_repeats=1))),
    'quick': dict(
        quality=dict(
            data=dict(difficulty='easy', size=160, num_train=320,
                      num_val=80, num_classes=10, seed=0),
            epochs=8, batch_size=8, budgets=(0.5, ), seeds=(0, ),
            models=dict(
                yolox_tiny=dict(methods=YOLOX_METHODS),
                # an iteration of RetinaNet R18-FPN costs 2.5-3.5 of
                # YOLOX-tiny's at 160 px (8x its FLOPs; its head has four
                # 256-channel 3x3 convs per branch and level): fewer epochs
                # keep the preset near 40 min
                retinanet_r18=dict(methods=('dense', ) + RESNET_MODES,
                                   epochs=3)),
            latency_runs=20),
        speed=dict(models=dict(yolox_tiny=(416, 416),
                               retinanet_r18=(320, 320)),
                   batches=(1, 8), modes=('coupled', 'fine'),
                   settings=('default', 'cost_aware', 'latency_aware'),
                   budget=0.5, runs=5),
        tools=dict(graph_models=TOOLS_GRAPH_MODELS,
                   hook=dict(iters=10))),
    'full': dict(
        quality=dict(
            data=dict(difficulty='hard', size=256, num_train=2000,
                      num_val=500, num_classes=20, seed=0),
            epochs=30, batch_size=8, budgets=(0.5, 0.3, 0.7), seeds=(0, 1),
            models=dict(
                yolox_tiny=dict(methods=YOLOX_METHODS),
                retinanet_r18=dict(methods=YOLOX_METHODS + RESNET_MODES)),
            latency_runs=30),
        speed=dict(models=dict(yolox_tiny=(416, 416), yolox_s=(640, 640),
                               retinanet_r18=(512, 512),
                               retinanet_r50=(512, 512)),
                   batches=(1, 8), modes=('coupled', 'fine'),
                   settings=('default', 'speed', 'cost_aware',
                             'latency_aware'), budget=0.5, runs=7),
        tools=dict(graph_models=TOOLS_GRAPH_MODELS,
                   hook=dict(iters=20))),
}

SUITES = ('quality', 'speed', 'tools')


def get_preset(name: str, difficulty: str = None) -> dict:
    """A deep copy of preset ``name`` (``difficulty`` overrides the
    quality data profile)."""
    if name not in PRESETS:
        raise ValueError(f'--preset must be one of {sorted(PRESETS)}, got '
                         f'{name!r}')
    preset = copy.deepcopy(PRESETS[name])
    if difficulty is not None:
        preset['quality']['data']['difficulty'] = difficulty
    preset['name'] = name
    return preset
