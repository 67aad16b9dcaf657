"""Feature-map rank importance (HRank).

Paper: Lin et al., "HRank: Filter Pruning using High-Rank Feature Map",
CVPR 2020, https://arxiv.org/abs/2002.10179 (code: lmbxmu/HRankPlus,
``rank_generation.py``). A channel scores the matrix rank of its H x W
output map, averaged over calibration images; low rank is pruned first.

Our choices (methods spec §2A, §2B(f)):

* the map is each site's output (its BNs, or producers no BN follows, see
  :mod:`mmprune.criteria.gates`) passed through ``activation`` (``'relu'``
  by default, as the official code hooks ReLU outputs; ``'silu'`` for
  YOLOX, or None);
* coupled groups average the rank over their sites;
* ranks use ``torch.linalg.matrix_rank`` with its default tolerance;
* forward hooks only (no gradients); the hooks run in whatever mode the
  caller's forward uses; at most ``max_images`` (128) images per site are
  ranked between resets (the paper uses a few hundred calibration
  images). Spatially flat outputs (Linear) have no rank and are skipped.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import CRITERIA
from .base import BaseCriterion
from .gates import SiteSums, gate_sites, model_device, sites_by_group

_ACTS = {'relu': F.relu, 'silu': F.silu, None: (lambda t: t)}


@CRITERIA.register_module()
class HRankCriterion(BaseCriterion):
    """Mean matrix rank of a channel's output maps.

    Args:
        activation (str | None): ``'relu'``, ``'silu'`` or None, applied to
            the site output before the rank. Defaults to 'relu'.
        max_images (int | None): per site, stop recording after this many
            images until :meth:`reset` (an SVD per channel and image is
            costly if the criterion stays attached during training).
            Defaults to 128 (None: no limit).
    """

    def __init__(self, activation: Optional[str] = 'relu',
                 max_images: Optional[int] = 128):
        if activation not in _ACTS:
            raise ValueError(f'activation must be one of {list(_ACTS)}, got '
                             f'{activation!r}')
        if max_images is not None and not (isinstance(max_images, int)
                                           and max_images > 0):
            raise ValueError(f'max_images must be a positive int or None, '
                             f'got {max_images!r}')
        self.activation = activation
        self.max_images = max_images
        self._handles = []
        self._sites, self._by_group = [], {}
        self._sums: Optional[SiteSums] = None
        self._seen = []

    def attach(self, model: nn.Module, graph) -> None:
        """Record ranks on every forward of ``model`` from now on."""
        self.detach()
        self._sites = gate_sites(graph)
        self._by_group = sites_by_group(self._sites)
        self._device = model_device(model)  # NCCL reduces device tensors
        modules = dict(model.named_modules())
        for i, site in enumerate(self._sites):
            self._handles.append(modules[site.module].register_forward_hook(
                self._make_hook(i)))
        self.reset()

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def reset(self) -> None:
        self._sums = SiteSums(self._sites,
                              device=getattr(self, '_device', None))
        self._seen = [0] * len(self._sites)

    def sync(self) -> None:
        if self._sums is not None:
            self._sums.sync()

    def _make_hook(self, i: int):
        site = self._sites[i]
        # multiplicity of each group channel at this site (chunk couplings)
        mult = torch.bincount(site.group_index,
                              minlength=site.width).clamp_min(1).double()

        def hook(mod, inputs, out):
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                return
            n = out.shape[0]
            if self.max_images is not None:
                n = min(n, self.max_images - self._seen[i])
                if n <= 0:
                    return
            with torch.no_grad():
                a = _ACTS[self.activation](out[:n].detach().float())
                a = a.index_select(1, site.positions.to(a.device))
                ranks = torch.linalg.matrix_rank(a).double().sum(0).cpu()
            per = torch.zeros(site.width, dtype=torch.float64)
            per.index_add_(0, site.group_index, ranks)
            self._sums.add(i, per / mult, count=float(n))
            self._seen[i] += int(n)

        return hook

    def score_group(self, model, group) -> torch.Tensor:
        if group.name not in self._by_group or self._sums is None:
            raise RuntimeError(f'HRankCriterion has no statistics for group '
                               f'{group.name!r}: attach(model, graph) and '
                               f'run forward passes first')
        means = []
        for i in self._by_group[group.name]:
            sums, counts = self._sums.total(i)
            if float(counts[0]) > 0:
                means.append((sums[0] / counts[0]).cpu())
        if not means:
            raise RuntimeError(f'HRankCriterion saw no spatial output for '
                               f'group {group.name!r}')
        return torch.stack(means).mean(0).float()
