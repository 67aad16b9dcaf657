"""The structure record a pruned model carries in its own state dict.

A persistent uint8 buffer ``mmprune_structure`` (see
:mod:`mmprune.structures.structure_meta`) holds the plans applied to the
model so far, so its state dict alone says how to rebuild it. Written at
each cut, read before a replay (which skips the plans already applied).
"""
from typing import List, Tuple

import torch.nn as nn

from .pruning_plan import PruningPlan
from .structure_meta import BUFFER, decode, encode, make_meta, read_meta


def model_plans(model: nn.Module) -> List[PruningPlan]:
    """The plans already applied to ``model`` (from its structure buffer)."""
    buf = getattr(model, BUFFER, None)
    if buf is None:
        return []
    return read_meta(decode(buf))[0]


def record_plans(model: nn.Module, plans: List[PruningPlan],
                 trace_size: Tuple[int, int]) -> None:
    """Store ``plans`` in the model's persistent structure buffer, replacing
    the one it had (the buffer's length changes with each plan)."""
    data = encode(make_meta(plans, trace_size))
    device = next((p.device for p in model.parameters()), data.device)
    if hasattr(model, BUFFER):
        delattr(model, BUFFER)
    model.register_buffer(BUFFER, data.to(device), persistent=True)
