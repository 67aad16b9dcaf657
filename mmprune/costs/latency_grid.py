"""A measured latency model: per-layer times on a grid of widths.

Paper: HALP, Shen et al., "Structural Pruning via Latency-Saliency
Knapsack", NeurIPS 2022, https://arxiv.org/abs/2210.06659 (per-layer
latency lookup tables over channel counts, measured on the target device,
drive the pruning to a latency budget). Our reconstruction, all **our
choice** where not said otherwise.

Why: :mod:`mmprune.costs.latency_table` scales each layer's dense time
linearly in its widths. Real kernels are not linear: widths that are not
multiples of the vector width (8/16) are padded or fall to slower kernels,
thin layers are launch/overhead bound, and pooling and activations are
memory bound. Issue 13 saw the linear model's speedup/FLOPs-speedup move
from 0.93 to 0.89 (YOLOX-s) on a fresh machine. A budget in milliseconds
needs the times themselves, so this table measures them.

The model:

* **Capture** one forward of the dense model at the table's input size and
  batch (hooks on leaf modules): each call's input shape.
* **Kinds**: ``conv`` (dense conv or linear; axes (C_out, C_in)), ``dw``
  (depthwise conv; C), ``norm`` (BatchNorm; C), ``gn`` (GroupNorm; C, in
  whole groups), ``pass`` (parameter-free: pools, activations, upsample;
  the channels it reads), ``fixed`` (anything else: one time).
* **Grid**: per axis at most ``points`` widths in ``[low, dense]``: the
  dense width and multiples of ``align`` spread evenly. ``low`` is the
  narrowest width the channel graph allows (pinned channels only), at
  least ``min_ratio * dense``; an axis the graph cannot change (the image
  input, prediction convs) gets one point. One extra *probe* per axis
  times a misaligned width (see below).
* Every grid point is timed **in isolation**: a fresh layer at those
  widths on a random input of the captured shape with the channels
  replaced, on a named backend (:mod:`mmprune.costs.latency_backends`).
  Points with the same signature (kind, layer config, input shape without
  channels, widths) are timed once, so YOLOX's repeated blocks cost one.
* **Interpolation**: piecewise linear per axis (bilinear for convs) over
  the grid. A misaligned width ``w`` (``w % align != 0``, not a grid
  point) is charged as ``ceil_align(w)`` times the axis' misalignment
  factor ``t(probe) / t(ceil_align(probe))`` (clamped to ``[probe /
  ceil_align(probe), 2]`` against a noisy probe): padded kernels cost the
  next aligned width, slower fallback kernels cost more, and both show in
  the factor. Below the lowest grid point the time stays flat (thin layers
  are overhead bound); a one-point axis scales proportionally.
* **Level**: the isolated times are rescaled by ``leaf_scale = dense
  forward / sum of isolated dense times``, so the dense prediction equals
  the measured dense forward and the grid gives the *shape* (cliffs,
  non-linearity) of each layer's curve. By default the gap is given to the
  layers in proportion, not held as a constant: an isolated layer runs
  with its weights and input hot in cache, so isolated times sum to less
  than the forward (YOLOX-tiny at 128 px, one thread: 18 ms of layers in a
  60-85 ms forward, while concat/add/Python are a few ms in a profile),
  and a constant gap made the compact model far faster than its target
  (34 ms measured for a 58 ms target).
* **Two-point level** (``level_runs`` > 0, :func:`level_grid`; the
  command-line tools' default): all-proportional is wrong the other way
  on small inputs, where per-op dispatch that no width changes is a real
  share (YOLOX-tiny at 128 px: a BPC plan predicted at 0.72 of the dense
  time measured 0.746). So a uniformly half-width copy of the model is
  timed beside the dense one in interleaved rounds, and the two measured
  forwards fix both unknowns of ``t = other_ms + leaf_scale * leaf``: the
  dense forward is still predicted exactly, and so is the compact one. A
  compact copy no slower than proportional keeps ``other_ms = 0``.

A table is versioned JSON keyed by the model's structure (a hash of every
timed module's name, config and dense widths), input size, batch, backend
and device (:meth:`LatencyGrid.check` refuses, by name, one that does not
fit). :meth:`LatencyGrid.predict` has the signature of
:meth:`LatencyTable.predict`, so allocators use either.
"""
import bisect
import copy
import hashlib
import json
import math
import os
import os.path as osp
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..graph.layers import kind_name
from ..graph.layers import layer_kind as table_kind
from ..utils.io import write_json_atomic
from .forward import forward_with_hooks
from .latency_backends import threads_note

FORMAT = 'mmprune.latency_grid'
VERSION = 1
KINDS = ('conv', 'dw', 'norm', 'gn', 'pass', 'fixed')
#: a fresh conv of the captured input's rank (N, C, *spatial)
_CONV_BY_DIM = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class LatencyTableMismatch(ValueError):
    """A latency table that does not fit the model, input size, batch,
    backend or device it is asked for (the message names which)."""


