from .budget import BudgetAllocator

__all__ = ['BudgetAllocator']
