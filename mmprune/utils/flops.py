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
"""
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


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
        handles = []

        def hook(mod, inp, out):
            name = names[mod]
            if isinstance(mod, _CONVS):
                n = out.numel() // out.shape[1]  # N * spatial positions
                self.kernel[name] = int(np.prod(mod.kernel_size))
            elif isinstance(mod, nn.GroupNorm):
                # mean, var, normalise (+ scale, shift) per element
                n = out.numel() // out.shape[1]
                self.kernel[name] = 5 if mod.affine else 4
            elif isinstance(mod, _NORMS):
                n = out.numel() // out.shape[1]
                self.kernel[name] = 2 if mod.affine else 1
            else:
                n = out.numel() // out.shape[-1]  # rows
                self.kernel[name] = 1
            self.mult[name] = self.mult.get(name, 0) + n

        for m in model.modules():
            if isinstance(m, _CONVS + _NORMS + (nn.Linear, )):
                handles.append(m.register_forward_hook(hook))
        try:
            with torch.no_grad():
                forward_fn(*inputs)
        finally:
            for h in handles:
                h.remove()
        self._modules = {n: m for n, m in model.named_modules()
                         if n in self.mult}

    def _macs(self, name: str, c_out: int, c_in: int, groups: int) -> int:
        return self.mult[name] * self.kernel[name] * c_out * (c_in // groups)

    def flops(self, graph=None, keep: Optional[dict] = None) -> int:
        """MACs now, or after ``keep`` ({group: kept idx}) on ``graph``."""
        idx = graph.module_indices(keep or {}) if graph is not None else {}
        total = 0
        for name, mod in self._modules.items():
            if isinstance(mod, _CONVS):
                c_out, c_in, g = mod.out_channels, mod.in_channels, mod.groups
            elif isinstance(mod, nn.GroupNorm):
                c_out, c_in, g = mod.num_channels, 1, 1
            elif isinstance(mod, _NORMS):
                c_out, c_in, g = mod.num_features, 1, 1
            else:
                c_out, c_in, g = mod.out_features, mod.in_features, 1
            entry = idx.get(name)
            if entry is not None:
                kind = graph.records[name].kind
                if kind == 'dwconv':
                    c_out = c_in = g = len(entry['out'])
                elif kind in ('norm', 'gn'):
                    c_out = len(entry['out'])
                else:
                    c_out = len(entry['out']) if entry['out'] is not None \
                        else c_out
                    c_in = len(entry['in']) if entry['in'] is not None \
                        else c_in
            total += self._macs(name, c_out, c_in, g)
        return int(total)

    @staticmethod
    def params(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    def params_after(self, model: nn.Module, graph, keep: dict) -> int:
        """Parameter count after ``keep`` without touching ``model``."""
        from ..pruners.surgery import tensor_slices
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
