from .base import BaseCriterion, group_weight_rows
from .bn_scale import BNScaleCriterion
from .magnitude import L1Criterion, L2Criterion

__all__ = ['BaseCriterion', 'group_weight_rows', 'BNScaleCriterion',
           'L1Criterion', 'L2Criterion']
