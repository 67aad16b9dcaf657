"""ACP-TP preset: Adaptive Channel Pruning for Trainability Protection.

Paper: Liu, Zhang, Liu, Li, Hu, Cheng, Yang, "Adaptive Channel Pruning for
Trainability Protection", PRCV 2023, LNCS 14434, DOI
10.1007/978-981-99-8549-4_12 (abstract only), built on TPP (Wang & Fu,
"Trainability Preserving Neural Pruning", ICLR 2023, arXiv 2207.12534).
Specification: methods spec §1.

Confirmed: prunes during training; a weight-similarity module selects
channels and protects trainability; an adaptive sparsity module sets
per-layer rates from a preset target.

Our choices (methods spec §1B, all configurable here):

* criterion: :class:`~mmprune.criteria.WeightSimilarityCriterion`
  (cosine, greedy de-duplication with protected partners);
* allocation: :class:`~mmprune.allocators.AdaptiveAllocator`, FLOPs
  ratio 0.5 (R* = 0.5), cubic ramp over E events, median-normalised
  scores, ``min_keep=8``, ``max_prune_ratio=0.8``, ``round_to=8``;
* trainability protection: :class:`~mmprune.regularizers.TPPRegularizer`
  (``lw_opp=1000``, ``lambda_max=1``, ``K=10``) on the channels newly
  selected at an event; lambda restarts and ramps 0 -> 1 over the window
  until the next event (``delta = TPPRegularizer.delta_for_window``);
  they are hard-masked at the next event; selections are redone at every
  event but hard-masked channels are never revived;
* feature correction: ``'bn_reg'`` (TPP's BN penalty; default) or
  ``'merge'`` (fold a pruned channel into its similarity partner);
* DSA-like per-layer penalty feedback: off;
* excluded by default: residual streams (groups with several producers;
  TPP prunes inside blocks only), heads shared across FPN levels
  (RetinaNet, RPN) and the RoI head (spec §0.4); YOLOX's per-level head
  convs are pruned (spec §0.3);
* schedules: YOLOX from scratch 300e: dense to epoch 30, events every 10
  epochs to 200 (E=18); from a pretrained YOLOX: every 2 epochs to 40
  (E=20), fine-tune to 100; Faster R-CNN/RetinaNet 1x: every 1000 iters
  from iter 500 to the end of epoch 6, penalty windows ending before the
  epoch-8 LR step (use 2x for > 40 % FLOPs).
"""
from .preset import MethodPreset

ACPTP = MethodPreset(
    name='acp_tp',
    title='Adaptive Channel Pruning for Trainability Protection',
    paper='Liu et al., PRCV 2023, LNCS 14434, '
    'DOI 10.1007/978-981-99-8549-4_12',
    residual_mode='coupled',
    criterion=dict(type='WeightSimilarityCriterion', similarity='cosine',
                   greedy=True, protect_partners=True),
    allocator=dict(type='AdaptiveAllocator', ratio=0.5, budget='flops',
                   ramp='cubic', normalize='median', min_keep=8,
                   max_prune_ratio=0.8, round_to=8),
    regularizers=(dict(type='TPPRegularizer', lw_opp=1000.0, delta=1e-4,
                       interval=10, lambda_max=1.0, gram=True, l2=True,
                       bn=True), ),
    schedules=dict(
        yolox_scratch=dict(unit='epoch', start=30, interval=10, stop=200,
                           num_events=18, total_epochs=300),
        yolox_pretrained=dict(unit='epoch', start=2, interval=2, stop=40,
                              num_events=20, total_epochs=100),
        rcnn_1x=dict(unit='iter', start=500, interval=1000, stop_epoch=6,
                     lr_step_epoch=8, total_epochs=12),
    ),
    family='yolox_scratch',
    groups=dict(exclude_coupled=True, exclude_shared=True,
                exclude=('^rpn_head', '^roi_head')),
    options=dict(feature_correction='bn_reg', merge_images=32,
                 penalty_window='until_next_event', reselect=True,
                 dsa_feedback=False),
    our_choices=(
        'similarity = cosine of concatenated producer filters',
        'I_c = norm ratio * (1 - rho_c), greedy de-duplication',
        'cubic ramp R_k = R*(1-(1-k/E)^3) over E events',
        'median-normalised global ranking, exact-cost budget solver',
        'TPP penalty on each event\'s selection, lambda 0->1 per window',
        'residual streams, shared heads and the RoI head excluded',
        'feature correction by the BN penalty (merge optional)',
    ),
)
