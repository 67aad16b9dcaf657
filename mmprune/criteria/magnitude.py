"""Filter-norm criteria.

Paper: Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017,
https://arxiv.org/abs/1608.08710 (L1). L2 is the same with the 2-norm.
Coupled producers add their filter norms (docs/methods.md §2B(f)).
"""
import torch

from ..registry import CRITERIA
from .base import BaseCriterion, group_weight_rows


class _NormCriterion(BaseCriterion):
    p = 1
    scores_readers = True

    def score_group(self, model, group):
        if getattr(group, 'reader', None) is not None:
            return _column_norms(model, group, self.p)
        score = torch.zeros(group.width)
        for rows, gidx in group_weight_rows(model, group):
            score.index_add_(0, gidx, rows.float().norm(p=self.p, dim=1).cpu())
        return score


def _column_norms(model, group, p):
    """(G,) norm of the reader's input columns: a reader group (fine mode
    with ``read_pruning``) has no filters of its own; what the reader does
    with stream channel c is its weight column W[:, c] (the input-channel
    analogue of a filter norm)."""
    modules = dict(model.named_modules())
    score = torch.zeros(group.width)
    for m in group.members:
        if m.axis != 'in' or m.module != group.reader:
            continue
        w = modules[m.module].weight.detach()  # (C_out, C_w, ...)
        cols = w.index_select(
            1, torch.as_tensor(m.positions, dtype=torch.long, device=w.device))
        norms = cols.transpose(0, 1).flatten(1).float().norm(p=p, dim=1)
        score.index_add_(0, torch.as_tensor(m.group_index), norms.cpu())
    return score


@CRITERIA.register_module()
class L1Criterion(_NormCriterion):
    """L1 norm of the producer filters, summed over coupled producers."""
    p = 1


@CRITERIA.register_module()
class L2Criterion(_NormCriterion):
    """L2 norm of the producer filters, summed over coupled producers."""
    p = 2
