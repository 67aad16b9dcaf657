from .adaptive import AdaptiveAllocator
from .base import BaseAllocator
from .budget import BudgetAllocator
from .global_threshold import GlobalThresholdAllocator
from .schedule import PruningSchedule, ramp_reduction
from .uniform import UniformAllocator

__all__ = [
    'BaseAllocator', 'BudgetAllocator', 'UniformAllocator',
    'GlobalThresholdAllocator', 'AdaptiveAllocator', 'PruningSchedule',
    'ramp_reduction'
]
