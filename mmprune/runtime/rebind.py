"""Keep the training runtime consistent after a physical cut.

Surgery replaces pruned ``nn.Parameter`` objects. Everything that held the
old objects must follow, with the *same* plan:

* the optimizer: each param group keeps its options (lr, weight_decay and
  the ``paramwise_cfg`` multipliers baked into them) and its order, the old
  parameter is swapped for the new one, and per-parameter state (SGD
  momentum, Adam moments) is sliced to the kept indices. The LR scheduler
  holds no parameters, so it is untouched;
* the EMA copy (mmengine ``EMAHook.ema_model``, e.g. ``ExpMomentumEMA``):
  its module is cut with the same index map and its ``avg_parameters``
  cache is rebuilt;
* DDP: the reducer buckets point at the old parameters, so the model is
  re-wrapped with the runner's ``model_wrapper_cfg``.
"""
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from ..graph.layers import tensor_slices
from ..pruners.surgery import apply_compact


def unwrap(model: nn.Module) -> nn.Module:
    from mmengine.model import is_model_wrapper
    return model.module if is_model_wrapper(model) else model


def param_slices(graph, index_map) -> Dict[str, list]:
    """``{param name: [(dim, kept idx LongTensor), ...]}`` for every
    parameter a plan changes."""
    out = {}
    for mname, entry in index_map.items():
        kind = graph.records[mname].kind
        for tname, axes in tensor_slices(kind).items():
            dims = [(dim, torch.as_tensor(entry[axis], dtype=torch.long))
                    for axis, dim in axes if entry[axis] is not None]
            if dims:
                out[f'{mname}.{tname}' if mname else tname] = dims
    return out


def _slice_like(t: torch.Tensor, dims, old_shape) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(old_shape):
        return t  # scalars such as Adam's `step`
    for dim, idx in dims:
        if len(idx) != t.shape[dim]:
            t = t.index_select(dim, idx.to(t.device))
    return t.clone()


def rebind_optimizer(optimizer: torch.optim.Optimizer, old: Dict[str,
                                                                 nn.Parameter],
                     new: Dict[str, nn.Parameter], slices: Dict[str,
                                                                list]) -> None:
    """Point ``optimizer`` at the new parameters and slice their state."""
    name_of = {id(p): n for n, p in old.items()}
    for group in optimizer.param_groups:
        params = []
        for p in group['params']:
            name = name_of.get(id(p))
            if name is None or new.get(name) is p:
                params.append(p)
                continue
            q = new[name]
            if p in optimizer.state:
                state = optimizer.state.pop(p)
                optimizer.state[q] = {
                    k: _slice_like(v, slices.get(name, ()), p.shape)
                    for k, v in state.items()
                }
            params.append(q)
        group['params'] = params


def refresh_ema_cache(ema_model) -> None:
    """Rebuild the averaged model's cache of (now replaced) tensors."""
    if hasattr(ema_model, 'avg_parameters'):
        ema_model.avg_parameters = (
            ema_model.module.state_dict() if ema_model.update_buffers else
            dict(ema_model.module.named_parameters()))


def prune_ema(ema_model, graph, keep) -> None:
    """Cut mmengine's averaged model with the same plan."""
    apply_compact(ema_model.module, graph, keep)
    refresh_ema_cache(ema_model)


def find_ema(runner) -> Optional[object]:
    for hook in getattr(runner, 'hooks', []):
        if type(hook).__name__ == 'EMAHook' and hasattr(hook, 'ema_model'):
            return hook.ema_model
    return None


def rewrap(runner, module: nn.Module) -> None:
    """Re-wrap ``module`` like the runner did (DDP buckets must be rebuilt
    after parameters change). A non-distributed model is left alone."""
    from mmengine.model import is_model_wrapper
    if not is_model_wrapper(runner.model):
        return
    cfg = runner.cfg.get('model_wrapper_cfg') if hasattr(runner, 'cfg') \
        else None
    # runner.wrap_model expects the bare module; it moves it to the device,
    # keeps SyncBN as built and builds MMDistributedDataParallel again
    runner.model = runner.wrap_model(cfg, module)


def prune_runner(runner, graph, keep: Dict[str, np.ndarray]) -> dict:
    """Apply ``keep`` to the runner's model, its EMA copy, its optimizer and
    its DDP wrapper. Returns the applied per-module index map."""
    model = unwrap(runner.model)
    old = dict(model.named_parameters())
    index_map = apply_compact(model, graph, keep)
    new = dict(model.named_parameters())
    optim_wrapper = getattr(runner, 'optim_wrapper', None)
    optimizer = getattr(optim_wrapper, 'optimizer', None)
    if isinstance(optimizer, torch.optim.Optimizer):
        rebind_optimizer(optimizer, old, new, param_slices(graph, index_map))
    ema = find_ema(runner)
    if ema is not None:
        prune_ema(ema, graph, keep)
    rewrap(runner, model)
    return index_map
