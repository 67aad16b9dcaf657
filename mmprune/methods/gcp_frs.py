"""GCP-FRS preset: Gradual Channel Pruning with Feature Relevance Scores.

Paper: Aketi, Roy, Raghunathan, Roy, "Gradual Channel Pruning while
Training using Feature Relevance Scores for Convolutional Neural
Networks", IEEE Access 8:171924-171932, 2020, arXiv 2002.09958 (code:
purdue-nrl/Gradual-Channel-Pruning-using-FRS). Specification: methods spec
§4.

Confirmed from the code: relevance scores (LRP-alpha-beta, per-layer L2
normalised) on a scoring subset at fixed epoch intervals; global
selection; pruning stops before the last LR decay; no retraining phase;
writer-side (add-alive) pruning of residual blocks.

Our choices (methods spec §4(e), all configurable here):

* relevance ``'grad_x_input'`` on the detection loss (YOLOX uses SiLU;
  LRP is available for ReLU classification nets), class reweighting off;
* each step's amount is derived from the target: at step k of K the
  cumulative FLOPs reduction is R* k / K
  (:class:`~mmprune.allocators.AdaptiveAllocator` with ``ramp='linear'``
  and ``normalize='none'``, since the scores are already L2-normalised);
  pruned channels stay pruned;
* ``residual_mode='fine'`` (writers scored and pruned on their own);
  ``min_keep=8``, ``max_prune_ratio=0.8`` against over-pruning wide layers;
* schedules: YOLOX 300e: every 15 epochs from epoch 30, K=12 (last step
  before epoch 210, >= 75 epochs to recover); Faster R-CNN/RetinaNet 1x:
  end of epochs 1-7 (K=7), before the epoch-8 LR step;
* scoring subset: 2000 train images (COCO) or VOC trainval, test pipeline
  (no mosaic/mixup), sharded over ranks with an all-reduce;
* not pruned (confirmed for ResNets): shortcut/downsample convs and the
  stream; also the FPN, shared heads and the RoI head (our choice).
"""
from .preset import MethodPreset

GCPFRS = MethodPreset(
    name='gcp_frs',
    title='Gradual Channel Pruning while Training using Feature Relevance '
    'Scores for Convolutional Neural Networks',
    paper='Aketi et al., IEEE Access 8:171924-171932, 2020, '
    'arXiv 2002.09958',
    residual_mode='fine',
    criterion=dict(type='FeatureRelevanceCriterion',
                   relevance='grad_x_input', normalize=True),
    allocator=dict(type='AdaptiveAllocator', ratio=0.5, budget='flops',
                   ramp='linear', normalize='none', min_keep=8,
                   max_prune_ratio=0.8, round_to=1),
    regularizers=(),
    schedules=dict(
        yolox=dict(unit='epoch', start=30, interval=15, stop=210,
                   num_events=12, total_epochs=300, retrain=False),
        rcnn_1x=dict(unit='epoch', start=1, interval=1, stop=7,
                     num_events=7, total_epochs=12, retrain=False),
        cifar_resnet=dict(unit='epoch', start=21, interval=21, stop=150,
                          num_events=7, total_epochs=200, retrain=False),
    ),
    family='yolox',
    groups=dict(exclude_coupled=True, exclude_shared=True,
                exclude=(r'\.downsample\.', r'^neck\.(lateral|fpn)_convs',
                         '^rpn_head', '^roi_head')),
    options=dict(scoring_images=2000, scoring_pipeline='test',
                 class_scale=False, sync_scores=True),
    our_choices=(
        'grad x input relevance of the detection loss',
        'cumulative FLOPs reduction R* k / K per step (linear ramp)',
        'fine residual mode; min_keep=8, max_prune_ratio=0.8',
        'YOLOX: 12 steps every 15 epochs from epoch 30',
        'scoring on 2000 images with the test pipeline',
    ),
)
