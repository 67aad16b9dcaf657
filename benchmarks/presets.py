"""How big each benchmark suite is: the ``--preset`` table.

* ``smoke``: every code path once, both protocols, in a few minutes
  (tests, development);
* ``session``: the committed accuracy numbers (``make bench``): both
  models from their own trained references (protocol 'trained'), 3 seeds
  at 50 % FLOPs, 1 at 30 %; sized for about 2.5 h on a 2-core CPU machine
  including the reference training (see the plan :mod:`benchmarks.plan`
  prints at the start);
* ``quick``: the earlier from-scratch protocol at 50 % FLOPs, one seed,
  plus the speed and tool suites (~30-40 min on 2 cores);
* ``full``: everything the benchmark issue asks for, on the harder data,
  both protocols, budgets 30/50/70 %, three seeds: for a larger machine
  (``--device cuda``).

Protocols (:mod:`benchmarks.methods`): ``'trained'`` starts every run of a
model from the same dense reference checkpoint (trained once, cached by a
hash of what made it, :mod:`benchmarks.reference`) and fine-tunes
``epochs`` epochs, each method reaching the budget with its own schedule
compressed into that window; ``'scratch'`` trains every run from random
init for ``epochs`` epochs, pruning methods cutting during them.

Why the session data is 'easy' at 128 px, 10 classes: a reference must
plateau in CPU minutes. On the 'hard' profile a handful of CPU epochs leaves
every model near 0 mAP (the first demo, hard data, 10 epochs x 200 images
at 320 px: mAP 0.4), and YOLOX-tiny on the easy profile at 160 px reached
24.5 mAP after 30 epochs x 400 images in 40 min of one core (``make demo``)
and was still rising. 128 px costs 0.64x the FLOPs of 160 px; the easy
objects span 1/8 to 1/2 of the side (16-64 px), which YOLOX's stride-8 to
-32 levels still see.

How long the references train (``session``): YOLOX-tiny 80 epochs x 320
images (25,600 image-iterations, 2.1x the demo's 30 x 400 that reached
24.5 mAP still rising), validated every 8 epochs so the record shows
whether it plateaued (``plateau`` in the reference record and the report).
A 15-minute probe (1 thread, a 30-epoch cosine schedule, the machine shared
with four other jobs, load 5-6 on 2 cores) got mAP 0.1 / 2.0 / 2.2 after
epochs 3 / 6 / 9 (3.6 / 7.7 / 12.0 min) and reached epoch 12: YOLOX learns
slowly for the first ~10 epochs, and under that load an iteration took
1.5-2.5 s instead of the 0.56-0.72 s measured at load ~2, so the probe
could not show the plateau; the committed run's record will. RetinaNet R18
(24 epochs) was not probed: from scratch it reached only 0.7 mAP in the
``quick`` preset's 3 epochs. The plan (:mod:`benchmarks.plan`) estimates
the preset at ~120 min on the idle machine, leaving ~30 min of the
2.5 h session for the latency phase and slower iterations.

Why RetinaNet R18 is the ResNet detector: it is mmdet's cheapest detector
with a residual (BasicBlock) backbone, so fine vs coupled residual mode is
meaningful; R50 has twice the backbone FLOPs and bottleneck blocks, and
Faster R-CNN's RoI head is excluded by every preset (nothing to compare),
while RetinaNet's head and FPN already make an R18 iteration cost about 3.8x
YOLOX-tiny's here. Its method list is the residual comparison (L1 coupled
vs fine), the dense reference and the random floor; every method on it
fits only the ``full`` preset.

``seeds`` applies to every budget unless ``seeds_by_budget`` overrides it;
dense (no budget) runs with the first budget's seeds.
"""
import copy

#: the methods of the quality suite, in table order (see benchmarks.methods)
YOLOX_METHODS = ('dense', 'l1_uniform', 'tp_magnitude', 'tp_taylor', 'acp_tp',
                 'bpc', 'fcp', 'gcp_frs')
RESNET_MODES = ('l1_coupled', 'l1_fine')
#: the random-channel floor (same budget, global allocator as l1_coupled)
FLOOR = ('random', )

#: the graph-analysis comparison of the issue (tools suite)
TOOLS_GRAPH_MODELS = ('yolox_s', 'yolox_l', 'retinanet_r50', 'faster_rcnn_r50')

_QUICK_SPEED = dict(
    models=dict(yolox_tiny=(416, 416), retinanet_r18=(320, 320)),
    batches=(1, 8),
    modes=('coupled', 'fine'),
    settings=('default', 'cost_aware', 'latency_aware'),
    budget=0.5,
    runs=5)

