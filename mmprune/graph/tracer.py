"""Trace a real forward pass and label every channel with its coupling atom.

How it works (no per-architecture tables):

* Known leaf modules (Conv, BatchNorm/SyncBN, GroupNorm, Linear, RoIAlign)
  are observed through forward hooks. A conv or linear *produces* fresh atoms
  for its output channels and *consumes* the labels of its input channels; a
  BN or a depthwise conv *follows* its input labels.
* Everything in between (adds, concats, slices, upsampling, pooling, flatten,
  activations) is observed with a ``TorchFunctionMode`` and propagated label
  by label, following :mod:`mmprune.graph.op_table`.
* Couplings become unions in an :class:`~mmprune.graph.atoms.AtomTable`.
  Anything the tracer does not understand pins the channels it touches, so
  the analysis errs on the side of never pruning, never on misalignment.
* A safety net checks every module's outputs: a tensor that needs grad but
  carries no labels came from an op the mode could not see (a custom autograd
  function such as DCN); the module is reported as opaque and its channels
  pinned.

Residual modes: in ``coupled`` mode an element-wise add unions its operands'
atoms. In ``fine`` mode (FCP) it gives the sum fresh, pinned *stream* atoms
and records each operand's last module as a *writer* that the compact model
scatters back to full stream width (see :mod:`mmprune.pruners.scatter`).

GroupNorm (docs/methods.md §0.3): a GroupNorm with C channels in G groups
normalises each block of C/G consecutive channels together. Removing part of
a block changes the statistics of the rest, but removing a whole block
changes nothing else (a zeroed block normalises to 0 and its masked
gamma/beta give 0). So the tracer unions the atoms of each block: a block
becomes one prunable unit, and a plan can only keep or drop whole blocks.
A GroupNorm it cannot prove safe (a width that is not the traced channel
axis, a non-affine one fed by an op that does not keep zeros) stays pinned.

Stream sources (shortcuts): at an add of two non-stream operands, the
operand whose producers since the fork are fewer (by conv/linear count) is
the identity side: YOLOX's CSP ``main_conv`` (0 exclusive producers: its
output is also the bottleneck's input), ResNet's ``downsample`` (1 against
the branch's 3). Their last modules are listed in ``shortcuts`` so a method
can leave them alone without a name regex.
"""
import logging
from typing import Callable, Dict, List, Optional, Sequence, Set

import numpy as np
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from . import op_table as ops
from .atoms import AtomTable, Labels, ModuleRecord
from .layers import kind_name
from .read_map import BUFFER as READ_BUFFER
from .read_map import read_sources
from .scatter_map import BUFFER as SCATTER_BUFFER
from .scatter_map import kept_positions

logger = logging.getLogger('mmprune')

RESIDUAL_MODES = ('coupled', 'fine')


