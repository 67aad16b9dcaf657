"""BN-scale criterion |gamma|.

Paper: Liu et al., "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017, https://arxiv.org/abs/1708.06519. Coupled groups sum
|gamma| over their BNs; a group with no BN falls back to its filters' L1.
"""
import torch

from ..registry import CRITERIA
from .base import BaseCriterion
from .magnitude import L1Criterion


@CRITERIA.register_module()
class BNScaleCriterion(BaseCriterion):
    """Sum of |gamma| of the BNs that normalise the group's channels."""

    # a reader group has no BN: the L1 fallback scores its columns
    scores_readers = True

    def score_group(self, model, group):
        modules = dict(model.named_modules())
        score = torch.zeros(group.width)
        found = False
        for m in group.members:
            if m.kind != 'norm' or m.axis != 'in':
                continue
            gamma = getattr(modules[m.module], 'weight', None)
            if gamma is None:
                continue
            found = True
            pos = torch.as_tensor(m.positions, dtype=torch.long)
            score.index_add_(0, torch.as_tensor(m.group_index),
                             gamma.detach().abs().cpu().index_select(0, pos))
        return score if found else L1Criterion().score_group(model, group)
