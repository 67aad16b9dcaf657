"""Per-stage channel/FLOPs/params table for the training log."""
from collections import OrderedDict

import torch.nn as nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.modules.batchnorm._BatchNorm, )


def stage_of(name: str) -> str:
    """``backbone.stage2.1.main_conv.conv`` -> ``backbone.stage2``."""
    parts = name.split('.')
    return '.'.join(parts[:2]) if len(parts) > 2 else parts[0]


def stage_rows(model: nn.Module, cost):
    """[(stage, conv out channels, FLOPs, params)] in module order, with
    ``cost`` a :class:`~mmprune.utils.flops.CostModel` of ``model``. FLOPs
    follow the cost model (conv/linear MACs plus BN ops), so the stages sum
    to ``cost.flops()``."""
    rows = OrderedDict()
    for name, mod in model.named_modules():
        if not isinstance(mod, _CONVS + _NORMS) or name not in cost.mult:
            continue
        st = stage_of(name)
        ch, macs, params = rows.get(st, (0, 0, 0))
        if isinstance(mod, _NORMS):
            out = 0  # the channels column counts conv/linear outputs
            macs += cost.mult[name] * cost.kernel[name] * mod.num_features
        else:
            w = mod.weight
            out = w.shape[0]
            # w[0] holds (C_in / groups) * k_h * k_w weights: the kernel
            # size is already in it (cost.kernel must not be applied again)
            macs += cost.mult[name] * w[0].numel() * out
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
        for attr in ('out_channels', 'out_features', 'num_features',
                     'num_channels'):
            if isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear,
                                nn.modules.batchnorm._NormBase,
                                nn.GroupNorm)) and hasattr(mod, attr):
                widths[name] = int(getattr(mod, attr))
                break
    return widths
