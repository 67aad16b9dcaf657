from .base import BaseCriterion, group_weight_rows
from .blended import BlendedCriterion
from .bn_scale import BNScaleCriterion
from .fpgm import FPGMCriterion
from .hrank import HRankCriterion
from .magnitude import L1Criterion, L2Criterion
from .random import RandomCriterion
from .relevance import FeatureRelevanceCriterion
from .similarity import WeightSimilarityCriterion
from .taylor import TaylorCriterion

__all__ = [
    'BaseCriterion', 'group_weight_rows', 'BNScaleCriterion', 'L1Criterion',
    'L2Criterion', 'FPGMCriterion', 'TaylorCriterion',
    'WeightSimilarityCriterion', 'FeatureRelevanceCriterion',
    'BlendedCriterion', 'HRankCriterion', 'RandomCriterion'
]