def iter_tensors(obj):
    """Yield the tensors inside nested tuples/lists/dicts (and data objects
    with tensor attributes are skipped: only feature tensors matter)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from iter_tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from iter_tensors(o)


def _norm_dim(dim, ndim):
    return dim + ndim if dim < 0 else dim


class ChannelTracer(TorchFunctionMode):
    """Run ``forward_fn`` once and collect channel couplings.

    Args:
        model (nn.Module): the model to analyse (not modified).
        residual_mode (str): ``'coupled'`` or ``'fine'``.
        fixed (Callable[[str, nn.Module], bool]): True for modules whose
            output width must never change (prediction convs).
        read_pruning (bool): fine mode only: every conv/linear reading a
            residual stream gets its own atoms for the stream columns it
            reads (``ModuleRecord.read``), so it can keep its own subset
            (:mod:`mmprune.graph.read_map`). Defaults to False.
    """

    def __init__(self,
                 model: nn.Module,
                 residual_mode: str = 'coupled',
                 fixed: Optional[Callable[[str, nn.Module], bool]] = None,
                 respect_frozen: bool = True,
                 read_pruning: bool = False):
        super().__init__()
        if residual_mode not in RESIDUAL_MODES:
            raise ValueError(f'residual_mode must be one of {RESIDUAL_MODES},'
                             f' got {residual_mode!r}')
        if read_pruning and residual_mode != 'fine':
            raise ValueError(f"read_pruning=True needs residual_mode='fine' "
                             f'(a coupled stream has no readers of its own), '
                             f'got {residual_mode!r}')
        self.read_pruning = bool(read_pruning)
        # fine mode: the pinned atoms of every residual sum (_fine_add);
        # reader columns on them get read atoms (read_pruning)
        self._stream_ids: Set[int] = set()
        # id(module) -> its raw input, for readers that already gather (the
        # pre-hook that gathers runs after ours, see trace())
        self._gather_raw: Dict[int, torch.Tensor] = {}
        self.model = model
        self.residual_mode = residual_mode
        self.fixed = fixed or (lambda name, mod: False)
        # False when replaying a saved plan onto a copy whose parameters do
        # not require grad (an EMA model): frozen-ness is a training policy
        self.respect_frozen = respect_frozen
        self.atoms = AtomTable()
        self.records: Dict[str, ModuleRecord] = {}
        self.scatter: Set[str] = set()  # fine mode: writers to scatter
        self.opaque: Dict[str, str] = {}  # module/op -> why it was pinned
        self.fine_fallbacks: List[str] = []
        # last module of the identity side of an add (see module docstring)
        self.shortcuts: Set[str] = set()
        # atoms of element-wise sums coupled in place (coupled mode, or a
        # fine-mode fallback): their groups are residual streams
        self.stream_atoms: List[np.ndarray] = []
        # GroupNorm blocks, each (G, C/G) atoms: one prunable unit per row
        self.gn_blocks: List[np.ndarray] = []
        # id(t) -> (t, frozenset of conv/linear indices the tensor depends
        # on): lineage, only to tell the identity side of an add
        self._lineage: Dict[int, tuple] = {}
        self._labels: Dict[int, tuple] = {}  # id(t) -> (t, Labels)
        self._leaf_depth = 0
        self._names = {m: n for n, m in model.named_modules()}
        self._index = {n: i for i, n in enumerate(self._names.values())}
        self._module_stack: List[str] = []
        self._op: Optional[str] = None  # the torch op running now
        # parameters surgery slices (conv, depthwise conv, linear, BN)
        self._param_owner = {
            id(p): n
            for n, m in model.named_modules()
            if self._kind(m) in ('conv', 'dwconv', 'linear', 'norm')
            for p in m.parameters(recurse=False)
        }
        self._foreign: Dict[str, str] = {}  # module -> op that read it
        self._writer_atoms: Dict[int, list] = {}  # fine mode, see below
        self._via_lost: Set[int] = set()  # see _lose_via
        # parameter-free leaf modules (pools, activations, upsampling):
        # name -> the atoms (C,) each call read. Not needed for pruning;
        # the latency model charges their time to these channels.
        self.passthrough: Dict[str, List[np.ndarray]] = {}

    # ------------------------------------------------------------ labels
    def get(self, t) -> Optional[Labels]:
        if not isinstance(t, torch.Tensor):
            return None
        hit = self._labels.get(id(t))
        if hit is None or hit[0] is not t:
            return None
        return hit[1]

    def put(self, t: torch.Tensor, lab: Labels) -> None:
        if t.dim() < 2 or t.shape[1] != lab.width:
            # the channel axis is not where we think: stop tracking this
            # tensor and pin what it came from
            self.atoms.pin(lab.atoms, f'shape mismatch after {self._where()}')
            lab = Labels(
                self.atoms.new(
                    t.shape[1] if t.dim() >= 2 else 1,
                    pin='unknown channel axis'),
                np.full(t.shape[1] if t.dim() >= 2 else 1, -1))
            if t.dim() < 2:
                return
        self._labels[id(t)] = (t, lab)

    def _fresh(self, t: torch.Tensor, reason: str) -> None:
        if isinstance(t, torch.Tensor) and t.dim() >= 2:
            c = t.shape[1]
            self._labels[id(t)] = (t,
                                   Labels(
                                       self.atoms.new(c, pin=reason),
                                       np.full(c, -1)))

    def _where(self):
        if not self._module_stack:
            return '<model>'
        return self._module_stack[-1] or '<root>'  # the root's name is ''

    def _pin_unknown(self, name, args, kwargs, out):
        reason = f"op '{name}' in {self._where()}"
        touched = False
        for t in list(iter_tensors(args)) + list(iter_tensors(kwargs)):
            lab = self.get(t)
            if lab is not None:
                self.atoms.pin(lab.atoms, reason)
                touched = True
        if touched:
            self.opaque.setdefault(reason, 'unsupported op: channels pinned')
            for t in iter_tensors(out):
                if self.get(t) is None:
                    self._fresh(t, reason)

    # --------------------------------------------------- function mode
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, '__name__', None) or str(func)
        self._op = name  # named by trace() if the forward fails here
        out = func(*args, **kwargs)
        if self._leaf_depth > 0:
            self._op = None
            return out
        if name not in ops.IGNORED:
            self._check_foreign_params(name,
                                       list(args) + list(kwargs.values()))
            try:
                self._propagate(name, args, kwargs, out)
            except _Unsupported:
                self._pin_unknown(name, args, kwargs, out)
            self._pass_lineage(name, args, kwargs, out)
        self._op = None
        return out

    # ---------------------------------------------------------- lineage
    def _lin(self, t) -> frozenset:
        hit = self._lineage.get(id(t)) if isinstance(t, torch.Tensor) \
            else None
        return hit[1] if hit is not None and hit[0] is t else frozenset()

    def _pass_lineage(self, name, args, kwargs, out):
        """An op's outputs depend on every producer its inputs depend on."""
        ins = [
            lin for lin in (self._lin(t) for t in list(iter_tensors(args)) +
                            list(iter_tensors(kwargs))) if lin
        ]
        if not ins:
            return
        lin = ins[0].union(*ins[1:])
        if name == '__setitem__':  # in place: the target is the output
            out = args[0]
        for t in iter_tensors(out):
            self._lineage[id(t)] = (t, lin)

    def _note_shortcut(self, a, b, la: Labels, lb: Labels) -> None:
        """At an add of two module outputs (no stream operand), remember
        the last module of the side with fewer producers since the fork:
        the identity/shortcut side (module docstring)."""
        sides = []
        for t, lab in ((a, la), (b, lb)):
            vias = np.unique(lab.via)
            if len(vias) != 1 or vias[0] < 0 or \
                    self.atoms.all_pinned(lab.atoms):
                return  # a stream or a mixed tensor: no fork at this add
            sides.append((int(vias[0]), self._lin(t)))
        (va, lin_a), (vb, lin_b) = sides
        only_a, only_b = len(lin_a - lin_b), len(lin_b - lin_a)
        if only_a != only_b:
            names = list(self._names.values())
            self.shortcuts.add(names[va if only_a < only_b else vb])

    def _check_foreign_params(self, name, args):
        """A conv/BN/linear parameter read by an op outside its module (a
        weight used functionally elsewhere) would keep its old width there
        after surgery: remember the module, its channels get pinned."""
        flat = [
            b for a in args
            for b in (a if isinstance(a, (list, tuple)) else (a, ))
        ]
        for a in flat:
            if isinstance(a, nn.Parameter):
                owner = self._param_owner.get(id(a))
                if owner is not None:
                    self._foreign.setdefault(
                        owner, f"op '{name}' in {self._where()}")

    def _propagate(self, name, args, kwargs, out):
        first = args[0] if args else None
        if name in ops.CHANNELWISE_ZERO or name in ops.CHANNELWISE_OTHER:
            lab = self.get(first)
            if lab is None:
                return
            if not isinstance(out, torch.Tensor):
                raise _Unsupported
            self.put(out, lab.with_zero_kept(name in ops.CHANNELWISE_ZERO))
        elif name in ops.ADDITIVE or name in ops.MULTIPLICATIVE:
            self._binary(name, args, kwargs, out)
        elif name in ops.CONCAT:
            self._cat(args, kwargs, out)
        elif name in ops.SPLIT:
            self._split(name, args, kwargs, out)
        elif name in ops.RESHAPE:
            self._reshape(first, out)
        elif name in ops.REDUCE:
            self._reduce(name, args, kwargs, out)
        elif name == '__getitem__':
            self._getitem(first, args[1], out)
        elif name == '__setitem__':
            self._setitem(first, args[1], args[2])
        elif name == 'where':
            self._binary('mul', args[1:], {}, out)
        else:
            if any(
                    self.get(t) is not None for t in list(iter_tensors(args)) +
                    list(iter_tensors(kwargs))):
                raise _Unsupported

    # elementwise ------------------------------------------------------
    def _binary(self, name, args, kwargs, out):
        a = args[0] if len(args) > 0 else kwargs.get('input')
        b = args[1] if len(args) > 1 else kwargs.get('other')
        la, lb = self.get(a), self.get(b)
        if la is None and lb is None:
            return
        if not isinstance(out, torch.Tensor):
            raise _Unsupported
        additive = name in ops.ADDITIVE
        if la is not None and lb is not None:
            if la.width != lb.width:
                # (N,1,H,W) map times (N,C,H,W) feature: the width-1 side
                # cannot be pruned anyway
                narrow, wide = (la, lb) if la.width < lb.width else (lb, la)
                if narrow.width != 1:
                    raise _Unsupported
                self.atoms.pin(narrow.atoms, f'broadcast in {self._where()}')
                self.put(
                    out,
                    Labels(wide.atoms, wide.via, wide.zero_kept
                           and not additive))
                return
            if np.array_equal(la.atoms, lb.atoms):
                # two functions of the same channels (Swish: x * sigmoid(x)):
                # still a channel-wise op, not a residual sum
                if np.array_equal(la.via, lb.via):
                    via = la.via
                else:
                    via = self._lose_via(la, lb)
                if name in ops.ADDITIVE or name in ('maximum', 'minimum'):
                    zero = la.zero_kept and lb.zero_kept
                elif name.startswith(('mul', '__mul', '__rmul', '__imul')):
                    zero = la.zero_kept or lb.zero_kept  # 0 * y = 0
                else:  # division
                    zero = la.zero_kept and name != '__rtruediv__'
                self.put(out, Labels(la.atoms, via, zero))
                return
            if additive:
                self._note_shortcut(a, b, la, lb)
            if additive and self.residual_mode == 'fine':
                if self._fine_add(la, lb, out):
                    return
            self.atoms.union_arrays(la.atoms, lb.atoms)
            if additive:  # a coupled residual sum: its group is a stream
                self.stream_atoms.append(la.atoms.copy())
            self.put(out, Labels(la.atoms, self._lose_via(la, lb), False))
            return
        lab, other = (la, b) if la is not None else (lb, a)
        zero = True
        if isinstance(other, torch.Tensor):
            per_channel = other.dim() >= 2 and other.shape[1] == lab.width \
                and lab.width > 1
            if per_channel and (other.requires_grad
                                or bool(torch.count_nonzero(other))):
                # a per-channel tensor no known module owns (e.g. layer
                # scale): we cannot slice it, so these channels stay
                self.atoms.pin(
                    lab.atoms, f"per-channel operand of '{name}' in "
                    f'{self._where()}')
            if additive:
                zero = not bool(torch.count_nonzero(other))
        elif additive:
            zero = other == 0
        divides = name in ('div', 'div_', '__truediv__', '__itruediv__',
                           'true_divide')
        if name == '__rtruediv__' or (divides and la is None):
            zero = False  # k / x maps 0 to inf
        self.put(out, Labels(lab.atoms, lab.via, lab.zero_kept and zero))

    def _lose_via(self, *labs: Labels) -> np.ndarray:
        """The ``via`` of an op that mixes its operands: -1 everywhere.
        Modules whose output passed through here are remembered: if one
        becomes a scattered writer, later readers cannot tell that its
        channels are back at full width (see _pin_coupled_writers)."""
        for lab in labs:
            self._via_lost.update(int(v) for v in np.unique(lab.via) if v >= 0)
        return np.full(labs[0].width, -1)

    def _fine_add(self, la: Labels, lb: Labels, out) -> bool:
        """FCP: keep the add alive at full width; each writer keeps its own
        channels. Returns False (caller couples) when a side cannot be
        scattered back exactly."""
        writers = []
        for lab in (la, lb):
            pinned = self.atoms.all_pinned(lab.atoms)
            if pinned:
                continue  # a stream, the input or a fixed tensor: full width
            vias = np.unique(lab.via)
            if len(vias) != 1 or vias[0] < 0 or not lab.zero_kept:
                self.fine_fallbacks.append(
                    f'add in {self._where()}: an operand is not the direct '
                    f'output of one module (or passed a non-zero-preserving '
                    f'op), coupled instead')
                return False
            writers.append(int(vias[0]))
            self._writer_atoms.setdefault(int(vias[0]),
                                          []).append(lab.atoms.copy())
        names = list(self._names.values())
        for w in writers:
            self.scatter.add(names[w])
        stream = self.atoms.new(
            la.width, pin=f'residual stream in {self._where()}')
        self._stream_ids.update(stream.tolist())
        self.put(out, Labels(stream, np.full(la.width, -1), False))
        return True

    def _cat(self, args, kwargs, out):
        seq = args[0] if args else kwargs['tensors']
        dim = args[1] if len(args) > 1 else kwargs.get('dim', 0)
        labs = [self.get(t) for t in seq]
        if all(lab is None for lab in labs):
            return
        dim = _norm_dim(dim, seq[0].dim())
        parts = []
        for t, lab in zip(seq, labs):
            if lab is None:  # constant or unseen piece: new pinned channels
                c = t.shape[1]
                lab = Labels(
                    self.atoms.new(c, pin='unlabelled concat input'),
                    np.full(c, -1))
            parts.append(lab)
        if dim == 1:
            self.put(out, Labels.cat(parts))
        else:  # cat along batch/space: all pieces share the channel index
            for p in parts[1:]:
                if p.width != parts[0].width:
                    raise _Unsupported
                self.atoms.union_arrays(parts[0].atoms, p.atoms)
            self.put(
                out,
                Labels(parts[0].atoms, self._lose_via(*parts),
                       all(p.zero_kept for p in parts)))

    def _split(self, name, args, kwargs, out):
        x = args[0]
        lab = self.get(x)
        if lab is None:
            return
        dim = args[1] if name == 'narrow' else (
            args[2] if len(args) > 2 else kwargs.get('dim', 0))
        dim = _norm_dim(dim, x.dim())
        outs = [out] if name == 'narrow' else list(out)
        if dim != 1:
            for t in outs:
                self.put(t, lab)
            return
        # Channel split. Only chunk(n) survives pruning: its boundaries are
        # recomputed from the width, so we couple channel j of every chunk,
        # which keeps the chunks equal and aligned. Literal sizes (split,
        # narrow) would cut a compact tensor at the wrong place: pin.
        if name != 'chunk' or len({t.shape[1] for t in outs}) != 1:
            raise _Unsupported
        c = outs[0].shape[1]
        parts = [lab.take(slice(i * c, (i + 1) * c)) for i in range(len(outs))]
        for p in parts[1:]:
            self.atoms.union_arrays(parts[0].atoms, p.atoms)
        for t, p in zip(outs, parts):
            self.put(t, p)

    def _reshape(self, x, out):
        lab = self.get(x)
        if lab is None:
            return
        if not isinstance(out, torch.Tensor):
            raise _Unsupported
        if out.dim() >= 2 and tuple(out.shape[:2]) == tuple(x.shape[:2]):
            self.put(out, lab)
        elif (out.dim() == 2 and x.dim() > 2 and out.shape[0] == x.shape[0]
              and out.shape[1] == x[0].numel()):
            # flatten(1): channel c -> columns [c*k, (c+1)*k), k = H*W
            k = int(np.prod(x.shape[2:]))
            self.put(
                out,
                Labels(
                    np.repeat(lab.atoms, k), np.repeat(lab.via, k),
                    lab.zero_kept))
        else:
            raise _Unsupported

    def _reduce(self, name, args, kwargs, out):
        x = args[0]
        lab = self.get(x)
        if lab is None:
            return
        dim = args[1] if len(args) > 1 else kwargs.get('dim')
        if dim is None and name == 'sum' and lab.zero_kept:
            # a full sum to a scalar: pruned channels are 0 in the masked
            # model and absent in the compact one, so both sums agree, and
            # a scalar has no channel axis to label (mmdet's RoI extractor
            # adds ``feats[i].sum() * 0.`` for a level without RoIs)
            return
        if dim is None or isinstance(dim, str):
            raise _Unsupported
        dims = dim if isinstance(dim, (tuple, list)) else (dim, )
        dims = {_norm_dim(d, x.dim()) for d in dims}
        if 1 in dims or 0 in dims:
            raise _Unsupported
        res = out[0] if isinstance(out, tuple) else out
        if not isinstance(res, torch.Tensor) or res.dim() < 2:
            raise _Unsupported
        self.put(res, lab)

    def _channel_index(self, x, idx):
        """Return (kind, value): ('all', None) when dim 1 is untouched,
        ('take', ndarray) for a channel subset; raise when unsupported."""
        if not isinstance(idx, tuple):
            idx = (idx, )
        n_real = sum(1 for e in idx if e is not None and e is not Ellipsis)
        pos, chan = 0, ('all', None)
        for e in idx:
            if e is None:
                if pos <= 1:
                    raise _Unsupported  # new axis moves the channel axis
                continue
            if e is Ellipsis:
                pos += x.dim() - n_real
                continue
            if pos == 0:
                if isinstance(e, int):
                    raise _Unsupported  # batch axis dropped
                if isinstance(e, torch.Tensor) and e.dim() != 1:
                    raise _Unsupported
            elif pos == 1:
                c = x.shape[1]
                if isinstance(e, slice):
                    chan = ('take', np.arange(c)[e])
                elif isinstance(e, torch.Tensor) and e.dim() == 1:
                    sel = e.detach().cpu().numpy()
                    chan = ('take', np.nonzero(sel)[0]
                            if sel.dtype == bool else sel.astype(np.int64))
                elif isinstance(e, (list, tuple)):
                    chan = ('take', np.asarray(e, dtype=np.int64))
                else:
                    raise _Unsupported
            elif isinstance(e, torch.Tensor):
                raise _Unsupported  # advanced indexing may move axes
            pos += 1
        return chan

    def _getitem(self, x, idx, out):
        lab = self.get(x)
        if lab is None or not isinstance(out, torch.Tensor):
            return
        kind, sel = self._channel_index(x, idx)
        if kind != 'all':
            if len(sel) == lab.width and np.array_equal(
                    sel, np.arange(lab.width)):
                kind = 'all'
            else:
                # a literal channel slice picks other channels once the
                # tensor is compact, so what it reads must stay
                raise _Unsupported
        self.put(out, lab)

    def _setitem(self, target, idx, value):
        lv, lt = self.get(value), self.get(target)
        if lv is None and lt is None:
            return
        kind, _ = self._channel_index(target, idx)
        if kind != 'all':
            raise _Unsupported
        if lt is None:  # writing features into a zeros buffer (RoI extractor)
            self.put(target, lv)
        elif lv is not None:
            if lv.width != lt.width:
                raise _Unsupported
            self.atoms.union_arrays(lt.atoms, lv.atoms)
            self.put(target, Labels(lt.atoms, self._lose_via(lt, lv), False))

    # ----------------------------------------------------- module hooks
    def _kind(self, m: nn.Module) -> Optional[str]:
        # the layer-kind table (graph/layers.py) is the one place that
        # classifies modules; None: a container or a parameter-free leaf
        return kind_name(m)

    def _pre_hook(self, m, inputs):
        self._module_stack.append(self._names.get(m, '?'))
        if self._kind(m) is not None:
            self._leaf_depth += 1
            if hasattr(m, READ_BUFFER) and inputs:
                # an already gathering reader: label what arrives, not its
                # gathered copy (made at leaf depth > 0, so unlabelled)
                self._gather_raw[id(m)] = inputs[0]

    def _post_hook(self, m, inputs, output):
        name = self._module_stack.pop()
        kind = self._kind(m)
        if kind is not None:
            self._leaf_depth -= 1
            if self._leaf_depth == 0:
                self._leaf(name, m, kind, inputs, output)
        elif self._leaf_depth == 0:
            self._check_opaque(name, m, inputs, output)
            if next(m.children(), None) is None:
                lab = self.get(next(iter_tensors(inputs), None))
                if lab is not None:
                    self.passthrough.setdefault(name,
                                                []).append(lab.atoms.copy())

    def _record(self, name, kind) -> ModuleRecord:
        rec = self.records.get(name)
        if rec is None:
            rec = ModuleRecord(name, kind, self._index[name])
            self.records[name] = rec
        rec.calls += 1
        return rec

    def _merge_input(self, rec: ModuleRecord, lab: Labels):
        if rec.inp is None:
            rec.inp = lab.atoms.copy()
        elif len(rec.inp) == lab.width:
            self.atoms.union_arrays(rec.inp, lab.atoms)  # shared module
        else:
            raise RuntimeError(f'{rec.name} was called with inputs of '
                               f'different widths')
        rec.in_vias.append(lab.via.copy())

    def _put_module_output(self, m, out, lab: Labels):
        gather = getattr(m, SCATTER_BUFFER, None)
        if gather is not None:
            # an already-scattered writer: its own channels sit at the kept
            # stream positions, the rest are constant zeros (pinned)
            full = self.atoms.new(len(gather), pin='scatter padding')
            kept = kept_positions(gather).numpy()
            full[kept] = lab.atoms
            lab = Labels(full, np.full(len(gather), lab.via[0]))
        self.put(out, lab)

    def _leaf(self, name, m, kind, inputs, output):
        x = next(iter_tensors(inputs), None)
        x = self._gather_raw.pop(id(m), x)
        lin = self._lin(x)
        if kind in ('conv', 'linear'):
            lin = lin | {self._index[name]}
        for t in iter_tensors(output):
            self._lineage[id(t)] = (t, lin)
        lab = self.get(x)
        if lab is None and x is not None and x.dim() >= 2:
            lab = Labels(
                self.atoms.new(
                    x.shape[1], pin=f'unlabelled input '
                    f'of {name}'), np.full(x.shape[1], -1))
        out = output if isinstance(output, torch.Tensor) else None
        frozen = self.respect_frozen and any(
            not p.requires_grad for p in m.parameters(recurse=False))
        via = np.full(out.shape[1], self._index[name]) if (
            out is not None and out.dim() >= 2) else None
        if kind == 'linear' and x.dim() != 2:
            # (N, L, C) tokens: features sit on the last axis, not dim 1,
            # and L may differ per call; understood enough to pin only
            kind = 'tokens'
        if kind in ('conv', 'linear'):
            rec = self._record(name, kind)
            self._merge_input(rec, lab)
            self._read_columns(rec, m, lab, frozen)
            if rec.out is None:
                rec.out = self.atoms.new(m.weight.shape[0])
                if self.fixed(name, m):
                    self.atoms.pin(rec.out, f'prediction output {name}')
            if frozen:
                self.atoms.pin(rec.out, f'frozen {name}')
                self.atoms.pin(lab.atoms, f'frozen {name}')
            self._put_module_output(m, out, Labels(rec.out,
                                                   via[:len(rec.out)]))
        elif kind in ('dwconv', 'norm', 'gn'):
            rec = self._record(name, kind)
            self._merge_input(rec, lab)
            if frozen:
                self.atoms.pin(lab.atoms, f'frozen {name}')
            if kind == 'gn':
                self._tie_groupnorm(name, m, lab)
            self._put_module_output(m, out, Labels(lab.atoms, via[:lab.width]))
        elif kind == 'roi':
            # channel-wise; recorded so surgery can tell the adapter the
            # extractor's new width (its zeros buffer is allocated from a
            # static ``out_channels``)
            rec = self._record(name, 'roi')
            self._merge_input(rec, lab)
            self.put(out, lab)
        else:  # gconv, ln, tokens: understood enough to pin, not to prune
            rec = self._record(name, 'opaque')
            if lab is not None:
                self.atoms.pin(lab.atoms, f'{type(m).__name__} {name}')
            self.opaque[name] = f'{type(m).__name__}: channels pinned' + (
                f' (applied to a {x.dim()}-D input)'
                if kind == 'tokens' else '')
            if out is not None:
                self._fresh(out, f'{type(m).__name__} {name}')

    def _read_columns(self, rec: ModuleRecord, m: nn.Module, lab: Labels,
                      frozen: bool) -> None:
        """Reader pruning (fine mode): give each weight column that reads a
        residual stream its own atom, so this reader keeps its own subset
        of the stream. ``lab``: labels of the incoming (C_inc,) tensor;
        ``rec.src`` (C_w,) maps weight columns to incoming positions (an
        earlier gather, else the identity). Calls of a shared reader must
        read the stream at the same columns; a column that does not is
        left to the stream (full width), which is always exact."""
        src = read_sources(m)
        if src is None and not self.read_pruning:
            return
        if src is None:
            src = np.arange(lab.width)
        if rec.src is None:
            rec.src = src
        if not self.read_pruning:
            return
        cols = lab.atoms[src]  # (C_w,) incoming atom of each column
        on_stream = np.isin(
            cols, np.fromiter(self._stream_ids, np.int64,
                              len(self._stream_ids)))
        if rec.kind == 'linear' and \
                len(np.unique(cols[on_stream])) != int(on_stream.sum()):
            # a flattened map repeats a channel over k columns: reading a
            # subset of those would need k-wide units; read it whole
            on_stream[:] = False
        if rec.read is None:
            rec.read = np.full(len(src), -1, dtype=np.int64)
            rec.read[on_stream] = self.atoms.new(int(on_stream.sum()))
        else:  # a shared reader: keep the columns every call reads freely
            rec.read[~on_stream] = -1
        if frozen:
            self.atoms.pin(rec.read[rec.read >= 0], f'frozen {rec.name}')

    def _tie_groupnorm(self, name, m, lab: Labels) -> None:
        """Make each GroupNorm block one prunable unit (module docstring):
        union the atoms of its C/G channels. lab.atoms: (C,)."""
        c, g = lab.width, m.num_groups
        if c != m.num_channels or c % g:
            self.atoms.pin(
                lab.atoms, f'GroupNorm {name}: input width {c} '
                f'is not its {m.num_channels} channels')
            return
        if not m.affine and not lab.zero_kept:
            # no gamma/beta to zero and an input whose pruned channels are
            # not 0: nothing proves the masked block outputs 0
            self.atoms.pin(
                lab.atoms, f'GroupNorm {name}: non-affine after '
                f'an op that does not keep zeros')
            return
        blocks = lab.atoms.reshape(g, c // g)  # (G, C/G)
        for j in range(1, blocks.shape[1]):
            self.atoms.union_arrays(blocks[:, 0], blocks[:, j])
        self.gn_blocks.append(blocks.copy())

    def _check_opaque(self, name, m, inputs, output):
        for t in iter_tensors(output):
            if t.dim() >= 2 and t.requires_grad and self.get(t) is None:
                # produced by something the mode could not see
                for i in iter_tensors(inputs):
                    lab = self.get(i)
                    if lab is not None:
                        self.atoms.pin(lab.atoms, f'opaque module {name}')
                self.opaque[name] = (f'{type(m).__name__}: output made by an '
                                     'op the tracer cannot see; channels '
                                     'pinned')
                self._fresh(t, f'opaque module {name}')

    def _pin_coupled_writers(self):
        """Fine mode: a scattered writer's output is full width again after
        the scatter, so its channels may not be coupled with any other
        producer's (an add that fell back to coupling, e.g. onto a concat
        holding the writer's output), nor reach a module through an op
        that loses ``via`` (a product of two different tensors), where the
        reader would take them for compact ones. Such a writer's channels
        are pinned (its scatter is then the identity)."""
        if not self._writer_atoms:
            return
        roots = self.atoms.resolve()
        size = np.bincount(roots, minlength=len(roots))
        names = list(self._names.values())
        # a follower (BN, depthwise conv) passes a writer's channels on
        # under its own via: a lost follower via loses the writer's too
        followers = {
            r.index: r
            for r in self.records.values()
            if r.kind in ('dwconv', 'norm', 'gn')
        }
        lost, todo = set(self._via_lost), list(self._via_lost)
        while todo:
            rec = followers.get(todo.pop())
            for via in (rec.in_vias if rec is not None else ()):
                for v in np.unique(via).tolist():
                    if v >= 0 and v not in lost:
                        lost.add(v)
                        todo.append(v)
        for index, parts in self._writer_atoms.items():
            own = np.unique(np.concatenate(parts))
            classes, count = np.unique(roots[own], return_counts=True)
            if np.any(size[classes] > count) or index in lost:
                why = ('its output reaches a module through an op that mixes'
                       ' tensors' if index in lost else
                       'its channels are coupled with another producer\'s')
                self.atoms.pin(
                    own, f'fine mode: writer {names[index]} is '
                    f'coupled with other channels')
                self.fine_fallbacks.append(
                    f'writer {names[index]} cannot be scattered ({why}): '
                    f'its channels are pinned')

    # -------------------------------------------------------------- run
    def trace(self, forward_fn: Callable, inputs: Sequence[torch.Tensor]):
        """Run ``forward_fn(*inputs)`` under the tracer; return the output."""
        handles = []
        for m in self.model.modules():
            # a gathering reader's pre-hook was registered at surgery;
            # ours must run first to see the input before the gather
            handles.append(
                m.register_forward_pre_hook(
                    self._pre_hook, prepend=hasattr(m, READ_BUFFER)))
            handles.append(m.register_forward_hook(self._post_hook))
        try:
            traced = []
            for x in inputs:
                x = x.detach().clone().requires_grad_(True)
                self._labels[id(x)] = (x,
                                       Labels(
                                           self.atoms.new(
                                               x.shape[1], pin='model input'),
                                           np.full(x.shape[1], -1)))
                traced.append(x)
            try:
                with torch.enable_grad(), self:
                    out = forward_fn(*traced)
            except Exception as e:
                # the hooks that pop the module stack did not run: it still
                # says where the forward stopped
                at = f"op '{self._op}'" if self._op else 'python code'
                raise GraphTraceError(
                    f'mmprune: the channel analysis could not run the '
                    f'forward of {type(self.model).__name__}: {at} in module '
                    f"'{self._where()}' raised {type(e).__name__}: {e}") \
                    from e
            for t in iter_tensors(out):
                lab = self.get(t)
                if lab is not None:
                    self.atoms.pin(lab.atoms, 'model output')
            self._pin_coupled_writers()
            for mname, where in self._foreign.items():
                rec = self.records.get(mname)
                if rec is None:
                    continue
                why = f'parameter of {mname} read by {where}'
                for atoms in (rec.out, rec.inp, rec.read):
                    if atoms is not None:
                        self.atoms.pin(atoms, why)
                self.opaque[mname] = why + ': channels pinned'
        finally:
            for h in handles:
                h.remove()
            self._labels.clear()
            self._lineage.clear()
        return out


class GraphTraceError(RuntimeError):
    """The model's forward failed under the channel tracer; the message
    names the op and the module where it stopped."""


class _Unsupported(Exception):
    """Raised inside propagation; the op's channels get pinned."""
