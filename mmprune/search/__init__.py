"""Search utilities: the evolutionary algorithm, BPC fitness plumbing and
the BPC blend search entry point (:func:`search_blend`)."""
from .blend_search import BlendSearchConfig, BlendSearchResult, search_blend
from .evolution import EAConfig, EAResult, evolve
from .fitness import (BlendFitness, GroupSubset, MaskedEvaluator, adaptive_bn,
                      calibrate_pool, counts_of, mmdet_forward, mmdet_loss,
                      negative_loss)

__all__ = [
    'BlendSearchConfig', 'BlendSearchResult', 'search_blend', 'EAConfig',
    'EAResult', 'evolve', 'BlendFitness', 'GroupSubset', 'MaskedEvaluator',
    'adaptive_bn', 'calibrate_pool', 'counts_of', 'mmdet_forward',
    'mmdet_loss', 'negative_loss'
]
