"""The layer kinds mmprune understands: one table, read by every stage.

Each :class:`LayerKind` says, for one kind of leaf module, everything the
stages need to know about it:

* how to recognise it (``types`` and an optional ``accepts`` test: a conv is
  ``conv``, ``dwconv`` or ``gconv`` by its ``groups``);
* its ``role`` in the channel graph (the tracer reads it):

  - ``producer``: makes new output channels from all its inputs (conv,
    linear); its out and in sides are pruned separately;
  - ``follower``: output channel c reads input channel c only (depthwise
    conv, BatchNorm, GroupNorm), so one index set prunes both sides;
  - ``channelwise``: like a follower but without weights (RoI ops);
  - ``opaque``: understood enough to pin its channels, not to prune
    (grouped conv, LayerNorm);

* which tensors surgery slices, and along which dim for the out and the in
  side (``slices``), and how it refreshes its width attributes afterwards
  (``resize``);
* how its FLOPs scale (``cost``, see :mod:`mmprune.costs.flops`) and what
  the latency models call it (``latency``, see
  :mod:`mmprune.costs.latency_table`; ``grid``, see
  :mod:`mmprune.costs.latency_grid`).

A new layer type is one entry in :data:`LAYER_KINDS`. Order matters: the
first entry that accepts a module wins (``dwconv`` before ``conv``).
"""
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_TYPES = (nn.modules.batchnorm._BatchNorm, )  # BatchNorm*d, SyncBatchNorm

# {tensor name: ((axis, dim), ...)}: axis 'out' | 'in' of the module, dim of
# the tensor that holds that axis
Slices = Dict[str, Tuple[Tuple[str, int], ...]]


@dataclass(frozen=True)
class LayerCost:
    """How a kind's cost scales with its widths.

    ``MACs = mult * kernel(mod) * c_out * (c_in // groups)`` where ``mult``
    is the number of output positions computed (summed over calls), read
    from the output on axis ``positions_dim`` (channels there, all other
    axes are positions: dim 1 for (N, C, ...) maps, -1 for (..., F) rows).
    ``widths(mod)`` is ``(c_out, c_in, groups)`` at the current size; a
    follower's kept width replaces c_out and leaves ``c_in // groups`` at 1.
    """
    kernel: Callable[[nn.Module], int]
    widths: Callable[[nn.Module], Tuple[int, int, int]]
    positions_dim: int = 1


def _conv_widths(m):
    return m.out_channels, m.in_channels, m.groups


def _conv_kernel(m):
    return int(np.prod(m.kernel_size))


_CONV_COST = LayerCost(_conv_kernel, _conv_widths)
# normalise (+ scale, shift) per element; mmengine's counter convention
_BN_COST = LayerCost(lambda m: 2
                     if m.affine else 1, lambda m: (m.num_features, 1, 1))
# mean, var, normalise (+ scale, shift) per element: mmengine counts
# group_norm like a training-mode norm
_GN_COST = LayerCost(lambda m: 5
                     if m.affine else 4, lambda m: (m.num_channels, 1, 1))
_LINEAR_COST = LayerCost(lambda m: 1, lambda m:
                         (m.out_features, m.in_features, 1), -1)

_OUT_IN: Slices = {'weight': (('out', 0), ('in', 1)), 'bias': (('out', 0), )}
_OUT: Slices = {'weight': (('out', 0), ), 'bias': (('out', 0), )}


def _weight_rows(m: nn.Module) -> int:
    # a norm without affine parameters still has its running statistics
    w = getattr(m, 'weight', None)
    return w.shape[0] if w is not None else len(m.running_mean)


def _resize_conv(m, out_idx):
    # weight: (C_out, C_in / groups, k...)
    m.out_channels = m.weight.shape[0]
    m.in_channels = m.weight.shape[1] * m.groups


def _resize_dwconv(m, out_idx):
    c = m.weight.shape[0]  # weight: (C, 1, k...)
    m.in_channels = m.out_channels = m.groups = c


def _resize_linear(m, out_idx):
    m.out_features, m.in_features = m.weight.shape  # (out, in)


def _resize_norm(m, out_idx):
    m.num_features = _weight_rows(m)


def _resize_gn(m, out_idx):
    # whole blocks of C/G channels go (docs/methods.md §0.3; surgery checks
    # that first), so the block size stays and G shrinks with C
    size = m.num_channels // m.num_groups
    m.num_channels = len(out_idx)
    m.num_groups = len(out_idx) // size


@dataclass(frozen=True)
class LayerKind:
    """One kind of leaf module (see the module docstring)."""
    name: str
    types: Callable[[], tuple]
    role: str
    accepts: Callable[[nn.Module], bool] = lambda m: True
    slices: Slices = field(default_factory=dict)
    resize: Optional[Callable[[nn.Module, np.ndarray], None]] = None
    # current output width (surgery's full width before a cut), or None
    width: Optional[Callable[[nn.Module], int]] = None
    cost: Optional[LayerCost] = None
    latency: str = 'pass'  # 'conv' | 'follow' | 'pass'
    # the measured grid's kind: 'conv' (axes C_out, C_in), 'dw', 'norm',
    # 'gn' (one axis C) or 'fixed' (timed once at its dense size)
    grid: str = 'fixed'
    norm: bool = False  # a normalisation layer (no channels of its own)

    def matches(self, m: nn.Module) -> bool:
        types = self.types()
        return bool(types) and isinstance(m, types) and self.accepts(m)


