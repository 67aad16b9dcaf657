"""Group-level views of weights that several criteria share.

``group_filter_matrix`` concatenates, for every channel of a group, the
filters of all its producers into one vector ``v_c`` (docs/methods.md §1B(a),
§2B(f): "FPGM uses the concatenated producer rows"). It reads module
slices only through :func:`mmprune.criteria.base.group_weight_rows` and the
group's members, so no criterion branches on layer types.
"""

import torch
import torch.nn as nn

from .base import group_weight_rows


def group_filter_matrix(model: nn.Module, group) -> torch.Tensor:
    """(G, K) float32 matrix whose row ``c`` is ``v_c``, the concatenation
    of every producer filter that writes group channel ``c``.

    A producer can write one group channel at several output positions (a
    ``chunk`` couples them); those rows are concatenated too, ordered by
    position. Channels with fewer rows than the most (never the case for
    traced graphs, where a producer maps every channel the same number of
    times) are zero-padded.
    """
    blocks = []
    for rows, gidx in group_weight_rows(model, group):
        rows = rows.float().cpu()
        counts = torch.bincount(gidx, minlength=group.width)
        r = int(counts.max()) if len(gidx) else 0
        if r == 0:
            continue
        block = rows.new_zeros(group.width, r, rows.shape[1])
        # stable sort keeps the producer's position order within a channel;
        # slot = rank of a row among the rows of its channel
        order = torch.argsort(gidx, stable=True)
        sorted_idx = gidx[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(order)) - starts[sorted_idx]
        block[sorted_idx, slot] = rows[order]
        blocks.append(block.flatten(1))
    if not blocks:
        raise ValueError(f'group {group.name!r} has no conv/linear producer '
                         f'to read filters from')
    return torch.cat(blocks, 1)
