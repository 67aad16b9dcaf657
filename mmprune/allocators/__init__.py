from .adaptive import AdaptiveAllocator, ramp_reduction
from .base import BaseAllocator
from .budget import BudgetAllocator
from .global_threshold import GlobalThresholdAllocator
from .uniform import UniformAllocator

__all__ = ['BaseAllocator', 'BudgetAllocator', 'UniformAllocator',
           'GlobalThresholdAllocator', 'AdaptiveAllocator', 'ramp_reduction']
