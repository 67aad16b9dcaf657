"""Feature-map rank importance (HRank).

Paper: Lin et al., "HRank: Filter Pruning using High-Rank Feature Map",
CVPR 2020, https://arxiv.org/abs/2002.10179 (code: lmbxmu/HRankPlus,
``rank_generation.py``). A channel scores the matrix rank of its H x W
output map, averaged over calibration images; low rank is pruned first.

Our choices (docs/methods.md §2A, §2B(f)):

* the map is each site's output (its BNs, or producers no BN follows, see
  :mod:`mmprune.criteria.gates`) passed through the network's own
  activation, as the official code ranks the ReLU outputs of its ReLU
  networks. ``activation='auto'`` (default) takes it from the traced
  graph: the parameter-free activation module (:func:`_activation_types`)
  that reads exactly the site's channels (``ChannelGraph.passthrough``),
  e.g. ``Swish``/``SiLU`` in YOLOX, ``ReLU`` in ResNet; a site no activation
  module reads (a functional ``F.relu``, a prediction conv) is ranked as
  it is, and logged once. ``'relu'``, ``'silu'`` or None force one;
* coupled groups average the rank over their sites;
* ranks use ``torch.linalg.matrix_rank`` with its default tolerance;
* forward hooks only (no gradients); the hooks run in whatever mode the
  caller's forward uses; at most ``max_images`` (128) images per site are
  ranked between resets (the paper uses a few hundred calibration
  images). Spatially flat outputs (Linear) have no rank and are skipped.
"""
import logging
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import CRITERIA
from .base import BaseCriterion
from .gates import SiteSums, gate_sites, model_device, sites_by_group

logger = logging.getLogger('mmprune')

_ACTS = {'relu': F.relu, 'silu': F.silu, None: (lambda t: t)}
_MODES = ('auto', ) + tuple(_ACTS)


def _activation_types() -> tuple:
    """Element-wise activation modules (torch's, and mmcv's own bricks)."""
    types = [
        nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid,
        nn.Sigmoid, nn.Tanh, nn.GELU, nn.ELU, nn.SELU, nn.CELU, nn.Mish,
        nn.Softplus, nn.Hardtanh
    ]
    from mmcv.cnn.bricks import HSigmoid, HSwish, Swish
    return tuple(types + [Swish, HSwish, HSigmoid])


def site_activations(model: nn.Module, graph, sites) -> List[Optional[str]]:
    """Per gate site, the name of the activation module that reads exactly
    its output channels in the traced graph, or None.

    A site's output channels are its atoms (a BN passes its input's atoms
    on; a conv makes new ones); ``graph.passthrough`` holds, per
    parameter-free leaf module, the atoms of each call's input. Exact atoms
    are matched first, then classes (``graph.roots``: a module shared
    between calls, whose atoms were unioned, still matches). Pools and
    upsampling read the same channels after the activation and are not
    activations (:func:`_activation_types`); the first matching activation
    in trace order wins.
    """
    acts = _activation_types()
    modules = dict(model.named_modules())
    readers = [(name, [np.asarray(a) for a in calls])
               for name, calls in getattr(graph, 'passthrough', {}).items()
               if isinstance(modules.get(name), acts)]
    out = []
    for site in sites:
        rec = graph.records[site.module]
        atoms = rec.out if rec.kind in ('conv', 'linear') else rec.inp
        found = None
        if atoms is not None:
            atoms = np.asarray(atoms)
            cls = graph.roots[atoms]
            # the same atoms first (a CSP block's own activation), then the
            # same classes (a shared module, or the first reader of a
            # coupled stream)
            for same in (lambda a: np.array_equal(a, atoms),
                         lambda a: np.array_equal(graph.roots[a], cls)):
                found = next(
                    (name
                     for name, calls in readers if any(same(a)
                                                       for a in calls)), None)
                if found is not None:
                    break
        out.append(found)
    return out


@CRITERIA.register_module()
class HRankCriterion(BaseCriterion):
    """Mean matrix rank of a channel's output maps.

    Args:
        activation (str | None): ``'auto'`` (the activation module the
            traced graph shows after each site), ``'relu'``, ``'silu'`` or
            None, applied to the site output before the rank. Defaults to
            'auto'.
        max_images (int | None): per site, stop recording after this many
            images until :meth:`reset` (an SVD per channel and image is
            costly if the criterion stays attached during training).
            Defaults to 128 (None: no limit).
    """

    def __init__(self,
                 activation: Optional[str] = 'auto',
                 max_images: Optional[int] = 128):
        if activation not in _MODES:
            raise ValueError(f'activation must be one of {list(_MODES)}, '
                             f'got {activation!r}')
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
        # per site: the function applied before the rank, and (for 'auto')
        # the module it came from, e.g. 'backbone.stem.conv.activate'
        self._acts: List[Callable] = []
        self.site_activation: Dict[str, Optional[str]] = {}

    @property
    def data_driven(self) -> bool:
        return True  # ranks of output maps seen by forward hooks

    def attach(self, model: nn.Module, graph) -> None:
        """Record ranks on every forward of ``model`` from now on."""
        self.detach()
        self._sites = gate_sites(graph)
        self._by_group = sites_by_group(self._sites)
        self._device = model_device(model)  # NCCL reduces device tensors
        modules = dict(model.named_modules())
        self._resolve_activations(model, graph, modules)
        for i, site in enumerate(self._sites):
            self._handles.append(modules[site.module].register_forward_hook(
                self._make_hook(i)))
        self.reset()

    def _resolve_activations(self, model, graph, modules) -> None:
        if self.activation != 'auto':
            self._acts = [_ACTS[self.activation]] * len(self._sites)
            self.site_activation = {
                s.module: self.activation
                for s in self._sites
            }
            return
        names = site_activations(model, graph, self._sites)
        # the module's own forward (not __call__: no hooks run), on a copy
        # so an in-place ReLU cannot touch the network's tensor
        self._acts = [(lambda t: t) if n is None else
                      (lambda t, f=modules[n].forward: f(t.clone()))
                      for n in names]
        self.site_activation = {
            s.module: n
            for s, n in zip(self._sites, names)
        }
        bare = [s.module for s, n in zip(self._sites, names) if n is None]
        if bare:
            logger.info(
                'mmprune: HRank: no activation module reads %d '
                'site(s), ranked as they are: %s', len(bare),
                ', '.join(bare[:8]))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def reset(self) -> None:
        self._sums = SiteSums(
            self._sites, device=getattr(self, '_device', None))
        self._seen = [0] * len(self._sites)

    def sync(self) -> None:
        if self._sums is not None:
            self._sums.sync()

    def _make_hook(self, i: int):
        site = self._sites[i]
        # multiplicity of each group channel at this site (chunk couplings)
        mult = torch.bincount(
            site.group_index, minlength=site.width).clamp_min(1).double()

        def hook(mod, inputs, out):
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                return
            n = out.shape[0]
            if self.max_images is not None:
                n = min(n, self.max_images - self._seen[i])
                if n <= 0:
                    return
            with torch.no_grad():
                a = self._acts[i](out[:n].detach().float())
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
