"""Fitness plumbing of the BPC blend search (docs/methods.md §2B(a)).

A blend is judged the way BPC (and EagleEye, Li et al., ECCV 2020,
https://arxiv.org/abs/2007.02491, for "adaptive BN") judge a pruned
candidate, with **our choices** marked:

1. the criteria pool is computed once (:func:`calibrate_pool`);
   data-driven members (Taylor, HRank) see ``num_batches`` calibration
   batches with the model in *eval* mode but BN on batch statistics (our
   choice, as the hook's scoring pass: running stats stay untouched, the
   gate identity holds in either mode, and a model early in training,
   whose running statistics lag its weights, does not overflow: issue 14
   item 11);
2. for a genome: blend the pool, keep each group's top channels at counts
   fixed once for the whole search (our choice: the EA compares criteria,
   not allocations), zero the rest with masks (§0.2);
3. adaptive BN: reset every BN's running statistics, forward ``N`` train
   batches with the BNs in train mode (even under mmdet's ``norm_eval``)
   without gradients (cumulative average, i.e. ``momentum=None``), then
   evaluate in eval mode;
4. evaluate on held-out data: by default for detectors the negative
   detection loss on a held-out subset (cheap proxy; mAP is optional via
   any ``eval_fn``);
5. restore the dense weights and statistics for the next genome.

Batches are whatever the callables understand: ``loss_fn(model, batch)``
returns a scalar loss, ``forward_fn(model, batch)`` runs a forward;
:func:`mmdet_loss` and :func:`mmdet_forward` handle mmdet data dicts.
"""
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..criteria.blended import blend_scores, default_stage
from ..criteria.scoring import batch_statistics
from ..graph.layers import is_batchnorm
from ..pruners.masking import build_mask


# ------------------------------------------------------------ mmdet glue
def mmdet_loss(model: nn.Module, data: dict) -> torch.Tensor:
    """Total detection loss of one dataloader batch (mmdet 3.x).

    The data preprocessor runs with ``training=False`` so batch
    augmentations (YOLOX's random resize) do not make the loss random.
    """
    data = model.data_preprocessor(data, False)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    return loss


def mmdet_forward(model: nn.Module, data: dict) -> None:
    """Tensor forward of one dataloader batch (for BN recalibration)."""
    data = model.data_preprocessor(data, False)
    model(data['inputs'], data['data_samples'], mode='tensor')


def negative_loss(
        batches: Sequence,
        loss_fn: Callable = mmdet_loss) -> Callable[[nn.Module], float]:
    """``eval_fn`` returning minus the mean loss over ``batches`` (no
    gradients, model as it is: eval mode after recalibration)."""
    batches = list(batches)
    if not batches:
        raise ValueError('negative_loss needs at least one held-out batch')

    def eval_fn(model: nn.Module) -> float:
        with torch.no_grad():
            losses = [float(loss_fn(model, b)) for b in batches]
        return -float(np.mean(losses))

    return eval_fn


# -------------------------------------------------------------- pieces
def adaptive_bn(model: nn.Module,
                batches: Iterable,
                forward_fn: Callable,
                num_batches: Optional[int] = None) -> int:
    """Recompute BN running statistics from ``batches``; returns the number
    of batches used.

    Every BN with running statistics is reset and put in train mode for
    the pass *itself*, not through ``model.train()``: mmdet's ResNet with
    ``norm_eval=True`` (the RetinaNet/Faster R-CNN default) overrides
    ``train()`` to put its BNs back in eval mode, which would leave them at
    mean 0 / var 1 after the reset. The rest of the model runs in train
    mode (as EagleEye's recalibration does). Afterwards every module's
    ``training`` flag and every BN's ``momentum`` are what they were.
    """
    bns = [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
    ]
    momenta = [m.momentum for m in bns]
    modes = [(m, m.training) for m in model.modules()]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches
    used = 0
    model.train()
    for m in bns:  # after model.train(): norm_eval must not win
        m.train()
    try:
        with torch.no_grad():
            for b in batches:
                if num_batches is not None and used >= num_batches:
                    break
                forward_fn(model, b)
                used += 1
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        # module by module: model.train(flag) would re-run norm_eval and
        # _freeze_stages logic and could differ from the saved flags
        for m, flag in modes:
            m.training = flag
    if used == 0 and bns:
        raise ValueError('adaptive_bn got no batch to recalibrate on')
    return used


