"""Channel groups: the result of the analysis, keyed by module names.

A *class* is one prunable unit (a union-find root of atoms). A *group* is a
family of classes that share producers: for a plain conv it is the conv's
output channels; for a coupled residual stream it is every conv writing into
it. A group's index space is ``range(len(group.classes))``; plans, scores and
masks all live in it.

From a set of kept classes, :meth:`ChannelGraph.module_indices` derives for
every recorded module which output rows and input columns to keep. Masking,
surgery and the cost model all read those same indices, which is why masked
and compact models agree.

Fine mode with ``read_pruning`` adds *reader groups*, named
``<reader module>:in`` (:data:`READ_SUFFIX`): the stream columns one
conv/linear reads, each its own class. They have no producer: keeping a
subset slices the reader's input columns and makes it gather those channels
from the full-width stream (:mod:`mmprune.graph.read_map`).
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set

import numpy as np
import torch.nn as nn

from .atoms import ModuleRecord

logger = logging.getLogger('mmprune')

#: suffix of a reader group's name: ``'layer2.0.conv1.conv:in'``
READ_SUFFIX = ':in'


@dataclass
class Member:
    """One module's view of a group: ``positions[i]`` of the module's
    ``axis`` (``'out'`` rows or ``'in'`` columns) is group channel
    ``group_index[i]``."""
    module: str
    kind: str
    axis: str
    positions: np.ndarray
    group_index: np.ndarray


@dataclass
class ChannelGroup:
    """A set of channels that producers write with aligned indices.

    Attributes:
        name (str): the first producer's module name (stable id).
        classes (np.ndarray): (G,) class id of each group channel.
        pinned (np.ndarray): (G,) True where the channel must stay.
        members (list[Member]): every module slice indexed by the group.
        pin_reasons (dict): group index -> why it is pinned.
        unit (int): channels one group index stands for in each producer:
            1, or C/G when the group feeds a GroupNorm whose blocks of C/G
            channels are tied into one index (docs/methods.md §0.3). Caps
            given in channels (``min_keep``, ``round_to``) are converted
            with it.
        reader (str | None): for a reader group (fine mode with
            ``read_pruning``), the conv/linear whose stream columns the
            group's channels are; None for ordinary groups.
    """
    name: str
    classes: np.ndarray
    pinned: np.ndarray
    members: List[Member] = field(default_factory=list)
    pin_reasons: Dict[int, str] = field(default_factory=dict)
    unit: int = 1
    reader: Optional[str] = None

    @property
    def width(self) -> int:
        return len(self.classes)

    @property
    def prunable(self) -> int:
        return int((~self.pinned).sum())

    def producers(self) -> List[Member]:
        return [
            m for m in self.members
            if m.axis == 'out' and m.kind in ('conv', 'linear')
        ]

    def __repr__(self):
        if self.reader is not None:
            return (f'ChannelGroup({self.name!r}, width={self.width}, '
                    f'prunable={self.prunable}, reader={self.reader!r})')
        prods = ', '.join(m.module for m in self.producers())
        return (f'ChannelGroup({self.name!r}, width={self.width}, '
                f'prunable={self.prunable}, producers=[{prods}])')


class ChannelGraph:
    """Groups plus the per-module index maps of a traced model.

    Built by :func:`mmprune.graph.build_channel_graph`; do not construct it
    by hand.
    """

    def __init__(self,
                 records: Dict[str, ModuleRecord],
                 roots: np.ndarray,
                 pinned: Dict[int, str],
                 scatter: Set[str],
                 residual_mode: str,
                 opaque: Dict[str, str],
                 fine_fallbacks: Sequence[str] = (),
                 passthrough: Optional[Dict[str, List[np.ndarray]]] = None,
                 shortcuts: Sequence[str] = (),
                 gn_blocks: Sequence[np.ndarray] = (),
                 stream_atoms: Sequence[np.ndarray] = (),
                 read_pruning: bool = False):
        self.records = records
        # fine mode: readers keep their own stream columns (reader groups)
        self.read_pruning = bool(read_pruning)
        self.roots = roots
        self.pinned_classes = pinned
        self.scatter = set(scatter)
        self.residual_mode = residual_mode
        self.opaque = dict(opaque)
        self.fine_fallbacks = list(fine_fallbacks)
        # parameter-free leaf modules -> atoms each call read (latency model)
        self.passthrough = dict(passthrough or {})
        # last modules of the identity side of adds (stream sources such
        # as YOLOX's CSP main_conv, ResNet's downsample), see the tracer
        self.shortcuts = set(shortcuts)
        # classes summed by a coupled element-wise add (residual streams,
        # FPN top-down paths in coupled mode)
        self.stream_classes = {
            int(c)
            for a in stream_atoms
            for c in roots[a].tolist()
        }
        self.groups: List[ChannelGroup] = []
        self.class_to_group: Dict[int, tuple] = {}
        self._full: Dict[str, np.ndarray] = {}  # see full_through
        self._build_groups()
        self._set_units(gn_blocks)

    # ------------------------------------------------------------ build
    def _cls(self, atoms: np.ndarray) -> np.ndarray:
        return self.roots[atoms]

    def _build_groups(self):
        # classes that share a producer's output vector form one group;
        # connect them with a small union-find over classes
        parent: Dict[int, int] = {}

        def find(c):
            while parent[c] != c:
                parent[c] = parent[parent[c]]
                c = parent[c]
            return c

        prods = sorted((r for r in self.records.values() if r.out is not None),
                       key=lambda r: r.index)
        for r in prods:
            cls = self._cls(r.out)
            for c in cls.tolist():
                parent.setdefault(c, c)
            first = find(int(cls[0]))
            for c in cls[1:].tolist():
                rc = find(c)
                if rc != first:
                    lo, hi = min(rc, first), max(rc, first)
                    parent[hi] = lo
                    first = lo
        order: Dict[int, List[int]] = {}
        names: Dict[int, str] = {}
        seen: Set[int] = set()
        for r in prods:
            for c in self._cls(r.out).tolist():
                g = find(c)
                names.setdefault(g, r.name)
                if c not in seen:
                    seen.add(c)
                    order.setdefault(g, []).append(c)
        for gi, (g, classes) in enumerate(order.items()):
            classes = np.asarray(classes, dtype=np.int64)
            pinned = np.array([c in self.pinned_classes for c in classes])
            grp = ChannelGroup(names[g], classes, pinned)
            grp.pin_reasons = {
                i: self.pinned_classes[c]
                for i, c in enumerate(classes.tolist())
                if c in self.pinned_classes
            }
            for i, c in enumerate(classes.tolist()):
                self.class_to_group[c] = (gi, i)
            self.groups.append(grp)
        # reader groups after the producer groups, so that turning reader
        # pruning on leaves every other group's name and index space alone
        for r in sorted(self.records.values(), key=lambda r: r.index):
            if r.read is None or not (r.read >= 0).any():
                continue
            classes = self._cls(r.read[r.read >= 0])
            grp = ChannelGroup(
                r.name + READ_SUFFIX,
                classes,
                np.array([c in self.pinned_classes for c in classes.tolist()]),
                reader=r.name)
            grp.pin_reasons = {
                i: self.pinned_classes[c]
                for i, c in enumerate(classes.tolist())
                if c in self.pinned_classes
            }
            for i, c in enumerate(classes.tolist()):
                self.class_to_group[c] = (len(self.groups), i)
            self.groups.append(grp)
        # attach members (a reader's input columns in its weight's layout)
        for r in sorted(self.records.values(), key=lambda r: r.index):
            for axis, atoms in (('out', r.out), ('in', r.column_atoms())):
                if atoms is None or (axis == 'in' and r.kind == 'opaque'):
                    continue
                cls = self._cls(atoms)
                per_group: Dict[int, tuple] = {}
                for pos, c in enumerate(cls.tolist()):
                    hit = self.class_to_group.get(c)
                    if hit is None:
                        continue
                    per_group.setdefault(hit[0], ([], []))
                    per_group[hit[0]][0].append(pos)
                    per_group[hit[0]][1].append(hit[1])
                for gi, (pos, idx) in per_group.items():
                    self.groups[gi].members.append(
                        Member(r.name, r.kind, axis, np.asarray(pos),
                               np.asarray(idx)))

    def _set_units(self, gn_blocks: Sequence[np.ndarray]) -> None:
        """``unit`` of each group fed to a GroupNorm: how many output
        positions of its first producer one GroupNorm-tied index covers."""
        tied = {int(self.roots[b[0]]) for blocks in gn_blocks for b in blocks}
        if not tied:
            return
        for g in self.groups:
            if not any(int(c) in tied for c in g.classes):
                continue
            prods = g.producers()
            if prods:
                counts = np.bincount(prods[0].group_index, minlength=g.width)
                g.unit = max(1, int(counts.max()))

    def is_stream(self, group: ChannelGroup) -> bool:
        """True for a group coupled by an element-wise add (a residual
        stream, or the FPN's laterals and top-down sums in coupled mode);
        False for groups coupled only by a shared reader (the FPN outputs
        that a head shared across levels reads)."""
        return any(int(c) in self.stream_classes for c in group.classes)

    def stream_sources(self, group: ChannelGroup) -> List[str]:
        """The modules of ``group`` that write the identity side of an add
        (a shortcut: YOLOX's CSP ``main_conv``, ResNet's ``downsample``)."""
        return sorted({
            m.module
            for m in group.members if m.module in self.shortcuts and (
                m.axis == 'out' or m.kind in ('norm', 'dwconv', 'gn'))
        })

    # ----------------------------------------------------------- query
    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f'no channel group named {name!r}; groups are '
                       f'{[g.name for g in self.groups][:20]}...')

    def prunable_groups(self) -> List[ChannelGroup]:
        return [g for g in self.groups if g.prunable > 0]

    def full_through(self, rec: ModuleRecord) -> np.ndarray:
        """(C_in,) True where an input column is read from a scattered
        writer: the compact model keeps that column at full stream width.
        It does not depend on the plan, so it is computed once.

        Followers (BN, depthwise conv, GroupNorm) pass such columns on at
        full width, so a column read from a follower is full where the
        follower's matching input column (same atom) is full.
        """
        if rec.name not in self._full:
            self._full[rec.name] = np.zeros(len(rec.inp), dtype=bool)
            full = np.zeros(len(rec.inp), dtype=bool)
            if self.scatter:
                by_index = {r.index: r for r in self.records.values()}
                scattered = [
                    r.index for r in self.records.values()
                    if r.name in self.scatter
                ]
                for via in rec.in_vias:
                    full |= np.isin(via, scattered)
                    for i in np.nonzero(~full)[0]:
                        f = by_index.get(int(via[i]))
                        if f is None or f is rec or f.inp is None or \
                                f.kind not in ('dwconv', 'norm', 'gn'):
                            continue
                        full[i] = bool(
                            self.full_through(f)[f.inp == rec.inp[i]].any())
            self._full[rec.name] = full
        return self._full[rec.name]

    def kept_classes(self, keep: Dict[str, np.ndarray]) -> np.ndarray:
        """Boolean keep flag per class root, from ``{group: kept indices}``.
        Groups absent from ``keep`` and pinned channels are kept whole."""
        flags = np.ones(len(self.roots), dtype=bool)
        for g in self.groups:
            if g.name not in keep:
                continue
            kg = np.zeros(g.width, dtype=bool)
            kg[np.asarray(keep[g.name], dtype=np.int64)] = True
            kg |= g.pinned
            flags[g.classes] = kg
        return flags

    def module_indices(
        self,
        keep: Dict[str,
                   np.ndarray]) -> Dict[str, Dict[str, Optional[np.ndarray]]]:
        """For each recorded module, the output rows and input columns to
        keep (``None`` = untouched). Shapes: ``out`` (C_out',), ``in``
        (C_in',) of int64 positions in the module's current layout. A
        reader (``ModuleRecord.src``) also gets ``gather`` (C_in',): the
        position of each kept column in its compact input, which has
        ``incoming`` channels."""
        flags = self.kept_classes(keep)
        result = {}
        for r in self.records.values():
            if r.kind == 'opaque':
                continue
            entry: Dict[str, Optional[np.ndarray]] = {'out': None, 'in': None}
            if r.inp is not None:
                # (C_inc,) what arrives: scattered channels at full width
                k = flags[self._cls(r.inp)] | self.full_through(r)
                entry['in'] = np.nonzero(k)[0]
            if r.inp is not None and r.src is not None:
                # a reader keeps its kept columns only, also where a
                # scattered writer's dropped channel arrives as padding;
                # ``gather`` (C_w',) is where each kept column sits in
                # the compact incoming tensor (mmprune.pruners.gather)
                cols = flags[self._cls(r.column_atoms())] & k[r.src]
                entry['in'] = np.nonzero(cols)[0]
                entry['gather'] = (np.cumsum(k) - 1)[r.src[cols]]
                entry['incoming'] = int(k.sum())
            if r.kind in ('conv', 'linear'):
                entry['out'] = np.nonzero(flags[self._cls(r.out)])[0]
            else:  # norm, dwconv, gn: out follows in
                entry['out'] = entry['in']
            result[r.name] = entry
        return result

    def passthrough_widths(self, keep: Dict[str,
                                            np.ndarray]) -> Dict[str, int]:
        """Channels each parameter-free leaf module (pool, activation,
        upsample) reads after ``keep``, summed over its calls. Used by the
        latency model only: its time scales with these widths."""
        flags = self.kept_classes(keep)
        return {
            name: int(sum(flags[self._cls(a)].sum() for a in calls))
            for name, calls in self.passthrough.items()
        }

    def summary(self) -> str:
        lines = [
            f'{len(self.groups)} channel groups '
            f'({len(self.prunable_groups())} prunable), residual mode '
            f'{self.residual_mode!r}' +
            (' with reader pruning' if self.read_pruning else '')
        ]
        for g in self.groups:
            if g.reader is not None:
                lines.append(f'  {g.name}: width {g.width}, prunable '
                             f'{g.prunable}, stream columns of {g.reader}')
                continue
            lines.append(f'  {g.name}: width {g.width}, prunable '
                         f'{g.prunable}, producers '
                         f'{[m.module for m in g.producers()]}')
        for k, v in self.opaque.items():
            lines.append(f'  pinned: {k}: {v}')
        for f in self.fine_fallbacks:
            lines.append(f'  fine mode: {f}')
        return '\n'.join(lines)


def build_channel_graph(model: nn.Module,
                        forward_fn,
                        inputs,
                        residual_mode: str = 'coupled',
                        fixed=None,
                        respect_frozen: bool = True,
                        read_pruning: bool = False) -> ChannelGraph:
    """Trace ``forward_fn(*inputs)`` on ``model`` and return its groups
    (``read_pruning``: fine mode's reader groups, see the module
    docstring)."""
    from .tracer import ChannelTracer
    tracer = ChannelTracer(
        model,
        residual_mode=residual_mode,
        fixed=fixed,
        respect_frozen=respect_frozen,
        read_pruning=read_pruning)
    tracer.trace(forward_fn, inputs)
    roots = tracer.atoms.resolve()
    pinned = tracer.atoms.pinned_classes(roots)
    for msg in tracer.fine_fallbacks:
        # fine mode keeps these channels whole (or couples an add): say so,
        # once per process and message (the hook re-traces at each event)
        if msg not in _LOGGED_FALLBACKS:
            _LOGGED_FALLBACKS.add(msg)
            logger.warning('mmprune: fine mode fallback: %s', msg)
    return ChannelGraph(
        tracer.records,
        roots,
        pinned,
        tracer.scatter,
        residual_mode,
        tracer.opaque,
        tracer.fine_fallbacks,
        tracer.passthrough,
        tracer.shortcuts,
        tracer.gn_blocks,
        tracer.stream_atoms,
        read_pruning=read_pruning)


_LOGGED_FALLBACKS: Set[str] = set()
