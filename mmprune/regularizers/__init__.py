"""Training-loss terms used by pruning methods (registered in
:data:`mmprune.registry.REGULARIZERS`)."""
from .base import BaseRegularizer
from .bn_l1 import BNL1Regularizer
from .tpp import TPPRegularizer, selected_norm_ratio

__all__ = [
    'BaseRegularizer', 'TPPRegularizer', 'BNL1Regularizer',
    'selected_norm_ratio'
]