def ceil_to(w: int, step: int) -> int:
    return -(-int(w) // step) * step


# ------------------------------------------------------------------ grid
def axis_grid(dense: int,
              low: int,
              points: int,
              align: int,
              unit: int = 1) -> List[int]:
    """At most ``points`` widths in ``[low, dense]``: ``dense`` and
    multiples of ``lcm(align, unit)`` spread evenly (multiples of ``unit``
    alone for a layer narrower than two steps)."""
    low = max(1, min(int(low), dense))
    if points <= 1 or low >= dense:
        return [dense]
    step = math.lcm(align, unit)
    if dense < 2 * step:
        step = unit
    pts = {dense}
    for f in np.linspace(low, dense, points)[:-1]:
        w = ceil_to(math.ceil(f - 1e-9), step)
        if w < dense:
            pts.add(w)
    return sorted(pts)


def probe_width(xs: Sequence[int], align: int, low: int) -> Optional[int]:
    """A misaligned width half a step below the widest aligned grid point,
    or None (no aligned point, or the probe would fall below ``low``)."""
    if align < 2 or len(xs) < 2:
        return None
    aligned = [x for x in xs if x % align == 0 and x - align // 2 >= low]
    return max(aligned) - align // 2 if aligned else None


def _axis_weights(axis: dict, w: int,
                  align: int) -> Tuple[List[Tuple[int, float]], float, float]:
    """``([(grid index, weight)], scale, penalty)``: along this axis the
    time at width ``w`` is ``scale * sum(weight * T[index])``, times
    ``penalty`` when ``w`` is misaligned (see the module docstring)."""
    xs = axis['xs']
    if len(xs) == 1:
        return [(0, 1.0)], w / xs[0], 1.0
    penalty = 1.0
    if align > 1 and w % align and w not in xs:
        up = ceil_to(w, align)
        if up <= xs[-1]:  # padded to the next aligned width, times the
            w, penalty = up, axis['penalty']  # measured misalignment factor
    if w <= xs[0]:
        return [(0, 1.0)], 1.0, penalty  # flat: thin layers are overhead
    if w >= xs[-1]:
        return [(len(xs) - 1, 1.0)], w / xs[-1], penalty
    j = bisect.bisect_left(xs, w)
    if xs[j] == w:
        return [(j, 1.0)], 1.0, penalty
    a = (w - xs[j - 1]) / (xs[j] - xs[j - 1])
    return [(j - 1, 1.0 - a), (j, a)], 1.0, penalty


def curve_ms(curve: dict, widths: Sequence[int]) -> float:
    """One call's predicted ms at ``widths`` (one per axis). Misaligned on
    both axes, a conv pays the larger factor once: one slower kernel runs,
    not one per axis."""
    axes, ms = curve['axes'], curve['ms']
    if not axes:
        return float(ms)
    w0, s0, p0 = _axis_weights(axes[0], int(widths[0]), curve['align'])
    if len(axes) == 1:
        return s0 * p0 * sum(a * ms[i] for i, a in w0)
    w1, s1, p1 = _axis_weights(axes[1], int(widths[1]), curve['align'])
    return s0 * s1 * max(p0, p1) * sum(a * b * ms[i][j] for i, a in w0
                                       for j, b in w1)


# ------------------------------------------------------- module knowledge
# What a module is comes from the one layer-kind table
# (mmprune.graph.layers.LAYER_KINDS: its ``grid`` field names the kind
# here); this section only says how the grid describes and rebuilds it.
def layer_kind(mod: nn.Module, args: Sequence) -> str:
    """The kind of one call (see module docstring)."""
    if len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return 'fixed'
    k = table_kind(mod)
    if k is not None:
        return k.grid  # grouped convs, LayerNorm: 'fixed' (pinned)
    if next(mod.parameters(), None) is None and \
            next(mod.buffers(), None) is None and args[0].dim() >= 2:
        return 'pass'
    return 'fixed'


def module_config(mod: nn.Module) -> dict:
    """What a module computes, without its widths (stable under pruning)."""
    t = type(mod).__name__
    k = table_kind(mod)
    name = None if k is None else k.name
    if name in ('conv', 'dwconv', 'gconv'):
        g = mod.groups
        groups = 1 if name == 'conv' else ('dw' if name == 'dwconv' else g)
        pad = mod.padding if isinstance(mod.padding, str) else list(
            mod.padding)
        return dict(
            type=t,
            kernel=list(mod.kernel_size),
            stride=list(mod.stride),
            padding=pad,
            dilation=list(mod.dilation),
            groups=groups,
            bias=mod.bias is not None)
    if name == 'linear':
        return dict(type=t, bias=mod.bias is not None)
    if name == 'gn':
        return dict(
            type=t,
            per_group=mod.num_channels // mod.num_groups,
            affine=mod.affine)
    if name == 'norm':
        return dict(type=t, affine=mod.affine)
    return dict(type=t, repr=repr(mod))


def module_widths(mod: nn.Module) -> List[int]:
    """Dense widths the table keys on: ``[C_out, C_in]`` of a conv or
    linear, ``[C]`` of a norm, ``[]`` of anything without a cost entry."""
    k = table_kind(mod)
    if k is None or k.cost is None:
        return []
    c_out, c_in, _ = k.cost.widths(mod)
    return [c_out] if k.norm else [c_out, c_in]


def _parametric(mod: nn.Module) -> bool:
    return next(mod.children(), None) is None and \
        next(mod.parameters(recurse=False), None) is not None


def _channel_dim(mod: nn.Module) -> int:
    """The axis of the call's input that holds channels (-1 for linear)."""
    k = table_kind(mod)
    return 1 if k is None or k.cost is None else k.cost.positions_dim


def _build_layer(kind: str, mod: nn.Module, widths: Sequence[int],
                 ndim: int) -> nn.Module:
    """A fresh layer like ``mod`` at ``widths`` (random weights: time does
    not depend on their values)."""
    if kind == 'conv' and kind_name(mod) == 'linear':
        return nn.Linear(widths[1], widths[0], bias=mod.bias is not None)
    if kind in ('conv', 'dw'):
        cls = _CONV_BY_DIM[mod.weight.dim() - 3]
        c_out, c_in = widths if kind == 'conv' else (widths[0], widths[0])
        return cls(
            c_in,
            c_out,
            mod.kernel_size,
            mod.stride,
            mod.padding,
            mod.dilation,
            groups=1 if kind == 'conv' else c_in,
            bias=mod.bias is not None,
            padding_mode=mod.padding_mode)
    if kind == 'norm':
        cls = {
            2: nn.BatchNorm1d,
            3: nn.BatchNorm1d,
            4: nn.BatchNorm2d,
            5: nn.BatchNorm3d
        }[ndim]
        return cls(widths[0], eps=mod.eps, affine=mod.affine)
    if kind == 'gn':
        per = mod.num_channels // mod.num_groups
        return nn.GroupNorm(
            max(1, widths[0] // per), widths[0], mod.eps, mod.affine)
    return copy.deepcopy(mod)  # pass: parameter-free, width agnostic


class _Forward(nn.Module):
    """``forward_fn(*x)`` as a module returning a flat tuple of tensors
    (so every backend, ONNX export included, can run the whole model)."""

    def __init__(self, model: nn.Module, forward_fn: Callable):
        super().__init__()
        self.model, self.fn = model, forward_fn

    def forward(self, *x):
        from ..adapters.detector import flatten_tensors
        return tuple(flatten_tensors(self.fn(*x)))


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj,
                                     sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------- table
class LatencyGrid:
    """Per-layer latency on a grid of widths, and its prediction for plans.

    Build it with :meth:`measure` (or :func:`measure_grid` for a
    detector), store it with :meth:`save` / :meth:`to_dict`, read it with
    :meth:`load` / :meth:`from_dict` and check it with :meth:`check`.

    Args:
        data (dict): the table, as :meth:`to_dict` writes it.
        source (str): where it came from, for messages. Defaults to
            'latency table'.

    Examples:
        >>> grid = measure_grid(model, (640, 640), 1, make_backend('torch'),
        ...                     graph=graph)
        >>> grid.save('table.json')
        >>> grid = LatencyGrid.load('table.json')
        >>> grid.check(model, input_size=(640, 640), batch=1,
        ...            backend='torch', device='cpu')
        >>> grid.predict(graph, keep)  # ms after the plan
    """

    def __init__(self, data: dict, source: str = 'latency table'):
        self.data = data
        self.source = source
        self.cached = None  # the cache file it was read from (measure_grid)

    # ------------------------------------------------------------ views
    @property
    def key(self) -> dict:
        return self.data['key']

    @property
    def meta(self) -> dict:
        return dict(self.data['meta'], **self.key)

    @property
    def total_ms(self) -> float:
        """Predicted dense latency (equals the measured dense forward)."""
        return self.predict_widths({})

    # ---------------------------------------------------------- predict
    def predict_widths(self, widths: Dict[str, List[Sequence[int]]]) -> float:
        """ms with each module's calls at ``widths[name]`` (one tuple per
        call, one width per axis); modules not named stay dense."""
        leaf = 0.0
        curves = self.data['curves']
        for name, mod in self.data['modules'].items():
            now = widths.get(name)
            for i, call in enumerate(mod['calls']):
                w = call['dense'] if now is None else now[i]
                leaf += curve_ms(curves[call['curve']], w)
        return self.data['other_ms'] + self.data['leaf_scale'] * leaf

    def widths(
            self,
            graph,
            keep: Optional[dict] = None) -> Dict[str, List[Tuple[int, ...]]]:
        """Per module, per call, the widths after ``keep`` on ``graph``
        (the graph of the model as it is now, dense or already pruned)."""
        keep = keep or {}
        idx = graph.module_indices(keep)
        flags = graph.kept_classes(keep)
        out = {}
        for name, mod in self.data['modules'].items():
            kind, calls = mod['kind'], mod['calls']
            if kind == 'pass':
                seen = graph.passthrough.get(name)
                if not seen:
                    continue
                now = [int(flags[graph.roots[a]].sum()) for a in seen]
                if len(seen) == len(calls):
                    out[name] = [(w, ) for w in now]
                else:  # calls the tracer could not label: scale together
                    dense = sum(c['dense'][0] for c in calls)
                    r = sum(now) / max(dense, 1)
                    out[name] = [(max(1, round(c['dense'][0] * r)), )
                                 for c in calls]
                continue
            if kind == 'fixed' or name not in idx:
                continue
            e = idx[name]
            d = calls[0]['dense']
            if kind == 'conv':
                c_out = len(e['out']) if e['out'] is not None else d[0]
                c_in = len(e['in']) if e['in'] is not None else d[1]
                w = (c_out, c_in)
            else:
                w = (len(e['out']) if e['out'] is not None else d[0], )
            out[name] = [w] * len(calls)
        return out

    def predict(self, graph, keep: Optional[dict] = None) -> float:
        """Predicted ms after ``keep`` ({group: kept indices}) on
        ``graph`` (same signature as :meth:`LatencyTable.predict`)."""
        return self.predict_widths(self.widths(graph, keep))

    # ------------------------------------------------------------ check
    def check(self,
              model: Optional[nn.Module] = None,
              input_size: Optional[Sequence[int]] = None,
              batch: Optional[int] = None,
              backend: Optional[str] = None,
              device: Optional[str] = None,
              threads: Optional[int] = None) -> None:
        """Raise :class:`LatencyTableMismatch` naming what does not fit.

        Args:
            model (nn.Module | None): the model the table is used on:
                dense (every timed module with its dense widths), or
                pruned from the table's dense model (plans applied; same
                modules and configs, no width above the dense one).
            input_size (tuple | None): (H, W) asked for.
            batch (int | None): batch asked for.
            backend (str | None): ``torch``, ``cuda`` or ``onnxruntime``.
            device (str | None): ``cpu``/``cuda``, or a device name the
                table's (e.g. ``H200``) must contain.
            threads (int | None): intra-op threads asked for.
        """
        k, src = self.key, self.source

        def refuse(what):
            raise LatencyTableMismatch(f'{src}: {what}')

        if backend is not None and backend != k['backend']:
            refuse(f"measured on backend {k['backend']!r}, but backend "
                   f'{backend!r} was asked for')
        if device is not None:
            dev = str(device).split(':')[0].lower()
            if dev in ('cpu', 'cuda'):
                if dev != k['device']:
                    refuse(f"measured on device {k['device']!r} "
                           f"({k['device_name']}), but {device!r} was "
                           f'asked for')
            elif str(device).lower() not in k['device_name'].lower():
                refuse(f"measured on {k['device_name']!r}, but device "
                       f'{device!r} was asked for')
        if input_size is not None and list(input_size) != k['input_size']:
            refuse(f"measured at input size {k['input_size']}, but "
                   f'{list(input_size)} was asked for')
        if batch is not None and int(batch) != k['batch']:
            refuse(f"measured at batch {k['batch']}, but batch {batch} was "
                   f'asked for')
        if threads is not None and int(threads) != k['threads']:
            refuse(f"measured with {k['threads']} threads, but {threads} "
                   f'were asked for')
        if model is not None:
            self._check_model(model, refuse)

    def _check_model(self, model: nn.Module, refuse) -> None:
        mods = dict(model.named_modules())
        table = self.data['modules']
        for name, t in table.items():
            m = mods.get(name)
            if m is None:
                refuse(f'module {name!r} of the table is missing from the '
                       f'{type(model).__name__} (a table of another model)')
            cfg = module_config(m)
            if cfg != t['config']:
                refuse(f'module {name!r} is {cfg} in the model but '
                       f"{t['config']} in the table (structure hash "
                       f"{self.key['structure']})")
        skip = set(self.data.get('uncalled', ()))
        for name, m in mods.items():
            if _parametric(m) and name not in table and name not in skip:
                refuse(f'module {name!r} ({type(m).__name__}) of the model '
                       f'is missing from the table (a table of another '
                       f'model)')
        from ..apis import model_plans  # apis imports this package
        pruned = bool(model_plans(model))
        for name, t in table.items():
            w, d = module_widths(mods[name]), t['widths']
            if (not pruned and w != d) or any(a > b for a, b in zip(w, d)):
                refuse(f'module {name!r} has widths {w} but the table\'s '
                       f'dense model has {d} (structure hash '
                       f"{self.key['structure']}; a pruned model must carry "
                       f'its plans)')

    # ------------------------------------------------------------ store
    def to_dict(self) -> dict:
        return self.data

    def save(self, path: str) -> None:
        """Write the table as JSON, atomically."""
        write_json_atomic(self.data, path, indent=1)

    @classmethod
    def load(cls, path: str) -> 'LatencyGrid':
        try:
            with open(path) as f:
                data = json.load(f)
        except OSError as e:
            raise ValueError(f'latency table {path!r}: cannot read it '
                             f'({e.strerror or e})') from e
        except json.JSONDecodeError as e:
            raise ValueError(f'latency table {path!r}: not JSON ({e})') \
                from e
        return cls.from_dict(data, source=f'latency table {path!r}')

    @classmethod
    def from_dict(cls, data, source: str = 'latency table') -> 'LatencyGrid':
        """Validate ``data`` (a ValueError names what is wrong)."""
        if not isinstance(data, dict) or data.get('format') != FORMAT:
            raise ValueError(f'{source}: not an mmprune latency grid (no '
                             f'"format": "{FORMAT}")')
        if data.get('version') != VERSION:
            raise ValueError(f"{source}: version {data.get('version')!r}, "
                             f'this mmprune reads version {VERSION}')
        for k in ('key', 'modules', 'curves', 'other_ms', 'leaf_scale',
                  'meta'):
            if k not in data:
                raise ValueError(f'{source}: missing field {k!r}')
        for k in ('structure', 'input_size', 'batch', 'backend', 'device',
                  'device_name', 'threads'):
            if k not in data['key']:
                raise ValueError(f'{source}: key lacks {k!r}')
        curves = data['curves']
        for name, m in data['modules'].items():
            if m.get('kind') not in KINDS:
                raise ValueError(f'{source}: module {name!r} has kind '
                                 f"{m.get('kind')!r}")
            for c in m.get('calls', ()):
                if c.get('curve') not in curves:
                    raise ValueError(f'{source}: module {name!r} names '
                                     f"unknown curve {c.get('curve')!r}")
        for cid, c in curves.items():
            ms = np.asarray(c['ms'], dtype=np.float64)
            shape = tuple(len(a['xs']) for a in c['axes'])
            if ms.shape != shape or not np.all(np.isfinite(ms)) or \
                    (ms < 0).any():
                raise ValueError(f'{source}: curve {cid!r} has times of '
                                 f'shape {ms.shape} for a {shape} grid, or '
                                 f'negative/non-finite times')
        return cls(data, source)

    # ---------------------------------------------------------- measure
    @classmethod
    def measure(cls,
                model: nn.Module,
                forward_fn: Callable,
                inputs: Sequence[torch.Tensor],
                backend,
                graph=None,
                points: int = 5,
                align: int = 8,
                min_ratio: float = 0.1,
                progress: bool = True) -> 'LatencyGrid':
        """Measure a table for ``forward_fn(*inputs)`` on ``backend``.

        Args:
            model (nn.Module): the dense model (its modules are hooked).
            forward_fn (Callable): runs the forward, ``forward_fn(*x)``.
            inputs (Sequence[Tensor]): ``[(N, 3, H, W)]`` at the table's
                input size and batch.
            backend: a backend of :mod:`mmprune.costs.latency_backends`.
            graph (ChannelGraph | None): the model's channel graph: axes
                it cannot change get one point and grids start at the
                narrowest width it allows. None: every axis gets a grid.
            points (int): widths per axis, 1..16. Defaults to 5.
            align (int): the vector width grids use. Defaults to 8.
            min_ratio (float): grids start at no less than this fraction
                of the dense width. Defaults to 0.1.
            progress (bool): show a progress bar. Defaults to True.
        """
        if isinstance(
                points,
                bool) or not (isinstance(points, int) and 1 <= points <= 16):
            raise ValueError(f'points must be an int in [1, 16], got '
                             f'{points!r}')
        if isinstance(align,
                      bool) or not (isinstance(align, int) and align >= 1):
            raise ValueError(f'align must be an int >= 1, got {align!r}')
        if not 0 < min_ratio <= 1:
            raise ValueError(f'min_ratio must be in (0, 1], got '
                             f'{min_ratio!r}')
        t_start = time.perf_counter()
        calls = _capture(model, forward_fn, inputs)
        lows = _graph_lows(graph) if graph is not None else None
        # plan: one curve per distinct call signature, one timing per
        # distinct point signature
        modules: Dict[str, dict] = {}
        curves: Dict[str, dict] = {}
        curve_ids: Dict[str, str] = {}
        todo: Dict[str, tuple] = {}  # point key -> (kind, mod, shape, w)
        seen_calls: Dict[str, int] = {}
        for name, mod, kind, shape, args in calls:
            i = seen_calls[name] = seen_calls.get(name, -1) + 1
            entry = modules.setdefault(
                name,
                dict(
                    type=type(mod).__name__,
                    kind=kind,
                    config=module_config(mod),
                    widths=module_widths(mod),
                    calls=[]))
            if entry['kind'] != kind:  # one module, two kinds of call
                raise RuntimeError(f'latency grid: module {name!r} was '
                                   f"called as {entry['kind']} and {kind}")
            if kind == 'fixed':
                sig = ['fixed', name, i]
                cid = curve_ids.setdefault(_digest(sig), f'c{len(curves)}')
                curves.setdefault(
                    cid,
                    dict(
                        kind=kind,
                        axes=[],
                        align=align,
                        ms=None,
                        point=_digest(sig)))
                todo.setdefault(_digest(sig), ('fixed', mod, args, None))
                entry['calls'].append(dict(curve=cid, dense=[]))
                continue
            ch = _channel_dim(mod)
            # a conv/linear: (C_out, C_in); one axis: the channels it reads
            dense = module_widths(mod) if kind == 'conv' else [shape[ch]]
            unit = (mod.num_channels // mod.num_groups) if kind == 'gn' \
                else 1
            low = _lows_of(lows, name, kind, i, dense)
            axes = []
            for d, lo in zip(dense, low):
                lo = max(lo, math.ceil(min_ratio * d - 1e-9))
                xs = axis_grid(d, lo, points, align, unit)
                probe = probe_width(xs, align, lo) if unit == 1 else None
                axes.append(dict(dense=d, xs=xs, probe=probe, penalty=1.0))
            bare = list(shape)
            bare[ch] = -1  # the input shape without its channels
            base = [kind, module_config(mod), bare, str(args[0].dtype)]
            sig = base + [[a['xs'] for a in axes], [a['probe'] for a in axes]]
            cid = curve_ids.setdefault(_digest(sig), f'c{len(curves)}')
            if cid not in curves:
                curves[cid] = dict(
                    kind=kind, axes=axes, align=align, base=base)
                for w in _curve_points(axes):
                    todo.setdefault(
                        _digest(base + [w]),
                        (kind, mod, (shape, args[0].dtype), w))
            entry['calls'].append(dict(curve=cid, dense=dense))
        timed = _time_points(todo, backend, progress)
        for cid, c in curves.items():
            if c['kind'] == 'fixed':
                c['ms'] = timed[c.pop('point')]
            else:
                _fill_curve(c, timed, c.pop('base'))
        dense_ms = backend.time(_Forward(model, forward_fn), inputs)
        _restore_device(model, inputs)
        data = dict(
            format=FORMAT,
            version=VERSION,
            modules=modules,
            curves=curves,
            other_ms=0.0,
            leaf_scale=1.0,
            uncalled=sorted(n for n, m in model.named_modules()
                            if _parametric(m) and n not in modules))
        grid = cls(data)
        leaf = grid.predict_widths({})
        # the gap to the whole forward goes to the layers in proportion
        # (see the module docstring, "Level")
        data['other_ms'] = 0.0
        data['leaf_scale'] = dense_ms / leaf if leaf > 0 else 1.0
        x = inputs[0]
        struct = [[n, m['config'], m['widths']]
                  for n, m in sorted(modules.items())]
        data['key'] = dict(
            structure=_digest(struct),
            input_size=list(x.shape[2:]),
            batch=int(x.shape[0]),
            backend=backend.name,
            device=backend.device_kind,
            device_name=backend.device_name(),
            threads=backend.threads(),
            dtype=str(x.dtype))
        data['meta'] = dict(
            dense_ms=round(dense_ms, 4),
            leaf_ms=round(leaf, 4),
            seconds=round(time.perf_counter() - t_start, 2),
            points_timed=len(todo),
            curves=len(curves),
            calls=sum(len(m['calls']) for m in modules.values()),
            grid=dict(points=points, align=align, min_ratio=min_ratio),
            runs=backend.runs,
            warmup=backend.warmup,
            omp_num_threads=threads_note(),
            torch=torch.__version__,
            created=time.strftime('%Y-%m-%dT%H:%M:%S'))
        return grid


# -------------------------------------------------------- measure helpers
def _capture(model, forward_fn, inputs):
    """``[(name, module, kind, input shape, args)]`` of every leaf call in
    forward order; ``args`` are kept (cloned) only for ``fixed`` calls,
    the others are rebuilt from their shape."""
    names = {
        m: n
        for n, m in model.named_modules() if next(m.children(), None) is None
    }
    calls = []

    def hook(mod, args, out):
        kind = layer_kind(mod, args)
        if kind == 'fixed':  # replayed as captured
            kept = tuple(
                a.detach().clone() if isinstance(a, torch.Tensor) else a
                for a in args)
            shape = ()
        else:  # rebuilt at other widths: the shape and dtype suffice
            kept = (torch.empty(0, dtype=args[0].dtype), )
            shape = tuple(args[0].shape)
        calls.append((names[mod], mod, kind, shape, kept))

    was_training = model.training
    model.eval()
    try:
        forward_with_hooks(names, hook, forward_fn, inputs)
    finally:
        model.train(was_training)
    return calls


def _graph_lows(graph) -> dict:
    """Narrowest widths the graph allows: every prunable group cut to its
    pinned channels (or one channel)."""
    keep = {}
    for g in graph.prunable_groups():
        pinned = np.nonzero(g.pinned)[0]
        keep[g.name] = pinned if len(pinned) else np.zeros(1, np.int64)
    idx = graph.module_indices(keep)
    flags = graph.kept_classes(keep)
    lows = {n: e for n, e in idx.items()}
    passing = {
        n: [int(flags[graph.roots[a]].sum()) for a in calls]
        for n, calls in graph.passthrough.items()
    }
    return dict(idx=lows, passing=passing)


def _lows_of(lows, name, kind, call, dense) -> List[int]:
    if lows is None:
        return [1] * len(dense)
    if kind == 'pass':
        seen = lows['passing'].get(name)
        return [seen[call]] if seen and call < len(seen) else list(dense)
    e = lows['idx'].get(name)
    if e is None:
        return list(dense)  # the graph never cuts it
    if kind == 'conv':
        return [
            len(e['out']) if e['out'] is not None else dense[0],
            len(e['in']) if e['in'] is not None else dense[1]
        ]
    return [len(e['out']) if e['out'] is not None else dense[0]]


def _curve_points(axes) -> List[List[int]]:
    """Grid points, then one probe per axis (the probe at the other axes'
    widest aligned point, or their dense width)."""
    if len(axes) == 1:
        pts = [[x] for x in axes[0]['xs']]
    else:
        pts = [[x, y] for x in axes[0]['xs'] for y in axes[1]['xs']]
    for k, a in enumerate(axes):
        if a['probe'] is not None:
            pts.append([
                a['probe'] if j == k else _ref(b) for j, b in enumerate(axes)
            ])
    return pts


def _ref(axis) -> int:
    return axis['xs'][-1]


def _time_points(todo: dict, backend, progress: bool) -> Dict[str, float]:
    bar = None
    if progress and todo:
        from mmengine.utils import ProgressBar
        bar = ProgressBar(len(todo), file=sys.stderr)
    out = {}
    for key, (kind, mod, spec, w) in todo.items():
        if kind == 'fixed':
            out[key] = backend.time(copy.deepcopy(mod), spec)
        else:
            shape, dtype = spec
            ch = _channel_dim(mod)
            shape = list(shape)
            shape[ch] = w[-1] if kind == 'conv' else w[0]  # C_in
            layer = _build_layer(kind, mod, w, len(shape))
            out[key] = backend.time(layer, (torch.randn(shape, dtype=dtype), ))
        if bar is not None:
            bar.update()
    if bar is not None:
        sys.stderr.write('\n')
    return out


def _fill_curve(c: dict, timed: dict, base: list) -> None:
    """The grid times of a curve and each axis' misalignment factor."""
    axes = c['axes']
    at = lambda w: timed[_digest(base + [list(w)])]  # noqa: E731
    if len(axes) == 1:
        c['ms'] = [at([x]) for x in axes[0]['xs']]
    else:
        c['ms'] = [[at([x, y]) for y in axes[1]['xs']] for x in axes[0]['xs']]
    for k, a in enumerate(axes):
        if a['probe'] is None:
            continue
        w = [a['probe'] if j == k else _ref(b) for j, b in enumerate(axes)]
        up = list(w)
        up[k] = ceil_to(a['probe'], c['align'])
        # clamped to [probe / ceil(probe), 2]: at least proportional, and
        # one noisy probe cannot make every misaligned width look free or
        # prohibitive
        ratio = at(w) / max(at(up), 1e-12)
        a['penalty'] = float(min(max(ratio, a['probe'] / up[k]), 2.0))


def _restore_device(model, inputs) -> None:
    """The whole-model timing moved ``model`` to the backend's device;
    put it back beside its inputs."""
    model.to(inputs[0].device)


# ------------------------------------------------------- detector helpers
def default_cache_dir() -> str:
    """Where measured tables are kept for reuse: ``$MMPRUNE_CACHE/latency``
    (default ``~/.cache/mmprune/latency``)."""
    root = os.environ.get('MMPRUNE_CACHE') or osp.join(
        osp.expanduser('~'), '.cache', 'mmprune')
    return osp.join(root, 'latency')


def cache_name(model: nn.Module, inputs: Sequence[torch.Tensor], backend,
               graph, settings: dict) -> str:
    """File name of a table in the cache: a digest of everything that
    decides it before timing (every parametric leaf's name, config and
    widths; input shape and dtype; the backend with its device, threads,
    runs and warm-up; the grid settings; the graph's narrowest widths;
    torch and the format version). Another machine, thread count or graph
    gives another name, so a cached table is never one measured for
    something else (and :func:`measure_grid` checks it again)."""
    struct = [[n, module_config(m), module_widths(m)]
              for n, m in model.named_modules() if _parametric(m)]
    lows = None
    if graph is not None:
        raw = _graph_lows(graph)
        lows = dict(
            idx={
                n: {
                    a: None if v is None else len(v)
                    for a, v in e.items()
                }
                for n, e in sorted(raw['idx'].items())
            },
            passing=dict(sorted(raw['passing'].items())))
    x = inputs[0]
    key = [
        FORMAT, VERSION, struct,
        list(x.shape),
        str(x.dtype), backend.name, backend.device_kind,
        backend.device_name(),
        backend.threads(), backend.runs, backend.warmup,
        sorted(settings.items()), lows, torch.__version__
    ]
    return _digest(key)


def measure_grid(model: nn.Module,
                 input_size: Sequence[int],
                 batch: int,
                 backend,
                 graph=None,
                 cache_dir: Optional[str] = None,
                 level_runs: int = 0,
                 **kwargs) -> LatencyGrid:
    """:meth:`LatencyGrid.measure` of a detector's tensor forward at
    ``input_size`` (H, W) and ``batch``; with ``level_runs`` > 0 (and a
    ``graph``) then leveled by :func:`level_grid` with that many rounds.

    With ``cache_dir`` a table measured before for the same model, input,
    backend, machine, settings and graph (:func:`cache_name`) is read from
    there instead of timed again (``grid.cached`` then holds its path), and
    a new one is written there atomically. A cached file that does not load
    or does not fit is measured again and replaced.
    """
    from ..adapters.detector import tensor_forward
    if level_runs and graph is None:  # refused before any timing
        raise ValueError("measure_grid: level_runs needs the model's "
                         'channel graph (graph=)')
    was_training = model.training
    model.eval()
    try:
        fn, inputs = tensor_forward(model, tuple(input_size), batch)
        path = None
        if cache_dir:
            settings = {
                k: kwargs[k]
                for k in ('points', 'align', 'min_ratio') if k in kwargs
            }
            if level_runs:
                settings['level_runs'] = level_runs
            name = cache_name(model, inputs, backend, graph, settings)
            path = osp.join(cache_dir, name + '.json')
            if osp.isfile(path):
                try:
                    grid = LatencyGrid.load(path)
                    grid.check(
                        model,
                        input_size=input_size,
                        batch=batch,
                        backend=backend.name,
                        threads=backend.threads())
                    grid.cached = path
                    return grid
                except (ValueError, OSError):
                    pass  # unreadable or not this model's: measure again
        grid = LatencyGrid.measure(model, fn, inputs, backend, graph, **kwargs)
        if level_runs:
            level_grid(grid, model, graph, input_size, batch, backend,
                       level_runs)
        if path is not None:
            os.makedirs(cache_dir, exist_ok=True)
            grid.save(path)
        return grid
    finally:
        model.train(was_training)


def level_grid(grid: LatencyGrid,
               model: nn.Module,
               graph,
               input_size: Sequence[int],
               batch: int,
               backend,
               runs: int = 10,
               keep_ratio: float = 0.5) -> dict:
    """Fit ``grid``'s ``other_ms`` and ``leaf_scale`` to two measured
    forwards: the dense model and a copy of it with every prunable group at
    ``keep_ratio`` of the FLOPs (uniform, L1 order, widths multiples of the
    grid's ``align``), timed in the same interleaved rounds.

    With ``L`` the grid's raw layer sum (dense ``L_d``, compact ``L_c``,
    ``rho = L_c / L_d``), ``D`` the dense forward and ``r`` the measured
    compact / dense ratio, ``leaf_scale = D (1 - r) / (L_d - L_c)`` and
    ``other_ms = D (1 - (1 - r) / (1 - rho))``. When ``r <= rho`` (the
    compact copy no slower than proportional) or ``r >= 1`` (no measured
    gain: noise) the grid stays proportional. Returns the record stored
    as ``meta['level']``.
    """
    # lazy: the planning and surgery stages sit above the cost models
    from .. import apis
    from ..allocators import UniformAllocator
    from ..criteria import L1Criterion
    if isinstance(runs, bool) or not (isinstance(runs, int) and runs >= 1):
        raise ValueError(f'level_grid: runs must be an int >= 1, got '
                         f'{runs!r}')
    t0 = time.perf_counter()
    model.eval()
    align = int(grid.data['meta'].get('grid', {}).get('align', 8))
    keep = UniformAllocator(
        keep_ratio, budget='flops',
        round_to=align).allocate(model, graph,
                                 L1Criterion().score(model, graph),
                                 apis.cost_model(model, tuple(input_size)))
    compact = copy.deepcopy(model).eval()
    apis.prune(compact, apis.make_plan(graph, keep), graph)
    stats = ratio_stats(model, compact, input_size, batch, backend, runs)
    del compact
    data = grid.data
    raw_dense = (grid.total_ms - data['other_ms']) / data['leaf_scale']
    raw_compact = (grid.predict(graph, keep) -
                   data['other_ms']) / data['leaf_scale']
    dense_ms = grid.total_ms
    rho, r = raw_compact / raw_dense, float(stats['ratio'])
    rec = dict(
        keep_ratio=keep_ratio,
        runs=runs,
        measured_ratio=round(r, 4),
        interval=[
            None if v is None else round(v, 4)
            for v in (stats.get('low'), stats.get('high'))
        ],
        proportional_ratio=round(rho, 4),
        applied=False)
    if rho < r < 1:
        scale = dense_ms * (1 - r) / (raw_dense - raw_compact)
        data['leaf_scale'] = scale
        data['other_ms'] = max(dense_ms - scale * raw_dense, 0.0)
        rec['applied'] = True
    rec['other_share'] = round(data['other_ms'] / dense_ms, 4)
    rec['seconds'] = round(time.perf_counter() - t0, 2)
    data['meta']['seconds'] = round(data['meta']['seconds'] + rec['seconds'],
                                    2)
    data['meta']['level'] = rec
    return rec


def measured_ratio(dense: nn.Module,
                   compact: nn.Module,
                   input_size: Sequence[int],
                   batch: int,
                   backend,
                   runs: int = 20) -> float:
    """Measured compact / dense latency on ``backend`` (what a latency
    budget is checked against): the ``ratio`` of :func:`ratio_stats`."""
    return ratio_stats(dense, compact, input_size, batch, backend,
                       runs)['ratio']


def ratio_stats(dense: nn.Module,
                compact: nn.Module,
                input_size: Sequence[int],
                batch: int,
                backend,
                runs: int = 20) -> dict:
    """Compact / dense latency on ``backend``, both detectors timed in the
    same interleaved rounds (:func:`measure_models`): the median of the
    per-round ratios with its interval
    (:func:`mmprune.costs.latency.paired_ratio`), and each model's median
    ms (``dense_ms``, ``compact_ms``)."""
    from .latency import paired_ratio
    t = measure_models(
        dict(dense=dense, pruned=compact), input_size, batch, backend, runs)
    out = paired_ratio(t['dense']['times_ms'], t['pruned']['times_ms'])
    out.update(
        dense_ms=t['dense']['median_ms'], compact_ms=t['pruned']['median_ms'])
    return out


def measure_models(models: Dict[str, nn.Module],
                   input_size: Sequence[int],
                   batch: int,
                   backend,
                   runs: int = 20,
                   warmup: int = 3) -> Dict[str, dict]:
    """Median ms of each detector's tensor forward on ``backend``, timed in
    interleaved rounds (:func:`mmprune.costs.latency.measure_latency`)."""
    from ..adapters.detector import tensor_forward
    from .latency import measure_latency
    fns = {}
    for name, model in models.items():
        model.eval()
        fn, inputs = tensor_forward(model, tuple(input_size), batch)
        fns[name] = backend.runner(_Forward(model, fn), inputs)
    return measure_latency(
        fns, runs=runs, warmup=warmup, clock=getattr(backend, 'clock', None))
