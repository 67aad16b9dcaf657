"""Feature relevance score (GCP-FRS).

Paper: Aketi, Roy, Raghunathan, Roy, "Gradual Channel Pruning while
Training using Feature Relevance Scores for Convolutional Neural Networks",
IEEE Access 8:171924-171932, 2020, arXiv 2002.09958 (code:
purdue-nrl/Gradual-Channel-Pruning-using-FRS). docs/methods.md §4(a), (e).

Per channel ``c`` of a scored map ``A`` (relevance ``R``):
``r_{n,c} = mean_{h,w} R_{n,c,h,w}``, ``f_c = |mean_n r_{n,c}|``, then
per-group L2 normalisation ``f_c / (||f||_2 + 1e-9)`` so one global
threshold works across layers (confirmed from the code).

Two ways to get ``R`` (``relevance=``):

* ``'grad_x_input'`` (default, **our choice** for detection, §4(e)):
  ``R = A * dL/dA`` of the training/detection loss, accumulated during the
  ordinary backward passes of a scoring pass (read from parameter
  gradients, :mod:`mmprune.criteria.gates`); works for SiLU/LeakyReLU
  nets. Equals LRP-0 for bias-free ReLU nets.
* ``'lrp'``: LRP-alpha-beta (alpha=2, beta=1, confirmed) seeded with the
  one-hot true label at the logits, for ReLU classification CNNs
  (:mod:`mmprune.criteria.lrp`); call :meth:`accumulate_lrp` per batch.
  For ReLU single-stage anchor detectors (RetinaNet) in a training hook,
  :meth:`scoring_step` runs :meth:`accumulate_lrp_detection`, seeded at the
  positive priors' class logits (**our choice**, docs/methods.md §4(e));
  :meth:`check_model` refuses other networks (SiLU YOLOX) before training.
  ``f_c = |mean_k s_k F_c^(k)|`` over classes ``k`` with per-class means
  ``F^(k)`` and weights ``s_k`` (``class_weights``; default 1, i.e. the
  class-balanced mean; :func:`class_weights_from_accuracy` gives the
  paper's ``sigmoid(1 / (acc_k / max acc))``).

More **our choices**:

* the scored map of a group is the output of each of its sites (its BNs,
  and producers no BN follows); for ReLU nets ``A * dL/dA`` is the same
  before and after the ReLU. For a fine-mode residual writer this scores
  what pruning removes (the branch channel), where the paper scored the
  block output after add + ReLU;
* coupled groups add the signed per-site means before ``|.|``: the
  first-order effect of removing the channel at every site at once;
* a shared module called at several levels averages over all its output
  positions (``h, w`` summed over calls per sample);
* AMP: contributions are divided by ``loss_scale`` (number or callable),
  non-finite ones skipped; DDP: :meth:`sync` all-reduces sums and counts
  (sharded scoring).
"""
from contextlib import contextmanager
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..graph.layers import is_batchnorm
from ..registry import CRITERIA
from .base import BaseCriterion
from .gates import (GateHooks, SiteSums, gate_sites, model_device,
                    resolve_scale, sites_by_group)
from .lrp import check_modules, lrp_forward
from .scoring import batch_statistics

_MODES = ('grad_x_input', 'lrp')


def class_weights_from_accuracy(acc: Sequence[float]) -> np.ndarray:
    """GCP-FRS class weights ``s_k = sigmoid(1 / (acc_k / max_j acc_j))``:
    weaker classes weigh more, ``s_k`` in (0.73, 1]."""
    acc = np.asarray(acc, dtype=np.float64)
    if acc.ndim != 1 or not len(acc) or not np.all(np.isfinite(acc)) or \
            acc.min() < 0 or acc.max() <= 0:
        raise ValueError(f'acc must be a non-empty 1-d array of finite '
                         f'accuracies >= 0 with a positive maximum, got '
                         f'{acc!r}')
    rel = np.maximum(acc / acc.max(), 1e-12)
    return 1.0 / (1.0 + np.exp(-1.0 / rel))