@lru_cache(maxsize=None)
def _roi_types() -> tuple:
    """mmcv RoI ops run a custom autograd Function the tracer's mode cannot
    see; they are channel-wise (output channel c reads input channel c)."""
    try:
        from mmcv.ops import RoIAlign, RoIPool
        return (RoIAlign, RoIPool)
    except ImportError:  # mmcv without ops: no RoI heads either
        return ()


LAYER_KINDS: Tuple[LayerKind, ...] = (
    LayerKind(
        'conv',
        lambda: _CONV_TYPES,
        'producer',
        accepts=lambda m: m.groups == 1,
        slices=_OUT_IN,
        resize=_resize_conv,
        width=_weight_rows,
        cost=_CONV_COST,
        latency='conv',
        grid='conv'),
    LayerKind(
        'dwconv',
        lambda: _CONV_TYPES,
        'follower',
        accepts=lambda m: m.groups == m.in_channels == m.out_channels,
        slices=_OUT,
        resize=_resize_dwconv,
        width=_weight_rows,
        cost=_CONV_COST,
        latency='follow',
        grid='dw'),
    # pinned by the tracer, so its widths never change; the latency table
    # scales it like a follower (the same prediction, scale 1, either way)
    LayerKind(
        'gconv',
        lambda: _CONV_TYPES,
        'opaque',
        cost=_CONV_COST,
        latency='follow'),
    LayerKind(
        'linear',
        lambda: (nn.Linear, ),
        'producer',
        slices=_OUT_IN,
        resize=_resize_linear,
        width=_weight_rows,
        cost=_LINEAR_COST,
        latency='conv',
        grid='conv'),
    LayerKind(
        'norm',
        lambda: _BN_TYPES,
        'follower',
        slices=dict(
            _OUT, running_mean=(('out', 0), ), running_var=(('out', 0), )),
        resize=_resize_norm,
        width=_weight_rows,
        cost=_BN_COST,
        latency='follow',
        grid='norm',
        norm=True),
    LayerKind(
        'gn',
        lambda: (nn.GroupNorm, ),
        'follower',
        slices=_OUT,
        resize=_resize_gn,
        width=lambda m: m.num_channels,
        cost=_GN_COST,
        latency='follow',
        grid='gn',
        norm=True),
    LayerKind('ln', lambda: (nn.LayerNorm, ), 'opaque', norm=True),
    LayerKind('roi', _roi_types, 'channelwise'),
)
KINDS: Dict[str, LayerKind] = {k.name: k for k in LAYER_KINDS}


def layer_kind(m: nn.Module) -> Optional[LayerKind]:
    """The first :data:`LAYER_KINDS` entry that accepts ``m``, or None (a
    container or a parameter-free leaf: pools, activations, upsampling)."""
    return next((k for k in LAYER_KINDS if k.matches(m)), None)


def kind_name(m: nn.Module) -> Optional[str]:
    """``layer_kind(m).name`` or None."""
    k = layer_kind(m)
    return None if k is None else k.name


def tensor_slices(kind: str) -> Slices:
    """``{tensor_name: ((axis, dim), ...)}`` of a graph record's kind (none
    for kinds surgery does not slice: ``roi``, ``opaque``)."""
    k = KINDS.get(kind)
    return {} if k is None else k.slices


def current_width(m: nn.Module, kind: str) -> int:
    """Output width of ``m`` as kind ``kind`` (-1 when it has none)."""
    k = KINDS.get(kind)
    return -1 if k is None or k.width is None else k.width(m)


def is_batchnorm(m: nn.Module) -> bool:
    """True for BatchNorm layers (kind ``norm``): the layers with running
    statistics that a scoring forward in train mode would update."""
    return KINDS['norm'].matches(m)


def kept_cost_widths(kind: str, widths: Tuple[int, int, int],
                     entry: Optional[dict]) -> Tuple[int, int, int]:
    """``(c_out, c_in, groups)`` after a plan: ``widths`` now, ``entry``
    the module's ``{'out', 'in'}`` kept indices (None: unchanged) from
    :meth:`ChannelGraph.module_indices` and ``kind`` its graph record's."""
    if entry is None:
        return widths
    c_out, c_in, g = widths
    k = KINDS.get(kind)
    if k is not None and k.role == 'follower':
        # one index set: c_out' channels, each reads one input channel
        return len(entry['out']), 1, 1
    return (len(entry['out']) if entry['out'] is not None else c_out,
            len(entry['in']) if entry['in'] is not None else c_in, g)


def latency_widths(m: nn.Module, x: torch.Tensor) -> Tuple[str, int, int]:
    """``(latency kind, out width, in width)`` of a leaf module at its dense
    size, called on input ``x``; see :mod:`mmprune.costs.latency_table`."""
    k = layer_kind(m)
    kind = 'pass' if k is None else k.latency
    if kind == 'conv':
        c_out, c_in, _ = k.cost.widths(m)
        return kind, c_out, c_in
    if kind == 'follow':
        # a (depthwise or grouped) conv: its output width; a norm: the
        # traced input width (a non-affine GroupNorm need not match its
        # num_channels)
        c = getattr(m, 'out_channels', x.shape[1])
        return kind, c, c
    c = x.shape[1] if x.dim() >= 2 else 1
    return 'pass', c, c
