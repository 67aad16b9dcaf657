"""Physical channel removal: rebuild Conv/BN/Linear tensors with kept indices.

The per-layer-type knowledge of *which tensor dimension is which* lives only
here (``_SLICES``). Both the physical pruner and the masker read it, so they
cannot disagree.
"""
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from ..adapters.detector import sync_static_attributes
from . import scatter as scatter_mod

# kind -> {param/buffer name: axis ('out' | 'in'), tensor dim}
_SLICES = {
    'conv': {'weight': (('out', 0), ('in', 1)), 'bias': (('out', 0), )},
    'linear': {'weight': (('out', 0), ('in', 1)), 'bias': (('out', 0), )},
    'dwconv': {'weight': (('out', 0), ), 'bias': (('out', 0), )},
    'norm': {'weight': (('out', 0), ), 'bias': (('out', 0), ),
             'running_mean': (('out', 0), ), 'running_var': (('out', 0), )},
}


def tensor_slices(kind: str):
    """``{tensor_name: ((axis, dim), ...)}`` for a module kind."""
    return _SLICES.get(kind, {})


def _select(t: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    return t.detach().index_select(dim, idx.to(t.device)).clone()


def prune_module(module: nn.Module, kind: str, out_idx: Optional[np.ndarray],
                 in_idx: Optional[np.ndarray]) -> bool:
    """Slice ``module`` in place to the kept output rows / input columns.

    Returns True when something was removed. Parameters are replaced by new
    ``nn.Parameter`` objects (same ``requires_grad``); callers that hold
    optimizers must re-point them (see the training runtime).
    """
    idx = {'out': out_idx, 'in': in_idx}
    changed = False
    for tname, axes in tensor_slices(kind).items():
        t = getattr(module, tname, None)
        if t is None:
            continue
        new = t
        for axis, dim in axes:
            sel = idx[axis]
            if sel is None or len(sel) == new.shape[dim]:
                continue
            new = _select(new, dim, torch.as_tensor(sel, dtype=torch.long))
        if new is t:
            continue
        changed = True
        if isinstance(t, nn.Parameter):
            setattr(module, tname, nn.Parameter(new,
                                                requires_grad=t.requires_grad))
        else:
            setattr(module, tname, new)
    if not changed:
        return False
    if kind == 'conv':
        module.out_channels = module.weight.shape[0]
        module.in_channels = module.weight.shape[1] * module.groups
    elif kind == 'dwconv':
        c = module.weight.shape[0]
        module.in_channels = module.out_channels = module.groups = c
    elif kind == 'linear':
        module.out_features, module.in_features = module.weight.shape
    elif kind == 'norm':
        module.num_features = module.weight.shape[0] if \
            module.weight is not None else len(module.running_mean)
    return True


def apply_compact(model: nn.Module, graph, keep: Dict[str, np.ndarray]
                  ) -> Dict[str, Dict[str, Optional[np.ndarray]]]:
    """Remove every pruned channel of ``keep`` ({group: kept indices}).

    Fine-mode writers are scattered back to full stream width. Returns the
    per-module index map that was applied (for optimizer/EMA rebinding).
    """
    modules = dict(model.named_modules())
    index_map = graph.module_indices(keep)
    for name, entry in index_map.items():
        rec = graph.records[name]
        mod = modules[name]
        full = _current_width(mod, rec.kind)
        prune_module(mod, rec.kind, entry['out'], entry['in'])
        if name in graph.scatter and entry['out'] is not None:
            scatter_mod.set_scatter(
                mod, torch.as_tensor(entry['out'], dtype=torch.long), full)
    sync_static_attributes(model)  # adapter: width attrs of wrappers
    return index_map


def _current_width(mod: nn.Module, kind: str) -> int:
    if kind in ('conv', 'dwconv', 'linear', 'norm'):
        return mod.weight.shape[0] if getattr(mod, 'weight', None) is not \
            None else len(mod.running_mean)
    return -1
