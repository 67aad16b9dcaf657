"""Physical channel removal: rebuild Conv/BN/Linear tensors with kept indices.

The per-layer-type knowledge of *which tensor dimension is which* lives only
here (``_SLICES``). Both the physical pruner and the masker read it, so they
cannot disagree.
"""
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from ..adapters.detector import set_roi_width, sync_static_attributes
from . import scatter as scatter_mod

# kind -> {param/buffer name: axis ('out' | 'in'), tensor dim}
_SLICES = {
    'conv': {'weight': (('out', 0), ('in', 1)), 'bias': (('out', 0), )},
    'linear': {'weight': (('out', 0), ('in', 1)), 'bias': (('out', 0), )},
    'dwconv': {'weight': (('out', 0), ), 'bias': (('out', 0), )},
    'norm': {'weight': (('out', 0), ), 'bias': (('out', 0), ),
             'running_mean': (('out', 0), ), 'running_var': (('out', 0), )},
    # GroupNorm: only whole blocks of C/G channels go (docs/methods.md
    # §0.3); prune_module checks that before slicing
    'gn': {'weight': (('out', 0), ), 'bias': (('out', 0), )},
}


def tensor_slices(kind: str):
    """``{tensor_name: ((axis, dim), ...)}`` for a module kind."""
    return _SLICES.get(kind, {})


def _select(t: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    return t.detach().index_select(dim, idx.to(t.device)).clone()


def groupnorm_blocks(module: nn.GroupNorm, kept: np.ndarray,
                     name: str = 'GroupNorm') -> int:
    """Number of GroupNorm blocks ``kept`` ((C',) channel positions) keeps;
    a ValueError naming ``name`` when it would split a block (the compact
    model would normalise a different set of channels than the masked
    one: silently wrong, so refused)."""
    c, g = module.num_channels, module.num_groups
    size = c // g
    per_block = np.bincount(np.asarray(kept, dtype=np.int64) // size,
                            minlength=g)
    split = np.nonzero((per_block != 0) & (per_block != size))[0]
    if len(split):
        b = int(split[0])
        raise ValueError(
            f'{name}: the plan keeps {int(per_block[b])} of the {size} '
            f'channels of GroupNorm group {b} (channels [{b * size}, '
            f'{(b + 1) * size})); a GroupNorm loses whole groups only')
    return int((per_block == size).sum())


def prune_module(module: nn.Module, kind: str, out_idx: Optional[np.ndarray],
                 in_idx: Optional[np.ndarray], name: str = '') -> bool:
    """Slice ``module`` in place to the kept output rows / input columns.

    Returns True when something was removed. Parameters are replaced by new
    ``nn.Parameter`` objects (same ``requires_grad``); callers that hold
    optimizers must re-point them (see the training runtime). A GroupNorm
    (kind ``'gn'``) keeps whole groups only: ``num_groups`` shrinks with
    ``num_channels``, and a split group raises a ValueError naming
    ``name``.
    """
    if kind == 'gn':
        if out_idx is None or len(out_idx) == module.num_channels:
            return False
        groups = groupnorm_blocks(module, out_idx, name or 'GroupNorm')
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
    if kind == 'gn':  # also without affine parameters
        module.num_channels, module.num_groups = len(out_idx), groups
        return True
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
    check_groupnorms(modules, graph, index_map)  # before anything changes
    for name, entry in index_map.items():
        rec = graph.records[name]
        mod = modules[name]
        full = _current_width(mod, rec.kind)
        if rec.kind == 'roi' and entry['in'] is not None:
            set_roi_width(model, name, len(entry['in']))
            continue
        prune_module(mod, rec.kind, entry['out'], entry['in'], name)
        if name in graph.scatter and entry['out'] is not None:
            scatter_mod.set_scatter(
                mod, torch.as_tensor(entry['out'], dtype=torch.long), full)
    sync_static_attributes(model)  # adapter: width attrs of wrappers
    return index_map


def check_groupnorms(modules: Dict[str, nn.Module], graph,
                     index_map: Dict[str, Dict[str, Optional[np.ndarray]]]
                     ) -> None:
    """Refuse (ValueError naming the module) an index map that splits a
    GroupNorm group; masking and surgery both call it first."""
    for name, entry in index_map.items():
        if graph.records[name].kind == 'gn' and entry['out'] is not None:
            groupnorm_blocks(modules[name], entry['out'], name)


def _current_width(mod: nn.Module, kind: str) -> int:
    if kind == 'gn':
        return mod.num_channels
    if kind in ('conv', 'dwconv', 'linear', 'norm'):
        return mod.weight.shape[0] if getattr(mod, 'weight', None) is not \
            None else len(mod.running_mean)
    return -1