class GroupSubset:
    """A view of a channel graph whose prunable groups are only ``names``.

    Data-driven criteria attach to the sites of ``prunable_groups()``; given
    this view they hook only the groups a method prunes, so a criterion that
    cannot score some group (HRank on the RoI head's fully connected layers:
    no spatial map) never meets it, and no time is spent on sites nobody
    reads (HRank's SVDs). Everything else is the underlying graph's.

    Args:
        graph (ChannelGraph): the full graph.
        names (Iterable[str]): group names to keep; each must be prunable.
    """

    def __init__(self, graph, names: Iterable[str]):
        names = list(dict.fromkeys(names))
        prunable = {g.name for g in graph.prunable_groups()}
        unknown = [n for n in names if n not in prunable]
        if unknown:
            raise ValueError(f'groups {unknown[:5]} are not prunable groups '
                             f'of the graph')
        if not names:
            raise ValueError('GroupSubset needs at least one group name')
        self._graph, self._names = graph, set(names)

    def prunable_groups(self):
        return [
            g for g in self._graph.prunable_groups() if g.name in self._names
        ]

    def __getattr__(self, key):
        return getattr(self._graph, key)


def calibrate_pool(
    model: nn.Module,
    graph,
    criteria: Dict[str, object],
    batches: Iterable = (),
    loss_fn: Optional[Callable] = None,
    num_batches: Optional[int] = None,
    names: Optional[Sequence[str]] = None
) -> Dict[str, Dict[str, torch.Tensor]]:
    """Score every criterion of ``criteria`` (``{key: criterion}``) on the
    groups ``names`` of ``graph`` (default: every prunable group).

    Data-driven criteria (``data_driven``) are attached to those groups
    only (see :class:`GroupSubset`) and get one calibration pass over
    ``batches`` (``loss_fn(model, batch).backward()``, eval mode, BN on
    batch statistics without updating them); parameter gradients are
    cleared afterwards and every module's mode restored.

    Returns:
        dict: ``{criterion key: {group: (G,) float32 scores}}``.
    """
    view = graph if names is None else GroupSubset(graph, names)
    # every criterion has attach() (a no-op for weight criteria): ask
    # data_driven, or L1/FPGM would take a pointless calibration pass
    data_driven = {
        k: c
        for k, c in criteria.items() if getattr(c, 'data_driven', False)
    }
    if data_driven:
        if loss_fn is None:
            raise ValueError(f'criteria {sorted(data_driven)} need '
                             f'calibration batches and a loss_fn')
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        for c in data_driven.values():
            c.attach(model, view)
        used = 0
        norms = [m for m in model.modules() if is_batchnorm(m)]
        try:
            with batch_statistics(model, norms):
                for b in batches:
                    if num_batches is not None and used >= num_batches:
                        break
                    model.zero_grad(set_to_none=True)
                    loss_fn(model, b).backward()
                    used += 1
            if used == 0:
                raise ValueError('calibrate_pool got no calibration batch')
            for c in data_driven.values():
                if callable(getattr(c, 'sync', None)):
                    c.sync()
        finally:
            for c in data_driven.values():
                c.detach()
            model.zero_grad(set_to_none=True)
            for m, flag in modes:
                m.training = flag
    return {k: c.score(model, view, names) for k, c in criteria.items()}


def counts_of(keep: Dict[str, np.ndarray]) -> Dict[str, int]:
    """``{group: kept count}`` of a plan."""
    return {k: int(len(v)) for k, v in keep.items()}


