from .pruning_plan import PLAN_VERSION, PruningPlan

__all__ = ['PLAN_VERSION', 'PruningPlan']
