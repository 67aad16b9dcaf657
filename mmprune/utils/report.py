"""Per-stage channel/FLOPs/params table for the training log."""
from collections import OrderedDict

import torch.nn as nn

from ..adapters.stages import stage_of
from ..graph.layers import layer_kind


def stage_rows(model: nn.Module, cost):
    """[(stage, conv out channels, FLOPs, params)] in module order, with
    ``cost`` a :class:`~mmprune.costs.flops.CostModel` of ``model``. FLOPs
    follow the cost model (conv/linear MACs plus BN ops), so the stages sum
    to ``cost.flops()``."""
    rows = OrderedDict()
    for name, mod in model.named_modules():
        if name not in cost.mult:
            continue
        st = stage_of(name)
        ch, macs, params = rows.get(st, (0, 0, 0))
        kind = layer_kind(mod)
        # the channels column counts conv/linear outputs, not norms'
        out = 0 if kind.norm else kind.cost.widths(mod)[0]
        macs += cost.module_macs(name, mod)
        params += sum(p.numel() for p in mod.parameters(recurse=False))
        rows[st] = (ch + out, macs, params)
    return [(k, *v) for k, v in rows.items()]


def stage_table(model: nn.Module, cost) -> str:
    lines = [f'{"stage":<28}{"channels":>10}{"GMACs":>10}{"params(M)":>11}']
    for st, ch, macs, params in stage_rows(model, cost):
        lines.append(f'{st:<28}{ch:>10}{macs / 1e9:>10.3f}'
                     f'{params / 1e6:>11.3f}')
    return '\n'.join(lines)


def module_widths(model: nn.Module) -> 'OrderedDict[str, int]':
    """Output channels of every conv / linear / norm layer, by module name
    (``Conv2d.out_channels``, ``Linear.out_features``, ``BN.num_features``,
    ``GroupNorm.num_channels``): the per-layer widths a pruning report lists
    before and after."""
    widths = OrderedDict()
    for name, mod in model.named_modules():
        kind = layer_kind(mod)
        if kind is not None and kind.cost is not None:
            widths[name] = int(kind.cost.widths(mod)[0])  # C_out
    return widths