@CRITERIA.register_module()
class FeatureRelevanceCriterion(BaseCriterion):
    """GCP-FRS feature relevance, summed over a group's sites.

    Args:
        relevance (str): ``'grad_x_input'`` or ``'lrp'``. Defaults to
            'grad_x_input'.
        normalize (bool): per-group L2 normalisation. Defaults to True.
        alpha (float): LRP alpha. Defaults to 2.
        beta (float): LRP beta (``alpha - beta`` must be 1). Defaults to 1.
        eps (float): LRP stabiliser. Defaults to 1e-9.
        class_weights (Sequence[float] | None): ``s_k`` per class (``'lrp'``
            only). Defaults to None (all 1).
        loss_scale (float | Callable | None): AMP loss scale or a callable
            returning it (``'grad_x_input'``). Defaults to None.

    Examples:
        >>> crit = FeatureRelevanceCriterion()        # grad x input
        >>> crit.attach(model, graph)
        >>> for x, y in scoring_batches:
        ...     loss_fn(model(x), y).backward()
        >>> scores = crit.score(model, graph); crit.detach()
        >>> lrp = FeatureRelevanceCriterion(relevance='lrp')
        >>> lrp.attach(model, graph)
        >>> for x, y in scoring_batches:
        ...     lrp.accumulate_lrp(model, x, y)
    """

    def __init__(self,
                 relevance: str = 'grad_x_input',
                 normalize: bool = True,
                 alpha: float = 2.0,
                 beta: float = 1.0,
                 eps: float = 1e-9,
                 class_weights: Optional[Sequence[float]] = None,
                 loss_scale=None):
        if relevance not in _MODES:
            raise ValueError(f'relevance must be one of {_MODES}, got '
                             f'{relevance!r}')
        if abs(float(alpha) - float(beta) - 1.0) > 1e-12 or beta < 0:
            raise ValueError(f'alpha - beta must be 1 with beta >= 0, got '
                             f'alpha={alpha!r}, beta={beta!r}')
        if not eps > 0:
            raise ValueError(f'eps must be > 0, got {eps!r}')
        if class_weights is not None:
            if relevance != 'lrp':
                raise ValueError("class_weights needs relevance='lrp' "
                                 '(grad x input has no per-class scores)')
            class_weights = np.asarray(class_weights, dtype=np.float64)
            if class_weights.ndim != 1 or not np.all(
                    np.isfinite(class_weights)) or class_weights.min() < 0:
                raise ValueError(f'class_weights must be a 1-d array of '
                                 f'finite values >= 0, got {class_weights!r}')
        self.relevance = relevance
        self.normalize = bool(normalize)
        self.alpha, self.beta, self.eps = float(alpha), float(beta), eps
        self.class_weights = class_weights
        self.loss_scale = loss_scale
        self.skipped = 0
        self._hooks: Optional[GateHooks] = None
        self._sites, self._by_group = [], {}
        self._sums: Optional[SiteSums] = None

    # ---------------------------------------------------------- lifecycle
    @property
    def data_driven(self) -> bool:
        return True

    @property
    def needs_scoring_pass(self) -> bool:
        # LRP runs its own relevance backward; grad x input reads ordinary
        # backward passes, of training or of a scoring pass
        return self.relevance == 'lrp'

    def check_model(self, model: nn.Module) -> None:
        """``'lrp'``: raise before training when ``model`` has a layer
        or head the LRP rules do not cover (e.g. SiLU in YOLOX)."""
        if self.relevance != 'lrp':
            return
        if _is_detector(model):
            if self.class_weights is not None:
                raise ValueError(
                    'FeatureRelevanceCriterion: class_weights need per-class '
                    'relevance of a classifier; detection LRP seeds every '
                    'positive prior at once (docs/methods.md §4(e))')
            check_modules(lrp_body(model))
            check_anchor_head(model)
        else:
            check_modules(model)

    def scoring_step(self, model: nn.Module, data: dict) -> None:
        """One scoring batch: grad x input reads the loss backward; LRP
        runs :meth:`accumulate_lrp_detection`."""
        if self.relevance == 'grad_x_input':
            return super().scoring_step(model, data)
        self.accumulate_lrp_detection(model, data['inputs'],
                                      data['data_samples'])

    def attach(self, model: nn.Module, graph) -> None:
        """Prepare to score ``graph``'s prunable groups (resets)."""
        self.detach()
        self._sites = gate_sites(graph)
        self._by_group = sites_by_group(self._sites)
        self._device = model_device(model)
        if self.relevance == 'grad_x_input':
            self._hooks = GateHooks(self._on_backward, track_shapes=True)
            self._hooks.attach(model, self._sites)
        self.reset()

    def detach(self) -> None:
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None

    def reset(self) -> None:
        self._sums = None
        if self.relevance == 'grad_x_input':
            self._sums = SiteSums(
                self._sites, device=getattr(self, '_device', None))
        self.skipped = 0

    def sync(self) -> None:
        """All-reduce the sums over ranks (no-op without distributed)."""
        if self._sums is not None:
            self._sums.sync()

    def _on_backward(self, i, contrib, info):
        if info['samples'] == 0 or info['positions'] == 0:
            return  # no forward record (e.g. a second backward): skip
        contrib = contrib / resolve_scale(self.loss_scale)
        if not torch.isfinite(contrib).all():
            self.skipped += 1
            return
        # sum_{n,h,w} a*g / (H*W) = sum_n mean_hw(a*g); counts add N
        self._sums.add(
            i, contrib / info['positions'], count=float(info['samples']))

    # --------------------------------------------------------------- LRP
    def accumulate_lrp(self, model: nn.Module, inputs: torch.Tensor,
                       labels: torch.Tensor) -> torch.Tensor:
        """One LRP pass on a batch: ``model(inputs)`` must return class
        logits (N, K); relevance starts as one-hot ``labels``. Returns the
        logits. Parameter gradients are not touched."""
        if self.relevance != 'lrp':
            raise RuntimeError("accumulate_lrp needs relevance='lrp'")
        if not self._sites:
            raise RuntimeError('call attach(model, graph) before '
                               'accumulate_lrp')
        labels = torch.as_tensor(labels, dtype=torch.long)
        with self._captured(model) as captured:
            x = inputs.detach().clone().requires_grad_(True)
            with lrp_forward(model, self.alpha, self.beta, self.eps):
                out = model(x)
            if not (isinstance(out, torch.Tensor) and out.dim() == 2):
                raise ValueError('LRP relevance needs a model returning '
                                 'class logits (N, K)')
            k = out.shape[1]
            if self._sums is None:
                # on the model's device, so NCCL can all-reduce it
                self._sums = SiteSums(self._sites, rows=k, device=self._device)
            elif self._sums.rows != k:
                raise ValueError(f'model returned {k} classes, earlier '
                                 f'batches {self._sums.rows}')
            out.backward(F.one_hot(labels.to(out.device), k).to(out))
        lab = labels.cpu()
        counts = torch.bincount(lab, minlength=k).double()
        for i, r in captured.items():  # r: (N, C) mean_hw relevance
            site = self._sites[i]
            rg = torch.zeros(r.shape[0], site.width, dtype=torch.float64)
            rg.index_add_(1, site.group_index,
                          r.double().cpu().index_select(1, site.positions))
            per_class = torch.zeros(k, site.width, dtype=torch.float64)
            per_class.index_add_(0, lab, rg)
            self._sums.add_rows(i, per_class, counts)
        return out.detach()

    @contextmanager
    def _captured(self, model: nn.Module):
        """Yields ``{site index: (N, C) mean_hw relevance}``, filled when
        relevance flows back through each site's output (summed over the
        calls of a shared module)."""
        modules = dict(model.named_modules())
        captured, handles = {}, []

        def capture(i):

            def fwd(mod, inp, out):

                def bwd(r):
                    captured[i] = captured.get(i, 0) + _per_sample(r)

                if isinstance(out, torch.Tensor) and out.requires_grad:
                    out.register_hook(bwd)

            return fwd

        for i, site in enumerate(self._sites):
            handles.append(modules[site.module].register_forward_hook(
                capture(i)))
        try:
            yield captured
        finally:
            for h in handles:
                h.remove()

    def accumulate_lrp_detection(self, model: nn.Module, inputs: torch.Tensor,
                                 data_samples) -> None:
        """One LRP pass of a single-stage anchor detector (RetinaNet).

        **Our choice** (docs/methods.md §4(e), ``lrp_cls``): relevance
        starts at the classification logits of the *positive* priors, the
        ones the head's own assigner matches to a ground-truth box, one-hot
        on that box's class, divided by the image's number of positives
        (each image brings relevance 1, like a classifier's one-hot label).
        The regression branch gets no relevance. Norm layers that train
        with batch statistics use them here too (see
        :mod:`mmprune.criteria.scoring`). One row of sums (no per-class
        split, so no ``class_weights``).
        """
        if self.relevance != 'lrp':
            raise RuntimeError("accumulate_lrp_detection needs "
                               "relevance='lrp'")
        if not self._sites:
            raise RuntimeError('call attach(model, graph) before '
                               'accumulate_lrp_detection')
        body, head = lrp_body(model), model.bbox_head
        trained = [m for m in body.modules() if is_batchnorm(m) and m.training]
        with self._captured(model) as captured:
            x = inputs.detach().float().requires_grad_(True)
            with lrp_forward(body, self.alpha, self.beta, self.eps), \
                    batch_statistics(body, trained):
                cls_scores = head(model.extract_feat(x))[0]
            seeds = _positive_seeds(head, cls_scores, data_samples)
            torch.autograd.backward(list(cls_scores), seeds)
        n = x.shape[0]
        if self._sums is None:
            self._sums = SiteSums(self._sites, rows=1, device=self._device)
        for i, r in captured.items():  # r: (N, C) mean_hw relevance
            site = self._sites[i]
            rg = torch.zeros(site.width, dtype=torch.float64)
            rg.index_add_(
                0, site.group_index,
                r.double().cpu().sum(0).index_select(0, site.positions))
            self._sums.add(i, rg, count=float(n))

    # ------------------------------------------------------------ scoring
    def score_group(self, model, group) -> torch.Tensor:
        if group.name not in self._by_group or self._sums is None:
            raise RuntimeError(
                f'FeatureRelevanceCriterion has no statistics for group '
                f'{group.name!r}: attach(model, graph) and run a scoring '
                f'pass first')
        idx = self._by_group[group.name]
        sums = sum(self._sums.total(i)[0].cpu() for i in idx)
        counts = max((self._sums.total(i)[1].cpu() for i in idx),
                     key=lambda c: float(c.sum()))
        if float(counts.sum()) == 0:
            hint = ('; LRP relevance starts at the classification logits, '
                    'so a regression-only branch gets none: leave the '
                    'group out (exclude_groups)'
                    if self.relevance == 'lrp' else '')
            raise RuntimeError(f'no scoring data reached group '
                               f'{group.name!r}{hint}')
        if self.relevance == 'grad_x_input':
            f = (sums[0] / counts[0]).abs()
        else:
            seen = counts > 0
            means = sums[seen] / counts[seen, None]  # (K_seen, G)
            w = torch.ones(len(counts), dtype=torch.float64)
            if self.class_weights is not None:
                if len(self.class_weights) != len(counts):
                    raise ValueError(
                        f'class_weights has {len(self.class_weights)} '
                        f'entries, the model {len(counts)} classes')
                w = torch.as_tensor(self.class_weights)
            f = (w[seen, None] * means).mean(0).abs()
        if self.normalize:
            f = f / (f.norm() + 1e-9)
        return f.float()


