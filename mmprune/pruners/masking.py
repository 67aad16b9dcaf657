"""Soft pruning: zero a plan's channels instead of removing them.

Mask semantics (docs/methods.md §0.2): the producer rows (weight and bias), the
BN gamma and beta and the consumer columns of a pruned channel are zero. The
post-BN value is then exactly 0, every activation we allow maps 0 to 0, and
the consumers ignore the channel anyway; so a masked model computes the same
function as the compact one (tests/test_graph check this to 1e-4).
"""
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..graph.layers import tensor_slices
from .surgery import check_groupnorms


class ChannelMask:
    """The zero pattern of a plan: a list of (module, tensor name, dim,
    zeroed positions). :meth:`apply` re-applies it (after an optimizer
    step or an EMA update); :meth:`zero_grads` clears their gradients."""

    def __init__(self, entries: List[Tuple[str, str, int, torch.Tensor]]):
        self.entries = entries

    def __len__(self):
        return len(self.entries)

    def _targets(self, model: nn.Module):
        modules = dict(model.named_modules())
        for mname, tname, dim, pos in self.entries:
            t = getattr(modules[mname], tname, None)
            if t is not None:
                yield t, dim, pos

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        for t, dim, pos in self._targets(model):
            t.index_fill_(dim, pos.to(t.device), 0)

    @torch.no_grad()
    def apply_state(self, model: nn.Module, optimizer) -> None:
        """Zero the optimizer state (momentum, Adam moments) of masked
        entries, so they do not drift back (docs/methods.md §0.2, point 6)."""
        for t, dim, pos in self._targets(model):
            for v in optimizer.state.get(t, {}).values():
                if isinstance(v, torch.Tensor) and v.shape == t.shape:
                    v.index_fill_(dim, pos.to(v.device), 0)

    @torch.no_grad()
    def zero_grads(self, model: nn.Module) -> None:
        for t, dim, pos in self._targets(model):
            if getattr(t, 'grad', None) is not None:
                t.grad.index_fill_(dim, pos.to(t.device), 0)


def build_mask(model: nn.Module, graph, keep: Dict[str,
                                                   np.ndarray]) -> ChannelMask:
    """The :class:`ChannelMask` of ``keep`` ({group: kept indices}).

    Running statistics of BN are left alone: gamma = beta = 0 already makes
    the channel's output exactly zero. A GroupNorm loses whole groups
    only: a zeroed group normalises to 0 and the others do not see it.
    """
    modules = dict(model.named_modules())
    entries = []
    index_map = graph.module_indices(keep)
    # a GroupNorm group with some channels zeroed would not equal the
    # compact model: refused here as in surgery
    check_groupnorms(modules, graph, index_map)
    for name, idx in index_map.items():
        rec = graph.records[name]
        mod = modules[name]
        for tname, axes in tensor_slices(rec.kind).items():
            if tname.startswith('running_'):
                continue
            t = getattr(mod, tname, None)
            if t is None:
                continue
            for axis, dim in axes:
                kept = idx[axis]
                if kept is None:
                    continue
                drop = np.setdiff1d(np.arange(t.shape[dim]), kept)
                if len(drop):
                    entries.append((name, tname, dim,
                                    torch.as_tensor(drop, dtype=torch.long)))
    return ChannelMask(entries)
