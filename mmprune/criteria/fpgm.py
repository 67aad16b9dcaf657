"""Geometric-median redundancy (FPGM).

Paper: He et al., "Filter Pruning via Geometric Median for Deep
Convolutional Neural Networks Acceleration", CVPR 2019,
https://arxiv.org/abs/1811.00250 (code: he-y/filter-pruning-geometric-median).

``s_c = sum_d ||v_c - v_d||_2`` over the channels ``d`` of the same group:
a filter close to the others (near the geometric median) is the most
replaceable and gets the smallest score.

Our choice (docs/methods.md §2B(f)): for a coupled group ``v_c`` concatenates
the filters of every producer of channel ``c``
(:func:`mmprune.criteria.filters.group_filter_matrix`), so the distance is
taken in the joint space instead of summing per-producer distances.
``p`` picks the norm of the distance (the official code uses 2).
"""
import torch

from ..registry import CRITERIA
from .base import BaseCriterion
from .filters import group_filter_matrix


@CRITERIA.register_module()
class FPGMCriterion(BaseCriterion):
    """Sum of distances of a channel's concatenated producer filters to
    those of every other channel of its group.

    Args:
        p (float): norm of the distance, >= 1. Defaults to 2.
    """

    def __init__(self, p: float = 2.0):
        if not (isinstance(p, (int, float)) and p >= 1):
            raise ValueError(f'p must be a number >= 1, got {p!r}')
        self.p = float(p)

    def score_group(self, model, group) -> torch.Tensor:
        v = group_filter_matrix(model, group).double()  # (G, K)
        return torch.cdist(v[None], v[None], p=self.p)[0].sum(1).float()
