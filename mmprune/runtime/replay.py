"""Apply plans to a model and record them in its structure buffer.

:func:`prune` is one cut: physical surgery with a plan, then the plan is
appended to the model's structure record
(:mod:`mmprune.structures.model_record`). :func:`replay` brings a freshly
built model to the structure a list of plans describes, skipping those the
model already carries, so a checkpoint's structure can be replayed on any
copy (model, EMA copy) and replaying twice is harmless.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch.nn as nn

from ..graph import ChannelGraph
from ..graph.analyze import TRACE_SIZE, analyze
from ..pruners.surgery import apply_compact
from ..structures import PruningPlan, StructureError
from ..structures.model_record import model_plans, record_plans


def make_plan(graph: ChannelGraph, keep: Dict[str, np.ndarray]) -> PruningPlan:
    """Wrap ``{group: kept indices}`` into a checked, JSON-safe plan."""
    widths = {g.name: g.width for g in graph.groups}
    for name, kept in keep.items():
        if name not in widths:
            raise ValueError(f'unknown group {name!r}')
        if len(kept) == 0:
            raise ValueError(f'plan would empty group {name!r}')
    # a group can be non-empty and still take every channel of one of its
    # producers (a concat coupled by an add): that module would be empty
    for mod, idx in graph.module_indices(keep).items():
        for axis in ('out', 'in'):
            if idx[axis] is not None and len(idx[axis]) == 0:
                raise ValueError(
                    f'plan would remove every {axis}put channel of module '
                    f'{mod!r}; keep at least one channel of each producer '
                    f'in its group')
    return PruningPlan(
        keep={
            k: sorted(int(i) for i in v)
            for k, v in keep.items()
        },
        residual_mode=graph.residual_mode,
        widths={k: widths[k]
                for k in keep},
        read_pruning=getattr(graph, 'read_pruning', False))


def prune(model: nn.Module,
          plan: PruningPlan,
          graph: Optional[ChannelGraph] = None,
          input_size: Tuple[int, int] = TRACE_SIZE) -> dict:
    """Physically remove ``plan``'s channels from ``model`` (in place).

    Returns the per-module index map that was applied.
    """
    if graph is None:
        # read_pruning: trace the reader groups again, so the readers'
        # gathers (non-persistent buffers) are rebuilt
        graph = analyze(
            model,
            plan.residual_mode,
            input_size,
            replay=True,
            read_pruning=plan.read_pruning)
    plan.check_against(graph)
    index_map = apply_compact(model, graph, plan.keep_arrays())
    record_plans(model, model_plans(model) + [plan], input_size)
    return index_map


def replay(model: nn.Module,
           plans: List[PruningPlan],
           trace_size: Tuple[int, int] = TRACE_SIZE) -> int:
    """Bring ``model`` to the structure ``plans`` describe.

    Plans already applied (the model's buffer holds a prefix of ``plans``)
    are skipped, so replaying twice is harmless. Returns how many plans were
    applied now; raises :class:`StructureError` when the model was pruned
    differently.
    """
    have = [p.to_dict() for p in model_plans(model)]
    want = [p.to_dict() for p in plans]
    if want[:len(have)] != have:
        raise StructureError(
            f'the model was already pruned with {len(have)} different '
            f'plan(s); cannot replay this structure onto it')
    for p in plans[len(have):]:
        prune(model, p, input_size=trace_size)
    return len(plans) - len(have)