PRESETS = {
    'smoke':
    dict(
        quality=dict(
            protocols=('trained', 'scratch'),
            data=dict(
                difficulty='easy',
                size=128,
                num_train=16,
                num_val=8,
                num_classes=10,
                seed=0),
            epochs=2,
            batch_size=4,
            budgets=(0.5, ),
            seeds=(0, ),
            reference=dict(epochs=2, val_interval=1, seed=0),
            models=dict(
                yolox_tiny=dict(
                    methods=('dense', 'l1_uniform', 'tp_taylor', 'fcp',
                             'random')),
                retinanet_r18=dict(methods=('dense', 'l1_fine'))),
            latency_runs=5),
        speed=dict(
            models=dict(yolox_tiny=(128, 128)),
            batches=(1, 2),
            modes=('coupled', 'fine'),
            settings=('default', ),
            budget=0.5,
            runs=3),
        tools=dict(
            graph_models=('yolox_tiny', ),
            hook=dict(
                iters=2,
                event_config='yolox_tiny',
                event_size=128,
                run_epochs=2,
                run_size=128,
                run_images=8,
                run_repeats=1))),
    'session':
    dict(
        # the accuracy numbers only: the speed and tool suites are the
        # quick preset's (BENCH_ARGS="--preset quick --suites speed tools")
        suites=('quality', ),
        quality=dict(
            protocols=('trained', ),
            data=dict(
                difficulty='easy',
                size=128,
                num_train=320,
                num_val=80,
                num_classes=10,
                seed=0),
            # F: the fine-tuning window of every run (40 iterations/epoch)
            epochs=6,
            batch_size=8,
            budgets=(0.5, 0.3),
            seeds=(0, 1, 2),
            seeds_by_budget={0.3: (0, )},
            reference=dict(epochs=80, val_interval=8, seed=0),
            models=dict(
                yolox_tiny=dict(methods=YOLOX_METHODS + FLOOR +
                                ('bpc_latency', 'bpc_latency_global')),
                retinanet_r18=dict(
                    methods=('dense', ) + RESNET_MODES + FLOOR +
                    ('l1_backbone', ),
                    reference=dict(epochs=24, val_interval=4, seed=0))),
            latency_runs=20),
        speed=_QUICK_SPEED,
        tools=dict(graph_models=TOOLS_GRAPH_MODELS, hook=dict(iters=10))),
    'quick':
    dict(
        quality=dict(
            protocols=('scratch', ),
            data=dict(
                difficulty='easy',
                size=160,
                num_train=320,
                num_val=80,
                num_classes=10,
                seed=0),
            epochs=8,
            batch_size=8,
            budgets=(0.5, ),
            seeds=(0, ),
            models=dict(
                yolox_tiny=dict(methods=YOLOX_METHODS),
                # an iteration of RetinaNet R18-FPN costs 2.5-3.5 of
                # YOLOX-tiny's at 160 px (8x its FLOPs; its head has four
                # 256-channel 3x3 convs per branch and level): fewer epochs
                # keep the preset near 40 min
                retinanet_r18=dict(
                    methods=('dense', ) + RESNET_MODES, epochs=3)),
            latency_runs=20),
        speed=_QUICK_SPEED,
        tools=dict(graph_models=TOOLS_GRAPH_MODELS, hook=dict(iters=10))),
    'full':
    dict(
        quality=dict(
            protocols=('trained', 'scratch'),
            data=dict(
                difficulty='hard',
                size=256,
                num_train=2000,
                num_val=500,
                num_classes=20,
                seed=0),
            epochs=30,
            batch_size=8,
            budgets=(0.5, 0.3, 0.7),
            seeds=(0, 1, 2),
            reference=dict(epochs=150, val_interval=10, seed=0),
            models=dict(
                yolox_tiny=dict(methods=YOLOX_METHODS + FLOOR +
                                ('bpc_latency', )),
                retinanet_r18=dict(methods=YOLOX_METHODS + RESNET_MODES +
                                   FLOOR)),
            latency_runs=30),
        speed=dict(
            models=dict(
                yolox_tiny=(416, 416),
                yolox_s=(640, 640),
                retinanet_r18=(512, 512),
                retinanet_r50=(512, 512)),
            batches=(1, 8),
            modes=('coupled', 'fine'),
            settings=('default', 'speed', 'cost_aware', 'latency_aware'),
            budget=0.5,
            runs=7),
        tools=dict(graph_models=TOOLS_GRAPH_MODELS, hook=dict(iters=20))),
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


def run_fields(quality: dict, data: dict, device: str, threads: int) -> dict:
    """The fields every training job of a quality preset carries (the
    references' and the runs'): batch, size, data, device, threads."""
    return dict(
        batch_size=quality['batch_size'],
        size=quality['data']['size'],
        data_spec=quality['data'],
        data=data,
        device=device,
        threads=threads)


def seeds_for(quality: dict, budget: float):
    """The seeds run at ``budget`` (``seeds_by_budget`` overrides
    ``seeds``)."""
    by = quality.get('seeds_by_budget') or {}
    for b, seeds in by.items():
        if abs(float(b) - budget) < 1e-9:
            return tuple(seeds)
    return tuple(quality['seeds'])


def model_setting(quality: dict, model: str, key: str):
    """A quality setting of ``model``: its own entry, else the preset's
    (``reference`` dicts are merged: a model overrides some keys)."""
    own = quality['models'][model].get(key)
    if key == 'reference':
        return dict(quality.get('reference') or {}, **(own or {}))
    return quality.get(key) if own is None else own
