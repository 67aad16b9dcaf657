"""Allocation inputs: what a plan costs (FLOPs/params, measured latency)."""
from .flops import CostModel
from .latency import measure_latency
from .latency_table import LatencyTable
from .measure import cost_model

__all__ = ['CostModel', 'LatencyTable', 'cost_model', 'measure_latency']
