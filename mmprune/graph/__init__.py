from .channel_graph import (ChannelGraph, ChannelGroup, Member,
                            build_channel_graph)
from .tracer import RESIDUAL_MODES, ChannelTracer

__all__ = [
    'ChannelGraph', 'ChannelGroup', 'Member', 'build_channel_graph',
    'ChannelTracer', 'RESIDUAL_MODES'
]
