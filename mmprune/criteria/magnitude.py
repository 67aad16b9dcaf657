"""Filter-norm criteria.

Paper: Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017,
https://arxiv.org/abs/1608.08710 (L1). L2 is the same with the 2-norm.
Coupled producers add their filter norms (methods spec §2B(f)).
"""
import torch

from ..registry import CRITERIA
from .base import BaseCriterion, group_weight_rows


class _NormCriterion(BaseCriterion):
    p = 1

    def score_group(self, model, group):
        score = torch.zeros(group.width)
        for rows, gidx in group_weight_rows(model, group):
            score.index_add_(0, gidx, rows.float().norm(p=self.p, dim=1).cpu())
        return score


@CRITERIA.register_module()
class L1Criterion(_NormCriterion):
    """L1 norm of the producer filters, summed over coupled producers."""
    p = 1


@CRITERIA.register_module()
class L2Criterion(_NormCriterion):
    """L2 norm of the producer filters, summed over coupled producers."""
    p = 2
