"""Physical channel removal: rebuild Conv/BN/Linear tensors with kept indices.

Which tensor dimension is which, and how a module refreshes its width
attributes after a cut, is the layer-kind table's knowledge
(:mod:`mmprune.graph.layers`): surgery, the masker, the cost model and the
optimizer rebinding all read the same entries, so they cannot disagree.
"""
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from ..adapters.detector import set_roi_width, sync_static_attributes
from ..graph.layers import KINDS, current_width, tensor_slices
from . import scatter as scatter_mod
from .gather import set_read_gather


def _select(t: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    return t.detach().index_select(dim, idx.to(t.device)).clone()


def groupnorm_blocks(module: nn.GroupNorm,
                     kept: np.ndarray,
                     name: str = 'GroupNorm') -> int:
    """Number of GroupNorm blocks ``kept`` ((C',) channel positions) keeps;
    a ValueError naming ``name`` when it would split a block (the compact
    model would normalise a different set of channels than the masked
    one: silently wrong, so refused)."""
    c, g = module.num_channels, module.num_groups
    size = c // g
    per_block = np.bincount(
        np.asarray(kept, dtype=np.int64) // size, minlength=g)
    split = np.nonzero((per_block != 0) & (per_block != size))[0]
    if len(split):
        b = int(split[0])
        raise ValueError(
            f'{name}: the plan keeps {int(per_block[b])} of the {size} '
            f'channels of GroupNorm group {b} (channels [{b * size}, '
            f'{(b + 1) * size})); a GroupNorm loses whole groups only')
    return int((per_block == size).sum())


def prune_module(module: nn.Module,
                 kind: str,
                 out_idx: Optional[np.ndarray],
                 in_idx: Optional[np.ndarray],
                 name: str = '') -> bool:
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
        groupnorm_blocks(module, out_idx, name or 'GroupNorm')  # no splits
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
            setattr(module, tname,
                    nn.Parameter(new, requires_grad=t.requires_grad))
        else:
            setattr(module, tname, new)
    if kind == 'gn':
        # also without affine parameters: num_groups shrinks with the width
        KINDS[kind].resize(module, out_idx)
        return True
    if not changed:
        return False
    KINDS[kind].resize(module, out_idx)  # width attributes from the tensors
    return True


def apply_compact(
        model: nn.Module, graph,
        keep: Dict[str,
                   np.ndarray]) -> Dict[str, Dict[str, Optional[np.ndarray]]]:
    """Remove every pruned channel of ``keep`` ({group: kept indices}).

    Fine-mode writers are scattered back to full stream width, and readers
    (``read_pruning``) gather their kept stream columns. Returns the
    per-module index map that was applied (for optimizer/EMA rebinding).
    """
    modules = dict(model.named_modules())
    index_map = graph.module_indices(keep)
    check_groupnorms(modules, graph, index_map)  # before anything changes
    for name, entry in index_map.items():
        rec = graph.records[name]
        mod = modules[name]
        full = current_width(mod, rec.kind)
        if rec.kind == 'roi' and entry['in'] is not None:
            set_roi_width(model, name, len(entry['in']))
            continue
        prune_module(mod, rec.kind, entry['out'], entry['in'], name)
        if name in graph.scatter and entry['out'] is not None:
            scatter_mod.set_scatter(
                mod, torch.as_tensor(entry['out'], dtype=torch.long), full)
        if entry.get('gather') is not None:  # a reader (fine mode)
            set_read_gather(mod, torch.as_tensor(entry['gather']),
                            entry['incoming'])
    sync_static_attributes(model)  # adapter: width attrs of wrappers
    return index_map


def check_groupnorms(
        modules: Dict[str, nn.Module], graph,
        index_map: Dict[str, Dict[str, Optional[np.ndarray]]]) -> None:
    """Refuse (ValueError naming the module) an index map that splits a
    GroupNorm group; masking and surgery both call it first."""
    for name, entry in index_map.items():
        if graph.records[name].kind == 'gn' and entry['out'] is not None:
            groupnorm_blocks(modules[name], entry['out'], name)
