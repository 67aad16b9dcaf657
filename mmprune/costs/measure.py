"""Measure a detector's cost models at a stated input size."""
from typing import Tuple

import torch.nn as nn

from ..adapters.detector import tensor_forward
from .flops import CostModel
from .latency_table import LatencyTable


def cost_model(model: nn.Module,
               input_size: Tuple[int, int] = (640, 640),
               latency: bool = False,
               latency_runs: int = 5) -> CostModel:
    """The FLOPs/params cost model of ``model`` at ``input_size`` (H, W).

    With ``latency=True`` it also times the model's leaf modules here
    (``latency_runs`` forwards at batch 1) and attaches the
    :class:`~mmprune.costs.latency_table.LatencyTable` as ``cost.latency``
    for latency-aware allocation."""
    was_training = model.training
    model.eval()
    try:
        fn, inputs = tensor_forward(model, input_size)
        cost = CostModel(model, fn, inputs)
        if latency:
            cost.latency = LatencyTable.measure(
                model, fn, inputs, runs=latency_runs)
        return cost
    finally:
        model.train(was_training)
