"""The reader gather map of FCP's fine mode with reader pruning, as the graph
reads it back.

In fine mode a residual stream stays at full width (writers are scattered
into it, :mod:`mmprune.graph.scatter_map`). With ``read_pruning`` every
conv/linear that reads the stream (a block's first conv, the next stage's
conv and downsample, an FPN lateral) keeps its *own* subset of the stream's
channels: its weight keeps only those input columns and a non-persistent
buffer ``mmprune_read`` (C_w,) lists, for each kept column, the position in
the incoming tensor it reads. A forward pre-hook
(:mod:`mmprune.pruners.gather`) gathers those positions before the conv.

The format lives here, in the graph, so the tracer can read an already
gathered reader back without importing the pruner that writes it
(graph -> ... -> pruner, one way).
"""
import numpy as np
import torch.nn as nn

BUFFER = 'mmprune_read'


def read_sources(module: nn.Module):
    """(C_w,) int64 incoming position of each weight column of a gathering
    reader, or None when the module reads its input as it arrives."""
    gather = getattr(module, BUFFER, None)
    if gather is None:
        return None
    return gather.detach().cpu().numpy().astype(np.int64)