class MaskedEvaluator:
    """Fitness of a per-group score dict: keep each group's top channels at
    fixed counts, mask the rest, recalibrate BN, evaluate, restore.

    Args:
        model (nn.Module): the trained dense model (restored after every
            call).
        graph: its channel graph.
        counts (dict): ``{group: channels to keep}`` (pinned included).
        eval_fn (Callable): ``model -> float``, higher is better.
        bn_batches (Sequence): train batches for adaptive BN.
        forward_fn (Callable): ``(model, batch)`` forward for adaptive BN.
        num_bn_batches (int | None): cap on ``bn_batches`` used.
    """

    def __init__(self,
                 model: nn.Module,
                 graph,
                 counts: Dict[str, int],
                 eval_fn: Callable[[nn.Module], float],
                 bn_batches: Sequence,
                 forward_fn: Callable,
                 num_bn_batches: Optional[int] = None):
        groups = {g.name: g for g in graph.groups}
        for name, k in counts.items():
            if name not in groups:
                raise ValueError(f'counts names unknown group {name!r}')
            g = groups[name]
            if not (int(g.pinned.sum()) <= k <= g.width and k >= 1):
                raise ValueError(f'counts[{name!r}]={k} outside '
                                 f'[{max(1, int(g.pinned.sum()))}, '
                                 f'{g.width}]')
        self.model, self.graph = model, graph
        self.groups = groups
        self.counts = dict(counts)
        self.eval_fn = eval_fn
        self.bn_batches = list(bn_batches)
        self.forward_fn = forward_fn
        self.num_bn_batches = num_bn_batches
        self.state = {
            k: v.detach().clone()
            for k, v in model.state_dict().items()
        }
        self.calls = 0

    def keep_from_scores(
            self, scores: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        keep = {}
        for name, k in self.counts.items():
            g = self.groups[name]
            s = np.asarray(scores[name], dtype=np.float64)
            pinned = np.nonzero(g.pinned)[0]
            free = np.nonzero(~g.pinned)[0]
            # best first; ties broken by index (stable)
            best = free[np.argsort(-s[free], kind='stable')]
            keep[name] = np.sort(
                np.concatenate([pinned, best[:k - len(pinned)]]))
        return keep

    def restore(self) -> None:
        self.model.load_state_dict(self.state)

    def __call__(self, scores: Dict[str, torch.Tensor]) -> float:
        self.calls += 1
        self.restore()
        modes = [(m, m.training) for m in self.model.modules()]
        try:
            keep = self.keep_from_scores(scores)
            build_mask(self.model, self.graph, keep).apply(self.model)
            adaptive_bn(self.model, self.bn_batches, self.forward_fn,
                        self.num_bn_batches)
            self.model.eval()  # BN now uses the recalibrated statistics
            with torch.no_grad():
                return float(self.eval_fn(self.model))
        finally:
            self.restore()
            for m, flag in modes:
                m.training = flag


class BlendFitness:
    """Genome -> fitness: blend the pool with the genome's alphas and
    evaluate the resulting scores. Identical genomes are evaluated once
    (so the uniform baseline costs nothing when the EA already saw it).

    Args:
        pool (dict): ``{criterion key: {group: scores}}``.
        layout (BlendLayout): genome <-> alphas.
        evaluator (Callable): ``{group: scores} -> float``.
        stage_fn (Callable): group name -> stage.
        normalize (str): ``'rank'`` or ``'minmax'``.
    """

    def __init__(self,
                 pool,
                 layout,
                 evaluator,
                 stage_fn=default_stage,
                 normalize: str = 'rank'):
        self.pool, self.layout = pool, layout
        self.evaluator, self.stage_fn = evaluator, stage_fn
        self.normalize = normalize
        self.trace: List[float] = []
        self._memo: Dict[bytes, float] = {}

    def scores(self, genome) -> Dict[str, torch.Tensor]:
        return blend_scores(self.pool, self.layout.alphas(genome),
                            self.stage_fn, self.normalize)

    def __call__(self, genome) -> float:
        # the key is what the evaluator sees: alphas are rounded to 1e-6
        key = repr(
            sorted((s, sorted(w.items()))
                   for s, w in self.layout.alphas(genome).items())).encode()
        if key not in self._memo:
            f = float(self.evaluator(self.scores(genome)))
            self._memo[key] = f
            self.trace.append(f)
        return self._memo[key]
