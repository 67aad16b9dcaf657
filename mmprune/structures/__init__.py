from .pruning_plan import PLAN_VERSION, PruningPlan
from .structure_meta import (BUFFER, META_KEY, META_VERSION, StructureError,
                             decode, encode, make_meta, read_meta)

__all__ = [
    'PLAN_VERSION', 'PruningPlan', 'BUFFER', 'META_KEY', 'META_VERSION',
    'StructureError', 'decode', 'encode', 'make_meta', 'read_meta'
]
