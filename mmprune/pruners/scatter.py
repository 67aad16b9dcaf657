"""Fine residual mode (FCP): scatter a writer's kept channels into its stream.

FCP (Chen et al., "Fine-Grained Channel Pruning for Deep Residual Neural
Networks", ICANN 2020) keeps every residual addition alive at full stream
width. A writer (the last conv/BN of a block, a downsample, an FPN lateral)
that kept channels ``S`` of the stream's ``C`` must put them back at their
positions before the add.

We do it as a Gather rather than an index_add/ScatterND: append one zero
channel and ``index_select`` along dim 1 with a static map ``gather`` (C,),
``gather[c] = position of c in S`` or ``len(S)`` (the zero channel). That
exports to ONNX as Concat + Gather, which every runtime handles well.

The map lives in a non-persistent buffer, so state_dict keys do not change
and a structure replay re-creates it (see :mod:`mmprune.structures`).
"""
import torch
import torch.nn as nn

# the map's format is the graph's (the tracer reads it back)
from ..graph.scatter_map import BUFFER, kept_positions


def _scatter_hook(module: nn.Module, inputs, output: torch.Tensor):
    gather = getattr(module, BUFFER)
    # output: (N, |S|, H, W) -> (N, |S|+1, H, W) -> (N, C, H, W)
    zero = output.new_zeros((output.shape[0], 1) + tuple(output.shape[2:]))
    return torch.cat([output, zero], 1).index_select(1, gather)


def scatter_index(module: nn.Module):
    """Kept stream positions ``S`` (LongTensor) of a scattered module, or
    None when the module writes its stream at full width."""
    gather = getattr(module, BUFFER, None)
    if gather is None:
        return None
    return kept_positions(gather)


def set_scatter(module: nn.Module, kept: torch.Tensor, width: int) -> None:
    """Make ``module`` output ``width`` channels with its current outputs at
    stream positions ``kept`` ((|S|,) sorted LongTensor) and zeros
    elsewhere. Calling it again composes (``kept`` indexes the current
    compact layout then)."""
    old = scatter_index(module)
    if old is None and len(kept) == width:
        return  # nothing dropped: the module already writes full width
    if old is not None:
        kept = old[kept]
        width = int(getattr(module, BUFFER).numel())
    gather = torch.full((width, ), len(kept), dtype=torch.long)
    gather[kept] = torch.arange(len(kept))
    device = next((t.device for t in module.parameters()), gather.device)
    if hasattr(module, BUFFER):
        setattr(module, BUFFER, gather.to(device))
    else:
        module.register_buffer(BUFFER, gather.to(device), persistent=False)
        module.register_forward_hook(_scatter_hook)
