"""GCP-FRS preset: Gradual Channel Pruning with Feature Relevance Scores.

Paper: Aketi, Roy, Raghunathan, Roy, "Gradual Channel Pruning while
Training using Feature Relevance Scores for Convolutional Neural
Networks", IEEE Access 8:171924-171932, 2020, arXiv 2002.09958 (code:
purdue-nrl/Gradual-Channel-Pruning-using-FRS). Specification:
docs/methods.md §4.

Confirmed from the code: relevance scores (LRP-alpha-beta, per-layer L2
normalised) on a scoring subset at fixed epoch intervals; global
selection; pruning stops before the last LR decay; no retraining phase;
writer-side (add-alive) pruning of residual blocks.

Our choices (docs/methods.md §4(e), all configurable here):

* relevance ``'grad_x_input'`` on the detection loss (YOLOX uses SiLU);
  ``criterion=dict(type='FeatureRelevanceCriterion', relevance='lrp')``
  gives the paper's LRP-alpha-beta on ReLU single-stage anchor detectors
  (RetinaNet), seeded at the positive priors' class logits
  (docs/methods.md §4(e)); class reweighting is not implemented;
* each step's amount is derived from the target: at step k of K the
  cumulative FLOPs reduction is R* k / K
  (:class:`~mmprune.allocators.AdaptiveAllocator` with ``ramp='linear'``
  and ``normalize='none'``, since the scores are already L2-normalised);
  pruned channels stay pruned;
* ``residual_mode='fine'`` (writers scored and pruned on their own);
  ``min_keep=8``, ``max_prune_ratio=0.8`` against over-pruning wide layers;
* schedules (the hook's default, rescaled to the run's length): YOLOX
  300e: every 15 epochs from epoch 30, K=12 (>= 75 epochs to recover);
  Faster R-CNN/RetinaNet 1x: end of epochs 1-7 (K=7), before the epoch-8
  LR step;
* scoring subset: 16 training batches per event (the spec's 2000 images:
  raise the hook's ``scoring_batches``), the train loader without its
  random resize (Mosaic/MixUp stay, unlike the spec's test pipeline), BN
  with batch statistics, per-rank batches all-reduced;
* not pruned (confirmed for ResNets): the shortcuts and the stream. Both
  are found from the traced graph, not from module names: a stream is a
  group coupled by an add (``exclude_streams``), a shortcut the identity
  side of an add (``exclude_stream_sources``,
  :meth:`~mmprune.graph.ChannelGraph.stream_sources`: ResNet's
  ``downsample``, YOLOX's CSP ``main_conv``, the FPN lateral whose sum
  skips the deeper level). Everything else is a writer or a plain conv
  and is pruned (our choice on detectors): the FPN laterals (writers into
  the top-down sum) and output convs, the heads shared across levels, the
  RPN conv and the RoI head's fcs. One allocation reaches 0.21-0.25 of
  the FLOPs on the R50 detectors at 800x1333.
"""
from .preset import MethodPreset

GCPFRS = MethodPreset(
    name='gcp_frs',
    title='Gradual Channel Pruning while Training using Feature Relevance '
    'Scores for Convolutional Neural Networks',
    paper='Aketi et al., IEEE Access 8:171924-171932, 2020, '
    'arXiv 2002.09958',
    residual_mode='fine',
    criterion=dict(
        type='FeatureRelevanceCriterion',
        relevance='grad_x_input',
        normalize=True),
    allocator=dict(
        type='AdaptiveAllocator',
        ratio=0.5,
        budget='flops',
        ramp='linear',
        normalize='none',
        min_keep=8,
        max_prune_ratio=0.8,
        round_to=1),
    regularizers=(),
    # the hook's default schedule, rescaled to the run (no retraining
    # phase: the events run inside the ordinary schedule)
    schedules=dict(
        yolox=dict(
            unit='epoch',
            begin=30,
            interval=15,
            num_events=12,
            total_epochs=300),
        rcnn_1x=dict(
            unit='epoch', begin=1, interval=1, num_events=7, total_epochs=12),
        cifar_resnet=dict(
            unit='epoch',
            begin=21,
            interval=21,
            num_events=7,
            total_epochs=200),
    ),
    family='yolox',
    groups=dict(exclude_streams=True, exclude_stream_sources=True),
    options=dict(scoring_batches=16),
    our_choices=(
        'grad x input relevance of the detection loss',
        'cumulative FLOPs reduction R* k / K per step (linear ramp)',
        'fine residual mode; min_keep=8, max_prune_ratio=0.8',
        'YOLOX: 12 steps every 15 epochs from epoch 30',
        'scoring on 16 training batches (no random resize), all-reduced',
    ),
)
