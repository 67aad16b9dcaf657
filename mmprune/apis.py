"""High-level entry points: analyse, plan, prune and replay a detector.

    graph = analyze(model)                       # channel groups
    cost = cost_model(model, (640, 640))         # MACs/params
    keep = BudgetAllocator(0.5).allocate(model, graph,
                                         L1Criterion().score(model, graph),
                                         cost)
    plan = make_plan(graph, keep)
    prune(model, plan, graph)                    # a smaller dense model

A pruned checkpoint stores its plans in ``meta['mmprune']``;
:func:`init_pruned_detector` rebuilds the dense model from the config,
replays the plans and loads the weights strictly.
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch.nn as nn

from .adapters.detector import fixed_output_module, tensor_forward
from .graph import RESIDUAL_MODES, ChannelGraph, build_channel_graph
from .graph.tracer import GraphTraceError
from .pruners.surgery import apply_compact
from .structures import (BUFFER as STRUCTURE_BUFFER, META_KEY,
                         PruningPlan, StructureError, decode, encode,
                         make_meta, read_meta)
from .utils.flops import CostModel
from .utils.latency_table import LatencyTable

logger = logging.getLogger('mmprune')

#: default size for tracing: small (fast) but divisible by every stride the
#: supported detectors use (RetinaNet P7 = stride 128)
TRACE_SIZE = (128, 128)


def analyze(model: nn.Module, residual_mode: str = 'coupled',
            input_size: Tuple[int, int] = TRACE_SIZE,
            ignored: Sequence[str] = (), replay: bool = False
            ) -> ChannelGraph:
    """Trace ``model``'s tensor forward and return its channel groups.

    Args:
        model (nn.Module): an mmdet detector (or any module taking images).
        residual_mode (str): ``'coupled'`` or ``'fine'`` (FCP).
        input_size (tuple): (H, W) of the dummy image used for tracing.
        ignored (Sequence[str]): module names whose output channels must
            stay (``ignored_layers``).
        replay (bool): analyse only to apply an existing plan: frozen
            parameters pin nothing and an unprunable model is no error.
    """
    if residual_mode not in RESIDUAL_MODES:
        raise ValueError(f'residual_mode must be one of {RESIDUAL_MODES}, '
                         f'got {residual_mode!r}')
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
        graph = build_channel_graph(model, fn, inputs,
                                    residual_mode=residual_mode, fixed=fixed,
                                    respect_frozen=not replay)
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
    frozen = sorted({r.split(' ', 1)[1] for r in graph.pinned_classes.values()
                     if r.startswith('frozen ')})
    if frozen:
        logger.info('mmprune: %d frozen modules are not pruned (set '
                    'frozen_stages=-1 to prune them): %s', len(frozen),
                    ', '.join(frozen[:8]) + (' ...' if len(frozen) > 8 else ''))
    for where, why in graph.opaque.items():
        logger.info('mmprune: %s: %s', where, why)
    return graph


def cost_model(model: nn.Module, input_size: Tuple[int, int] = (640, 640),
               latency: bool = False, latency_runs: int = 5) -> CostModel:
    """The FLOPs/params cost model of ``model`` at ``input_size`` (H, W).

    With ``latency=True`` it also times the model's leaf modules here
    (``latency_runs`` forwards at batch 1) and attaches the
    :class:`~mmprune.utils.latency_table.LatencyTable` as ``cost.latency``
    for latency-aware allocation."""
    was_training = model.training
    model.eval()
    try:
        fn, inputs = tensor_forward(model, input_size)
        cost = CostModel(model, fn, inputs)
        if latency:
            cost.latency = LatencyTable.measure(model, fn, inputs,
                                                runs=latency_runs)
        return cost
    finally:
        model.train(was_training)


def make_plan(graph: ChannelGraph, keep: Dict[str, np.ndarray]
              ) -> PruningPlan:
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
    return PruningPlan(keep={k: sorted(int(i) for i in v)
                             for k, v in keep.items()},
                       residual_mode=graph.residual_mode,
                       widths={k: widths[k] for k in keep})


def prune(model: nn.Module, plan: PruningPlan,
          graph: Optional[ChannelGraph] = None,
          input_size: Tuple[int, int] = TRACE_SIZE) -> dict:
    """Physically remove ``plan``'s channels from ``model`` (in place).

    Returns the per-module index map that was applied.
    """
    if graph is None:
        graph = analyze(model, plan.residual_mode, input_size, replay=True)
    plan.check_against(graph)
    index_map = apply_compact(model, graph, plan.keep_arrays())
    _record(model, model_plans(model) + [plan], input_size)
    return index_map


def model_plans(model: nn.Module) -> List[PruningPlan]:
    """The plans already applied to ``model`` (from its structure buffer)."""
    buf = getattr(model, STRUCTURE_BUFFER, None)
    if buf is None:
        return []
    return read_meta(decode(buf))[0]


def _record(model: nn.Module, plans: List[PruningPlan],
            trace_size: Tuple[int, int]) -> None:
    """Store the structure in the model's persistent uint8 buffer."""
    data = encode(make_meta(plans, trace_size))
    device = next((p.device for p in model.parameters()), data.device)
    if hasattr(model, STRUCTURE_BUFFER):
        delattr(model, STRUCTURE_BUFFER)
    model.register_buffer(STRUCTURE_BUFFER, data.to(device), persistent=True)


def replay(model: nn.Module, plans: List[PruningPlan],
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


def init_pruned_detector(config, checkpoint: str, device: str = 'cpu'):
    """Build the config's detector, replay the checkpoint's plans and load
    its weights strictly. Works for dense checkpoints too."""
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint
    from mmengine.runner.checkpoint import _load_checkpoint
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from .utils.offline import check_offline_weights
    register_all_modules()
    cfg = config if isinstance(config, Config) else load_config(config)
    check_offline_weights(cfg)
    model = MODELS.build(cfg.model)
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    meta = (ckpt.get('meta') or {}).get(META_KEY)
    if meta is not None:
        try:
            plans, size, _ = read_meta(meta)
            replay(model, plans, size)
        except ValueError as e:  # StructureError, plan/model mismatch
            where = config if isinstance(config, str) else 'the config'
            raise StructureError(
                f'{checkpoint}: its pruned structure cannot be rebuilt on '
                f'the {type(model).__name__} of {where} (a checkpoint of '
                f'another model or config?): {e}') from e
    load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    return model.to(device).eval()


def load_config(path: str):
    """Load a config file, accepting the ``mmdet::`` package prefix."""
    from mmengine.config import Config
    if '::' in path:
        from mmengine.hub import get_config
        return get_config(path)
    return Config.fromfile(path)
