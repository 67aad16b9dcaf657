from .gather import read_gather, set_read_gather
from .masking import ChannelMask, build_mask
from .scatter import scatter_index, set_scatter
from .surgery import apply_compact, prune_module

__all__ = [
    'ChannelMask', 'build_mask', 'scatter_index', 'set_scatter',
    'apply_compact', 'prune_module', 'read_gather', 'set_read_gather'
]
