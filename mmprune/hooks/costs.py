"""The cost of the model being pruned, as the hook measures and logs it."""
from typing import Callable, Optional

import torch.nn as nn

from .. import apis
from ..costs.latency_table import LatencyTable
from ..runtime.consistency import rank0_result


class CostTracker:
    """FLOPs, params or predicted latency of a model at ``input_size``,
    with one cost model per model object (spatial sizes never change with
    pruning, so one shape pass serves the whole run: the cost model reads
    current widths at every call).

    Args:
        budget (str): ``'flops'``, ``'params'`` or ``'latency'`` (ms
            predicted by the grid given to :meth:`use_grid`).
        input_size (tuple): (H, W) the costs are counted at.
        graph_fn (Callable, optional): ``model -> channel graph``; the
            latency budget predicts on the graph of the model as it is
            (traced once per structure when a caller gives none).
    """

    def __init__(self,
                 budget: str,
                 input_size,
                 graph_fn: Optional[Callable] = None):
        self.budget, self.input_size = budget, tuple(input_size)
        self._model, self._cost = None, None
        self.latency: Optional[dict] = None  # a LatencyTable as a dict
        self.grid = None  # a LatencyGrid (budget='latency')
        self._graph_fn = graph_fn
        self._graph_key, self._graph = None, None

    def model(self, model: nn.Module):
        """The :class:`~mmprune.costs.flops.CostModel` of ``model`` (with
        the latency grid, or the linear latency table once measured or
        loaded, as ``cost.latency``)."""
        if self._cost is None or self._model is not model:
            self._cost = apis.cost_model(model, self.input_size)
            self._model = model
            if self.grid is not None:
                self._cost.latency = self.grid
            elif self.latency is not None:
                self._cost.latency = LatencyTable.from_dict(self.latency)
        return self._cost

    def use_grid(self, grid) -> None:
        """Budget latency: predict with ``grid`` (a LatencyGrid)."""
        self.grid, self._cost = grid, None  # re-attach on next query

    def graph(self, model: nn.Module):
        """The channel graph of ``model`` as it is now (cached per
        structure)."""
        key = (id(model), tuple(tuple(p.shape) for p in model.parameters()))
        if key != self._graph_key:
            self._graph, self._graph_key = self._graph_fn(model), key
        return self._graph

    def __call__(self, model: nn.Module, graph=None, keep=None) -> float:
        """The budget's cost of ``model`` (after ``keep``, if given)."""
        cost = self.model(model)
        if self.budget == 'latency':
            if self.grid is None:
                raise RuntimeError("budget='latency' before the latency grid "
                                   'was loaded')
            return float(
                self.grid.predict(graph or self.graph(model), keep or None))
        if self.budget == 'flops':
            return float(cost.flops(graph, keep) if keep else cost.flops())
        return float(
            cost.params_after(model, graph, keep) if keep else cost.
            params(model))

    def use_latency(self, table: Optional[dict]) -> None:
        """The linear LatencyTable (as a dict) of the latency-aware
        order."""
        if table is not self.latency:
            self.latency, self._cost = table, None  # re-attach on next query

    def measure_latency(self, model: nn.Module, logger=None) -> dict:
        """Time ``model``'s leaf modules on rank 0 (every rank gets rank
        0's table, so ranks order channels alike); the table, as a dict, is
        the dense model's and serves every event (see
        :mod:`mmprune.costs.latency_table`)."""
        table = rank0_result(
            lambda: apis.cost_model(model, self.input_size, latency=True).
            latency.to_dict(), 'latency measurement')
        self.use_latency(table)
        if logger is not None:
            logger.info(f"mmprune: latency table of {len(table['entries'])} "
                        f"modules, {table['meta']['total_ms']:.1f} ms per "
                        f"image at {self.input_size} on "
                        f"{table['meta']['device']}")
        return table

    def scalars(self,
                model: nn.Module,
                dense: float,
                dense_params: Optional[int],
                cost: Optional[float] = None) -> dict:
        """The curves logged every iteration: the budget's fraction of the
        dense model, the parameter count and the parameter sparsity."""
        cost = self(model) if cost is None else cost
        params = sum(p.numel() for p in model.parameters())
        out = {
            f'train/prune_{self.budget}_ratio': cost / dense,
            'train/prune_params_M': params / 1e6
        }
        if dense_params:
            out['train/prune_sparsity'] = 1 - params / dense_params
        return out
