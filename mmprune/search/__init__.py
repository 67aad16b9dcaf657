"""Search utilities: the evolutionary algorithm and BPC fitness plumbing."""
from .evolution import EAConfig, EAResult, evolve
from .fitness import (BlendFitness, MaskedEvaluator, adaptive_bn,
                      calibrate_pool, counts_of, mmdet_forward, mmdet_loss,
                      negative_loss)

__all__ = ['EAConfig', 'EAResult', 'evolve', 'BlendFitness',
           'MaskedEvaluator', 'adaptive_bn', 'calibrate_pool', 'counts_of',
           'mmdet_forward', 'mmdet_loss', 'negative_loss']
