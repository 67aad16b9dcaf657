"""Per-channel FLOPs/params cost model.

FLOPs are MACs of conv and linear layers plus BatchNorm's 2 ops per element
in eval mode, i.e. mmengine's complexity counter's convention (it also
counts upsampling, <0.1% on YOLOX, which we leave out), at a stated input
size, e.g. 640x640 for YOLOX. One shape pass with forward
hooks records, per leaf module, ``mult`` = the number of output positions it
computes summed over calls (N*H_out*W_out for a conv, rows for a linear,
levels for a head shared across FPN levels). Then for any plan

    MACs(conv)   = mult * C_out' * (C_in' / groups) * k_h * k_w
    MACs(dwconv) = mult * C' * k_h * k_w
    MACs(linear) = mult * out' * in'
    FLOPs(BN)    = mult * C' * 2   (1 without affine)
    FLOPs(GN)    = mult * C' * 5   (4 without affine; mmengine counts
                                    group_norm like a training-mode norm)

where primes are kept widths from :meth:`ChannelGraph.module_indices`.
Modules the graph does not record (opaque) are charged at their traced cost.
Which modules count, their kernel factor and widths come from the layer-kind
table (:mod:`mmprune.graph.layers`, ``LayerKind.cost``).
"""
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..graph.layers import kept_cost_widths, layer_kind, tensor_slices
from .forward import forward_with_hooks


class CostModel:
    """FLOPs (MACs) and params of a model and of plans on it.

    Args:
        model (nn.Module): the model (its current widths are the base).
        forward_fn (Callable): runs the tensor forward, ``forward_fn(*x)``.
        inputs (Sequence[Tensor]): inputs at the stated size, batch 1.
    """

    def __init__(self, model: nn.Module, forward_fn: Callable,
                 inputs: Sequence[torch.Tensor]):
        self.mult: Dict[str, int] = {}
        self.kernel: Dict[str, int] = {}
        # a measured LatencyTable for latency-aware allocation, or None
        self.latency = None
        names = {m: n for n, m in model.named_modules()}
        costs = {}  # module -> its kind's LayerCost

        def hook(mod, inp, out):
            name, cost = names[mod], costs[mod]
            # output positions: every axis but the channel one
            n = out.numel() // out.shape[cost.positions_dim]
            self.kernel[name] = cost.kernel(mod)
            self.mult[name] = self.mult.get(name, 0) + n

        for m in model.modules():
            kind = layer_kind(m)
            if kind is not None and kind.cost is not None:
                costs[m] = kind.cost
        forward_with_hooks(costs, hook, forward_fn, inputs)
        self._modules = {
            n: m
            for n, m in model.named_modules() if n in self.mult
        }
        self._costs = {n: costs[m] for n, m in self._modules.items()}

    def _macs(self, name: str, c_out: int, c_in: int, groups: int) -> int:
        return self.mult[name] * self.kernel[name] * c_out * (c_in // groups)

    def module_macs(self, name: str, mod: Optional[nn.Module] = None) -> int:
        """MACs of counted module ``name`` at the current widths of
        ``mod`` (default: the module this model was measured on)."""
        mod = self._modules[name] if mod is None else mod
        return int(self._macs(name, *self._costs[name].widths(mod)))

    def flops(self, graph=None, keep: Optional[dict] = None) -> int:
        """MACs now, or after ``keep`` ({group: kept idx}) on ``graph``."""
        idx = graph.module_indices(keep or {}) if graph is not None else {}
        total = 0
        for name, mod in self._modules.items():
            widths = self._costs[name].widths(mod)  # (C_out, C_in, groups)
            entry = idx.get(name)
            if entry is not None:
                widths = kept_cost_widths(graph.records[name].kind, widths,
                                          entry)
            total += self._macs(name, *widths)
        return int(total)

    @staticmethod
    def params(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    def params_after(self, model: nn.Module, graph, keep: dict) -> int:
        """Parameter count after ``keep`` without touching ``model``."""
        modules = dict(model.named_modules())
        saved = 0
        for name, entry in graph.module_indices(keep).items():
            rec = graph.records[name]
            mod = modules[name]
            for tname, axes in tensor_slices(rec.kind).items():
                t = getattr(mod, tname, None)
                if not isinstance(t, nn.Parameter):
                    continue
                shape = list(t.shape)
                for axis, dim in axes:
                    if entry[axis] is not None:
                        shape[dim] = len(entry[axis])
                saved += t.numel() - int(np.prod(shape))
        return self.params(model) - saved
