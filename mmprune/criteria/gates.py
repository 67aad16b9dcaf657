"""Gate sites: where gradient-based criteria read ``sum(a * dL/da)``.

Taylor-FO (Molchanov et al. 2019) puts a gate ``w = 1`` after every BN and
scores a channel by ``sum_{n,h,w} a * dL/da`` over the gated map ``a``;
grad x input relevance (GCP-FRS default for detection) is the same sum per
sample. We call each place a channel group is read this way a *site*:

* every BN-like member of the group (its output is the gated map), and
* every conv/linear producer of the group that no BN follows (its output).

**How it is read (our choice).** A site's output is homogeneous of degree
one in its own per-channel parameters: ``a = gamma * x_hat + beta`` for BN
(``x_hat`` does not depend on gamma/beta, in train or eval mode) and
``a = W_c * x + b_c`` for a conv/linear row. By Euler's theorem

    sum_{n,h,w} a_c * dL/da_c = gamma_c * dL/dgamma_c + beta_c * dL/dbeta_c
                              = sum_i W_ci * dL/dW_ci + b_c * dL/db_c,

exactly (tests/test_criteria.py checks it against hooks on the outputs).
So we hook the *parameters'* gradients (one multi-grad hook per site, fired
once per backward while the graph runs), not the activations:

* mmengine's ``OptimWrapper.update_params`` zeroes ``.grad`` before any
  ``after_train_iter`` hook, so the sums must be taken during backward;
* no activation is kept alive, and in-place ops after the site (``out +=
  identity`` in ResNet/CSP blocks) cannot corrupt the product;
* parameter hooks see each rank's *local* gradient, before DDP averages it.

After physical surgery parameters are new objects: call ``attach`` again
with the new graph.
"""
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

logger = logging.getLogger('mmprune')


@dataclass
class GateSite:
    """One place a group's channels are gated.

    Attributes:
        group (str): the group name.
        width (int): the group width G.
        module (str): module name (a BN or an un-normalised producer).
        positions (torch.Tensor): (n,) module channel positions.
        group_index (torch.Tensor): (n,) their group channel indices.
    """
    group: str
    width: int
    module: str
    positions: torch.Tensor
    group_index: torch.Tensor


def gate_sites(graph, groups=None) -> List[GateSite]:
    """Sites of ``groups`` (default: every prunable group of ``graph``)."""
    groups = graph.prunable_groups() if groups is None else groups
    sites = []
    for g in groups:
        followed = set()
        for m in g.members:
            if m.kind == 'norm' and m.axis == 'in':
                rec = graph.records[m.module]
                for via in rec.in_vias:
                    followed.update(
                        int(v)
                        for v in np.asarray(via)[np.asarray(m.positions)]
                        if v >= 0)
                sites.append(_site(g, m))
        for m in g.members:
            if m.axis == 'out' and m.kind in ('conv', 'linear') and \
                    graph.records[m.module].index not in followed:
                sites.append(_site(g, m))
    return sites


def _site(group, member) -> GateSite:
    return GateSite(group.name, group.width, member.module,
                    torch.as_tensor(member.positions, dtype=torch.long),
                    torch.as_tensor(member.group_index, dtype=torch.long))