def _per_sample(r: torch.Tensor) -> torch.Tensor:
    """(N, C) mean over spatial positions of a relevance map."""
    return r.detach().flatten(2).mean(2) if r.dim() > 2 else r.detach()


def _is_detector(model: nn.Module) -> bool:
    return callable(getattr(model, 'extract_feat', None))


def lrp_body(model: nn.Module) -> nn.Module:
    """The part of a detector an LRP pass runs: backbone, neck and the
    bbox head's layers (its loss modules are never called)."""
    parts = {
        k: getattr(model, k)
        for k in ('backbone', 'neck', 'bbox_head')
        if isinstance(getattr(model, k, None), nn.Module)
    }
    head = parts.pop('bbox_head', None)
    if head is not None:
        parts['bbox_head'] = nn.ModuleDict({
            k: m
            for k, m in head.named_children() if not k.startswith('loss')
        })
    body = nn.ModuleDict(parts)
    body.training = model.training  # lrp_forward restores this mode
    return body


def check_anchor_head(model: nn.Module) -> None:
    """Detection LRP needs the head's assigner to find positive priors:
    only single-stage anchor heads (RetinaNet's) are covered."""
    head = getattr(model, 'bbox_head', None)
    if head is None or not all(
            callable(getattr(head, f, None))
            for f in ('get_anchors', 'get_targets')):
        raise NotImplementedError(
            f'LRP relevance covers single-stage anchor detectors (e.g. '
            f'RetinaNet with a ReLU ResNet); {type(model).__name__} has no '
            f"anchor bbox_head: use relevance='grad_x_input'")


