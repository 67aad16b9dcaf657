"""The fine-mode scatter map, as the graph reads it back.

A scattered writer (:mod:`mmprune.pruners.scatter`, FCP's fine residual
mode) carries a non-persistent buffer ``gather`` (C,): ``gather[c]`` is the
position of stream channel c among the writer's kept outputs, or ``|S|``
(an appended zero channel) when c was dropped. The tracer reads it to label
an already-scattered writer's output at full stream width; the pruner
writes it. The format lives here, in the graph, so that the graph does not
import the pruner that writes it (graph -> ... -> pruner, one way).
"""
import torch

BUFFER = 'mmprune_scatter'


def kept_positions(gather: torch.Tensor) -> torch.Tensor:
    """Kept stream positions ``S`` ((|S|,) LongTensor) of a gather map."""
    # invariant (set_scatter): |S| < C, so the zero channel index |S| occurs
    n_kept = int(gather.max())
    pos = torch.full((n_kept, ), -1, dtype=torch.long)
    for c, g in enumerate(gather.tolist()):
        if g < n_kept:
            pos[g] = c
    return pos
