"""Analyse a detector: trace its tensor forward into channel groups."""
import logging
from typing import Sequence, Tuple

import torch.nn as nn

from ..adapters.detector import fixed_output_module, tensor_forward
from .channel_graph import ChannelGraph, build_channel_graph
from .tracer import RESIDUAL_MODES, GraphTraceError

logger = logging.getLogger('mmprune')

#: default size for tracing: small (fast) but divisible by every stride the
#: supported detectors use (RetinaNet P7 = stride 128)
TRACE_SIZE = (128, 128)


def analyze(model: nn.Module,
            residual_mode: str = 'coupled',
            input_size: Tuple[int, int] = TRACE_SIZE,
            ignored: Sequence[str] = (),
            replay: bool = False,
            read_pruning: bool = False) -> ChannelGraph:
    """Trace ``model``'s tensor forward and return its channel groups.

    Args:
        model (nn.Module): an mmdet detector (or any module taking images).
        residual_mode (str): ``'coupled'`` or ``'fine'`` (FCP).
        input_size (tuple): (H, W) of the dummy image used for tracing.
        ignored (Sequence[str]): module names whose output channels must
            stay (``ignored_layers``).
        replay (bool): analyse only to apply an existing plan: frozen
            parameters pin nothing and an unprunable model is no error.
        read_pruning (bool): fine mode only: each conv/linear reading a
            residual stream keeps its own subset of it (a reader group
            ``'<module>:in'``, gathered in the compact model;
            docs/methods.md §3(d)). Defaults to False.
    """
    if residual_mode not in RESIDUAL_MODES:
        raise ValueError(f'residual_mode must be one of {RESIDUAL_MODES}, '
                         f'got {residual_mode!r}')
    if read_pruning and residual_mode != 'fine':
        raise ValueError(f"read_pruning=True needs residual_mode='fine', got "
                         f'{residual_mode!r}')
    names = dict(model.named_modules())
    missing = [n for n in ignored if n not in names]
    if missing:
        raise ValueError(f'ignored_layers names modules that do not exist: '
                         f'{missing}')
    ignored = set(ignored)

    def fixed(name, mod):
        return name in ignored or fixed_output_module(name, mod)

    was_training = model.training
    model.eval()
    try:
        fn, inputs = tensor_forward(model, input_size)
        graph = build_channel_graph(
            model,
            fn,
            inputs,
            residual_mode=residual_mode,
            fixed=fixed,
            respect_frozen=not replay,
            read_pruning=read_pruning)
    except GraphTraceError as e:
        raise GraphTraceError(
            f'{e} (traced on a {tuple(input_size)} dummy image: the trace '
            f'size must suit the model, e.g. a multiple of its largest '
            f'stride)') from e.__cause__
    finally:
        model.train(was_training)
    if replay:
        return graph
    if not graph.prunable_groups():
        raise RuntimeError(
            f'no prunable channel group found in {type(model).__name__}: '
            f'every channel is pinned. Pins: '
            f'{sorted(set(graph.pinned_classes.values()))[:10]}')
    frozen = sorted({
        r.split(' ', 1)[1]
        for r in graph.pinned_classes.values() if r.startswith('frozen ')
    })
    if frozen:
        logger.info(
            'mmprune: %d frozen modules are not pruned (set '
            'frozen_stages=-1 to prune them): %s', len(frozen),
            ', '.join(frozen[:8]) + (' ...' if len(frozen) > 8 else ''))
    for where, why in graph.opaque.items():
        logger.info('mmprune: %s: %s', where, why)
    return graph