def _positive_seeds(head, cls_scores, data_samples):
    """Per level, a relevance seed shaped like its (N, A*K, H, W) logits:
    1 / (#positives of the image) at (prior, GT class) of each positive
    prior, 0 elsewhere."""
    metas = [s.metainfo for s in data_samples]
    gts = [s.gt_instances for s in data_samples]
    device = cls_scores[0].device
    with torch.no_grad():
        anchors, valid = head.get_anchors([c.shape[-2:] for c in cls_scores],
                                          metas,
                                          device=device)
        labels = head.get_targets(anchors, valid, gts, metas)[0]
    k = head.cls_out_channels
    seeds, per_image = [], 0
    for cls, lab in zip(cls_scores, labels):  # lab: (N, H*W*A) in h, w, a
        n, _, h, w = cls.shape
        pos = (lab >= 0) & (lab < k)
        seed = torch.zeros(n, lab.shape[1], k, device=device)
        seed[pos] = F.one_hot(lab[pos].long(), k).to(seed)
        seeds.append(seed)
        per_image = per_image + pos.sum(1)
    scale = 1.0 / per_image.clamp_min(1).to(torch.float32)
    # (N, H*W*A, K) -> (N, H, W, A*K) -> (N, A*K, H, W), the logits' layout
    return [(s * scale[:, None, None]).reshape(c.shape[0], c.shape[2],
                                               c.shape[3],
                                               -1).permute(0, 3, 1, 2).to(c)
            for s, c in zip(seeds, cls_scores)]
