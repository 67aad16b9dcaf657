"""Channel atoms and the union-find that couples them.

Every channel that a producer (a conv or linear output) creates is an *atom*,
an integer. Operations that force two channels to share an index (an
element-wise add in coupled mode, a depthwise conv, a shared head conv read
from several FPN levels) *union* their atoms. After tracing, each union-find
class is one prunable unit: removing it removes every producer row, follower
channel and consumer column labelled with one of its atoms.

A tensor's channel labels are two int arrays over its channel axis (dim 1):
``atoms`` (C,) and ``via`` (C,), the index of the last labelled module that
wrote the channel (-1 when an add or an unknown op produced it). ``via`` lets
the fine residual mode know where to scatter a writer back into its stream.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np


class AtomTable:
    """Growable union-find over channel atoms, with pin reasons.

    A pinned atom can never be pruned; the reason is kept for the log
    (e.g. ``'model output'`` or ``'frozen: backbone.stem.conv'``).
    """

    def __init__(self):
        self._parent = np.zeros(0, dtype=np.int64)
        self._pins: Dict[int, str] = {}

    def __len__(self):
        return len(self._parent)

    def new(self, n: int, pin: Optional[str] = None) -> np.ndarray:
        start = len(self._parent)
        ids = np.arange(start, start + n, dtype=np.int64)
        self._parent = np.concatenate([self._parent, ids])
        if pin is not None:
            self.pin(ids, pin)
        return ids

    def find(self, a: int) -> int:
        parent = self._parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression
            parent[a], a = root, parent[a]
        return int(root)

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union ``a[i]`` with ``b[i]`` for every i (both (C,))."""
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                # keep the older atom as root so group ids stay stable
                if rx < ry:
                    self._parent[ry] = rx
                else:
                    self._parent[rx] = ry

    def pin(self, atoms, reason: str) -> None:
        for a in np.asarray(atoms).reshape(-1).tolist():
            self._pins.setdefault(int(a), reason)

    def all_pinned(self, atoms) -> bool:
        """True when every atom's class holds a pinned atom."""
        pinned_roots = {self.find(a) for a in self._pins}
        return all(self.find(int(a)) in pinned_roots for a in atoms)

    def resolve(self) -> np.ndarray:
        """(num_atoms,) root class of every atom."""
        return np.array([self.find(i) for i in range(len(self._parent))],
                        dtype=np.int64)

    def pinned_classes(self, roots: np.ndarray) -> Dict[int, str]:
        out: Dict[int, str] = {}
        for atom, reason in self._pins.items():
            out.setdefault(int(roots[atom]), reason)
        return out


@dataclass
class Labels:
    """Channel labels of one traced tensor (channel axis = dim 1).

    Attributes:
        atoms (np.ndarray): (C,) atom of each channel.
        via (np.ndarray): (C,) index of the module that last wrote the
            channel, -1 if an add or an unknown op did.
        zero_kept (bool): True when every op since ``via`` maps 0 to 0, so a
            writer scattered at ``via`` gives the same tensor as its mask.
    """
    atoms: np.ndarray
    via: np.ndarray
    zero_kept: bool = True

    @property
    def width(self) -> int:
        return len(self.atoms)

    def take(self, idx) -> 'Labels':
        return Labels(self.atoms[idx], self.via[idx], self.zero_kept)

    def with_zero_kept(self, flag: bool) -> 'Labels':
        return Labels(self.atoms, self.via, self.zero_kept and flag)

    @staticmethod
    def cat(parts: List['Labels']) -> 'Labels':
        return Labels(
            np.concatenate([p.atoms for p in parts]),
            np.concatenate([p.via for p in parts]),
            all(p.zero_kept for p in parts))


@dataclass
class ModuleRecord:
    """What the trace saw a known leaf module do.

    ``kind`` is one of ``conv``, ``dwconv``, ``linear``, ``norm`` (BN-like,
    per-channel affine), ``gn`` (GroupNorm) or ``opaque``. ``out`` holds
    the atoms of the output channels (producers) and ``inp`` the labels of
    the input channels/columns, unioned over repeated calls (shared heads).
    ``in_vias`` keeps each call's ``via`` array for the fine residual mode.

    A *reader* (fine mode with ``read_pruning``, :mod:`mmprune.graph.
    read_map`) selects its weight columns from what arrives: ``inp`` and
    ``in_vias`` then describe the incoming tensor (C_inc,), ``src`` (C_w,)
    gives the incoming position each weight column reads, and ``read``
    (C_w,) the column's own atom where it reads a residual stream (-1
    elsewhere), so the reader can keep its own subset of the stream.
    """
    name: str
    kind: str
    index: int
    out: Optional[np.ndarray] = None
    inp: Optional[np.ndarray] = None
    in_vias: List[np.ndarray] = field(default_factory=list)
    calls: int = 0
    src: Optional[np.ndarray] = None
    read: Optional[np.ndarray] = None

    def column_atoms(self) -> Optional[np.ndarray]:
        """(C_w,) atom of each weight input column: the incoming atom it
        reads, or its own read atom where it has one."""
        if self.inp is None or self.src is None:
            return self.inp
        cols = self.inp[self.src]
        if self.read is not None:
            cols = np.where(self.read >= 0, self.read, cols)
        return cols
