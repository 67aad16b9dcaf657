"""ACP-TP preset: Adaptive Channel Pruning for Trainability Protection.

Paper: Liu, Zhang, Liu, Li, Hu, Cheng, Yang, "Adaptive Channel Pruning for
Trainability Protection", PRCV 2023, LNCS 14434, DOI
10.1007/978-981-99-8549-4_12 (abstract only), built on TPP (Wang & Fu,
"Trainability Preserving Neural Pruning", ICLR 2023, arXiv 2207.12534).
Specification: docs/methods.md §1.

Confirmed: prunes during training; a weight-similarity module selects
channels and protects trainability; an adaptive sparsity module sets
per-layer rates from a preset target.

Our choices (docs/methods.md §1B, all configurable here):

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
* feature correction: TPP's BN penalty (docs/methods.md §1B(a)(i)); the
  optional ``merge`` of a pruned channel into its similarity partner
  (§1B(a)(ii)) and the DSA-like per-layer penalty feedback (§1B(b), off by
  default in the spec) are not implemented;
* what it prunes on ResNet detectors (our choice; docs/methods.md §0.4,
  configs/README.md): every group but the residual streams (groups coupled
  by an element-wise add, ``exclude_streams``: the backbone's streams and,
  in coupled mode, the FPN laterals with their top-down sums), since TPP
  prunes inside blocks only. Open: the FPN output convs (coupled only
  because a head shared across levels reads them), the heads shared
  across FPN levels (RetinaNet's, the RPN conv: plain conv stacks, where
  TPP's per-layer argument holds as inside a block) and the RoI head's
  fcs. Prediction layers keep their outputs and frozen stages stay
  pinned. One allocation reaches 0.27 of the FLOPs on RetinaNet-R50 and
  0.26 on Faster R-CNN-R50 (800x1333), so 0.5 is reachable; backbone
  only, it stopped at 0.74-0.78. On YOLOX it prunes the same groups as
  before (its only coupled groups are CSP streams);
* schedules (the hook's default, rescaled to the run's length): YOLOX
  from scratch 300e: dense to epoch 30, events every 10 epochs to 200
  (E=18); from a pretrained YOLOX: every 2 epochs to 40 (E=20), fine-tune
  to 100; Faster R-CNN/RetinaNet 1x: every 1000 iters from iter 500 to the
  end of epoch 6, penalty windows ending before the epoch-8 LR step (use
  2x for > 40 % FLOPs; in iterations: set the hook's begin/end).
"""
from .preset import MethodPreset

ACPTP = MethodPreset(
    name='acp_tp',
    title='Adaptive Channel Pruning for Trainability Protection',
    paper='Liu et al., PRCV 2023, LNCS 14434, '
    'DOI 10.1007/978-981-99-8549-4_12',
    residual_mode='coupled',
    criterion=dict(
        type='WeightSimilarityCriterion',
        similarity='cosine',
        greedy=True,
        protect_partners=True),
    allocator=dict(
        type='AdaptiveAllocator',
        ratio=0.5,
        budget='flops',
        ramp='cubic',
        normalize='median',
        min_keep=8,
        max_prune_ratio=0.8,
        round_to=8),
    regularizers=(dict(
        type='TPPRegularizer',
        lw_opp=1000.0,
        delta=1e-4,
        interval=10,
        lambda_max=1.0,
        gram=True,
        l2=True,
        bn=True), ),
    # the hook's default schedule, rescaled to the run (PruningSchedule.
    # from_preset); 'iter' schedules need the dataset size: set begin/end
    schedules=dict(
        yolox_scratch=dict(
            unit='epoch',
            begin=30,
            interval=10,
            num_events=18,
            total_epochs=300),
        yolox_pretrained=dict(
            unit='epoch', begin=2, interval=2, num_events=20,
            total_epochs=100),
        rcnn_1x=dict(
            unit='iter',
            begin=500,
            interval=1000,
            end_epoch=6,
            total_epochs=12),
    ),
    family='yolox_scratch',
    groups=dict(exclude_streams=True),
    options=dict(),
    our_choices=(
        'similarity = cosine of concatenated producer filters',
        'I_c = norm ratio * (1 - rho_c), greedy de-duplication',
        'cubic ramp R_k = R*(1-(1-k/E)^3) over E events',
        'median-normalised global ranking, exact-cost budget solver',
        'TPP penalty on each event\'s selection, lambda 0->1 per window',
        'residual streams excluded; FPN outputs, shared heads, RPN and RoI '
        'head pruned',
        'feature correction by TPP\'s BN penalty (merge not implemented)',
    ),
)
