"""Measured per-module latency of a model, and its prediction for plans.

Why: FLOPs do not predict time on a CPU. On YOLOX-s at 640 px with one
thread (``benchmarks/op_profile.py``), the SPP max-pools take 12 % of the
dense forward but no FLOPs in our count, so a FLOPs-only allocator never
thins the group feeding them and the compact model runs slower than its
FLOPs promise. A latency table lets the allocator's *order* see such costs
while the *budget* stays in MACs (the target users set).

Model (our choice): time the dense model's leaf modules once with forward
hooks (median over ``runs`` forwards after ``warmup``), then predict

    t(plan) = t_other + sum_conv t_m * (C_out'/C_out) * (C_in'/C_in)
                      + sum_follow t_m * (C'/C)      (BN, depthwise conv)
                      + sum_pass   t_m * (C'/C)      (pools, activations,
                                                      upsampling)

where unprimed widths are the dense ones stored in the table and primed
ones come from :meth:`ChannelGraph.module_indices` /
:meth:`ChannelGraph.passthrough_widths` of the *current* graph, so the same
table serves every later event. ``t_other`` (concat, adds, reshapes: ops no
leaf module owns) stays constant. Everything is JSON-safe, so the hook
stores the table in its training state and every DDP rank uses rank 0's.
"""
import time
from typing import Callable, Dict, Sequence

import numpy as np
import torch
import torch.nn as nn

# (kind, out width, in width) of a leaf module: the layer-kind table's
# ``latency`` entry ('conv' | 'follow' | 'pass')
from ..graph.layers import latency_widths

VERSION = 1


class LatencyTable:
    """Per-module time (ms) of one model on one device, and a predictor.

    Build it with :meth:`measure`; store it with :meth:`to_dict` and
    restore it with :meth:`from_dict`.

    Args:
        entries (dict): ``{module: {'kind', 'ms', 'out', 'in'}}``; ``out``
            and ``in`` are dense widths (for ``pass`` modules, channels
            summed over calls).
        other_ms (float): time no leaf module owns.
        meta (dict): device, threads, input size, runs (for the log).
    """

    def __init__(self,
                 entries: Dict[str, dict],
                 other_ms: float,
                 meta: dict = None):
        self.entries = entries
        self.other_ms = float(other_ms)
        self.meta = dict(meta or {})

    @property
    def total_ms(self) -> float:
        return self.other_ms + sum(e['ms'] for e in self.entries.values())

    @classmethod
    def measure(cls,
                model: nn.Module,
                forward_fn: Callable,
                inputs: Sequence[torch.Tensor],
                runs: int = 5,
                warmup: int = 1) -> 'LatencyTable':
        """Time ``forward_fn(*inputs)`` per leaf module (no grad)."""
        if isinstance(runs, bool) or not (isinstance(runs, int) and runs >= 1):
            raise ValueError(f'runs must be an int >= 1, got {runs!r}')
        names = {
            m: n
            for n, m in model.named_modules()
            if next(m.children(), None) is None
        }
        start: Dict[nn.Module, float] = {}
        spent: Dict[str, float] = {}
        shape: Dict[str, tuple] = {}
        sync = (
            torch.cuda.synchronize if any(x.is_cuda for x in inputs) else
            (lambda: None))

        def pre(mod, args):
            sync()
            start[mod] = time.perf_counter()

        def post(mod, args, out):
            sync()
            name = names[mod]
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - \
                start.pop(mod)
            x = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if x is not None:
                kind, c_out, c_in = latency_widths(mod, x)
                if name not in shape or kind != 'pass':
                    shape[name] = (kind, c_out, c_in)
                else:  # a pool/activation called on several tensors
                    shape[name] = (kind, shape[name][1] + c_out,
                                   shape[name][2] + c_in)

        handles = []
        for m in names:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        per_run, totals = [], []
        try:
            with torch.no_grad():
                for i in range(warmup + runs):
                    spent.clear()
                    shape.clear()
                    sync()
                    t0 = time.perf_counter()
                    forward_fn(*inputs)
                    sync()
                    if i >= warmup:
                        totals.append(time.perf_counter() - t0)
                        per_run.append(dict(spent))
        finally:
            for h in handles:
                h.remove()
        entries = {}
        for name, (kind, c_out, c_in) in shape.items():
            ms = float(np.median([r.get(name, 0.0) for r in per_run])) * 1e3
            entries[name] = dict(
                kind=kind,
                ms=round(ms, 4),
                out=int(c_out),
                **{'in': int(c_in)})
        total = float(np.median(totals)) * 1e3
        other = max(total - sum(e['ms'] for e in entries.values()), 0.0)
        meta = dict(
            device=str(inputs[0].device),
            threads=torch.get_num_threads(),
            input_shape=list(inputs[0].shape),
            runs=runs,
            total_ms=round(total, 3))
        return cls(entries, other, meta)

    # ----------------------------------------------------------- predict
    def predict(self, graph, keep: dict = None) -> float:
        """Predicted ms after ``keep`` ({group: kept idx}) on ``graph``, the
        graph of the model as it is now (dense or already pruned)."""
        keep = keep or {}
        idx = graph.module_indices(keep)
        passing = graph.passthrough_widths(keep)
        total = self.other_ms
        for name, e in self.entries.items():
            scale = 1.0
            if e['kind'] == 'pass':
                if name in passing and e['out']:
                    scale = passing[name] / e['out']
            elif name in idx:
                ent = idx[name]
                rec = graph.records[name]
                c_out = len(ent['out']) if ent['out'] is not None else (
                    len(rec.out) if rec.out is not None else e['out'])
                c_in = len(ent['in']) if ent['in'] is not None else e['in']
                scale = c_out / e['out']
                if e['kind'] == 'conv':
                    scale *= c_in / e['in']
            total += e['ms'] * scale
        return total

    # ------------------------------------------------------------- state
    def to_dict(self) -> dict:
        return dict(
            version=VERSION,
            entries=self.entries,
            other_ms=self.other_ms,
            meta=self.meta)

    @classmethod
    def from_dict(cls, d: dict) -> 'LatencyTable':
        """Restore a table written by :meth:`to_dict`; a ValueError names
        what is wrong (a checkpoint's state is checked with this)."""
        got = d.get('version') if isinstance(d, dict) else type(d).__name__
        if not isinstance(d, dict) or d.get('version') != VERSION:
            raise ValueError(f'latency table: expected a dict with version '
                             f'{VERSION}, got {got!r}')
        entries, other = d.get('entries'), d.get('other_ms')
        if not isinstance(entries, dict) or not isinstance(
                other, (int, float)) or other < 0:
            raise ValueError('latency table: needs an "entries" dict and '
                             'an "other_ms" number >= 0')
        for name, e in entries.items():
            ok = isinstance(e, dict) and set(e) == {'kind', 'ms', 'out', 'in'}
            ok = ok and e['kind'] in ('conv', 'follow', 'pass') and all(
                isinstance(e[k], (int, float)) for k in ('ms', 'out', 'in'))
            if not ok or e['ms'] < 0 or e['out'] < 1 or e['in'] < 1:
                raise ValueError(f'latency table: bad entry for module '
                                 f'{name!r}: {e!r}')
        return cls(dict(entries), other, d.get('meta'))
