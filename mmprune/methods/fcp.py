"""FCP preset: Fine-Grained Channel Pruning for deep residual networks.

Paper: Chen, Huang, Xiong, Li, Claesen, "Fine-Grained Channel Pruning for
Deep Residual Neural Networks", ICANN 2020, LNCS 12397 pp. 3-14, DOI
10.1007/978-3-030-61616-8_1 (abstract only). Specification:
docs/methods.md §3.

Confirmed: every channel can be pruned independently, residual additions
are kept alive at full width (``residual_mode='fine'``: writers are
scattered back into their stream, :mod:`mmprune.pruners.scatter`).

Our choices (docs/methods.md §3, all configurable here):

* criterion: BN |gamma| after sparsity training (Network Slimming) with
  :class:`~mmprune.regularizers.BNL1Regularizer`, ``lambda_s = 2e-5``
  (YOLOX, sum-reduced losses) or 1e-5 (ResNet: set the regulariser's
  ``weight``); ``criterion='L1Criterion'`` on the hook is the alternative;
* selection: :class:`~mmprune.allocators.GlobalThresholdAllocator` on raw
  |gamma| (``normalize='none'``; comparable since all BNs share momentum
  and eps), threshold bisected to meet FLOPs ratio 0.5, ``min_keep=4``;
* schedule (the hook's default, rescaled to the run's length): YOLOX from
  pretrained: 50 epochs sparsity training (0.5x LR in the config), prune
  once, 100 epochs fine-tune; Faster R-CNN 12 + 12 epochs; a gradual
  variant (``family='yolox_gradual'``) with 5 threshold events;
* reader-side pruning is not implemented (issue 14 item 12); ``round_to``
  1 for accuracy runs, 8 for deployment;
* what it prunes on ResNet detectors: every writer of the backbone on its
  own (fine mode), the heads shared across FPN levels, the RPN conv and
  the RoI head's fcs; the FPN (laterals, output convs) stays dense
  (docs/methods.md §3(i): "FPN untouched"). Heads without BN are scored
  by their filters' L1 (:class:`~mmprune.criteria.BNScaleCriterion`'s
  fallback), which on raw |gamma| ranks them after the slimmed channels:
  the heads are cut once the backbone is at its caps. One allocation
  reaches 0.23 (RetinaNet-R50) and 0.45 (Faster R-CNN-R50) of the FLOPs
  at 800x1333.
"""
from .preset import MethodPreset

FCP = MethodPreset(
    name='fcp',
    title='Fine-Grained Channel Pruning for Deep Residual Neural Networks',
    paper='Chen et al., ICANN 2020, LNCS 12397 pp. 3-14, '
    'DOI 10.1007/978-3-030-61616-8_1',
    residual_mode='fine',
    criterion=dict(type='BNScaleCriterion'),
    allocator=dict(
        type='GlobalThresholdAllocator',
        ratio=0.5,
        budget='flops',
        normalize='none',
        min_keep=4,
        max_prune_ratio=0.8,
        round_to=1),
    regularizers=(dict(type='BNL1Regularizer', weight=2e-5), ),
    # the hook's default schedule, rescaled to the run: prune once after
    # the sparsity epochs (50 of 50 + 100 fine-tune; R-CNN 12 of 12 + 12)
    schedules=dict(
        yolox=dict(
            unit='epoch', begin=50, interval=1, num_events=1,
            total_epochs=150),
        yolox_gradual=dict(
            unit='epoch',
            begin=10,
            interval=10,
            num_events=5,
            total_epochs=150),
        rcnn_1x=dict(
            unit='epoch', begin=12, interval=1, num_events=1, total_epochs=24),
    ),
    family='yolox',
    groups=dict(exclude=(r'^neck\.', )),
    options=dict(),
    our_choices=(
        'BN-gamma slimming criterion with L1 sparsity training',
        'global threshold on |gamma| bisected to the FLOPs target',
        'min_keep=4, max_prune_ratio=0.8',
        'prune once after 50 (YOLOX) / 12 (R-CNN) sparsity epochs',
    ),
)
