"""Trainability-preserving regulariser (TPP), the basis of ACP-TP.

Paper: Wang & Fu, "Trainability Preserving Neural Pruning", ICLR 2023,
https://arxiv.org/abs/2207.12534 (code: MingSun-Tse/TPP,
``pruner/opp_pruner.py``; docs/methods.md §1A(b), confirmed from the code).
Used by ACP-TP (Liu et al., PRCV 2023, DOI 10.1007/978-981-99-8549-4_12)
to "protect trainability" of the channels selected for pruning (§1B).

For every producer ``l`` of a group with a selected (to-prune) set ``P``:

* Gram decorrelation: ``W~ = W_l.view(N, -1)``, ``G = W~ W~^T``,
  ``T = stopgrad(G)`` with rows and columns ``P`` zeroed,
  ``L_gram,l = mean_{i,j} (G_ij - T_ij)^2`` (kept-kept entries contribute
  nothing); total ``lw_opp * lambda(t) * sum_l L_gram,l``;
* growing L2 on the selected weights and biases, as the loss term
  ``0.5 * lambda(t) * ||theta_P||^2`` whose gradient is TPP's
  ``grad += lambda * theta`` (docs/methods.md §5.2 allows the loss form);
* BN: ``0.5 * lambda(t) * (gamma_P^2 + beta_P^2)`` on the BN channels of
  ``P`` (paper Eq. 5);
* ramp: ``lambda(t) = min(lambda_max, lambda_0 + delta * floor(t / K))``
  with ``t`` the number of :meth:`step` calls (TPP adds ``delta`` every
  ``K`` iterations up to ``lambda_max``).

Our choices: coupled groups regularise every producer's rows of ``P`` (the
Gram matrix is per producer, its full output width); depthwise convs are
not producers, so their channels are handled through their group's
producers and BNs (docs/methods.md §1B(i)); frozen parameters are skipped;
``set_selection(..., window=W)`` restarts the ramp for ACP-TP's per-event
windows and sets ``delta`` so lambda reaches ``lambda_max`` after ``W``
iterations (:meth:`delta_for_window`). The state is JSON-safe and whole
(every hyper-parameter, ``delta`` included, the step and the selection by
group name: a resumed run continues the same lambda trajectory) and must be
re-bound to a graph after loading.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..registry import REGULARIZERS
from .base import BaseRegularizer

# 2: the whole state (delta, lambda_max, ... as the run set them); 1 had
# only steps and the selection
STATE_VERSION = 2
_HYPER = ('lw_opp', 'delta', 'interval', 'lambda_max', 'lambda_init')


@REGULARIZERS.register_module()
class TPPRegularizer(BaseRegularizer):
    """TPP Gram decorrelation + growing L2 + BN penalty on a selection.

    Args:
        lw_opp (float): weight of the Gram term. Defaults to 1000.
        delta (float): lambda increment. Defaults to 1e-4.
        interval (int): steps between increments (``K``). Defaults to 10.
        lambda_max (float): lambda cap. Defaults to 1.0.
        lambda_init (float): lambda at step 0. Defaults to 0.
        gram (bool): use the Gram term. Defaults to True.
        l2 (bool): use the L2 term on selected weights/biases. Defaults to
            True.
        bn (bool): use the BN gamma/beta term. Defaults to True.

    Examples:
        >>> reg = TPPRegularizer(interval=5)
        >>> reg.set_selection(graph, {'layer1.0.conv1': [3, 7]})
        >>> loss = task_loss + reg.loss(model)   # every iteration
        >>> loss.backward(); optimizer.step(); reg.step()
    """

    def __init__(self,
                 lw_opp: float = 1000.0,
                 delta: float = 1e-4,
                 interval: int = 10,
                 lambda_max: float = 1.0,
                 lambda_init: float = 0.0,
                 gram: bool = True,
                 l2: bool = True,
                 bn: bool = True):
        for name, v in (('lw_opp', lw_opp), ('delta', delta),
                        ('lambda_max', lambda_max), ('lambda_init',
                                                     lambda_init)):
            if isinstance(v, bool) or not (isinstance(v, (int, float))
                                           and math.isfinite(v) and v >= 0):
                raise ValueError(f'{name} must be a finite number >= 0, got '
                                 f'{v!r}')
        if isinstance(
                interval,
                bool) or not (isinstance(interval, int) and interval >= 1):
            raise ValueError(f'interval must be an int >= 1, got '
                             f'{interval!r}')
        if lambda_init > lambda_max:
            raise ValueError(f'lambda_init ({lambda_init}) must not exceed '
                             f'lambda_max ({lambda_max})')
        self.lw_opp, self.delta = float(lw_opp), float(delta)
        self.interval, self.lambda_max = interval, float(lambda_max)
        self.lambda_init = float(lambda_init)
        self.use_gram, self.use_l2, self.use_bn = bool(gram), bool(l2), \
            bool(bn)
        self.steps = 0
        self.selection: Dict[str, List[int]] = {}
        self._producers: List[Tuple[str, torch.Tensor]] = []
        self._norms: List[Tuple[str, torch.Tensor]] = []
        self._graph = None

    @property
    def selective(self) -> bool:
        return True

    # -------------------------------------------------------------- ramp
    @property
    def lambda_(self) -> float:
        """Current ``lambda(t)``."""
        lam = self.lambda_init + self.delta * (self.steps // self.interval)
        return min(self.lambda_max, lam)

    def step(self, n: int = 1) -> None:
        """Advance the ramp by ``n`` iterations (call after each one)."""
        if isinstance(n, bool) or not (isinstance(n, int) and n >= 0):
            raise ValueError(f'n must be an int >= 0, got {n!r}')
        self.steps += n

    @staticmethod
    def delta_for_window(window: int,
                         lambda_max: float = 1.0,
                         interval: int = 1) -> float:
        """``delta`` that ramps 0 -> ``lambda_max`` over ``window``
        iterations (ACP-TP: the window between two prune events)."""
        if not (isinstance(window, int) and window >= 1):
            raise ValueError(f'window must be an int >= 1, got {window!r}')
        return lambda_max * interval / window

    # --------------------------------------------------------- selection
    def set_selection(self,
                      graph,
                      selection: Dict[str, Sequence[int]],
                      window: Optional[int] = None,
                      reset_lambda: bool = False) -> None:
        """Regularise ``selection`` (``{group: to-prune group indices}``)
        of ``graph`` from now on (replaces the previous selection).

        ``window`` (iterations until the selection is removed) restarts the
        ramp and sets ``delta`` so lambda reaches ``lambda_max`` at its end
        (ACP-TP, docs/methods.md §1B(b)); ``reset_lambda`` only restarts.
        """
        if window is not None:
            self.delta = self.delta_for_window(window, self.lambda_max,
                                               self.interval)
            reset_lambda = True
        groups = {g.name: g for g in graph.groups}
        clean = {}
        for name, idx in selection.items():
            if name not in groups:
                raise ValueError(f'selection names unknown group {name!r}')
            g = groups[name]
            idx = sorted({int(i) for i in np.asarray(idx).reshape(-1)})
            if idx and (idx[0] < 0 or idx[-1] >= g.width):
                raise ValueError(f'selection[{name!r}] has indices outside '
                                 f'[0, {g.width})')
            if any(g.pinned[i] for i in idx):
                raise ValueError(f'selection[{name!r}] names pinned '
                                 f'channels')
            if len(idx) >= g.width:
                raise ValueError(f'selection[{name!r}] would select every '
                                 f'channel of the group')
            if idx:
                clean[name] = idx
        self.selection = clean
        self._graph = graph
        self._producers, self._norms = [], []
        for name, idx in clean.items():
            sel = np.asarray(idx)
            for m in groups[name].members:
                hit = np.isin(m.group_index, sel)
                if not hit.any():
                    continue
                pos = torch.as_tensor(
                    np.asarray(m.positions)[hit], dtype=torch.long)
                if m.axis == 'out' and m.kind in ('conv', 'linear'):
                    self._producers.append((m.module, pos))
                elif m.axis == 'in' and m.kind == 'norm':
                    self._norms.append((m.module, pos))
        if reset_lambda:
            self.steps = 0

    # -------------------------------------------------------------- loss
    def loss(self, model: nn.Module) -> torch.Tensor:
        """The regularisation term to add to the training loss (0-d).

        ``model`` must be the unwrapped model the graph was traced on (not
        a DDP wrapper: module names would not match).
        """
        device = next((p.device for p in model.parameters()),
                      torch.device('cpu'))
        lam = self.lambda_
        total = torch.zeros((), device=device)
        if lam == 0 or not self.selection:
            return total
        gram, sq = 0.0, 0.0
        for name, pos in self._producers:
            mod = model.get_submodule(name)
            w = mod.weight
            if w.requires_grad:
                pos_d = pos.to(w.device)
                if self.use_gram:
                    gram = gram + self._gram(w, pos_d)
                if self.use_l2:
                    sq = sq + w.index_select(0, pos_d).pow(2).sum()
            b = getattr(mod, 'bias', None)
            if self.use_l2 and b is not None and b.requires_grad:
                sq = sq + b.index_select(0, pos.to(b.device)).pow(2).sum()
        if self.use_bn:
            for name, pos in self._norms:
                mod = model.get_submodule(name)
                for t in (getattr(mod, 'weight',
                                  None), getattr(mod, 'bias', None)):
                    if t is not None and t.requires_grad:
                        sq = sq + t.index_select(0, pos.to(
                            t.device)).pow(2).sum()
        total = total + self.lw_opp * lam * gram + 0.5 * lam * sq
        return total

    @staticmethod
    def _gram(w: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
        """``mean((G - T)^2)`` with ``T = stopgrad(G)``, pruned rows and
        columns of ``T`` zeroed."""
        flat = w.reshape(w.shape[0], -1)
        g = flat @ flat.t()  # (N, N)
        keep = torch.ones(w.shape[0], dtype=g.dtype, device=g.device)
        keep[pruned] = 0
        target = g.detach() * keep[:, None] * keep[None, :]
        return (g - target).pow(2).mean()

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """JSON-safe state: hyper-parameters, step, lambda, selection by
        group name."""
        return dict(
            version=STATE_VERSION,
            steps=int(self.steps),
            lambda_=float(self.lambda_),
            **{k: getattr(self, k)
               for k in _HYPER},
            selection={
                k: [int(i) for i in v]
                for k, v in sorted(self.selection.items())
            })

    def load_state_dict(self, state: dict, graph=None) -> None:
        """Restore :meth:`state_dict` output; ``graph`` (defaults to the
        one of the last :meth:`set_selection`) resolves the group names.
        A version 1 state (no hyper-parameters) keeps the current ones."""
        if not isinstance(state, dict) or \
                state.get('version') not in (1, STATE_VERSION):
            raise ValueError(f'not a version {STATE_VERSION} '
                             f'TPPRegularizer state: {state!r}')
        steps = state.get('steps')
        if isinstance(steps,
                      bool) or not (isinstance(steps, int) and steps >= 0):
            raise ValueError(f"state['steps'] must be an int >= 0, got "
                             f'{steps!r}')
        sel = state.get('selection')
        if not isinstance(sel, dict):
            raise ValueError("state['selection'] must be a dict")
        graph = graph if graph is not None else self._graph
        if graph is None and sel:
            raise ValueError('load_state_dict needs the channel graph the '
                             'selection refers to (graph=...)')
        if state['version'] == STATE_VERSION:
            hyper = {k: state.get(k) for k in _HYPER}
            # validated by the constructor's checks, flags kept
            TPPRegularizer(**hyper)
            for k, v in hyper.items():
                setattr(self, k, v if k == 'interval' else float(v))
        if graph is not None:
            self.set_selection(graph, sel)
        self.steps = steps

    def __repr__(self):
        return (f'TPPRegularizer(lambda={self.lambda_:.4g}, steps='
                f'{self.steps}, groups={len(self.selection)})')


def selected_norm_ratio(model: nn.Module, graph,
                        selection: Dict[str, list]) -> Optional[float]:
    """Mean L2 norm of the selected producer rows over that of the kept
    rows (a diagnostic: TPP drives it towards 0)."""
    sel_n, kept_n = [], []
    groups = {g.name: g for g in graph.groups}
    for name, idx in selection.items():
        for m in groups[name].producers():
            w = model.get_submodule(m.module).weight.detach()
            rows = w.reshape(w.shape[0], -1).norm(dim=1)
            hit = np.isin(m.group_index, np.asarray(idx))
            pos = np.asarray(m.positions)
            sel_n += rows[torch.as_tensor(pos[hit])].tolist()
            kept_n += rows[torch.as_tensor(pos[~hit])].tolist()
    if not sel_n or not kept_n:
        return None
    return float(np.mean(sel_n) / max(np.mean(kept_n), 1e-12))