def _row_sum(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(C,) ``sum`` over each output row of ``p * g`` in float64."""
    return (p.detach().double() * g.double()).reshape(p.shape[0], -1).sum(1)


class GateHooks:
    """Calls ``callback(site_index, contribution, info)`` once per backward
    and site, where ``contribution`` (G,) float64 is ``sum_{n,h,w} a *
    dL/da`` of the site in its group's index space (module positions that
    share a group channel are added) and ``info`` is ``dict(samples=N,
    positions=H*W summed over calls)`` from the last forward, when
    ``track_shapes`` is set.

    Args:
        callback (Callable): see above.
        track_shapes (bool): also record output shapes with forward hooks.
    """

    def __init__(self, callback: Callable, track_shapes: bool = False):
        self.callback = callback
        self.track_shapes = track_shapes
        self.handles = []
        self.sites: List[GateSite] = []
        self._pending: Dict[int, Tuple[int, int]] = {}

    def attach(self, model: nn.Module, sites: List[GateSite]) -> None:
        self.remove()
        self.sites = list(sites)
        modules = dict(model.named_modules())
        skipped = []
        for i, site in enumerate(self.sites):
            mod = modules[site.module]
            params = [
                p for p in (getattr(mod, 'weight', None),
                            getattr(mod, 'bias', None))
                if isinstance(p, nn.Parameter) and p.requires_grad
            ]
            if not params:
                skipped.append(site.module)
                continue
            self.handles.append(
                torch.autograd.graph.register_multi_grad_hook(
                    params, self._make_hook(i, params)))
            if self.track_shapes:
                self.handles.append(
                    mod.register_forward_hook(self._make_shape_hook(i)))
        if self.track_shapes:
            # a new forward of the whole model starts new shape records
            self.handles.append(
                model.register_forward_pre_hook(
                    lambda mod, inputs: self._pending.clear()))
        if skipped:
            logger.info(
                'mmprune: gate sites without trainable parameters '
                'are not scored: %s', ', '.join(skipped[:8]))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self._pending = {}

    def _make_shape_hook(self, i: int):

        def hook(mod, inputs, out):
            if not isinstance(out, torch.Tensor) or out.dim() < 2:
                return
            _, hw = self._pending.get(i, (0, 0))
            positions = int(np.prod(out.shape[2:], dtype=np.int64))
            self._pending[i] = (int(out.shape[0]), hw + positions)

        return hook

    def _make_hook(self, i: int, params: List[nn.Parameter]):
        site = self.sites[i]

        def hook(grads):
            total = None
            for p, g in zip(params, grads):
                if g is None:
                    continue
                t = _row_sum(p, g)
                total = t if total is None else total + t
            if total is None:
                return
            contrib = torch.zeros(
                site.width, dtype=torch.float64, device=total.device)
            contrib.index_add_(
                0, site.group_index.to(total.device),
                total.index_select(0, site.positions.to(total.device)))
            n, hw = self._pending.pop(i, (0, 0))
            self.callback(i, contrib, dict(samples=n, positions=hw))

        return hook


class SiteSums:
    """Per-site ``(rows, G)`` float64 sums and ``(rows,)`` counts that
    all-reduce safely.

    Buffers exist for every site from the start, so every rank reduces the
    same tensors even if some site saw no gradient there. ``sync`` reduces
    only what was added since the last sync: calling it again is harmless
    (every rank must call it equally often, as for any collective).

    Args:
        sites (list[GateSite]): the sites.
        rows (int): rows per site (classes for per-class relevance).
        device (torch.device): where the buffers live (the gradients').
    """

    def __init__(self, sites: List[GateSite], rows: int = 1, device=None):
        self.sites = sites
        self.rows = rows
        self.device = torch.device('cpu') if device is None else device
        self.reset()

    def add(self,
            i: int,
            value: torch.Tensor,
            count: float = 1.0,
            row: int = 0) -> None:
        self.delta[i][row] += value.to(self.delta[i])
        self.count_delta[i][row] += count

    def add_rows(self, i: int, values: torch.Tensor,
                 counts: torch.Tensor) -> None:
        """Add ``values`` (rows, G) and ``counts`` (rows,) to site ``i``."""
        self.delta[i] += values.to(self.delta[i])
        self.count_delta[i] += counts.to(self.count_delta[i])

    def total(self, i: int):
        """``(sums (rows, G), counts (rows,))`` of site ``i``."""
        return (self.synced[i] + self.delta[i],
                self.count_synced[i] + self.count_delta[i])

    def sync(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            return
        if not self.sites:
            return
        keys = range(len(self.sites))
        flat = torch.cat([
            torch.cat([self.delta[k].flatten(), self.count_delta[k]])
            for k in keys
        ])
        dist.all_reduce(flat)
        off = 0
        for k in keys:
            n, r = self.delta[k].numel(), self.rows
            self.synced[k] += flat[off:off + n].view_as(self.delta[k])
            self.count_synced[k] += flat[off + n:off + n + r]
            self.delta[k].zero_()
            self.count_delta[k].zero_()
            off += n + r

    def reset(self) -> None:

        def zeros(*shape):
            return torch.zeros(shape, dtype=torch.float64, device=self.device)

        self.delta = [zeros(self.rows, s.width) for s in self.sites]
        self.synced = [zeros(self.rows, s.width) for s in self.sites]
        self.count_delta = [zeros(self.rows) for _ in self.sites]
        self.count_synced = [zeros(self.rows) for _ in self.sites]


def model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device('cpu'))


def sites_by_group(sites: List[GateSite]) -> Dict[str, List[int]]:
    out: Dict[str, List[int]] = {}
    for i, s in enumerate(sites):
        out.setdefault(s.group, []).append(i)
    return out


def resolve_scale(loss_scale: Optional[object]) -> float:
    """The current loss scale: ``loss_scale`` is None (1), a number, or a
    callable returning one (e.g. ``scaler.get_scale``)."""
    if loss_scale is None:
        return 1.0
    s = loss_scale() if callable(loss_scale) else loss_scale
    s = float(s)
    if not s > 0:
        raise ValueError(f'loss_scale must be > 0, got {s!r}')
    return s
