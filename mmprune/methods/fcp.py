"""FCP preset: Fine-Grained Channel Pruning for deep residual networks.

Paper: Chen, Huang, Xiong, Li, Claesen, "Fine-Grained Channel Pruning for
Deep Residual Neural Networks", ICANN 2020, LNCS 12397 pp. 3-14, DOI
10.1007/978-3-030-61616-8_1 (abstract only). Specification: methods spec
§3.

Confirmed: every channel can be pruned independently, residual additions
are kept alive at full width (``residual_mode='fine'``: writers are
scattered back into their stream, :mod:`mmprune.pruners.scatter`).

Our choices (methods spec §3, all configurable here):

* criterion: BN |gamma| after sparsity training (Network Slimming) with
  :class:`~mmprune.regularizers.BNL1Regularizer`, ``lambda_s = 2e-5``
  (YOLOX, sum-reduced losses) or 1e-5 (ResNet); ``criterion=L1`` optional;
* selection: :class:`~mmprune.allocators.GlobalThresholdAllocator` on raw
  |gamma| (``normalize='none'``; comparable since all BNs share momentum
  and eps), threshold bisected to meet FLOPs ratio 0.5, ``min_keep=4``;
* schedule: YOLOX from pretrained: 50 epochs sparsity training at 0.5x
  LR, prune once, 100 epochs fine-tune; Faster R-CNN 12 + 12 epochs; a
  gradual variant with 5 threshold events is allowed;
* reader-side pruning (``read_pruning``) off; ``round_to`` 1 for accuracy
  runs, 8 for deployment;
* the FPN (laterals, output convs), heads shared across levels and the
  RoI head stay dense (spec §3(i): "FPN untouched").
"""
from .preset import MethodPreset

FCP = MethodPreset(
    name='fcp',
    title='Fine-Grained Channel Pruning for Deep Residual Neural Networks',
    paper='Chen et al., ICANN 2020, LNCS 12397 pp. 3-14, '
    'DOI 10.1007/978-3-030-61616-8_1',
    residual_mode='fine',
    criterion=dict(type='BNScaleCriterion'),
    allocator=dict(type='GlobalThresholdAllocator', ratio=0.5,
                   budget='flops', normalize='none', min_keep=4,
                   max_prune_ratio=0.8, round_to=1),
    regularizers=(dict(type='BNL1Regularizer', weight=2e-5), ),
    schedules=dict(
        yolox=dict(unit='epoch', sparsity_epochs=50, lr_mult=0.5,
                   prune_at='after_sparsity', finetune_epochs=100),
        yolox_gradual=dict(unit='epoch', sparsity_epochs=50, lr_mult=0.5,
                           num_events=5, finetune_epochs=100),
        rcnn_1x=dict(unit='epoch', sparsity_epochs=12,
                     prune_at='after_sparsity', finetune_epochs=12,
                     bn_l1_weight=1e-5),
    ),
    family='yolox',
    groups=dict(exclude_coupled=False, exclude_shared=True,
                exclude=(r'^neck\.(lateral|fpn)_convs', '^rpn_head',
                         '^roi_head')),
    options=dict(read_pruning=False, alt_criterion='L1Criterion'),
    our_choices=(
        'BN-gamma slimming criterion with L1 sparsity training',
        'global threshold on |gamma| bisected to the FLOPs target',
        'min_keep=4, max_prune_ratio=0.8',
        'prune once after 50 (YOLOX) / 12 (R-CNN) sparsity epochs',
    ),
)
