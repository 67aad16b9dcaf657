"""BPC preset: Blending Pruning Criteria.

Paper: He, Huang, Liang, Liang, Yang, "Blending Pruning Criteria for
Convolutional Neural Networks", ICANN 2021, LNCS 12894 pp. 3-15,
arXiv 2107.05033 (abstract only). Specification: docs/methods.md §2.

Confirmed: criteria are clustered layer-wise by the rank of their scores;
calibration factors weigh the blending candidates; an evolutionary
algorithm searches the blend.

Our choices (docs/methods.md §2B, all configurable here):

* pool {L1, L2, FPGM, BN-gamma, Taylor-FO, HRank}
  (:data:`mmprune.criteria.blended.DEFAULT_POOL`), data-driven members on
  32 calibration batches;
* Spearman clustering per group cut at rho >= 0.9, medoid representatives,
  candidates voted per stage, alphas in [0, 1] shared within a stage;
* EA (``tools/search_blend.py``; in training see below): population 32
  (seeded with one-hot candidates and the uniform blend), 20 generations,
  elite 8, binary tournament, uniform crossover p=0.5, Gaussian mutation
  sigma=0.2 p=0.1; fitness = negative detection loss on 200 held-out
  images after adaptive-BN recalibration on 50 train batches (mAP
  optional), under a fixed uniform allocation at the target;
* allocation: uniform ratio per group solved for the FLOPs target
  (``'global'`` optional); prune once after training, then fine-tune
  (YOLOX 100 epochs at 0.5x LR; Faster R-CNN 12 epochs);
* what it prunes on ResNet detectors (our choice, configs/README.md):
  as ACP-TP, every group but the residual streams (``exclude_streams``,
  the paper prunes plain conv layers), so the FPN output convs, the heads
  shared across levels and the RPN conv are pruned, except the RoI head:
  HRank, one of the six criteria, ranks feature maps and has no score for
  its fully connected layers. One uniform allocation reaches 0.26 of the
  FLOPs on both R50 detectors at 800x1333.

Where the search runs: ``ChannelPruningHook(method='bpc')`` runs it at its
first event (:func:`mmprune.search.search_blend`, the code
``tools/search_blend.py`` also calls) on the model as it is then, with
calibration and held-out batches read from the train dataloader, and
scores that event with the blend found; later events and a resumed run
reuse that blend (kept in the checkpointed hook state with the search
report). In training the search has a bounded budget, ``options
['hook_search']`` over ``options['search']``: at most 24 fitness
evaluations (population 8, elite 2, 3 generations), 4 calibration and 4
adaptive-BN batches, 16 held-out images; override any of it with the
hook's ``search=dict(...)`` (e.g. ``max_evals``, ``fitness_images``;
``time_budget_s`` only without SyncBN/DDP, where ranks must evaluate
alike). Cost: each evaluation is ``bn_batches`` forwards plus the
held-out losses (about 1 s on YOLOX-tiny at 128 px on one CPU thread, so
about half a minute per search; the tool's settings at 320 px took 4.6 s
per evaluation). ``search=False``, or an explicit ``criterion`` (e.g.
the blend ``tools/search_blend.py`` writes, ``criterion=dict(type=
'BlendedCriterion', **blend)``), skips the search; the preset's criterion
is then the uniform blend of the pool.
"""
import copy

from ..criteria.blended import DEFAULT_POOL
from .preset import MethodPreset

BPC = MethodPreset(
    name='bpc',
    title='Blending Pruning Criteria for Convolutional Neural Networks',
    paper='He et al., ICANN 2021, LNCS 12894 pp. 3-15, arXiv 2107.05033',
    residual_mode='coupled',
    criterion=dict(
        type='BlendedCriterion',
        criteria=copy.deepcopy(DEFAULT_POOL),
        alphas={'*': {
            k: 1.0
            for k in DEFAULT_POOL
        }}),
    allocator=dict(
        type='UniformAllocator',
        ratio=0.5,
        budget='flops',
        min_keep=8,
        max_prune_ratio=0.8,
        round_to=1),
    regularizers=(),
    # one cut of a trained model, then fine-tuning (tools/prune.py): no
    # in-training default; the hook asks for begin/end
    schedules=dict(yolox=dict(unit='once'), rcnn_1x=dict(unit='once')),
    family='yolox',
    groups=dict(exclude_streams=True, exclude=('^roi_head', )),
    options=dict(
        search=dict(
            pool=sorted(DEFAULT_POOL),
            rho_threshold=0.9,
            vote=0.5,
            pop_size=32,
            generations=20,
            elite=8,
            crossover_p=0.5,
            mutation_sigma=0.2,
            mutation_p=0.1,
            calib_batches=32,
            bn_batches=50,
            fitness_images=200,
            fitness='neg_det_loss',
            allocation='uniform'),
        # the in-training search's budget (ChannelPruningHook, first
        # event), over 'search'; the hook's search=dict(...) overrides it
        hook_search=dict(
            pop_size=8,
            generations=3,
            elite=2,
            max_evals=24,
            calib_batches=4,
            bn_batches=4,
            fitness_images=16)),
    our_choices=(
        'pool {L1, L2, FPGM, BN-gamma, Taylor-FO, HRank}',
        'Spearman, average linkage at rho >= 0.9, medoids, stage vote',
        'rank normalisation, alphas in [0, 1] shared per stage',
        'EA 32 x 20, elite 8, tournament, crossover 0.5, mutation 0.2/0.1',
        'fitness: -detection loss after adaptive BN (50 batches)',
        'uniform allocation solved for the FLOPs target',
    ),
)
