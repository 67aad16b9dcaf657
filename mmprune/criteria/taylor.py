"""First-order Taylor importance, accumulated during backward.

Paper: Molchanov et al., "Importance Estimation for Neural Network
Pruning", CVPR 2019, https://arxiv.org/abs/1906.10771 (code:
NVlabs/Taylor_pruning). A gate ``w = 1`` after each BN scores channel ``c``
of a mini-batch as ``(sum_{n,h,w} a_c * dL/da_c)^2``; scores are averaged
over mini-batches (the paper: momentum 0.9 over 30 batches).

How the sum is read: from the site parameters' gradients, exactly equal to
the gate product (see :mod:`mmprune.criteria.gates`).

Our choices (docs/methods.md §2A, §2B(f), §5; all configurable):

* coupled groups sum the gate terms of all their sites (every BN of the
  group, and every producer no BN follows), each squared per mini-batch;
* ``accumulate``: ``'sum'`` (default; exact union over ranks and batches),
  ``'mean'`` (sum / number of mini-batches) or ``'momentum'`` (the paper's
  running average, ``m * old + (1 - m) * new``, first batch taken as is);
* AMP: each backward's contribution is divided by the loss scale *before*
  squaring (``loss_scale`` is a number or a callable such as
  ``GradScaler.get_scale``); a backward whose gradients are not finite (an
  overflow step the scaler skips) is skipped and counted in ``skipped``;
* DDP: each rank's local batch is one mini-batch (activation gradients are
  local; only parameter gradients are averaged by DDP). :meth:`sync`
  all-reduces the sums (``'sum'``/``'mean'``), so the scores are those of
  one process that saw every rank's batches; ``'momentum'`` buffers are
  averaged over ranks instead.
"""
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from ..registry import CRITERIA
from .base import BaseCriterion
from .gates import (GateHooks, SiteSums, gate_sites, model_device,
                    resolve_scale, sites_by_group)

_MODES = ('sum', 'mean', 'momentum')


@CRITERIA.register_module()
class TaylorCriterion(BaseCriterion):
    """Molchanov'19 first-order Taylor score, summed over coupled sites.

    Args:
        accumulate (str): ``'sum'``, ``'mean'`` or ``'momentum'``.
            Defaults to 'sum'.
        momentum (float): for ``'momentum'``, in [0, 1). Defaults to 0.9.
        loss_scale (float | Callable | None): current AMP loss scale, or a
            callable returning it. Defaults to None (no scaling).
        squared (bool): square each mini-batch's gate sum (the paper);
            False takes its absolute value. Defaults to True.

    Examples:
        >>> crit = TaylorCriterion(loss_scale=scaler.get_scale)
        >>> crit.attach(model, graph)
        >>> for x, y in batches:            # ordinary training steps
        ...     scaler.scale(loss_fn(model(x), y)).backward()
        >>> crit.sync()                     # no-op without torch.distributed
        >>> scores = crit.score(model, graph)
        >>> crit.detach()
    """

    def __init__(self,
                 accumulate: str = 'sum',
                 momentum: float = 0.9,
                 loss_scale=None,
                 squared: bool = True):
        if accumulate not in _MODES:
            raise ValueError(f'accumulate must be one of {_MODES}, got '
                             f'{accumulate!r}')
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f'momentum must be in [0, 1), got {momentum!r}')
        if loss_scale is not None and not callable(loss_scale):
            resolve_scale(loss_scale)  # validates a constant
        self.accumulate = accumulate
        self.momentum = float(momentum)
        self.loss_scale = loss_scale
        self.squared = bool(squared)
        self.skipped = 0
        self._hooks: Optional[GateHooks] = None
        self._sites = []
        self._by_group = {}
        self._sums: Optional[SiteSums] = None
        self._ema = []

    # ---------------------------------------------------------- lifecycle
    @property
    def data_driven(self) -> bool:
        return True  # reads the gradients of training (or scoring) passes

    def attach(self, model: nn.Module, graph) -> None:
        """Start accumulating on ``graph``'s prunable groups (resets)."""
        self.detach()
        self._sites = gate_sites(graph)
        self._by_group = sites_by_group(self._sites)
        self._device = model_device(model)
        self._hooks = GateHooks(self._on_backward)
        self._hooks.attach(model, self._sites)
        self.reset()

    def detach(self) -> None:
        """Remove the hooks; accumulated sums are kept for scoring."""
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._sums = SiteSums(
            self._sites, device=getattr(self, '_device', None))
        self._ema = [None] * len(self._sites)
        self.skipped = 0

    @property
    def num_batches(self) -> int:
        """Backward passes seen by the first site (all ranks after sync)."""
        if not self._sites:
            return 0
        return int(self._sums.total(0)[1].sum())

    def _on_backward(self, i, contrib, info):
        contrib = contrib / resolve_scale(self.loss_scale)
        if not torch.isfinite(contrib).all():
            self.skipped += 1
            return
        term = contrib.square() if self.squared else contrib.abs()
        if self.accumulate == 'momentum':
            old = self._ema[i]
            self._ema[i] = term if old is None else \
                self.momentum * old + (1 - self.momentum) * term
            self._sums.add(i, torch.zeros_like(term))  # counts batches
        else:
            self._sums.add(i, term)

    def sync(self) -> None:
        """All-reduce the accumulators over ranks (no-op when
        ``torch.distributed`` is not initialised). Idempotent."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        self._sums.sync()
        if self.accumulate == 'momentum':
            world = dist.get_world_size()
            for i, site in enumerate(self._sites):
                buf = self._ema[i]
                if buf is None:  # this rank saw no batch for the site
                    buf = torch.zeros(
                        site.width,
                        dtype=torch.float64,
                        device=self._sums.device)
                buf = buf.clone()
                dist.all_reduce(buf)
                self._ema[i] = buf / world

    # ------------------------------------------------------------ scoring
    def score_group(self, model, group) -> torch.Tensor:
        if group.name not in self._by_group:
            raise RuntimeError(
                f'TaylorCriterion has no statistics for group '
                f'{group.name!r}: call attach(model, graph) and run '
                f'backward passes before scoring')
        score = torch.zeros(group.width, dtype=torch.float64)
        seen = 0
        for i in self._by_group[group.name]:
            sums, counts = self._sums.total(i)
            n = float(counts.sum())
            seen = max(seen, n)
            if self.accumulate == 'momentum':
                if self._ema[i] is not None:
                    score += self._ema[i].cpu()
            elif self.accumulate == 'mean':
                score += (sums[0] / max(n, 1.0)).cpu()
            else:
                score += sums[0].cpu()
        if seen == 0:
            why = (f' ({self.skipped} non-finite contributions were skipped:'
                   f' check the loss and the loss_scale)'
                   if self.skipped else '')
            raise RuntimeError(
                f'TaylorCriterion saw no backward pass for group '
                f'{group.name!r}; run at least one backward after attach()'
                f'{why}')
        return score.float()
